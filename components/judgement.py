"""Champion against challenger from logged outcomes, for the monitor (components/monitor.py):
promote, hold or roll back by an always-valid confidence sequence for the difference, rows
clustered by unit.

  a shadow   both versions answered the same requests (`judge_shadow`; needs logged actions of
             known propensity, `serve --explore`): inverse-propensity and doubly robust values of
             the two policies on the same rows. Beside it, uplift: how well each model's CATE ranks
             the same units by their effect (gain and Qini curves, AUUC and Qini coefficient,
             from the per-unit doubly robust effect scores of the logged outcomes;
             components/uplift.py), and the challenger's Qini coefficient minus the champion's
             with a paired bootstrap standard error.
  a canary   each request or unit met one version at random (`judge_canary`; no exploration
             needed): each version's mean outcome on its own traffic while both answered, doubly
             robust (`arm_values`), an online A/B comparison of the two deployed policies.

`judge` picks the one the log's latest experiment calls for. Outcomes (`read_outcomes`,
`check_outcomes`) are joined to the log's rows by request_id and row, or by unit_id.
"""

import numpy as np
import pandas as pd

from tauforge.kernels._inputs import plain
from tauforge.kernels.ate import debiased_scores

from . import uplift
from .events import id_string, input_columns, with_shadow

# Champion rows this close to the challenger's first or last row count as the canary's time: one
# request's rows are scored, and stamped, milliseconds apart.
CANARY_SLACK_S = 60.0
MIN_POLICY_ROWS = 50  # rows with outcomes below which no version is judged (a canary: half that per version)
MIN_POLICY_UNITS = 20  # units (clusters) below which no version is judged: a unit's rows are not independent
# A canary's share is estimated per period of time (equal numbers of rows, at least this many each,
# at most CANARY_PERIODS): an operator raising the canary's percent changes it while outcomes drift.
CANARY_PERIOD_ROWS = 200
CANARY_PERIODS = 20


def confidence_sequence(values: np.ndarray, alpha: float = 0.05, t_opt: int = 10_000) -> tuple[float, float]:
    """Asymptotic confidence sequence for the mean of `values` (Waudby-Smith et al. 2021, the
    normal-mixture boundary): valid simultaneously over every sample size, so checking it after
    every batch of outcomes keeps its coverage, provided `t_opt` (where it is tightest) is fixed
    in advance; choosing it from the data at each look would make it a fixed-sample interval."""
    t = len(values)
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    rho2 = (-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / t_opt
    half = sd * np.sqrt(2 * (t * rho2 + 1) / (t**2 * rho2) * np.log(np.sqrt(t * rho2 + 1) / alpha))
    return mean - half, mean + half


def outcome_model(frame: pd.DataFrame, columns: list[str], seed: int = 0, by: str = "action",
                  clusters: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """The logged outcome's model mu(x, a) at a = 0 and 1 for every row, cross-fitted (2 folds);
    `a` is the column `by` (the logged action, or a canary's arm). A cluster's rows (`clusters`:
    a unit's, which share its outcome noise) stay in one fold, so no row's prediction has learned
    its own noise from its unit's other rows."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    X = frame[input_columns(columns)].to_numpy()
    A, Y = frame[by].to_numpy(float), frame["outcome"].to_numpy(float)
    clusters = np.arange(len(Y)) if clusters is None else clusters
    names, index = np.unique(clusters, return_inverse=True)
    fold = np.random.default_rng([seed, 7]).permutation(len(names))[index] % 2
    mu = {0: np.empty(len(Y)), 1: np.empty(len(Y))}
    for k in (0, 1):
        train, test = fold != k, fold == k
        model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, min_samples_leaf=40,
                                              random_state=seed).fit(np.column_stack([X[train], A[train]]), Y[train])
        for a in (0, 1):
            mu[a][test] = model.predict(np.column_stack([X[test], np.full(test.sum(), a)]))
    return mu


def clusters_of(frame: pd.DataFrame) -> np.ndarray:
    """Each row's cluster as an integer code: its unit (a unit's rows share its outcome noise and,
    in the router's canary, its version), or its request where the row has no unit id. Codes,
    not the ids: the judgement groups by them several times."""
    keys = "request:" + frame["request_id"].astype(str)
    if "unit_id" in frame:
        keys = frame["unit_id"].where(frame["unit_id"].notna(), keys).astype(str)
    return pd.factorize(keys, sort=True)[0]  # sorted: the folds are those of the ids themselves


def policy_values(frame: pd.DataFrame, columns: list[str], seed: int = 0,
                  mu: dict[int, np.ndarray] | None = None) -> pd.DataFrame:
    """Per-row inverse-propensity and doubly robust scores of the champion's and challenger's
    policies (treat where their CATE > 0) from logged actions with known propensities, with the
    outcome model `mu` (default: `outcome_model`)."""
    A, Y, p = frame["action"].to_numpy(float), frame["outcome"].to_numpy(float), frame["propensity"].to_numpy(float)
    mu = outcome_model(frame, columns, seed) if mu is None else mu
    out = {}
    for who in ("champion", "challenger"):
        pi = (frame[f"cate_{who}"].to_numpy() > 0).astype(float)
        follows = (A == pi).astype(float)
        mu_pi = np.where(pi == 1, mu[1], mu[0])
        mu_a = np.where(A == 1, mu[1], mu[0])
        out[f"ipw_{who}"] = follows * Y / p
        out[f"dr_{who}"] = mu_pi + follows * (Y - mu_a) / p
    return pd.DataFrame(out)


def arm_values(frame: pd.DataFrame, columns: list[str], seed: int = 0, clusters: np.ndarray | None = None,
               share: np.ndarray | None = None) -> pd.DataFrame:
    """Per-row doubly robust scores of each version's mean outcome in a canary. `frame` holds the
    rows each version answered (`arm`: 1 for the challenger's) with their outcomes; the arm was
    drawn at random (a hash of the unit, or Knative's per-request split) with probability `share`
    (per row: the challenger's share of its period, which an operator raising the canary's
    percent changes; default: its share of all rows). The score of arm a,
    mu(x, a) + 1{arm = a} (y - mu(x, a)) / P(arm = a), averages to the mean outcome had every row
    met version a: the difference in the arms' means, with the outcome model `outcome_model`
    taking out the covariates' share of the noise (and unbiased whatever its errors, the
    assignment being random)."""
    Z, Y = frame["arm"].to_numpy(float), frame["outcome"].to_numpy(float)
    q = np.full(len(Z), Z.mean()) if share is None else share
    mu = outcome_model(frame, columns, seed, by="arm", clusters=clusters)
    return pd.DataFrame({"dr_champion": mu[0] + (1 - Z) * (Y - mu[0]) / (1 - q),
                         "dr_challenger": mu[1] + Z * (Y - mu[1]) / q})


def cluster_values(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """One value per cluster (a unit's rows, which share the unit's outcome noise and its arm),
    whose mean is the rows' mean and whose spread is the cluster-robust (linearized) one: the
    mean plus each cluster's summed deviation, times clusters / rows."""
    mean = float(np.mean(values))
    sums = pd.Series(values - mean).groupby(clusters).sum().to_numpy()
    return mean + sums * len(sums) / len(values)


def treatment_probability(frame: pd.DataFrame) -> np.ndarray:
    """Each row's P(action = 1) under the logging policy: the log keeps the propensity of the
    action taken."""
    p = frame["propensity"].to_numpy(float)
    return np.where(frame["action"].to_numpy(float) == 1, p, 1 - p)


def effect_scores(frame: pd.DataFrame, mu: dict[int, np.ndarray]) -> np.ndarray | None:
    """Per-row doubly robust (AIPW) scores of the effect of action 1 from logged outcomes: the
    debiased score of `kernels.ate` with the logging policy's known P(action = 1) (the logged
    propensity is that of the action taken) and the outcome model `mu`; unbiased whatever `mu`'s
    errors, since the propensities are known. None when some row's action was certain (no
    exploration there): no effect can be learned from it."""
    A, Y, e = frame["action"].to_numpy(float), frame["outcome"].to_numpy(float), treatment_probability(frame)
    if not ((e > 0) & (e < 1)).all():
        return None
    tau = mu[1] - mu[0]
    return debiased_scores(tau, Y - (mu[0] + e * tau), A - e, e * (1 - e))


def _uplift(frame: pd.DataFrame, mu: dict[int, np.ndarray], seed: int) -> dict:
    psi = effect_scores(frame, mu)
    if psi is None:
        return {"note": "some logged actions had propensity 1 (no exploration): no per-unit effect can be estimated, "
                        "so no uplift curve; serve with exploration (--explore) to measure it"}
    return {"effect_scores": "doubly robust (AIPW) scores from the logged outcomes and propensities",
            **uplift.compare(psi, {"champion": frame["cate_champion"].to_numpy(float),
                                   "challenger": frame["cate_challenger"].to_numpy(float)}, seed=seed)}


def outcome_keys(outcomes: pd.DataFrame) -> list[str]:
    """The columns that join outcomes to the log's rows: request_id and row where the outcomes
    have them, else unit_id."""
    return ["request_id", "row"] if {"request_id", "row"} <= set(outcomes.columns) else ["unit_id"]


def check_outcomes(outcomes: pd.DataFrame, source: str = "outcomes") -> pd.DataFrame:
    """`outcomes` if the policy judgements can read them: an `outcome` column of numbers (NaN: not
    known yet, left out) and one row per key (`outcome_keys`); else a ValueError naming the problem."""
    keys = outcome_keys(outcomes)
    if "outcome" not in outcomes.columns or not set(keys) <= set(outcomes.columns):
        raise ValueError(f"{source} needs an 'outcome' column and request_id and row (or unit_id); it has "
                         f"{', '.join(map(str, outcomes.columns))}")
    try:
        values = pd.to_numeric(outcomes["outcome"]).astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: 'outcome' must hold numbers, got {outcomes['outcome'].dtype} values") from None
    if np.isinf(values).any():
        raise ValueError(f"{source}: 'outcome' holds infinite values in {int(np.isinf(values).sum())} rows")
    if "row" in keys:  # a scored row's position in its request: 1.5 was read as 1 (an ops review)
        rows = pd.to_numeric(outcomes["row"], errors="coerce")
        bad = (rows.isna() & outcomes["row"].notna()) | (rows < 0) | (rows != np.floor(rows)) & rows.notna()
        if bad.any():
            raise ValueError(f"{source}: 'row' must hold whole numbers from 0 (a row's position in its request), "
                             f"got {plain(outcomes['row'][bad].iloc[0])!r} in {int(bad.sum())} row(s)")
        outcomes = outcomes.assign(row=rows)  # a missing one: the row is left out of the judgement, as before
    # Rows without a key join no logged row (`with_outcomes` leaves them out): not duplicates of
    # each other (two outcomes without a request_id were refused as "sharing" None).
    repeated = outcomes.duplicated(keys, keep=False) & outcomes[keys].notna().all(axis=1)
    if repeated.any():
        first = outcomes.loc[repeated, keys].iloc[0].tolist()
        raise ValueError(f"{source}: {int(repeated.sum())} rows share a {' and '.join(keys)} with another (the "
                         f"first: {', '.join(map(str, first))}); give one outcome per "
                         f"{'scored row' if len(keys) == 2 else 'unit'}")
    return outcomes.assign(outcome=values)


def read_outcomes(path: str) -> pd.DataFrame:
    """Outcomes for policy value: Parquet or CSV (a path or an fsspec URI, read as training data
    is) with an `outcome` column and request_id and row (or unit_id)."""
    from .data import read_table

    try:
        outcomes = read_table(path, id_columns=["request_id", "unit_id"])
    except ValueError as exc:
        raise ValueError(f"outcomes: {exc}") from None
    return check_outcomes(outcomes, f"outcomes {path}")


def with_outcomes(rows: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """`rows` of the log with their known outcomes (`outcome_keys`); rows without one are left out.
    Ids are joined as the log keeps them (`events.id_string`): an id 7 read as a number meets the
    log's "7" (a CSV's ids are read as text, so its 007 meets "007")."""
    key = outcome_keys(outcomes)
    ids = [c for c in key if c != "row"]
    known = outcomes.loc[outcomes["outcome"].notna(), key + ["outcome"]]
    known = known.assign(**{c: [id_string(v) for v in known[c]] for c in ids}).dropna(subset=key)
    rows = rows.drop(columns="outcome", errors="ignore").assign(**{c: [id_string(v) for v in rows[c]] for c in ids})
    return rows.merge(known.astype({"row": int}) if "row" in key else known, on=key)


def unmatched_outcomes(rows: pd.DataFrame, outcomes: pd.DataFrame, matched: int) -> str | None:
    """Why no row of the log met an outcome, when none did (`matched`: the rows `with_outcomes`
    kept): the log lacks the keys, or no key matched. A walkthrough's outcomes of another log
    read only as "too few rows with an outcome"."""
    if matched or not len(rows):
        return None
    key = outcome_keys(outcomes)
    absent = [c for c in key if c not in rows.columns or rows[c].isna().all()]
    if absent:
        return f"the event log's rows hold no {' or '.join(absent)}, which the outcomes are joined on"
    known = int(outcomes["outcome"].notna().sum())
    return (f"none of the {known} outcomes matched the ({', '.join(key)}) of the {len(rows)} logged rows: are "
            "they this log's?")


def latest_version(rows: pd.DataFrame) -> int:
    """The version of the row logged last (the highest version where no row has a time); by
    position, since rows of several log files share index labels."""
    versions = rows["version"].to_numpy()
    times = rows["time"].to_numpy(float) if "time" in rows else np.full(len(rows), np.nan)
    return int(versions[np.nanargmax(times)] if not np.isnan(times).all() else versions.max())


def _latest(rows: pd.DataFrame) -> float:
    return float(rows["time"].max()) if "time" in rows and rows["time"].notna().any() else -np.inf


def judge(live, shadow, challenger, outcomes, columns, config, seed) -> dict:
    """A shadow is judged by the policy values of both versions' answers to the same requests; a
    canary by the outcomes of each version's own traffic. A log holding both judges the one that
    answered last (the experiment running now), and says so."""
    if not len(challenger) and not len(shadow):
        return {"rows": 0, "recommendation": "hold",
                "note": "the log holds no challenger or shadow rows: nothing to judge the champion against"}
    if len(challenger) and (not len(shadow) or _latest(challenger) >= _latest(shadow)):
        result = judge_canary(live, challenger, outcomes, columns, config, seed)
        other = "shadow" if len(shadow) else None
    else:
        result = judge_shadow(live, shadow, outcomes, columns, config, seed)
        other = "challenger" if len(challenger) else None
    if other:
        also = f"the log also holds {other} rows, from an earlier experiment: the one that answered last is judged"
        result["note"] = f"{result['note']}; {also}" if result.get("note") else also
    return result


def judge_shadow(live, shadow, outcomes, columns, config, seed) -> dict:
    """The shadow's judgement: on the rows both versions answered that have an outcome and a
    logged action of known propensity, the inverse-propensity and doubly robust values of each
    version's policy (treat where its CATE > 0; `policy_values`), rows clustered by unit, an
    always-valid confidence sequence for the difference, and the two CATEs' uplift."""
    notes = []
    # One shadow version at a time: the latest, as a canary's (a review: two were pooled and
    # judged under the label of the one with more rows).
    version = latest_version(shadow)
    if shadow["version"].nunique() > 1:
        notes.append(f"the log holds shadows of versions {', '.join(map(str, sorted(shadow['version'].unique())))}; "
                     f"the latest, version {version}, is judged")
    shadow = shadow[shadow["version"] == version]
    frame = with_outcomes(live, outcomes)
    if why := unmatched_outcomes(live, outcomes, len(frame)):
        notes.append(why)
    frame = with_shadow(frame, shadow, ["cate"], suffix="_challenger")
    frame = frame.rename(columns={"cate": "cate_champion"})
    frame = frame[frame["action"].notna() & frame["propensity"].notna()]
    # A propensity is the probability of the action taken: in (0, 1]. Another writer's 0 made
    # every value NaN, and 1.5 passed (a review): such rows are left out, and counted.
    p = frame["propensity"].to_numpy(float)
    impossible = ~((p > 0) & (p <= 1)) | ~frame["action"].isin((0, 1)).to_numpy()
    if impossible.any():
        notes.append(f"{int(impossible.sum())} rows whose logged action is not 0 or 1, or whose propensity is not in "
                     "(0, 1], left out")
        frame = frame[~impossible]
    base = {"judged": "shadow", "challenger_version": version, "rows": int(len(frame)),
            **({"note": "; ".join(notes)} if notes else {})}
    clusters = clusters_of(frame)
    if len(frame) < MIN_POLICY_ROWS or len(np.unique(clusters)) < MIN_POLICY_UNITS:
        return _hold(base, f"too few rows with an outcome, a logged action and a shadow answer (at least "
                           f"{MIN_POLICY_ROWS} rows of {MIN_POLICY_UNITS} units): {len(frame)} rows of "
                           f"{len(np.unique(clusters))} units")
    # Where the two policies disagree, only exploration there tells them apart: an action taken
    # with certainty leaves the outcome model's guess alone, and a confident sequence around it
    # (a review: a confidence sequence of [-0.01, 0.05] missed a difference of 0.21).
    disagree = (frame["cate_champion"].to_numpy() > 0) != (frame["cate_challenger"].to_numpy() > 0)
    certain = frame["propensity"].to_numpy(float) >= 1
    if (disagree & certain).any():
        return _hold(base, f"{int((disagree & certain).sum())} of the {int(disagree.sum())} rows where the two "
                           "versions' policies disagree were served without exploration (propensity 1): there only "
                           "the outcome model's guess separates them; serve with exploration (--explore) to judge")
    mu = outcome_model(frame, columns, seed, clusters=clusters)
    scores = policy_values(frame, columns, seed, mu)
    diff = cluster_values((scores["dr_challenger"] - scores["dr_champion"]).to_numpy(), clusters)
    lo, hi = confidence_sequence(diff, config.cs_alpha, config.cs_t_opt)
    return {**base, "value_champion_ipw": float(scores["ipw_champion"].mean()),
            "value_challenger_ipw": float(scores["ipw_challenger"].mean()),
            "value_champion_dr": float(scores["dr_champion"].mean()),
            "value_challenger_dr": float(scores["dr_challenger"].mean()),
            **_stderrs(scores, clusters), "units": int(len(diff)), **_difference(diff),
            "confidence_sequence": [float(lo), float(hi)], "recommendation": _decision(lo, hi),
            "uplift": _uplift(frame, mu, seed)}


def _hold(base: dict, note: str) -> dict:
    """`base` judged `hold`, `note` added to its notes."""
    return {**base, "recommendation": "hold", "note": f"{base['note']}; {note}" if base.get("note") else note}


def _stderrs(scores: pd.DataFrame, clusters: np.ndarray) -> dict:
    """Each version's value's standard error, cluster-robust."""
    return {f"value_{who}_dr_stderr": float(np.std(cluster_values(scores[f"dr_{who}"].to_numpy(), clusters), ddof=1)
                                            / np.sqrt(len(np.unique(clusters))))
            for who in ("champion", "challenger")}


def _difference(values: np.ndarray) -> dict:
    """The challenger's value minus the champion's from per-cluster values, with its (fixed-sample)
    standard error."""
    return {"difference_dr": float(np.mean(values)),
            "difference_dr_stderr": float(np.std(values, ddof=1) / np.sqrt(len(values)))}


def _decision(lo: float, hi: float) -> str:
    return "promote" if lo > 0 else "roll back" if hi < 0 else "hold"


def judge_canary(live, challenger, outcomes, columns, config, seed) -> dict:
    """The canary's judgement: each version's mean outcome over the rows it answered, doubly robust
    (`arm_values`), with rows clustered by unit (request where no unit id) and an always-valid
    confidence sequence for the difference. The canary is the latest challenger version other
    than the champion's. Only the time both answered counts (give or take `CANARY_SLACK_S`): an
    earlier or later period, when one version answered alone, is no control. Within it the
    challenger's share is taken per period (`CANARY_PERIODS`). Outcomes given per unit count once
    per unit, not once per visit (a version that brings units back more often would otherwise
    look better), and units that met both versions are then left out."""
    candidates = challenger[~challenger["version"].isin(set(live["version"]))]
    if not len(candidates):
        return {"judged": "canary", "rows": 0, "recommendation": "hold",
                "note": "the challenger rows answered with the champion's own version: nothing to compare"}
    version = latest_version(candidates)
    notes = []
    if candidates["version"].nunique() > 1:
        notes.append(f"the log holds canaries of versions {', '.join(map(str, sorted(candidates['version'].unique())))}"
                     f"; the latest, version {version}, is judged")
    frame = pd.concat([live.assign(arm=0), candidates[candidates["version"] == version].assign(arm=1)],
                      ignore_index=True)
    if "time" in frame:
        untimed = frame["time"].isna()
        if untimed.any():
            notes.append(f"{int(untimed.sum())} rows without a time left out")
        frame = frame[~untimed]
        spans = frame.groupby("arm")["time"].agg(["min", "max"])
        if len(spans) == 2:
            start, end = spans["min"].max() - CANARY_SLACK_S, spans["max"].min() + CANARY_SLACK_S
            outside = ~frame["time"].between(start, end)
            if outside.any():
                notes.append(f"{int(outside.sum())} rows from when only one version answered left out")
            frame = frame[~outside]
    logged, frame = frame, with_outcomes(frame, outcomes)
    if why := unmatched_outcomes(logged, outcomes, len(frame)):
        notes.append(why)
    if outcome_keys(outcomes) == ["unit_id"]:
        frame, mixed = _one_row_per_unit(frame)
        if mixed:
            notes.append(f"{mixed} units met both versions: with one outcome per unit they belong to neither, and "
                         "are left out")
    share = _period_share(frame)
    keep = (share > 0) & (share < 1)  # a period one version answered alone holds no comparison
    frame, share = frame[keep], share[keep]
    counts = {"rows_champion": int((frame["arm"] == 0).sum()), "rows_challenger": int((frame["arm"] == 1).sum())}
    base = {"judged": "canary", "challenger_version": version, "rows": int(len(frame)), **counts}
    clusters = clusters_of(frame)
    units = [len(np.unique(clusters[frame["arm"].to_numpy() == arm])) for arm in (0, 1)]
    if min(counts.values()) < MIN_POLICY_ROWS // 2 or min(units) < MIN_POLICY_UNITS // 2:
        notes.insert(0, f"too few rows with an outcome in each version's traffic (at least {MIN_POLICY_ROWS // 2} "
                        f"rows of {MIN_POLICY_UNITS // 2} units each): champion {counts['rows_champion']} rows of "
                        f"{units[0]} units, challenger {counts['rows_challenger']} of {units[1]}")
        return {**base, "recommendation": "hold", "note": "; ".join(notes)}
    scores = arm_values(frame, columns, seed, clusters, share)
    both = int((frame.groupby(clusters)["arm"].nunique() > 1).sum())
    diff = cluster_values((scores["dr_challenger"] - scores["dr_champion"]).to_numpy(), clusters)
    lo, hi = confidence_sequence(diff, config.cs_alpha, config.cs_t_opt)
    result = {**base, "units": int(len(diff)),
              "challenger_share": float(frame["arm"].mean()),
              **{f"value_{who}_mean": float(frame.loc[frame["arm"] == arm, "outcome"].mean())
                 for arm, who in ((0, "champion"), (1, "challenger"))},
              **{f"value_{who}_dr": float(scores[f"dr_{who}"].mean()) for who in ("champion", "challenger")},
              **_stderrs(scores, clusters), **_difference(diff), "confidence_sequence": [float(lo), float(hi)],
              "recommendation": _decision(lo, hi), "units_in_both_versions": both}
    if both:
        notes.append(f"{both} of {len(diff)} units met both versions (a per-request split, as KServe's "
                     "canaryTrafficPercent makes): where a unit's outcome follows all its requests, it belongs "
                     "to neither version alone, which pulls the difference toward 0; the router's canary "
                     "(serve --mode canary) keeps each unit with one version")
    if notes:
        result["note"] = "; ".join(notes)
    return result


def _one_row_per_unit(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """A canary's rows reduced to one per unit (its first, with its version), for outcomes given
    per unit; and how many units met both versions (left out)."""
    frame = frame[frame["unit_id"].notna()].sort_values("time" if "time" in frame else "request_id", kind="stable")
    arms = frame.groupby("unit_id")["arm"].nunique()
    mixed = arms.index[arms > 1]
    return frame[~frame["unit_id"].isin(mixed)].drop_duplicates("unit_id"), int(len(mixed))


def _period_share(frame: pd.DataFrame) -> np.ndarray:
    """The challenger's share of each row's period: the rows in time order cut into equal periods
    (`CANARY_PERIODS` at most, `CANARY_PERIOD_ROWS` rows at least); one period without times."""
    arm = frame["arm"].to_numpy(float)
    periods = int(np.clip(len(arm) // CANARY_PERIOD_ROWS, 1, CANARY_PERIODS))
    if "time" not in frame or periods == 1:
        return np.full(len(arm), arm.mean() if len(arm) else 0.0)
    rank = np.argsort(np.argsort(frame["time"].to_numpy(), kind="stable"), kind="stable")
    period = rank * periods // len(arm)
    return (np.bincount(period, arm) / np.bincount(period))[period]
