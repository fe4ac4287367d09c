"""tauforge's estimation engine: a histogram causal forest on torch (numba on CPU).

    from tauforge.kernels import CausalForestDML
    est = CausalForestDML(random_state=0).fit(Y, T, X=X, W=W)
    est.effect(X_test), est.effect_interval(X_test), est.ate_, est.ate_interval()
"""

__all__ = ["CausalForest", "CausalForestDML"]


def __getattr__(name: str):
    # Imported on first use: torch and numba take seconds to load, and a pipeline task that only
    # fits nuisance models (kernels.nuisance) should not pay for them.
    if name == "CausalForest":
        from .forest import CausalForest

        return CausalForest
    if name == "CausalForestDML":
        from .dml import CausalForestDML

        return CausalForestDML
    raise AttributeError(f"module 'tauforge.kernels' has no attribute {name!r}")
