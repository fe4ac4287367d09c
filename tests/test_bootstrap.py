"""The full bootstrap: replicate forests on resampled rows; percentile and pivot intervals."""

import numpy as np
import pytest

from tauforge.kernels import CausalForestDML
from tauforge.kernels.bootstrap import interval, resample_counts
from tauforge.kernels.datasets import make_causal_data


def test_resamples_are_seeded_multinomial_counts():
    a, b = resample_counts(1000, 3, seed=7), resample_counts(1000, 3, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 1000 and (a == 0).mean() == pytest.approx(np.exp(-1), abs=0.05)
    assert not np.array_equal(a, resample_counts(1000, 4, seed=7))


def test_percentile_and_pivot_intervals():
    draws = np.arange(1, 101, dtype=float)[:, None]  # quantiles 3.475 and 97.525 at alpha 0.05
    lo, hi = interval(draws, np.array([60.0]), 0.05, "percentile")
    assert (lo[0], hi[0]) == pytest.approx((3.475, 97.525))
    lo, hi = interval(draws, np.array([60.0]), 0.05, "pivot")
    assert (lo[0], hi[0]) == pytest.approx((120 - 97.525, 120 - 3.475))
    with pytest.raises(ValueError, match="percentile, pivot"):
        interval(draws, np.array([60.0]), 0.05, "bca")


def test_bootstrap_ate_intervals_cover_the_true_ate_in_most_seeds():
    covered = []
    for seed in range(15):
        d = make_causal_data("constant", n=2000, p=3, seed=seed)
        est = CausalForestDML(n_estimators=20, inference="bootstrap", n_bootstrap=100, bootstrap_trees=2,
                              random_state=seed).fit(d.Y, d.T, X=d.X)
        lo, hi = est.ate_interval()
        covered.append(lo <= 1.0 <= hi)
    assert np.mean(covered) >= 0.8  # 95% intervals, 15 seeds; 100 seeds in tests/benchmarks/bench_bootstrap.py


def test_bootstrap_cate_intervals_and_refit_nuisance():
    d = make_causal_data("simple", n=1500, p=4, seed=1)
    est = CausalForestDML(cv=2, n_estimators=40, inference="bootstrap", n_bootstrap=10, bootstrap_trees=20,
                          bootstrap_nuisance=True, bootstrap_interval="pivot", random_state=1).fit(d.Y, d.T, X=d.X)
    lo, hi = est.effect_interval(d.X[:50])
    tau = est.effect(d.X[:50])
    assert np.all(lo <= hi) and np.all(hi - lo > 0)
    assert len(est.bootstrap_.forests) == 10 and len(set(np.round(est.bootstrap_.ates, 10))) == 10
    with pytest.raises(ValueError, match="inference must be"):
        CausalForestDML(inference="jackknife", n_estimators=4, cv=2).fit(d.Y, d.T, X=d.X)
    assert tau.shape == (50,)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_batched_replicates_equal_replicates_fit_one_at_a_time_and_each_equals_its_own_fit(backend):
    from tauforge.kernels import CausalForest
    from tauforge.kernels.bootstrap import fit_replicates, replicate_seed

    d = make_causal_data("simple", n=800, p=4, seed=2)
    t, y = d.T - d.T.mean(), d.Y - d.Y.mean()
    params = {"n_estimators": 6, "max_samples": 0.5, "backend": backend}
    fit = lambda batch: fit_replicates(d.X, 5, 11, params, lambda c: (y, t, None),  # noqa: E731
                                       lambda c, *_: float(c @ y), batch_size=batch)
    one, batched = fit(1), fit(3)
    for a, b in zip(one.forests, batched.forests):
        np.testing.assert_array_equal(a.predict(d.X), b.predict(d.X))
    alone = CausalForest(**params, ci_group_size=1, random_state=replicate_seed(11, 4)).fit(
        d.X, t, y, sample_weight=resample_counts(800, 4, 11))
    np.testing.assert_array_equal(alone.predict(d.X), batched.forests[4].predict(d.X))
    assert len({float(f.predict(d.X[:1])[0]) for f in batched.forests}) == 5  # every replicate its own forest


def test_replicates_fit_in_shards_merge_into_the_whole_bootstrap_and_survive_save_and_load(tmp_path):
    from tauforge.kernels.bootstrap import BootstrapReplicates, fit_replicates

    d = make_causal_data("simple", n=600, p=3, seed=4)
    fit = lambda replicates: fit_replicates(  # noqa: E731
        d.X, replicates, 5, {"n_estimators": 4, "max_samples": 0.5}, lambda c: (d.Y, d.T, None),
        lambda c, *_: float(c @ d.Y) / 600)
    whole = fit(7)
    later, first = fit(range(4, 7)), fit(range(0, 4))
    later.save(tmp_path / "later")
    merged = BootstrapReplicates.merge([BootstrapReplicates.load(tmp_path / "later"), first], 7)
    np.testing.assert_array_equal(merged.replicates, np.arange(7))
    np.testing.assert_array_equal(merged.ates, whole.ates)
    for a, b in zip(whole.forests, merged.forests):
        np.testing.assert_array_equal(a.predict(d.X), b.predict(d.X))
    with pytest.raises(ValueError, match=r"1 missing \(first \[6\]\), 1 repeated"):
        BootstrapReplicates.merge([first, fit(range(3, 6))], 7)


def test_bad_bootstrap_settings_name_the_setting_before_anything_runs(tmp_path):
    import subprocess
    import sys

    from tauforge.components.estimate import BootstrapConfig

    with pytest.raises(ValueError, match="unknown bootstrap setting.*n_boot; known: n_bootstrap"):
        BootstrapConfig.from_json('{"n_boot": 3}')
    with pytest.raises(ValueError, match="interval must be one of percentile, pivot, got 'bca'"):
        BootstrapConfig.from_json('{"n_bootstrap": 10, "interval": "bca"}')
    for args, message in ((["--bootstrap", "1"], "--bootstrap must be 0 (off) or at least 2 replicates, got 1"),
                          (["--bootstrap", "4", "--bootstrap-shards", "5"],
                           "--bootstrap-shards must be between 1 and 4 (the number of bootstrap replicates), got 5")):
        proc = subprocess.run([sys.executable, "-m", "tauforge.pipelines.cli", "run", "--demo",
                               "--store", str(tmp_path / "s"),
                               "--pipeline-root", str(tmp_path / "runs"), *args],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()


def test_compiled_pipeline_runs_each_bootstrap_shard_as_its_own_task_on_accelerators(tmp_path):
    import json

    import yaml

    from tauforge.pipelines.config import ClusterConfig
    from tauforge.pipelines.training import compile_pipeline

    path = compile_pipeline(str(tmp_path / "training.yaml"), n_folds=2, n_shards=2, bootstrap_shards=3,
                            cluster=ClusterConfig(gpus_per_shard=1))
    spec = yaml.safe_load(open(path))
    executors = spec["deploymentSpec"]["executors"]
    dag = spec["root"]["dag"]["tasks"]
    shards = {name: task for name, task in dag.items() if name.startswith(("forest-shard", "bootstrap-shard"))}
    assert sorted(shards) == ["bootstrap-shard", "bootstrap-shard-2", "bootstrap-shard-3", "forest-shard",
                              "forest-shard-2"]
    for task in shards.values():  # each shard its own task, on an accelerator
        container = executors[task["componentRef"]["name"].replace("comp-", "exec-", 1)]["container"]
        assert container["resources"]["accelerator"]["count"] == "1"
    gathered = dag["merge-bootstrap-shards"]["inputs"]["artifacts"]
    assert sorted(a["taskOutputArtifact"]["producerTask"] for k, a in gathered.items() if k.startswith("shards_")) \
        == ["bootstrap-shard", "bootstrap-shard-2", "bootstrap-shard-3"]
    default = spec["root"]["inputDefinitions"]["parameters"]["bootstrap"]["defaultValue"]
    assert json.loads(default)["n_bootstrap"] == 100
    # Evaluate and publish read the estimate the bootstrap merge wrote.
    assert dag["evaluate-model"]["inputs"]["artifacts"]["estimate"]["taskOutputArtifact"]["producerTask"] == \
        "merge-bootstrap-shards"
    with pytest.raises(ValueError, match="0 for the monitoring pipeline, which retrains without the full bootstrap"):
        compile_pipeline(str(tmp_path / "m.yaml"), pipeline="monitoring", bootstrap_shards=2)
