"""The lifecycle's shared constants, in one place: every step, the server and the CLI import them
from here. The engine's own defaults stay in `tauforge.kernels` (which imports nothing of the
lifecycle); those the steps share, the propensity clip and the overlap's bounds, are re-exported here."""

from tauforge.kernels.ate import MIN_PROPENSITY, MIN_TREATMENT_VARIANCE_SHARE, OVERLAP_BOUNDS, OVERLAP_WARNING_SHARE

# The model store: where `tauforge run` publishes unless told otherwise, and the variable that
# overrides it; the model name of a run that names none.
DEFAULT_STORE = "./tauforge-store"
STORE_ENV = "TAUFORGE_STORE"
DEFAULT_MODEL_NAME = "tauforge-model"

# Estimation defaults of a training run (the engine's CausalForest defaults too).
DEFAULT_TREES = 1000
DEFAULT_FOLDS = 5
# The pipeline tasks the folds are spread over: a task's start (its libraries, a second and more)
# costs more than a fold's fit on the demo's 5,000 rows, and two tasks fill two cores.
DEFAULT_FOLD_TASKS = 2
DEFAULT_ALPHA = 0.05  # 1 - the confidence level of every interval reported

# The data contract's choices (`DataSpec.treatment_type`, `DataSpec.assignment`; the CLI's flags).
TREATMENT_TYPES = ("auto", "binary", "continuous")
ASSIGNMENTS = ("observational", "randomized")

# Positivity (OVERLAP_BOUNDS, MIN_TREATMENT_VARIANCE_SHARE, OVERLAP_WARNING_SHARE) is the engine's,
# re-exported above: estimated propensities outside the bounds are flagged in evaluation (and
# gated) and in monitoring (the share of live rows outside the training overlap region).

# Evaluation warnings (recorded in the card, not fatal): covariate imbalance between arms, and an
# outcome model so good out of fold that the outcome has probably leaked into the covariates.
SMD_WARNING = 0.1
LEAK_WARNING_R2 = 0.95
# The gate's default max_outcome_r2: an exact copy of the outcome among the covariates gave an
# out-of-fold R^2 of 0.99986 and an ATE of 0.0000 [-0.0000, 0.0000], published (a review).
LEAK_GATE_R2 = 0.999
# ... and a covariate whose ranks follow the outcome's this closely is a copy of it: the folds' mean
# R^2 missed one at 1,000 rows (0.99825: one fold's copy fell outside its training bins; a review).
LEAK_RANK_CORRELATION = 0.999
# Fewer rows than this are a warning: the refuters' refits and the heterogeneity checks mean little
# (a review: at 40 rows the data-subset refuter's five effects, on 20 rows each, ran from -2.9 to 2.6).
SMALL_DATA_ROWS = 500

# Monitoring: the family-wise false-alarm rate of all drift tests together, the population
# stability index that raises a drift alert on its own, and the training rows kept as the
# reference profile of each version.
MONITOR_ALPHA = 0.01
PSI_ALERT = 0.25
REFERENCE_ROWS = 5000

# The key of a serving request's unit id (a V1 row's field, a V2 input's name), beside the
# covariates: so no covariate may bear this name (components.data refuses it).
UNIT_ID_FIELD = "unit_id"

__all__ = ["ASSIGNMENTS", "DEFAULT_ALPHA", "DEFAULT_FOLDS", "DEFAULT_FOLD_TASKS", "DEFAULT_MODEL_NAME",
           "DEFAULT_STORE", "DEFAULT_TREES", "LEAK_GATE_R2", "LEAK_RANK_CORRELATION", "LEAK_WARNING_R2",
           "MIN_PROPENSITY", "MIN_TREATMENT_VARIANCE_SHARE", "MONITOR_ALPHA", "OVERLAP_BOUNDS",
           "OVERLAP_WARNING_SHARE", "PSI_ALERT", "REFERENCE_ROWS", "SMALL_DATA_ROWS", "SMD_WARNING", "STORE_ENV",
           "TREATMENT_TYPES", "UNIT_ID_FIELD"]

# A local run's task stopped with SIGTERM (the run interrupted, or killed: the task watches it) is
# killed this long after, if still running: its cleanup (publish's staging folder) runs within it.
STOP_GRACE_SECONDS = 10.0
