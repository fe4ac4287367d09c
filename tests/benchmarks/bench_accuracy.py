"""CATE accuracy against the truth and against EconML's CausalForestDML, over designs, sizes and seeds.

The same data, nuisance learners (tauforge's CPU defaults: `AdditiveBoostingRegressor` for the
outcome, `AdditiveBoostingClassifier` for a binary treatment's propensity), cv=5 and number of
trees for both, each library with its own defaults otherwise. Prints per case: mean CATE RMSE,
coverage of the 95% intervals and their width for each library, the ratios tauforge / EconML,
tauforge's coverage with its intervals scaled to EconML's mean width on the same rows (coverage
compared at equal width: narrower intervals cover less by construction), and tauforge's RMSE and
coverage without the local linear correction (the same forest, the correction off: what the
correction alone changes), the coverage and width of the same forest's per-point variance
(`variance_smoothing=False`: what the smoothing alone changes), and the RMSE and coverage of a
forest on the same residuals and seed with candidates drawn uniformly (`candidate_weights=None`:
what the importance weights alone change), and the mean by-seed difference of tauforge's
coverage from EconML's with its standard error over seeds.

Cases are design:n[:p] (p defaults to 10): grf's simple, aw2 and aw3 at n = 2,000 and 20,000;
imbalanced (about 22% treated, strongly confounded) at p = 25 and n = 800; sparse (aw2's effect,
which moves with 2 of 50 covariates) at n = 2,000; a heteroskedastic continuous treatment.

    .venv/bin/python tests/benchmarks/bench_accuracy.py
    .venv/bin/python tests/benchmarks/bench_accuracy.py --cases aw2:2000,imbalanced:800:25 --seeds 3
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _measure import measure  # noqa: E402

CASES = ("simple:2000,aw2:2000,aw3:2000,simple:20000,aw2:20000,aw3:20000,imbalanced:800:25,"
         "aw2:2000:50,continuous_hetero:2000")
NAMES = {"aw2:2000:50": "sparse (aw2, p = 50)"}


def make_estimators(design: str, seed: int, trees: int, model_t: str | None = None, **tauforge_params) -> dict:
    """Unfitted CausalForestDML of both libraries for `design`, with the same nuisance learners,
    folds and trees: {"tauforge": ..., "econml": ...}; `tauforge_params` go to tauforge's.
    `model_t`: an import path for a binary treatment's propensity model instead of the default."""
    from econml.dml import CausalForestDML as EconMLCausalForestDML

    from tauforge.kernels import CausalForestDML
    from tauforge.kernels.nuisance import default_nuisance_model, resolve_model

    binary = design != "continuous_hetero"
    propensity = resolve_model(model_t, "t", True, 0) if model_t and binary else default_nuisance_model(binary, 0)
    models = dict(model_y=default_nuisance_model(False, 0), model_t=propensity)
    return {
        "tauforge": CausalForestDML(**models, cv=5, n_estimators=trees, random_state=seed, **tauforge_params),
        "econml": EconMLCausalForestDML(**models, discrete_treatment=binary, cv=5, n_estimators=trees,
                                        random_state=seed, n_jobs=-1),
    }


def run(design: str, n: int, p: int, seed: int, trees: int) -> dict[str, dict[str, float]]:
    from tauforge.kernels import CausalForest
    from tauforge.kernels.datasets import make_causal_data
    from tauforge.kernels.forest import FOREST_PARAMS

    train = make_causal_data(design, n=n, p=p, seed=seed)
    test = make_causal_data(design, n=2000, p=p, seed=seed + 10_000)
    estimators = make_estimators(design, seed, trees)
    out = {}

    def score(name, tau, lo, hi, seconds):
        out[name] = dict(rmse=float(np.sqrt(np.mean((tau - test.tau) ** 2))),
                         coverage=float(np.mean((lo <= test.tau) & (test.tau <= hi))),
                         width=float(np.mean(hi - lo)), fit_s=seconds, tau=tau, half=(hi - lo) / 2)

    for name, est in estimators.items():
        with measure() as m:
            est.fit(train.Y, train.T, X=train.X)
        lo, hi = (np.ravel(a) for a in est.effect_interval(test.X, alpha=0.05))
        score(name, np.ravel(est.effect(test.X)), lo, hi, m.seconds)
    ours = estimators["tauforge"]
    # The same forest's per-point variance (variance_smoothing=False): what the smoothing alone changes.
    smoother, ours.forest_.variance_smoother_ = ours.forest_.variance_smoother_, None
    lo, hi = (np.ravel(a) for a in ours.effect_interval(test.X, alpha=0.05))
    ours.forest_.variance_smoother_ = smoother
    score("per_point", np.ravel(ours.effect(test.X)), lo, hi, 0.0)
    # The same forest (same seed, residuals and trees) without the correction.
    params = {k: getattr(ours, k) for k in FOREST_PARAMS}
    y_res, t_res = ours.residuals_
    plain = CausalForest(**{**params, "linear_correction_variables": None}, random_state=seed, progress=False)
    plain.fit(train.X, t_res, y_res)
    tau, lo, hi = (np.ravel(a) for a in plain.predict_with_interval(test.X, alpha=0.05))
    score("plain", tau, lo, hi, 0.0)
    # The same residuals and seed with candidates drawn uniformly: what the importance weights change.
    uniform = CausalForest(**{**params, "candidate_weights": None}, random_state=seed, progress=False)
    uniform.fit(train.X, t_res, y_res)
    tau, lo, hi = (np.ravel(a) for a in uniform.predict_with_interval(test.X, alpha=0.05))
    score("uniform", tau, lo, hi, 0.0)
    # tauforge's normal intervals (symmetric about its estimate) scaled to EconML's mean width.
    ours_scored, theirs = out["tauforge"], out["econml"]
    scale = theirs["width"] / ours_scored["width"]
    ours_scored["coverage_at_econml_width"] = float(
        np.mean(np.abs(ours_scored["tau"] - test.tau) <= scale * ours_scored["half"]))
    correction = ours.forest_.linear_correction_
    out["tauforge"]["variables"] = "none" if correction is None else ",".join(str(j) for j in correction.variables)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=CASES, help="design:n[:p], comma-separated (default: the issue's table)")
    # 10: with 3 the mean coverage of a design moved by 2-3 points between seed sets (aw3 at
    # n = 2,000: 0.878 over seeds 0-2, 0.903 over 0-9), more than the targets' margins.
    parser.add_argument("--seeds", type=int, default=10, help="seeds per case (default: 10, about an hour)")
    parser.add_argument("--trees", type=int, default=1000, help="trees of both forests (default: 1000)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    header = ("| design | p | n | tauforge RMSE | EconML RMSE | RMSE ratio | tauforge coverage | EconML coverage "
              "| tauforge width | EconML width | width ratio | tauforge coverage at EconML's width "
              "| no correction: RMSE / coverage | per-point variance: coverage / width "
              "| uniform candidates: RMSE / coverage | corrected on "
              "| coverage minus EconML's (se over seeds) | fit s (tauforge / EconML) |")
    print(f"# {args.seeds} seeds per row, {args.trees} trees, 95% intervals on 2,000 fresh rows; "
          "coverage (min: the worst seed's)")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    ratios = []
    for case in args.cases.split(","):
        design, n, *rest = case.split(":")
        n, p = int(n), int(rest[0]) if rest else 10
        runs = [run(design, n, p, seed, args.trees) for seed in range(args.seeds)]
        mean = {lib: {k: float(np.mean([r[lib][k] for r in runs])) for k in ("rmse", "coverage", "width", "fit_s")}
                for lib in ("tauforge", "econml", "plain", "per_point", "uniform")}
        worst_cov = min(r["tauforge"]["coverage"] for r in runs)
        equal_width_cov = float(np.mean([r["tauforge"]["coverage_at_econml_width"] for r in runs]))
        variables = sorted({r["tauforge"]["variables"] for r in runs})
        # Paired by seed (the same training and test rows): whether a gap to EconML's coverage is
        # more than the seeds' noise.
        gaps = np.array([r["tauforge"]["coverage"] - r["econml"]["coverage"] for r in runs])
        gap_se = float(gaps.std(ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else float("nan")
        t, e, f, u, c = mean["tauforge"], mean["econml"], mean["plain"], mean["per_point"], mean["uniform"]
        ratios.append(t["rmse"] / e["rmse"])
        print(f"| {NAMES.get(case, design)} | {p} | {n:,} | {t['rmse']:.4f} | {e['rmse']:.4f} "
              f"| {t['rmse'] / e['rmse']:.3f} | {t['coverage']:.3f} (min {worst_cov:.3f}) | {e['coverage']:.3f} "
              f"| {t['width']:.3f} | {e['width']:.3f} | {t['width'] / e['width']:.3f} | {equal_width_cov:.3f} "
              f"| {f['rmse']:.4f} / {f['coverage']:.3f} | {u['coverage']:.3f} / {u['width']:.3f} "
              f"| {c['rmse']:.4f} / {c['coverage']:.3f} "
              f"| {' '.join(variables)} | {gaps.mean():+.3f} ({gap_se:.3f}) "
              f"| {t['fit_s']:.1f} / {e['fit_s']:.1f} |", flush=True)
    print(f"# mean RMSE ratio tauforge / EconML over the {len(ratios)} rows: {np.mean(ratios):.3f}")


if __name__ == "__main__":
    main()
