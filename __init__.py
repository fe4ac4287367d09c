"""tauforge: heterogeneous causal effects (CATE) with a GPU-ready causal forest, on Kubeflow
Pipelines and KServe.

The repository root is this package: its folders install as its subpackages (pyproject.toml's
`package-dir`), so nothing but `tauforge` lands on a user's import path.

    tauforge.kernels     the estimation engine (CausalForest, CausalForestDML)
    tauforge.components  the lifecycle steps: data, nuisance, estimate, evaluate, publish, monitor, deploy
    tauforge.serving     the KServe predictor, routing, event log and metrics
    tauforge.pipelines   the KFP pipelines and the `tauforge` command
"""

__version__ = "0.1.0"
