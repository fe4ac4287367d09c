"""Refuters: perturb the problem in ways that should not change a sound estimate, re-estimate,
and test that it did not change (or, for the placebo, that it vanished).

placebo               the treatment replaced by a random permutation of itself: the effect must be 0
random_common_cause   a random column added to the controls, nuisance models refit: the ATE must stay
data_subset           the nuisance models refit on random 80% subsets of the rows: the ATE must stay

Each returns its estimate, a p-value for "nothing is wrong" and whether it passed at the level
given. The ATE is re-estimated as the pipeline estimates it (doubly robust on the forest's
out-of-bag CATE for a binary treatment, partially linear otherwise), with the forest held fixed:
these refuters test the nuisance stage and the data, not the forest's fit.
"""

import numpy as np
from scipy import stats
from scipy.stats import norm

from tauforge.kernels.ate import average_effect, variance_weighted_effect

from .data import ValidatedData
from .nuisance import NuisanceConfig, refit_residuals


def _p_two_sided(z: float) -> float:
    return float(2 * norm.sf(abs(z)))


def placebo(data: ValidatedData, y_res: np.ndarray, seed: int) -> dict:
    """A permuted treatment is independent of everything: its propensity is its mean, and the
    partially linear estimate of its effect on the outcome residuals must be zero up to noise."""
    a = data.arrays()
    T_placebo = np.random.default_rng([seed, 7]).permutation(a["T"])
    effect, stderr = variance_weighted_effect(y_res, T_placebo - T_placebo.mean(), a["sample_weight"])
    return {"effect": effect, "stderr": stderr, "p_value": _p_two_sided(effect / stderr) if stderr > 0 else 1.0}


def _refit_ate(data: ValidatedData, rows: np.ndarray, extra: np.ndarray | None, oob_cate: np.ndarray,
               nuisance: NuisanceConfig, seed: int) -> float:
    """The ATE with the nuisance models refit on `rows`, seeing `extra` as one more control."""
    y_res, t_res, t_var = refit_residuals(data, nuisance, seed, rows=rows, extra_control=extra)
    weight = data.arrays()["sample_weight"]
    return average_effect(oob_cate[rows], y_res, t_res, t_var, None if weight is None else weight[rows])[0]


def random_common_cause(data: ValidatedData, ate: float, ate_stderr: float, oob_cate: np.ndarray,
                        nuisance: NuisanceConfig, seed: int) -> dict:
    n = len(data.table)
    noise = np.random.default_rng([seed, 11]).normal(size=n)
    new = _refit_ate(data, np.arange(n), noise, oob_cate, nuisance, seed)
    return {"effect": new, "change": new - ate, "p_value": _p_two_sided((new - ate) / ate_stderr)}


def data_subset(data: ValidatedData, ate: float, ate_stderr: float, oob_cate: np.ndarray,
                nuisance: NuisanceConfig, seed: int, fraction: float = 0.8, repeats: int = 5) -> dict:
    """Refit on `repeats` random subsets; test that the full estimate lies within their spread, as
    one more draw would (a t prediction interval with repeats - 1 degrees of freedom). Their
    spread includes the noise of refitting the nuisance models, which a formula for the subset's
    sampling noise alone misses (that version rejected 3x too often on correct pipelines)."""
    n = len(data.table)
    effects = []
    for r in range(repeats):
        rows = np.sort(np.random.default_rng([seed, 13, r]).choice(n, int(fraction * n), replace=False))
        effects.append(_refit_ate(data, rows, None, oob_cate, nuisance, seed + r))
    effects = np.array(effects)
    spread = effects.std(ddof=1) * np.sqrt(1 + 1 / repeats)
    t = (effects.mean() - ate) / spread if spread > 0 else 0.0
    return {"effect": float(effects.mean()), "change": float(effects.mean() - ate), "fraction": fraction,
            "repeats": repeats, "effects": effects.tolist(), "p_value": float(2 * stats.t.sf(abs(t), repeats - 1))}
