"""tauforge's estimation engine: a histogram causal forest on torch (numba on CPU).

    from kernels import CausalForestDML
    est = CausalForestDML(random_state=0).fit(Y, T, X=X, W=W)
    est.effect(X_test), est.effect_interval(X_test), est.ate_, est.ate_interval()
"""

from .dml import CausalForestDML
from .forest import CausalForest

__all__ = ["CausalForest", "CausalForestDML"]
