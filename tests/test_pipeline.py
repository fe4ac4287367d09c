"""The training pipeline end to end, as a user runs it: `tauforge run` processes driving the real
kfp.local SubprocessRunner, real Parquet files, a real local model store. The commands that stop
before any task runs (bad data, a graph the roles do not fit, compile, submit) run in this process
through the same `main()` the `tauforge` console script calls: the same checks, messages and exit
status, without a new process's 3-5 s of imports each (test_cli.py checks exit statuses through a
real process)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml
from background import Processes, compile_kernels

from tauforge.components.events import reference_groups
from tauforge.components.registry import ModelStore
from tauforge.kernels import CausalForestDML
from tauforge.kernels.ate import interval_quantile, oob_effect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAUFORGE = [sys.executable, "-m", "tauforge.pipelines.cli"]
SMALL = ["--trees", "60", "--folds", "2", "--shards", "2"]


def command(tmp_path, *args):
    """`tauforge ARGS` storing under tmp_path."""
    extra = {"run": ["--store", str(tmp_path / "store"), "--pipeline-root", str(tmp_path / "runs")],
             "models": ["--store", str(tmp_path / "store")]}.get(args[0], [])
    return [*TAUFORGE, *args, *extra]


def tauforge(tmp_path, *args):
    out = subprocess.run(command(tmp_path, *args), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    return out.returncode, out.stdout, out.stderr


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """`tauforge ARGS` in this process, in tmp_path, storing under it as `tauforge()` does: (exit
    status, stdout, stderr). main() installs its own warnings.showwarning; it is put back after."""
    from tauforge.pipelines.cli import main

    def call(*args):
        extra = {"run": ["--store", str(tmp_path / "store"), "--pipeline-root", str(tmp_path / "runs")]}
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
        capsys.readouterr()
        try:
            code = main([*args, *extra.get(args[0], [])])
        except SystemExit as exc:  # argparse's errors exit 2, as in the process
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return call


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def ihdp_parquet(path):
    """EconML's IHDP covariates as EconML prepares them (`econml.data.dgps`: 25 columns of the
    IHDP study, the numeric ones scaled, and a constant intercept column first) with its response
    surface B, written as Parquet outside tauforge under the columns' own names, to `path`. The
    intercept cannot split; the run must accept it with a warning, as EconML does. A `family`
    column puts every row in one of 249 groups of three (`--group`). Returns (path, table,
    covariates, controls)."""
    from econml.data.dgps import ihdp_surface_B

    Y, T, X, _ = ihdp_surface_B(random_state=3)
    names = ["intercept", "bw", "b.head", "preterm", "birth.o", "nnhealth", "momage", "sex", "twin", "b.marr",
             "mom.lths", "mom.hs", "mom.scoll", "cig", "first", "booze", "drugs", "work.dur", "prenatal",
             *[f"site{k}" for k in range(1, 8)]]
    family = np.random.default_rng(0).permutation(len(Y)) // 3  # families of three rows, drawn at random
    table = pd.DataFrame(X, columns=names).assign(treat=T.astype(float), iq=Y, family=family)
    assert (table["intercept"] == 1).all()
    covariates, controls = names[:7], names[7:]  # the intercept and the six numeric ones modify the effect
    table.to_parquet(path, index=False)
    return str(path), table, covariates, controls


LINEAR = ["--model-y", "sklearn.linear_model.LinearRegression", "--model-t", "sklearn.linear_model.LogisticRegression"]


# The IHDP run adds the full bootstrap: 12 replicates in two bootstrap-shard tasks, on the main fit's
# residuals (refitting 26 covariates' nuisance models 12 times would take minutes here; the refit
# shards are checked against CausalForestDML in-process, tests/test_bootstrap.py).
BOOTSTRAP = ["--bootstrap", "12", "--bootstrap-shards", "2", "--bootstrap-trees", "6", "--bootstrap-interval", "pivot",
             "--no-bootstrap-nuisance"]


def poor_overlap_table(path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4))
    T = rng.binomial(1, 1 / (1 + np.exp(-4 * X[:, 0]))).astype(float)  # propensities near 0 and 1
    data = pd.DataFrame(X, columns=["a", "b", "c", "d"]).assign(t=T, y=X[:, 0] + T + rng.normal(size=2000))
    data.to_parquet(path, index=False)
    return str(path)


# The demo data's causal graph (kernels/datasets.py, design 'simple': x0 confounds, x1 and x2 move
# the outcome, x3..x9 are noise), with and without an edge x1 -> T that the data do not have; both
# make every x a valid adjustment set, so the runs' covariates (derived from the graph) are x0..x9.
DEMO_GRAPH = """digraph demo {
  x0 -> T; x0 -> Y; T -> Y;  // the confounder
  x1 -> Y; x2 -> Y;%s
  x3; x4; x5; x6; x7; x8; x9;
}
"""


def start_background(request):
    """Four runs at the same time (conftest.py starts them at the session's start; on 2 cores,
    runs side by side overlap each other's process start-ups and single-task steps). Three into
    one store: two of the demo data into one model (tauforge's estimator with the default nuisance
    learners and the demo's graph with an edge x1 -> T, EconML's forest with linear ones and the
    graph without it), which must get versions 1 and 2, and the IHDP Parquet under its own name
    with the full bootstrap in two shards and no graph; beside them, in a store of its own, a run
    whose gate fails."""
    compile_kernels()
    tmp_path_factory = request.getfixturevalue("tmp_path_factory")
    shared, poor = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("poor-overlap")
    ihdp = ihdp_parquet(tmp_path_factory.mktemp("ihdp") / "ihdp.parquet")
    path, table, covariates, controls = ihdp
    (shared / "with-edge.dot").write_text(DEMO_GRAPH % " x1 -> T;")
    (shared / "without-edge.dot").write_text(DEMO_GRAPH % "")
    runs = Processes(dir=shared, poor_dir=poor, ihdp=ihdp)
    runs.start("demo", command(shared, "run", "--demo", *SMALL, "--seed", "0", "--graph", "with-edge.dot", "--json"),
               cwd=shared)
    runs.start("econml", command(shared, "run", "--demo", "--estimator", "econml", "--trees", "40", "--folds", "2",
                                 "--seed", "2", *LINEAR, "--graph", "without-edge.dot", "--json"), cwd=shared)
    # The IHDP run takes the explicit fan-in of compiled pipelines; the others kfp.local's collected one.
    # Its estimated propensities sit near the overlap gate's 10% (4-18% of rows outside [0.05, 0.95]
    # over draws of the folds): the run checks plumbing, so its gate allows 20%.
    runs.start("ihdp", command(shared, "run", "--data", path, "--treatment", "treat", "--outcome", "iq", "--covariates",
                               *covariates, "--controls", *controls, "--group", "family", "--name", "ihdp", *SMALL,
                               "--seed", "3", "--gate", "max_share_outside_overlap=0.2",
                               *BOOTSTRAP, "--fan-in", "explicit", "--json"), cwd=shared)
    runs.start("poor", command(poor, "run", "--data", poor_overlap_table(poor / "poor_overlap.parquet"),
                               "--treatment", "t", "--outcome", "y", "--trees", "20", "--folds", "2", "--shards", "1",
                               *LINEAR), cwd=poor)
    return runs


@pytest.fixture(scope="module")
def runs(background):
    return background[__name__]


@pytest.fixture(scope="module")
def ihdp(runs):
    return runs.ihdp


def test_concurrent_demo_runs_publish_versions_one_and_two_and_models_lists_both(runs):
    tmp_path = runs.dir
    results = {name: runs.result(name) for name in ("demo", "econml")}
    for code, _, err in results.values():
        assert code == 0, err
        assert "published tauforge-model version" in err  # progress lines reach stderr
    by_name = {name: last_json(out) for name, (_, out, _) in results.items()}
    trees = {"demo": 60, "econml": 40}
    assert sorted(r["version"] for r in by_name.values()) == [1, 2]
    for r in by_name.values():
        assert r["gate_passed"] and r["model"] == "tauforge-model" and r["store"] == str(tmp_path / "store")
        assert r["ate_lower"] < r["ate"] < r["ate_upper"]
        assert abs(r["ate"] - 0.40) < 0.15  # the demo's true ATE is 0.396 (test_accuracy checks coverage)
    store = ModelStore(str(tmp_path / "store"))
    for name, r in by_name.items():
        loaded = store.load("tauforge-model", r["version"])  # complete: every checksum verifies
        assert loaded.load_forest().forest_.n_trees == trees[name]
        report = open(os.path.join(loaded.path, "report.html")).read()
        assert "<svg" in report and "Overlap" in report and "Balance" in report
        # Its header names the model, the run and the data as the card does, and it draws the graph.
        card = loaded.card
        for fact in ("tauforge-model", card["run"]["run_id"], f"sha256 {card['data']['fingerprint']}"):
            assert f"<dd>{fact}</dd>" in report, fact
        assert report.count('class="graph"') == 1
    # kfp.local kept every step's outputs, the HTML report and the metrics the Kubeflow UI shows
    executor_outputs = [os.path.join(d, f) for d, _, files in os.walk(by_name["demo"]["outputs"]) for f in files
                        if f == "executor_output.json" and d.endswith("evaluate-model")]
    (evaluate_output,) = executor_outputs
    metrics = json.load(open(evaluate_output))["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["ate"] == pytest.approx(by_name["demo"]["ate"]) and "refuter_placebo_p_value" in metrics

    runs.result("ihdp")  # the third run publishes to the same store, under its own name
    code, out, err = tauforge(tmp_path, "models", "list")
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()[1:]]
    assert [(line[0], line[1]) for line in lines] == [("ihdp", "1"), ("tauforge-model", "1"),
                                                      ("tauforge-model", "2")]
    second = next(name for name, r in by_name.items() if r["version"] == 2)
    code, out, err = tauforge(tmp_path, "models", "show", "--name", "tauforge-model", "--version", "2")
    assert code == 0, err
    card = json.loads(out)
    assert card["version"] == 2 and card["data"]["rows"] == 5000 and len(card["data"]["fingerprint"]) == 64
    assert card["spec"]["treatment"] == "T" and card["estimator"]["n_trees"] == trees[second]
    assert card["evaluation"]["verdict"]["passed"] and "placebo" in card["evaluation"]["refuters"]
    # The run as Kubeflow names it: here kfp.local's job, whose outputs lie under the run's folder.
    assert card["run"]["run_name"] in os.listdir(by_name[second]["outputs"])
    assert card["run"]["run_id"] and "{{" not in card["run"]["run_id"]

    code, out, err = tauforge(tmp_path, "models", "promote", "--name", "tauforge-model", "--version", "1")
    assert code == 0 and "champion -> version 1" in out
    code, out, err = tauforge(tmp_path, "models", "promote", "--name", "tauforge-model", "--version", "2")
    assert code == 0 and "champion -> version 2" in out
    code, out, err = tauforge(tmp_path, "models", "rollback", "--name", "tauforge-model")
    assert code == 0 and "champion -> version 1" in out


def test_a_graph_goes_into_the_card_with_its_hash_and_models_diff_shows_the_edge_that_changed(runs):
    from tauforge.components.graph import CausalGraph

    results = {name: runs.result(name) for name in ("demo", "econml")}
    for code, _, err in results.values():
        assert code == 0, err
    version = {name: last_json(out)["version"] for name, (_, out, _) in results.items()}
    store = ModelStore(str(runs.dir / "store"))
    for name, graph_file in (("demo", "with-edge.dot"), ("econml", "without-edge.dot")):
        card = store.card("tauforge-model", version[name])
        expected = CausalGraph.read(str(runs.dir / graph_file))
        graph = card["graph"]
        assert graph["given"] and graph["format"] == "dot" and graph["sha256"] == expected.sha256
        assert [tuple(e) for e in graph["edges"]] == list(expected.edges) and graph["latent"] == []
        assert card["lineage"]["graph_sha256"] == expected.sha256
        assert card["lineage"]["data_fingerprint"] == card["data"]["fingerprint"]
        # The covariates were derived from the graph: every x, in the order the graph names them.
        assert card["spec"]["covariates"] == [f"x{j}" for j in range(10)] == graph["adjustment_set"]
        # The independences each graph implies hold in the demo data (the edge x1 -> T only removes
        # some): the gate's graph check passed on them.
        checks = card["evaluation"]["graph_checks"]
        assert checks["given"] and checks["graph_sha256"] == expected.sha256
        assert len(checks["statements"]) == 61 - (name == "demo") and checks["min_adjusted_p_value"] >= 0.01
        uplift = card["evaluation"]["uplift"]
        assert uplift["ranking"] == "held-out CATE" and "curve" not in uplift  # the curves stay in evaluation.json
        assert any(expected.sha256[:12] in a for a in card["assumptions"])
    code, out, err = tauforge(runs.dir, "models", "show", "--name", "tauforge-model", "--version",
                              str(version["demo"]))
    assert code == 0 and ["x1", "T"] in json.loads(out)["graph"]["edges"]

    code, out, err = tauforge(runs.dir, "models", "diff", "--name", "tauforge-model", "1", "2")
    assert code == 0, err
    sign = "-" if version["demo"] == 1 else "+"  # the demo run's graph has the edge
    lines = out.splitlines()
    assert lines[0] == "tauforge-model: version 1 -> version 2"
    assert f"    {sign} edge x1 -> T" in lines and not any("edge" in line and "x1 -> T" not in line for line in lines)
    assert "  assumptions: changed" in lines and "  nuisance learners: changed" in lines
    assert any(line.startswith("    model_y: ") and "LinearRegression" in line for line in lines)
    assert any(line.startswith("  data: changed") for line in lines)  # seeds 0 and 2 draw other demo data
    # What else the causal claim rests on (a user's review: these changed without a word): the
    # columns' roles (the same here, from the graphs), the estimator and the gate's thresholds.
    assert "  columns: same" in lines and "  estimator: changed" in lines
    seeds, trees = ("0 -> 2", "60 -> 40") if sign == "-" else ("2 -> 0", "40 -> 60")
    assert f"    seed: {seeds}" in lines and f"    n_trees: {trees}" in lines
    code, out, err = tauforge(runs.dir, "models", "diff", "--name", "tauforge-model", "1", "2", "--json")
    d = last_json(out)
    assert d["graph"]["changed"] and d["graph"][f"edges_{'removed' if sign == '-' else 'added'}"] == ["x1 -> T"]
    assert d["data"]["changed"] and d["gate"]["passed"] == [True, True]
    assert d["gate"]["thresholds"] == {} and not d["spec"]["changed"]  # both cards record the default gate
    assert store.card("tauforge-model", 1)["evaluation"]["gate_config"]["min_placebo_pvalue"] == 0.01


def test_external_parquet_runs_with_named_columns_and_matches_the_in_process_estimator(runs, ihdp):
    """The IHDP run, with its bootstrap replicates spread over two tasks and a group column,
    reproduces CausalForestDML(inference='bootstrap', groups=) with the same seed exactly. It runs
    the graph `compile` writes (one task per fold and shard, gathered by the explicit fan-in
    components)."""
    from tauforge.components.estimate import Estimate

    path, table, covariates, controls = ihdp
    code, out, err = runs.result("ihdp")
    assert code == 0, err
    result = last_json(out)
    assert result["version"] == 1 and result["model"] == "ihdp"
    assert "bootstrap shard 2/2: replicates 6..11" in err
    # EconML's constant intercept column trains and publishes, with the warning in the output and the card.
    constant = "covariate 'intercept' is constant (1.0 in every row): it can never split"
    assert any(constant in w for w in result["warnings"]), result["warnings"]
    # The pipeline's folds, shards and bootstrap shards reproduce CausalForestDML with the same seed exactly.
    est = CausalForestDML(cv=2, n_estimators=60, inference="bootstrap", n_bootstrap=12, bootstrap_trees=6,
                          bootstrap_interval="pivot", bootstrap_nuisance=False, random_state=3).fit(
        table["iq"], table["treat"], X=table[covariates], W=table[controls], groups=table["family"])
    assert result["ate"] == pytest.approx(est.ate_, rel=1e-9)
    assert (result["ate_lower"], result["ate_upper"]) == pytest.approx(est.ate_interval(), rel=1e-9)
    loaded = ModelStore(str(runs.dir / "store")).load("ihdp")
    assert loaded.card["spec"]["covariates"] == covariates and loaded.card["spec"]["controls"] == controls
    assert loaded.card["spec"]["group"] == "family" and loaded.card["effect"]["n_groups"] == 249
    assert "independent groups: rows of different 'family'" in loaded.card["assumptions"][-1]
    # Without --graph the card says so, and the assumptions are the bare ones.
    assert loaded.card["graph"]["given"] is False and "no causal graph was given" in loaded.card["graph"]["note"]
    assert loaded.card["evaluation"]["graph_checks"] == {"given": False,
                                                          "note": "no causal graph was given: no implications to test"}
    assert loaded.card["lineage"]["graph_sha256"] is None
    assert loaded.card["assumptions"][0].startswith("unconfoundedness")
    assert any(constant in w for w in loaded.card["data"]["warnings"])
    assert any(constant in w for w in loaded.card["evaluation"]["verdict"]["warnings"])
    effect = loaded.card["effect"]
    assert effect["ate_interval"] == "bootstrap pivot, 12 replicates, 249 groups drawn whole"
    assert effect["bootstrap"]["n_shards"] == 2 and effect["bootstrap"]["nuisance"] is False
    half = interval_quantile(0.05, 249) * est.ate_stderr_  # Student's t with 248 degrees of freedom: 249 groups
    assert effect["bootstrap"]["normal_interval"] == pytest.approx([est.ate_ - half, est.ate_ + half], rel=1e-9)
    X50 = table[covariates].to_numpy()[:50]
    np.testing.assert_allclose(loaded.load_forest().predict(X50), est.effect(X50), rtol=1e-12)
    # Monitoring's reference holds the out-of-bag CATE (all 747 rows here), as served rows see it.
    reference = pd.read_parquet(loaded.reference_path)
    np.testing.assert_allclose(reference["cate"], oob_effect(est.forest_, table[covariates].to_numpy()), rtol=1e-12)
    # ...and each row's family, so that monitoring counts a family's rows once.
    np.testing.assert_array_equal(reference_groups(reference), pd.factorize(table["family"], sort=True)[0])
    # Every replicate's forest stays in the run's outputs, as the in-process bootstrap grew it.
    (merged,) = [d for d, _, _ in os.walk(result["outputs"]) if d.endswith(os.path.join("merge-bootstrap-shards",
                                                                                          "result"))]
    replicates = Estimate.load(merged, bootstrap=True).bootstrap
    np.testing.assert_array_equal(replicates.replicates, np.arange(12))
    np.testing.assert_allclose(replicates.forests[7].predict(X50), est.bootstrap_.forests[7].predict(X50),
                               rtol=1e-12)


def _run_signalled_while_the_forest_grows(tmp_path, send):
    """`tauforge run --demo --json`, and `send(run, tasks)` once its forest shards run: (the run's
    exit status, stdout, stderr, the pids of its task processes when signalled)."""
    import re

    run = subprocess.Popen(command(tmp_path, "run", "--demo", "--trees", "2000", "--json"), cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            logs = list((tmp_path / "runs").glob("*.log"))
            text = re.sub(r"\x1b\[[0-9;]*m", "", logs[0].read_text(errors="replace")) if logs else ""
            if "Executing task 'forest-shard'" in text:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # the shard tasks' processes have started
        tasks = subprocess.run(["pgrep", "-f", str(tmp_path / "runs")], capture_output=True, text=True).stdout.split()
        assert tasks and run.poll() is None
        send(run, tasks)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    return run.returncode, out, err, tasks


@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_signalled_run_stops_its_tasks_publishes_nothing_and_says_so(tmp_path, signum, to_group):
    # An interrupt review: SIGTERM to `tauforge run` alone left its tasks running (each a shell whose
    # Python outlives it), and a publish task published after the command had died; Ctrl-C (SIGINT
    # to the terminal's process group) printed a traceback.
    def send(run, tasks):
        (os.killpg if to_group else os.kill)(run.pid, signum)

    code, out, err, tasks = _run_signalled_while_the_forest_grows(tmp_path, send)
    assert code == 128 + signum, err
    message = f"stopped by {signal.Signals(signum).name}: the run's tasks were stopped; nothing was published."
    assert json.loads(out)["error"].startswith(message) and json.loads(out)["exit_code"] == 128 + signum
    assert err.strip().splitlines()[-1].startswith(f"tauforge run: interrupted: {message}") and "Traceback" not in err
    alive = [pid for pid in tasks if os.path.exists(f"/proc/{pid}") and "zombie" not in
             open(f"/proc/{pid}/status").read()]
    assert alive == [], "task processes outlived their run"
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("model_card.json"))


def test_a_task_killed_as_out_of_memory_is_named_so(tmp_path):
    # A task's process killed by SIGKILL (what the kernel's OOM killer sends) left no traceback,
    # and the run's message gave no cause.
    def send(run, tasks):
        for pid in tasks:
            with contextlib.suppress(OSError):
                if open(f"/proc/{pid}/comm").read().startswith("python") and \
                        "forest_shard" in open(f"/proc/{pid}/cmdline").read():
                    os.kill(int(pid), signal.SIGKILL)

    code, out, err, _ = _run_signalled_while_the_forest_grows(tmp_path, send)
    assert code == 1, err
    assert "Its process was stopped by SIGKILL (out of memory?)" in json.loads(out)["error"], out


@pytest.mark.parametrize("script, said", [
    # A crash in native code (a nuisance model's, numba's) leaves no traceback either.
    ("import ctypes; ctypes.string_at(0)", "was stopped by SIGSEGV (a crash in native code)"),
    ("import os; os.abort()", "was stopped by SIGABRT (aborted by native code)"),
    ("import os; print('[KFP Executor ...]: Got executor_input:'); print('{}'); os._exit(3)", "exited with status 3"),
])
def test_a_task_that_ends_without_a_traceback_is_named_by_how_it_ended(tmp_path, capsys, script, said):
    # A failure review: only SIGKILL, SIGTERM and SIGINT were named; a segfault, an abort or a bare
    # exit status failed the run with no cause in its message. kfp's task command is a shell
    # running Python, as here (a shell says 128 + n of a signal).
    from tauforge.pipelines.training import _run_task_process, _task_stopped

    code = _run_task_process(["sh", "-ec", f'{sys.executable} -c "$0"', script])
    assert code != 0
    assert _task_stopped(capsys.readouterr().out) == said


def test_a_container_or_task_the_run_itself_stopped_is_not_said_to_be_out_of_memory(capsys):
    # An interrupted docker run kills its containers (their shell ignores SIGTERM): status 137,
    # which alone reads as the OOM killer's SIGKILL. A container's output comes in chunks: the
    # cause goes on a line of its own after a last chunk without its newline (else the run's
    # message could not find it).
    from tauforge.pipelines import training

    output = training._TaskOutput()
    output.show("[KFP Executor 2026-12-06]: Got executor_input:\n{}\nfitting")
    assert output.started and output.last == "fitting"
    training._STOPPING.set()
    try:
        output.say_how_it_ended(128 + signal.SIGKILL)
    finally:
        training._STOPPING.clear()
    assert training._task_stopped(capsys.readouterr().out) == "was stopped by SIGKILL (the run was interrupted)"
    output.say_how_it_ended(128 + signal.SIGKILL)
    assert training._task_stopped(capsys.readouterr().out) == "was stopped by SIGKILL (out of memory?)"


@pytest.mark.parametrize("clean", [False, True])
def test_the_reaper_of_a_killed_run_removes_a_container_that_appears_late_and_one_of_a_clean_exit_looks_once(
        monkeypatch, clean):
    # A review: a busy daemon may create a container the killed process had asked for after the
    # reaper looked (it looked twice, a second apart). A process that exits normally says so, and
    # its reaper does not linger. Docker itself: tests/test_images.py's killed docker run.
    import types

    from tauforge.pipelines import container_reaper

    clock, looked, removed = [0.0], [], []
    monkeypatch.setattr(container_reaper, "time", types.SimpleNamespace(
        monotonic=lambda: clock[0], sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds)))

    def reap(value):  # the daemon creates the dead process's container 5 s late
        looked.append(clock[0])
        if clock[0] >= 5.0 and not removed:
            removed.append(value)
            return 1
        return 0

    monkeypatch.setattr(container_reaper, "reap", reap)
    read_end, write_end = os.pipe()
    if clean:
        container_reaper._exiting_cleanly(write_end)
    os.close(write_end)
    assert container_reaper.main([str(read_end), "v"]) == 0
    os.close(read_end)
    if clean:
        assert looked == [0.0] and removed == []
    else:
        assert removed == ["v"] and looked[-1] >= container_reaper.LATE_SECONDS


def test_a_task_whose_shell_fails_before_python_says_the_shells_last_line(tmp_path, capsys):
    # kfp's task command begins with `program_path=$(mktemp -d)`: under an unwritable $TMPDIR it
    # failed every task with no cause named; the shell's own last line is the cause.
    from tauforge.pipelines.training import _run_task_process, _task_stopped

    code = _run_task_process(["sh", "-ec", 'program_path=$(mktemp -d)\necho "$program_path"'],
                             {"TMPDIR": str(tmp_path / "missing")})
    assert code == 1
    stopped = _task_stopped(capsys.readouterr().out)
    assert stopped.startswith("exited with status 1 before Python started: mktemp: ") and "missing" in stopped


def test_an_unwritable_tmpdir_is_refused_before_any_task_runs(tmp_path, cli, monkeypatch):
    # Every subprocess task starts with `mktemp -d` under $TMPDIR (Python's tempfile falls back to
    # /tmp, the shell does not): the validate task failed, exit 1, no cause named.
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    data.assign(t=rng.binomial(1, 0.5, 300).astype(float), y=rng.normal(size=300)).to_parquet(
        tmp_path / "data.parquet", index=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    code, out, err = cli("run", "--data", str(tmp_path / "data.parquet"), "--treatment", "t", "--outcome", "y")
    assert code == 2, err
    assert f"tauforge run: error: $TMPDIR={tmp_path / 'missing'} cannot hold the tasks' temporary folders" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize("held, within", [
    ("", 5),  # a task that unwinds on SIGTERM ends before the grace period's SIGKILL (10 s)
    # A non-daemon thread still fitting (a ThreadPoolExecutor's worker) holds the interpreter at
    # exit: an interrupted run kills such a task 10 s after its SIGTERM, and so must a killed run.
    ("threading.Thread(target=time.sleep, args=(120,)).start()\n", 25),
], ids=["unwinds", "does-not-unwind"])
def test_a_task_ends_with_its_run_when_the_run_is_killed_with_sigkill(tmp_path, held, within):
    # A failure review: `kill -9` of `tauforge run` (or the OOM killer's) left its tasks running in
    # their own sessions, a slow nuisance fit for as long as it took, until they next wrote to
    # their closed pipe. Here the run is a process calling `_run_task_process`, as kfp.local does,
    # on a task (a shell running Python, as kfp's) that imports the components and sleeps.
    task = (f"import os, threading, time, tauforge.components._kfp\n{held}"
            f"open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    run = ("import sys\nfrom tauforge.pipelines.training import _run_task_process\n"
           f"_run_task_process(['sh', '-ec', {sys.executable!r} + ' -c \"$0\"', {task!r}],\n"
           "                  {'_KFP_RUNTIME': 'true'})\n")
    parent = subprocess.Popen([sys.executable, "-c", run], stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int((tmp_path / "pid").read_text())
    parent.kill()
    parent.wait()

    def ended() -> bool:
        return not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()

    deadline = time.monotonic() + within
    while not ended() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert ended(), "the task outlived its killed run"
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_an_interrupted_run_says_the_version_its_publish_step_published(runs):
    from tauforge.components.registry import ModelStore
    from tauforge.pipelines.training import _after_interrupt

    for name in ("demo", "econml"):
        runs.result(name)  # both published, as versions 1 and 2
    store = str(runs.dir / "store")
    run_id = ModelStore(store).card("tauforge-model", 1)["run"]["run_id"]
    assert _after_interrupt(store, "tauforge-model", run_id, "LOG").startswith(
        "the run's tasks were stopped; version 1 of tauforge-model was published before it. ")
    assert "nothing was published" in _after_interrupt(store, "tauforge-model", "another-run", "LOG")
    assert "nothing was published" in _after_interrupt(str(runs.dir / "no-store"), "tauforge-model", run_id, "LOG")


def test_a_task_stopped_with_sigterm_runs_its_cleanup(tmp_path):
    # What a pod's deletion or an interrupted run sends a task: it must unwind (publish removes its
    # staging folder and temporary copy in `finally`), not vanish.
    # A second SIGTERM (the run's, after the pod's) must not cut the cleanup short (a review).
    body = ("import os, signal, time, tauforge.components._kfp\n"
            "try:\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(30)\n"
            "finally:\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(0.2)\n"
            "    open('cleaned', 'w').close()\n")
    out = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, _KFP_RUNTIME="true"))
    assert out.returncode == 128 + signal.SIGTERM and (tmp_path / "cleaned").exists(), out.stderr


def test_a_failing_gate_publishes_nothing_and_says_why(runs):
    code, out, err = runs.result("poor")
    assert code == 1, err
    assert "gate FAILED, nothing published" in out and "overlap:" in out and "outside [0.05, 0.95]" in out
    assert ModelStore(str(runs.poor_dir / "store")).models() == []


@pytest.mark.parametrize("change, args, message", [
    (lambda d: d.drop(columns="y"), [], "outcome column 'y' is missing"),
    (lambda d: d.assign(y=d.y.where(d.index != 10)), [], "column 'y' has 1 NaN"),
    (lambda d: d.assign(t=d.index % 3), ["--treatment-type", "binary"], "treatment column 't' is declared binary "
                                                                          "but takes 3 values"),
])
def test_invalid_data_exits_non_zero_naming_the_column_and_leaves_the_store_unchanged(tmp_path, cli, change, args,
                                                                                       message):
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    data = data.assign(t=rng.binomial(1, 0.5, 300).astype(float), y=rng.normal(size=300))
    change(data).to_parquet(tmp_path / "bad.parquet", index=False)
    code, out, err = cli("run", "--data", str(tmp_path / "bad.parquet"), "--treatment", "t", "--outcome", "y", *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("graph, args, message", [
    # b and c block nothing: the confounder a is left out
    ("digraph { a -> t; a -> y; b -> y; c -> y; t -> y }", ["--covariates", "b", "c"],
     "--graph leaves the back-door path t <- a -> y open given the covariates and controls (b, c)"),
    # an unobserved confounder: no adjustment set exists
    ('digraph { u [observed="no"]; u -> t; u -> y; a -> y; t -> y; b; c }', [],
     "--graph leaves the back-door path t <- u -> y open given the covariates and controls (a, b, c)"),
    # a mediator among the controls
    ("digraph { a -> t; a -> y; t -> c -> y; b -> y }", ["--covariates", "a", "b", "--controls", "c"],
     "--graph makes the control 'c' a descendant of the treatment (t -> c)"),
    ("digraph { q -> t; t -> y; a -> y }", [],
     "--graph has node 'q', which is neither a column of the data nor declared latent"),
    ("digraph { a -> t -> y -> a }", [], "--graph has a cycle, a -> t -> y -> a"),
])
def test_a_graph_the_roles_do_not_fit_is_refused_before_any_task_runs_naming_the_path(tmp_path, cli, graph, args,
                                                                                      message):
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    data.assign(t=rng.binomial(1, 0.5, 300).astype(float), y=rng.normal(size=300)).to_parquet(
        tmp_path / "data.parquet", index=False)
    (tmp_path / "graph.dot").write_text(graph)
    code, out, err = cli("run", "--data", str(tmp_path / "data.parquet"), "--treatment", "t", "--outcome", "y",
                         "--graph", "graph.dot", *args)
    assert code == 2, err
    assert f"tauforge run: error: {message}" in err and "Traceback" not in err
    # No task ran (kfp.local never made the run's folder or log) and nothing was published.
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store").exists()


def test_compiled_pipeline_loads_with_kfp_and_shows_accelerators_and_parallel_for(tmp_path, cli):
    from kfp import components

    path = tmp_path / "training.yaml"
    code, out, err = cli("compile", "--out", str(path), "--folds", "5", "--fold-tasks", "3", "--shards", "4",
                         "--gpus-per-shard", "1")
    assert code == 0, err
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "tauforge-training"
    spec = yaml.safe_load(path.read_text())
    executors = spec["deploymentSpec"]["executors"]
    shards = {name: e["container"] for name, e in executors.items() if name.startswith("exec-forest-shard")}
    assert len(shards) == 4
    for shard in shards.values():
        assert shard["resources"]["accelerator"] == {"type": "nvidia.com/gpu", "count": "1"}
        assert shard["image"] == "ghcr.io/tauforge/tauforge:0.1.0-cuda"
    assert all("accelerator" not in e["container"].get("resources", {})
               for name, e in executors.items() if name not in shards)
    tasks = spec["root"]["dag"]["tasks"]  # one task per fold task and per shard, gathered explicitly
    assert sorted(t for t in tasks if t.startswith("nuisance-folds")) == ["nuisance-folds", "nuisance-folds-2",
                                                                         "nuisance-folds-3"]
    # --out -: the same YAML on stdout and no file (a walkthrough: it wrote a file named '-').
    code, out, err = cli("compile", "--out", "-", "--folds", "5", "--fold-tasks", "3", "--shards", "4",
                         "--gpus-per-shard", "1")
    assert code == 0 and out == path.read_text(), err
    assert not (tmp_path / "-").exists()
    assert sorted(t for t in tasks if t.startswith("forest-shard")) == ["forest-shard", "forest-shard-2",
                                                                       "forest-shard-3", "forest-shard-4"]
    assert not any("parameterIterator" in t for t in tasks.values())
    assert "condition-" in json.dumps(spec["root"]["dag"]) and "gate-passed" in path.read_text()
    assert {e["container"]["image"] for name, e in executors.items() if name not in shards} == \
        {"ghcr.io/tauforge/tauforge:0.1.0"}
    assert "pip install" not in path.read_text()


def test_econml_estimator_runs_in_the_same_steps_and_publishes_econml_trees_as_arrays(runs):
    from econml.grf import CausalForest as EconMLCausalForest

    from tauforge.components.data import demo_table

    code, out, err = runs.result("econml")
    assert code == 0, err
    result = last_json(out)
    loaded = ModelStore(str(runs.dir / "store")).load("tauforge-model", result["version"])
    assert loaded.card["estimator"]["estimator"] == "econml"
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in loaded.card["files"])
    # The same residuals (tauforge's cross-fitting, with the run's --model-y and --model-t) and
    # EconML's forest with the run's seed.
    assert loaded.card["estimator"]["nuisance"]["model_t"] == "sklearn.linear_model.LogisticRegression"
    table, _ = demo_table(n=5000, seed=2)
    X = table[[f"x{j}" for j in range(10)]].to_numpy()
    dml = CausalForestDML(cv=2, n_estimators=2, random_state=2, model_y="sklearn.linear_model.LinearRegression",
                          model_t="sklearn.linear_model.LogisticRegression").fit(table["Y"], table["T"], X=X)
    y_res, t_res = dml.residuals_
    ecf = EconMLCausalForest(n_estimators=40, random_state=2).fit(X, t_res, y_res)
    # Equal up to the float32 leaf storage (kernels/forest_arrays.py).
    np.testing.assert_allclose(loaded.load_forest().predict(X[:200]), ecf.predict(X[:200]).ravel(), rtol=1e-5,
                               atol=1e-7)


def test_monitoring_pipeline_compiles_with_the_training_pipeline_behind_its_condition(tmp_path, cli):
    from kfp import components

    # Without --out it is named for its pipeline (it overwrote tauforge-training.yaml before), and
    # --out may name folders that do not exist yet (kfp's compiler raised FileNotFoundError).
    code, out, err = cli("compile", "--pipeline", "monitoring", "--folds", "2")
    assert code == 0 and os.listdir(tmp_path) == ["tauforge-monitoring.yaml"], err
    path = tmp_path / "new" / "folder" / "monitoring.yaml"
    code, out, err = cli("compile", "--pipeline", "monitoring", "--out", str(path), "--folds", "2")
    assert code == 0, err
    assert components.load_component_from_file(str(path)).name == "tauforge-monitoring"
    spec = yaml.safe_load(path.read_text())
    assert set(spec["root"]["dag"]["tasks"]) == {"monitor-model", "condition-1"}
    condition = spec["root"]["dag"]["tasks"]["condition-1"]
    assert "monitor-model" in json.dumps(condition["triggerPolicy"])
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert [t["componentRef"]["name"] for t in inner.values()] == ["comp-tauforge-training"]


class FakeKubeflowPipelines:
    """A stand-in for the Kubeflow Pipelines API server, which needs a Kubernetes cluster and
    cannot run here: it answers the few v2beta1 calls `kfp.Client` makes to start a run and keeps
    what it was sent. Everything on the client side (kfp.Client, the compiled spec) is real."""

    def __init__(self):
        import http.server
        import threading

        self.runs, self.experiments, self.paths = [], [], []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                fake.paths.append(self.path)
                if self.path.startswith("/apis/v2beta1/healthz"):
                    return self.reply({"multi_user": False})
                if self.path.startswith("/apis/v2beta1/experiments"):
                    return self.reply({"experiments": [{"experiment_id": "exp-1", "display_name": "Default"}],
                                       "total_size": 1})
                self.send_error(404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.startswith("/apis/v2beta1/runs"):
                    fake.runs.append(body)
                    return self.reply({"run_id": f"run-{len(fake.runs)}", "display_name": body.get("display_name")})
                if self.path.startswith("/apis/v2beta1/experiments"):
                    fake.experiments.append(body)
                    return self.reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
                self.send_error(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_submit_sends_the_compiled_pipeline_and_its_arguments_to_kubeflow(tmp_path, monkeypatch):
    from tauforge.pipelines.cli import main

    fake = FakeKubeflowPipelines()
    try:
        monkeypatch.chdir(tmp_path)
        graph = 'digraph { z -> t; z -> y; t -> y; w -> y; u [observed="no"]; u -> y }'
        (tmp_path / "graph.dot").write_text(graph)
        code = main(["submit", "--host", fake.url, "--data", "s3://bucket/table.parquet", "--treatment", "t",
                     "--outcome", "y", "--store", "s3://bucket/models", "--gpus-per-shard", "1", "--shards", "3",
                     "--image", "registry.example/tauforge:test", "--cuda-image", "registry.example/tauforge:gpu",
                     "--no-cache", "--graph", "graph.dot", "--namespace", "team-a"])
    finally:
        fake.close()
    assert code == 0
    (run,) = fake.runs
    spec = run["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "tauforge-training"
    params = run["runtime_config"]["parameters"]
    assert params["source"] == "s3://bucket/table.parquet" and params["store"] == "s3://bucket/models"
    assert json.loads(params["spec"])["treatment"] == "t"
    # The graph goes as the file's text; the covariates it implies are already in the spec.
    assert params["graph"] == graph and json.loads(params["spec"])["covariates"] == ["z", "w"]
    executors = spec["deploymentSpec"]["executors"]
    shards = [e["container"] for name, e in executors.items() if name.startswith("exec-forest-shard")]
    assert len(shards) == 3 and all(s["resources"]["accelerator"]["count"] == "1" for s in shards)
    assert {s["image"] for s in shards} == {"registry.example/tauforge:gpu"}
    assert {e["container"]["image"] for name, e in executors.items() if not name.startswith("exec-forest-shard")} \
        == {"registry.example/tauforge:test"}
    assert run["pipeline_spec"] and "run_id" not in params  # the run's id is the Kubeflow run's own
    # A multi-user Kubeflow refuses a run outside a profile namespace (a Kubeflow review: kfp sent "").
    assert [e.get("namespace") for e in fake.experiments] in ([], ["team-a"])
    assert any("namespace=team-a" in path for path in fake.paths if "/experiments" in path), fake.paths
    assert all(not task.get("cachingOptions", {}).get("enableCache")
               for task in spec["root"]["dag"]["tasks"].values() if "cachingOptions" in task)  # --no-cache


def test_submit_to_an_unreachable_host_fails_cleanly(cli):
    code, out, err = cli("submit", "--host", "http://127.0.0.1:9", "--data", "s3://b/t.parquet", "--treatment", "t",
                         "--outcome", "y", "--store", "s3://b/models")
    assert code == 1
    assert "could not submit to Kubeflow Pipelines at http://127.0.0.1:9" in err and "Traceback" not in err
    assert "This client only works" not in err  # kfp's own notice at every Client() (a user review)
