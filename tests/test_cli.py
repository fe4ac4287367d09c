"""The `tauforge` command as a user runs it: a subprocess, its output and its exit status."""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import pytest

TAUFORGE = [sys.executable, "-m", "tauforge.pipelines.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run([*TAUFORGE, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def run_batch(cases):
    """`run` for many command lines refused before any work, in one process (tests/cli_batch.py
    says how, and why): [(args, working folder)] -> a CompletedProcess each, in order."""
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "cases.json"), "w") as f:
            json.dump([{"argv": [str(a) for a in args], "cwd": str(cwd)} for args, cwd in cases], f)
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "cli_batch.py"), os.path.join(folder, "cases.json"),
                        os.path.join(folder, "answers.json")], check=True, cwd=ROOT, timeout=600)
        with open(os.path.join(folder, "answers.json")) as f:
            answers = json.load(f)
    return [subprocess.CompletedProcess(args, a["returncode"], a["stdout"], a["stderr"])
            for (args, _), a in zip(cases, answers, strict=True)]


def test_demo_prints_the_ate_interval_and_cate_error_against_the_truth():
    out = run("demo", "--n", "3000", "--trees", "100", "--seed", "1")
    assert out.returncode == 0, out.stderr
    # The text says what the JSON of the same run holds (a test audit: a demo printing its estimate
    # as the truth and 100% coverage passed a check for the words alone).
    r = json.loads(run("demo", "--n", "3000", "--trees", "100", "--seed", "1", "--json").stdout.splitlines()[-1])
    covers = "covers it" if r["ate_lower"] <= r["true_ate"] <= r["ate_upper"] else "MISSES it"
    lines = out.stdout.splitlines()
    assert lines[1] == (f"  ATE  {r['ate']:.4f}  95% CI [{r['ate_lower']:.4f}, {r['ate_upper']:.4f}]  "
                        f"(true {r['true_ate']:.4f}; the interval {covers})")
    assert f"RMSE {r['cate_rmse']:.4f} against the true effect" in lines[2]
    assert f"cover it at {100 * r['cate_coverage']:.1f}% of rows" in lines[2]
    # Off a terminal progress comes as log lines (only for work that lasts over 2 s, so perhaps
    # none here); 100 trees earn a one-line warning that says what to do, not a traceback-style
    # location.
    assert [line for line in out.stderr.splitlines() if not line.startswith("tauforge: ")] == [
        "tauforge demo: warning: intervals from 100 trees (in groups of 2) have noisy widths; "
        "grow at least 500 trees (n_estimators) for intervals"]


def test_demo_json_is_one_object_with_the_truth_beside_the_estimate():
    out = run("demo", "--design", "constant", "--n", "3000", "--trees", "100", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["true_ate"] == pytest.approx(1.0)
    # Coverage is tested statistically in test_accuracy; here the fields must be coherent.
    assert result["ate_lower"] < result["ate"] < result["ate_upper"]
    assert abs(result["ate"] - result["true_ate"]) < 4 * result["ate_stderr"]
    assert result["cate_rmse"] < 0.5
    assert set(result["nuisance_scores"]) == {"y_r2", "t_log_loss", "t_auc"}


BAD_ARGUMENTS = [
    (["demo", "--n", "1"], "at least 2"),
    (["demo", "--trees", "5"], "--trees 5 is odd: the demo's CATE intervals need little bags of 2 trees"),
    # Shards hold whole little bags: 1,000 trees make 125 bags of 8, refused before any task runs.
    (["run", "--demo", "--shards", "200"], "--shards must be between 1 and 125 (the little bags: 1000 trees in "
                                           "groups of 8), got 200"),
    (["run", "--demo", "--fold-tasks", "6"], "--fold-tasks must be between 1 and the 5 folds, got 6"),
    (["demo", "--design", "nope"], "invalid choice"),
    (["models", "diff", "--name", "m", "1"], "models diff takes two versions (numbers or aliases), got 1"),
    (["models"], "models needs an action: list, show, diff, promote or rollback"),
    (["models", "show", "--name", "m", "1"], "models show takes no versions as arguments (1): use --version V"),
    (["models", "diff", "--name", "m", "1", "--bogus"], "unrecognized arguments: 1 --bogus"),
    # A CLI review: it failed after the model's load, exit 1, "File exists" (cwd is the repository).
    (["serve", "--model", "m", "--log-dir", "pyproject.toml"], "--log-dir pyproject.toml is a file: give a folder"),
    # Values outside their range, which passed and then judged every model alike or wrote bad YAML.
    (["demo", "--n-test", "0"], "--n-test 0: the CATE's error needs at least 1 fresh row"),
    (["run", "--demo", "--gate", "min_placebo_pvalue=2"], "--gate min_placebo_pvalue must be at least 0 and below 1"),
    (["run", "--demo", "--gate", "require_heterogeneity=maybe"], "require_heterogeneity must be true or false"),
    (["monitor", "--model", "m", "--log-dir", ".", "--alpha", "2"], "--alpha must be in (0, 1), got 2.0"),
    (["monitor", "--model", "m", "--log-dir", ""], "--log-dir is empty: give a URI or a path"),
    (["monitor", "--model", "m", "--log-dir", " "], "--log-dir must name the event log's folder or URI, got ' '"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--cpu", "-3"],
     "--cpu must be a CPU quantity such as 2 or 500m, got '-3'"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--memory", "lots"],
     "--memory must be a memory quantity such as 8Gi or 512Mi, got 'lots'"),
    # kfp refuses 1.5Gi, naming no flag (an ops review): refused here as a whole-number quantity.
    (["compile", "--memory", "1.5Gi"], "--memory must be a memory quantity such as 8Gi or 1536Mi (whole numbers)"),
    # Each of these was written as YAML a cluster would refuse or misread (an ops review).
    (["deploy", "--model", "m", "--version", "0", "--store", "s3://b/s"], "--version must be a published version"),
    (["deploy", "--model", "m", "--version", "2", "--champion-version", "1", "--mode", "canary", "--router",
      "predictor", "--store", "s3://b/s", "--store-secret", "Bad Secret!"],
     "--store-secret must be a Kubernetes Secret's name"),
    (["deploy", "--model", "m", "--version", "1", "--store", "file:///srv/store"],
     "--store 'file:///srv/store' is not a URI the cluster can read"),
    (["deploy", "--model", "m", "--version", "2", "--champion-version", "1", "--mode", "canary", "--router",
      "predictor", "--store", "pvc://claim/store"], "--router 'predictor' reads the store itself"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--out", "-", "--apply"],
     "--out - writes the YAML to stdout for kubectl; --apply applies it here: pass one"),
    (["compile", "--gpus-per-shard", "1", "--accelerator-type", ""],
     "--accelerator-type must be the GPUs' Kubernetes resource name"),
    (["deploy", "--model", "m", "--version", "1"], "--store is needed: the URI of the store the cluster reads"),
    # A URI is recorded in the run's parameters, its logs and the card: no secret in one.
    (["run", "--data", "http://alice:S3CRET@127.0.0.1:9/d.parquet", "--treatment", "T", "--outcome", "Y"],
     "--data carries a user name or password: it would be recorded"),
    (["models", "list", "--store", "s3://KEY:S3CRET@bucket/store"], "--store carries a user name or password"),
    # A walkthrough: each of these was ignored (--percent 50 wrote a replace: all traffic to version 1), or
    # an empty value fell back to the default store or alias.
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--percent", "50"],
     "--percent 50 is for --mode canary or --mode shadow; this writes --mode replace"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--router", "predictor"],
     "--router predictor is for --mode canary or --mode shadow"),
    (["deploy", "--model", "m", "--version", "2", "--store", "s3://b/s", "--mode", "canary", "--image", "r/t:1"],
     "--image r/t:1 is for a canary or shadow with --router predictor; this writes --mode canary with --router mesh"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--store-secret", "s"],
     "--store-secret s is for a canary or shadow with --router predictor"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--wait", "5"],
     "--wait 5 is for --apply; this writes the YAML only"),
    (["models", "list", "--store", ""], "--store is empty: give a URI or a path"),
    # A mistyped store is not an empty one: monitor said the model had "no published version" in it.
    (["monitor", "--model", "m", "--log-dir", "logs", "--store", "/nonexistent/store"],
     "--store /nonexistent/store: /nonexistent/store does not exist"),
    (["models", "show", "--name", "m", "--store", "/nonexistent/store"],
     "--store /nonexistent/store: /nonexistent/store does not exist"),
    (["models", "promote", "--name", "m", "--version", "1", "--alias", ""], "--alias is empty"),
    # Past the path checks as root (/proc takes no new file), below them as anyone else: either way the
    # flag is named, not write's temporary file.
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--out", "/proc/tauforge-x"],
     "--out /proc/tauforge-x cannot be written"),
    # A walkthrough: the demo ran with x0 as the treatment and judged it against T's true effect.
    (["run", "--demo", "--treatment", "x0"], "--treatment x0: the demo table's treatment is T, whose true effect"),
    (["run", "--demo", "--outcome", "x1"], "--outcome x1: the demo table's outcome is Y"),
    # An AWS secret key holds '/', which ends urlsplit's host part before the '@'.
    (["models", "list", "--store", "s3://AKIA:wJal/K7MD/bPxR@bucket/store"], "--store carries a user name"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://KEY:S3CRET@b/s"], "--store carries a user name"),
    (["monitor", "--model", "m", "--log-dir", "s3://KEY:S3CRET@logs/x"], "--log-dir carries a user name"),
    (["deploy", "--model", "../../team-b/x", "--name", "ok", "--version", "1", "--store", "s3://b/s"],
     "--model '../../team-b/x' must be 1 to 63 ASCII letters"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--cpu", "0"], "--cpu must be more than 0"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--explore", "2"],
     "--explore must be in [0, 1], got 2.0"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--mode", "canary", "--raw"],
     "--raw applies to --mode replace"),
    (["compile", "--compute-cpu", "0"], "--compute-cpu must be more than 0, got '0'"),
    (["compile", "--shards", "100000"], "--shards must be between 1 and 256, got 100000"),
    (["compile", "--store-secret-key", "AWS_ENDPOINT_URL"], "--store-secret-key needs --store-secret NAME"),
    (["compile", "--store-secret", "Bad_Name"], "--store-secret must be a Kubernetes Secret's name"),
    (["compile", "--gpu-toleration", "nvidia.com/gpu:NoSchedule"],
     "--gpu-toleration applies to GPU shards: set gpus_per_shard (--gpus-per-shard) too"),
    # A pipelines review: each of these compiled or was written, and failed on the cluster.
    (["compile", "--store-secret", "s", "--store-secret-key", "bad key"], "--store-secret-key must be environment "
                                                                           "variable names (letters, digits, '_')"),
    (["submit", "--host", "http://127.0.0.1:9", "--data", "s3://b/d.parquet", "--treatment", "T", "--outcome", "Y",
      "--device", "cuda"], "--device cuda needs GPU shards: add --gpus-per-shard N"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--event-log", "./events"],
     "--event-log './events' is not a location the predictors can keep their logs in"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--event-log", "memory://events"],
     "--event-log 'memory://events' is not a location the predictors can keep their logs in"),
    (["compile", "--image", ""], "--image must be a container image reference ([registry/]repository[:tag][@digest], "
                                 "the repository in lower case), got ''"),  # was the default
    (["compile", "--image", "bad image"], "--image must be a container image reference"),
    # A Kubeflow review: both failed only in the pods (upper case; a digest with "-cuda" appended).
    (["compile", "--image", "UPPER/Case:tag"], "--image must be a container image reference"),
    (["compile", "--image", "r.example/t@sha256:" + "0" * 64, "--gpus-per-shard", "1"],
     "--cuda-image must be given with an image pinned by digest"),
    (["compile", "--cuda-image", "r/x:1-cuda"], "--cuda-image applies to GPU shards"),  # was ignored
    (["compile", "--gpus-per-shard", "1", "--gpu-toleration", "k=v=w"], "--gpu-toleration takes (key, value, effect)"),
    (["compile", "--gpus-per-shard", "1", "--accelerator-type", "NVIDIA_TESLA_T4"],
     "--accelerator-type must be the GPUs' Kubernetes resource name"),
    (["deploy", "--model", "m", "--version", "2", "--store", "s3://b/s", "--mode", "shadow", "--champion-version",
      "2"], "--champion-version is version 2, the version deployed"),
    (["deploy", "--model", "m", "--version", "2", "--store", "s3://b/s", "--mode", "canary", "--champion-version",
      "1"], "--champion-version applies to a shadow and to a canary in one predictor"),  # was ignored
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--service-account", ""],
     "--service-account must be a Kubernetes ServiceAccount's name"),  # was the default account: no credentials
]


@pytest.fixture(scope="module")
def bad_arguments_answers():
    return {tuple(args): out for (args, _), out in zip(BAD_ARGUMENTS, run_batch([(a, ROOT) for a, _ in BAD_ARGUMENTS]))}


@pytest.mark.parametrize("args, message", BAD_ARGUMENTS)
def test_bad_arguments_exit_non_zero_with_a_message(bad_arguments_answers, args, message):
    out = bad_arguments_answers[tuple(args)]
    assert out.returncode != 0
    assert message in out.stderr and "S3CRET" not in out.stderr and "K7MD" not in out.stderr
    assert out.stdout == ""


def test_a_store_from_the_environment_with_credentials_is_named_as_such(tmp_path):
    out = subprocess.run([*TAUFORGE, "models", "list"], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "TAUFORGE_STORE": "s3://KEY:S3CRET@bucket/store"}, timeout=120)
    assert out.returncode == 2 and "$TAUFORGE_STORE carries a user name or password" in out.stderr, out.stderr
    assert "S3CRET" not in out.stderr


def test_redacted_uri_drops_a_query_string_and_credentials_and_keeps_paths():
    # What the card and the CLI's lines show; the run's own parameters keep the URL as given
    # (its task must read it): docs/reference.md says so.
    from tauforge.components.config import redacted_uri

    assert redacted_uri("https://h.example/d.parquet?X-Amz-Signature=abc") == "https://h.example/d.parquet?<redacted>"
    assert redacted_uri("s3://bucket/d.parquet") == "s3://bucket/d.parquet"
    assert redacted_uri("/data/d?.parquet") == "/data/d?.parquet"  # a local path's '?' is part of its name
    # Credentials before the host, as a URL may carry them to a server that takes basic auth.
    assert redacted_uri("https://ann:p%40ss@h.example:8443/d.csv") == "https://<redacted>@h.example:8443/d.csv"
    assert redacted_uri("s3://KEY:S3CRET@bucket/d.parquet?v=1") == "s3://<redacted>@bucket/d.parquet?<redacted>"
    assert redacted_uri("s3://KEY:S3/CRET@bucket/d.parquet") == "s3://<redacted>@bucket/d.parquet"  # '/' in a secret
    assert redacted_uri("https://h.example:8443/a@b.csv") == "https://h.example:8443/a@b.csv"  # a port, then a path
    assert redacted_uri("http://[::1]/a@b.csv") == "http://[::1]/a@b.csv"  # an IPv6 host, '@' in the path
    assert redacted_uri("https://me@corp.com:T0KEN@h.example/d.csv") == "https://<redacted>@h.example/d.csv"  # raw '@'


# What the engine and the models load (torch and numba: over a second; scikit-learn and
# scipy.stats: most of another), which neither the help nor a run refused for its data needs.
HEAVY = ("torch", "numba", "sklearn", "scipy.stats")


@pytest.mark.parametrize("args", [
    ["--help"],
    ["run", "--data", "missing.parquet", "--treatment", "T", "--outcome", "Y"],
    ["run", "--data", "DATA", "--treatment", "nope", "--outcome", "Y", "--model-t", "tauforge"],
])
def test_help_and_data_errors_answer_without_loading_the_engine(tmp_path, args):
    import pandas as pd

    pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "T": [0, 1, 0, 1], "Y": [1.0, 2.0, 3.0, 4.0]}).to_parquet(
        tmp_path / "data.parquet")
    args = [str(tmp_path / "data.parquet") if a == "DATA" else a for a in args]
    probe = ("import sys\nfrom tauforge.pipelines.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             f"print(code, [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.stdout.splitlines()[-1] == ("0 []" if args == ["--help"] else "2 []"), out.stderr
    if args != ["--help"]:
        expected = "does not exist" if "missing.parquet" in args else "treatment column 'nope' is missing"
        assert expected in out.stderr, out.stderr
        assert "logs in" not in out.stderr  # no run started, so no log to point to


@pytest.mark.parametrize("group, problem", [
    (3, "n_estimators=1000 must be a multiple of ci_group_size=3"),
    ("big", "ci_group_size must be 'auto' or a positive integer, got 'big'"),
])
def test_a_bad_ci_group_size_is_refused_by_the_config_before_any_task(group, problem):
    # The forest's own check (kernels.sampling.resolve_group_size), raised where the run is configured.
    from tauforge.components.config import ConfigError
    from tauforge.components.data import DataSpec
    from tauforge.pipelines.config import TrainingConfig

    spec = DataSpec(outcome="y", treatment="t", covariates=["x0"])
    with pytest.raises(ConfigError, match="multiple|positive") as raised:
        TrainingConfig(spec=spec, trees=1000, forest_options={"ci_group_size": group})
    assert raised.value.field == "forest_options" and problem in raised.value.problem


@pytest.mark.parametrize("options, estimator, problem", [
    # The forest's own check (CausalForest.check_params) against the spec's covariates: in the forest
    # task these failed after every nuisance model had been fit.
    ({"mtry": 3}, "tauforge", "mtry must be an integer between 1 and 2 (features), got 3"),
    ({"honest": "no"}, "tauforge", "honest must be True or False, got 'no'"),
    ({"linear_correction_variables": [0, 5]}, "tauforge", "distinct column indices in [0, 2)"),
    # EconML's forest is given four of them; the others were dropped without a word.
    ({"mtry": 1}, "econml", "has mtry, which EconML's forest does not take"),
])
def test_forest_options_the_forest_would_refuse_are_refused_by_the_config(options, estimator, problem):
    from tauforge.components.config import ConfigError
    from tauforge.components.data import DataSpec
    from tauforge.pipelines.config import TrainingConfig

    spec = DataSpec(outcome="y", treatment="t", covariates=["x0", "x1"])
    settings = dict(estimator=estimator, n_shards=1) if estimator == "econml" else {}
    with pytest.raises(ConfigError) as raised:
        TrainingConfig(spec=spec, trees=1000, forest_options=options, **settings)
    assert raised.value.field == "forest_options" and problem in raised.value.problem
    TrainingConfig(spec=spec, trees=1000, forest_options={"min_samples_leaf": 5}, **settings)  # a valid one passes


def small_table(path, n=60, weight=False):
    """A small valid table (binary T, 30 rows an arm) for runs refused before any task starts;
    `weight`: with a column `w` (rows with x0 > 0 count twice)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=["x0", "x1", "x2"])
    frame["T"] = np.arange(n) % 2
    frame["Y"] = frame["x0"] + frame["T"] + rng.normal(size=n)
    if weight:
        frame["w"] = np.where(frame["x0"] > 0, 2.0, 1.0)
    frame.to_csv(path, index=False)
    return str(path)


def refused_run_args(tmp_path, *flags):
    """The command line of `refused_run`, its small table written in `tmp_path`."""
    return ["run", "--data", small_table(tmp_path / "data.csv"), "--treatment", "T", "--outcome", "Y", "--trees", "100",
            "--folds", "2", "--fold-tasks", "1", "--shards", "1", "--pipeline-root", str(tmp_path / "runs"), "--quiet",
            *flags]


def refused_run(tmp_path, *flags, out=None):
    """`tauforge run` on the small table with `flags` (`out`: its answer, from `run_batch`); it
    must exit 2 before any task starts."""
    out = out or run(*refused_run_args(tmp_path, *flags))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    runs = tmp_path / "runs"
    assert not runs.exists() or not os.listdir(runs), "a task ran"
    return out.stderr.strip()


def test_no_reweight_nuisance_reaches_the_pipelines_parameter_and_its_default_is_on(tmp_path):
    # In process: the flag's way into the run. tests/test_cluster.py checks that the compiled
    # pipeline hands it to the join, the bootstrap, evaluate and publish, and tests/test_nuisance.py
    # runs the join's and the refits' functions both ways.
    from tauforge.pipelines.cli import _training_setup, build_parser
    from tauforge.pipelines.training import pipeline_arguments

    flags = ["run", "--data", small_table(tmp_path / "data.csv"), "--treatment", "T", "--outcome", "Y",
             "--pipeline-root", str(tmp_path / "runs")]
    for extra, expected in (([], True), (["--no-reweight-nuisance"], False), (["--reweight-nuisance"], True)):
        source, config, _ = _training_setup(build_parser().parse_args([*flags, *extra]))
        assert config.nuisance.reweight is expected
        assert pipeline_arguments(source, config)["reweight_nuisance"] is expected


@pytest.mark.parametrize("store, problem", [
    ("FILE", "FILE is not a folder; give a folder (it is created if missing)"),
    ("FILE/store", "FILE/store is not a folder: FILE is a file; give a folder"),
    ("foo://x", "foo://x cannot be opened: Protocol not known: foo; give a local folder or an fsspec URI"),
])
def test_a_store_publish_could_not_use_is_refused_before_any_task(tmp_path, store, problem):
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    stderr = refused_run(tmp_path, "--store", store.replace("FILE", str(afile)))
    assert stderr.startswith(f"tauforge run: error: --store {problem.replace('FILE', str(afile))}"), stderr


def test_a_table_at_a_uri_that_fails_its_checks_is_the_users_error_named_by_the_validate_step(tmp_path):
    # Only a local table is read before the run: one at a URI is read first by the validate task,
    # whose refusal was a failed run (exit 1), where a local table's is exit 2 (a CLI review).
    import functools
    import http.server
    import threading

    import pandas as pd

    small_table(tmp_path / "data.csv")
    pd.read_csv(tmp_path / "data.csv").assign(x1=lambda d: d.x1.where(d.index != 4)).to_csv(tmp_path / "data.csv",
                                                                                         index=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = run("run", "--data", f"http://127.0.0.1:{server.server_port}/data.csv", "--treatment", "T",
                  "--outcome", "Y", "--trees", "100", "--folds", "2", "--fold-tasks", "1", "--shards", "1",
                  "--store", str(tmp_path / "store"), "--pipeline-root", str(tmp_path / "runs"), "--quiet", "--json")
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 2, out.stderr
    answer = json.loads(out.stdout)
    assert answer["exit_code"] == 2 and answer["error"].startswith(
        "column 'x1' has 1 NaN/missing value(s) (first at row 4)"), answer
    assert "found by the validate step" in answer["error"] and "tauforge run: error: column 'x1'" in out.stderr
    assert not (tmp_path / "store").exists()


def test_a_store_whose_filesystem_package_is_missing_is_one_line_for_every_command():
    # A review: `models` and `serve` printed ImportError's traceback (run refused it already).
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here: a missing filesystem package cannot be shown with gs://")
    for command in (["models", "list"], ["models", "show", "--name", "m"], ["serve", "--model", "m"]):
        out = run(*command, "--store", "gs://bucket/store")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "gs://bucket/store cannot be opened: Please install gcsfs" in out.stderr, out.stderr


SETTINGS_REFUSED = [
    (["--seed", "-1"], "--seed must be an integer from 0 to 2**32 - 1, got -1"),
    # 60 rows, 30 an arm: stratified folds need a row of each arm in every fold.
    (["--folds", "31"], "--folds must be at most the 30 rows in the smaller treatment arm, got 31"),
    (["--model-y", "sklearn.linear_model.LogisticRegression"],
     "--model-y 'sklearn.linear_model.LogisticRegression' is a classifier; the outcome model predicts"),
    (["--covariates", "x0", "x0", "x1"], "covariates column 'x0' is listed twice; list it once"),
    (["--assignment", "randomized"], "--assignment randomized and --propensity P go together"),
    (["--propensity", "0.5"], "--assignment randomized and --propensity P go together"),
    (["--assignment", "randomized", "--propensity", "1"], "--propensity must be in (0, 1), got 1.0"),
    (["--timestamp", "nope"], "timestamp column 'nope' is missing"),
    (["--model-t", "sklearn.linear_model.LinearRegression"],
     "--model-t 'sklearn.linear_model.LinearRegression' is not a classifier; a binary treatment's model"),
    # A review: without --bootstrap these were ignored, and the run published with other intervals.
    (["--bootstrap-trees", "7"], "--bootstrap-trees sets the full bootstrap, which is off: add --bootstrap B"),
    (["--no-bootstrap-nuisance"], "--no-bootstrap-nuisance sets the full bootstrap, which is off"),
]


@pytest.fixture(scope="module")
def settings_refused(tmp_path_factory):
    """Each run of SETTINGS_REFUSED, in a folder of its own: (folder, answer), run at first use."""
    folders = [tmp_path_factory.mktemp("settings") for _ in SETTINGS_REFUSED]
    answers = run_batch([(refused_run_args(folder, *flags), ROOT)
                         for folder, (flags, _) in zip(folders, SETTINGS_REFUSED)])
    return {tuple(flags): (folder, out) for folder, (flags, _), out in zip(folders, SETTINGS_REFUSED, answers)}


@pytest.mark.parametrize("flags, message", SETTINGS_REFUSED)
def test_settings_a_task_would_fail_on_are_refused_before_any_task(settings_refused, flags, message):
    folder, out = settings_refused[tuple(flags)]
    assert refused_run(folder, *flags, out=out).startswith(f"tauforge run: error: {message}")


def test_a_demos_seed_and_sizes_are_named_by_their_flags(tmp_path):
    # A review: a negative seed reached NumPy first ("expected non-negative integer", no flag named).
    for command in (["run", "--demo", "--pipeline-root", str(tmp_path / "runs")], ["demo"]):
        out = run(*command, "--seed", "-1")
        assert out.returncode == 2 and "--seed must be an integer from 0 to 2**32 - " in out.stderr, out.stderr
    out = run("demo", "--p", "2", "--trees", "10")
    assert out.returncode == 2 and "--design simple --p 2: p must be at least 3" in out.stderr, out.stderr
    out = run("demo", "--n", "5", "--trees", "10")
    assert out.returncode == 2 and "the demo's fit on --n 5 rows" in out.stderr, out.stderr


def test_a_refused_demo_run_leaves_no_files_and_a_bad_refit_workers_variable_is_refused_first(tmp_path,
                                                                                                monkeypatch):
    # A review: a refused --gate left demo-0.parquet behind, and $TAUFORGE_REFIT_WORKERS=two
    # failed the evaluate task after every fit, with exit 1.
    runs = tmp_path / "runs"
    out = run("run", "--demo", "--pipeline-root", str(runs), "--gate", "=0.1")
    assert out.returncode == 2 and "--gate takes KEY=VALUE, got '=0.1'" in out.stderr, out.stderr
    assert not runs.exists()
    (tmp_path / "afile").write_text("not a store")  # refused by the checks that read the demo table
    out = run("run", "--demo", "--pipeline-root", str(runs), "--store", str(tmp_path / "afile"))
    assert out.returncode == 2 and "is not a folder" in out.stderr, out.stderr
    assert not runs.exists()  # a walkthrough: the folder made for the demo table was left, empty
    monkeypatch.setenv("TAUFORGE_REFIT_WORKERS", "two")
    assert refused_run(tmp_path) == ("tauforge run: error: $TAUFORGE_REFIT_WORKERS must be a whole number of "
                                     "processes, 1 or more; got 'two'")


def test_a_refused_demo_run_leaves_the_demo_table_another_run_in_its_root_made(tmp_path):
    # A failure review: runs in one --pipeline-root with one seed share demo-<seed>.parquet, and a
    # refused run removed it under the run beside it (whose validate task may not have read it yet,
    # and whose card names it as its source).
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "demo-0.parquet").write_bytes(b"another run's table")
    (tmp_path / "afile").write_text("not a store")
    out = run("run", "--demo", "--pipeline-root", str(runs), "--store", str(tmp_path / "afile"))
    assert out.returncode == 2 and "is not a folder" in out.stderr, out.stderr
    assert (runs / "demo-0.parquet").exists()


def test_a_failed_task_is_reported_with_its_own_error(tmp_path):
    # A Poisson outcome model on an outcome with negative values: only its fit can tell.
    out = run("run", "--data", small_table(tmp_path / "data.csv"), "--treatment", "T", "--outcome", "Y",
              "--trees", "100", "--folds", "2", "--fold-tasks", "1", "--shards", "1", "--quiet",
              "--store", str(tmp_path / "store"), "--pipeline-root", str(tmp_path / "runs"),
              "--model-y", "sklearn.linear_model.PoissonRegressor")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "Inner task failed: 'nuisance-folds'" in out.stderr
    assert "It raised ValueError: Some value(s) of y are out of the valid range" in out.stderr
    assert not (tmp_path / "store").exists()


def test_the_published_card_and_report_carry_the_run_id_the_run_reports(tmp_path):
    # kfp.local draws a job id of its own for dsl.PIPELINE_JOB_ID_PLACEHOLDER; run_local makes it
    # LocalRun.run_id (the runs folder's and the log's name). A kfp upgrade that changes how
    # kfp.local draws it fails here. The small table's treatment alternates, a trial with the
    # known propensity 0.5, which the run is told: the card keeps the design, the report the
    # ranking scores only a randomized treatment makes valid. Its rows carry weights.
    out = run("run", "--data", small_table(tmp_path / "data.csv", n=400, weight=True), "--treatment", "T",
              "--outcome", "Y", "--weight", "w",
              "--trees", "100", "--folds", "2", "--fold-tasks", "1", "--shards", "1", "--quiet", "--json",
              "--model-y", "sklearn.linear_model.LinearRegression",
              "--model-t", "sklearn.linear_model.LogisticRegression",
              "--assignment", "randomized", "--propensity", "0.5",
              "--store", str(tmp_path / "store"), "--pipeline-root", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    with open(os.path.join(result["store"], result["model"], str(result["version"]), "model_card.json")) as f:
        card = json.load(f)
    assert card["run"]["run_id"] == card["lineage"]["run_id"] == result["run_id"]
    assert (card["spec"]["assignment"], card["spec"]["propensity"]) == ("randomized", 0.5)
    # A weight column through every task (a test audit found it only in validation's errors):
    # the spec keeps it, the covariates leave it out, and the sensitivity section describes the
    # reported effect, both weighted (one of them unweighted would differ: the weights are 1 or 2).
    assert card["spec"]["weight"] == "w" and "w" not in card["spec"]["covariates"]
    assert card["evaluation"]["sensitivity"]["theta"] == pytest.approx(card["effect"]["ate"], abs=1e-9)
    assert "auuc" in card["evaluation"]["uplift"]["classic"]
    assert result["log"].endswith(f"{result['run_id']}.log")
    assert result["report"].endswith(".html")  # opens in a browser; KFP's artifact is named "report"
    with open(result["report"]) as f:
        assert f"<dd>{result['run_id']}</dd>" in f.read()


UNUSABLE_OUTPUTS = [
    (["run", "--demo", "--pipeline-root", "FILE"], "run: error: --pipeline-root FILE is a file; give the path of a "
                                                   "folder"),
    (["compile", "--out", "FILE/x.yaml"], "compile: error: --out FILE/x.yaml cannot be written: FILE is a file, "
                                          "not a folder; give a path in a folder"),
    (["deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--out", "FILE"],
     "deploy: error: --out FILE is a file; give the path of a folder"),
    (["monitor", "--model", "m", "--log-dir", "events", "--report", "FILE/x.html"],
     "monitor: error: --report FILE/x.html cannot be written: FILE is a file"),
    (["serve", "--port", "99999"], "serve: error: --port must be a port number from 1 to 65535, got 99999"),
    (["serve", "--port", "0"], "serve: error: --port must be a port number from 1 to 65535, got 0"),
    (["serve", "--grpc-port", "-1"], "serve: error: --grpc-port must be a port number from 0 to 65535, got -1"),
]


@pytest.fixture(scope="module")
def unusable_outputs(tmp_path_factory):
    """Each command line of UNUSABLE_OUTPUTS run in a folder of its own holding `afile`: (folder,
    answer), run at first use."""
    folders = [tmp_path_factory.mktemp("outputs") for _ in UNUSABLE_OUTPUTS]
    for folder in folders:
        (folder / "afile").write_text("a file")
    answers = run_batch([([a.replace("FILE", "afile") for a in args], folder)
                         for folder, (args, _) in zip(folders, UNUSABLE_OUTPUTS)])
    return {tuple(args): (folder, out) for folder, (args, _), out in zip(folders, UNUSABLE_OUTPUTS, answers)}


@pytest.mark.parametrize("args, message", UNUSABLE_OUTPUTS)
def test_an_output_or_port_that_cannot_be_used_exits_2_with_a_message(unusable_outputs, args, message):
    tmp_path, out = unusable_outputs[tuple(args)]
    afile = tmp_path / "afile"
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"tauforge {message.replace('FILE', 'afile')}"), out.stderr
    assert afile.read_text() == "a file" and sorted(os.listdir(tmp_path)) == ["afile"]


def test_a_reader_that_leaves_early_stops_the_output_quietly(tmp_path):
    # `tauforge models list | head`: head exits and the next write meets a closed pipe.
    proc = subprocess.Popen([*TAUFORGE, "models", "list", "--store", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    assert proc.wait(timeout=300) == 141  # 128 + SIGPIPE, as a shell reports a tool stopped by it
    assert proc.stderr.read() == ""


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"),
                                    reason="needs /dev/full, a device every write to fails as a full disk")


@needs_dev_full
def test_a_full_disk_is_a_one_line_failure_not_a_traceback(tmp_path):
    # A disk-full review: the machine's errors (OSError) escaped as tracebacks, with nothing on
    # stdout under --json. /dev/full is a real device that answers every write as a full disk.
    for flags in ((), ("--json",)):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([*TAUFORGE, "models", "list", "--store", str(tmp_path), *flags], stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=300)
        assert proc.returncode == 1 and proc.stderr == "tauforge models: failed: [Errno 28] No space left on device\n"


@needs_dev_full
def test_a_run_log_on_a_full_disk_keeps_the_failed_tasks_error_and_the_progress(tmp_path):
    # A disk-full review: the run's log, once its disk was full, raised from every write, hiding
    # the failed task's own error behind its own. Here the log is /dev/full.
    from tauforge.pipelines.training import _capture, _task_error

    progress = []
    log_file = open("/dev/full", "w")
    with _capture(log_file, progress.append) as tee:
        print("tauforge: nuisance fold 1/2: done in 1 s")
        print("    Traceback (most recent call last):\n      File \"task.py\"")  # held in the file's buffer
        print("x" * 20_000)  # past the buffer: the first write that reaches the device fails
        print("    OSError: [Errno 28] No space left")
    with pytest.raises(OSError):
        log_file.close()
    assert tee.error is not None and tee.error.errno == 28
    assert progress == ["nuisance fold 1/2: done in 1 s"]
    assert _task_error(tee.tail()) == "OSError: [Errno 28] No space left"  # the traceback's start was in the buffer


def test_submit_refuses_a_relative_data_path_it_would_send_to_a_cluster(tmp_path):
    data = small_table(tmp_path / "data.csv")
    out = subprocess.run([*TAUFORGE, "submit", "--host", "http://127.0.0.1:9", "--data", "data.csv",
                          "--treatment", "T", "--outcome", "Y", "--store", "s3://bucket/store"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert os.path.exists(data) and out.returncode == 2, out.stderr
    assert out.stderr.startswith("tauforge submit: error: --data must be a URI the cluster's pods can reach"), \
        out.stderr
    assert "got 'data.csv'" in out.stderr


@pytest.mark.parametrize("argv, error", [
    (("--challenger", "2"), "--challenger 2 needs --mode canary or --mode shadow (single serves the champion alone)"),
    # Flags that would be ignored without a word (a user review: --percent 50 without --mode canary).
    (("--percent", "50"), "--percent 50 is for --mode canary or shadow; this serves --mode single"),
    (("--challenger", "2", "--mode", "canary", "--shadow-timeout", "1"),
     "--shadow-timeout 1 is for --mode shadow; this serves --mode canary"),
    (("--model-dir", "store/m/1", "--store", "other"),
     "--store other and --model-dir: pass --store and --model to serve from the store, or --model-dir alone"),
    (("--model-dir", "store/m/1", "--version", "2", "--grpc-port", "0", "--port", "free"),
     "--version 2 and --model-dir: a model folder holds one version; pass --store and --model with --version, or "
     "--model-dir alone"),
])
def test_serve_refuses_flags_it_would_ignore(argv, error):
    from servers import free_port

    out = run("serve", "--model", "m", *(str(free_port()) if a == "free" else a for a in argv))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"tauforge serve: error: {error}"


def test_with_json_a_refused_command_still_ends_stdout_with_one_json_object():
    out = run("run", "--demo", "--json", "--gate", "min_placebo_pvalue=2")
    assert out.returncode == 2 and "min_placebo_pvalue must be at least 0 and below 1" in out.stderr
    assert json.loads(out.stdout) == {
        "error": "--gate min_placebo_pvalue must be at least 0 and below 1 (or 'off'), got 2", "exit_code": 2}
    # Flags argparse itself refuses too (a docs review: these printed nothing on stdout).
    for argv, error in ((("run", "--demo", "--json", "--trees", "abc"), "argument --trees: invalid int value: 'abc'"),
                        (("models", "list", "--json", "--bogus"), "unrecognized arguments: --bogus"),
                        (("models", "lst", "--json"), "argument action: invalid choice: 'lst'")):
        out = run(*argv)
        assert out.returncode == 2 and error in out.stderr, out.stderr
        assert json.loads(out.stdout)["error"].startswith(error) and json.loads(out.stdout)["exit_code"] == 2
    assert run("models", "lst").stdout == ""  # without --json, stdout stays empty


def test_a_refused_compile_leaves_no_folder_and_an_apply_without_a_cluster_says_so(tmp_path):
    # A pipelines review: compile made its output folder before checking its flags, and deploy
    # --apply without a cluster printed tracebacks (kubernetes' ConfigException, urllib3's retries).
    out = subprocess.run([*TAUFORGE, "compile", "--cpu", "two", "--out", str(tmp_path / "new" / "sub" / "x.yaml")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "--cpu must be a CPU quantity" in out.stderr
    assert not (tmp_path / "new").exists()
    kubeconfig = tmp_path / "kubeconfig"  # a cluster at a port where nothing listens
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster: "
                          "{server: 'https://127.0.0.1:9'}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n"
                          "users:\n- name: u\n  user: {token: x}\n")
    for config, message in ((tmp_path / "none", "no cluster to apply to: no in-cluster credentials and no usable "
                                                "kubeconfig"), (kubeconfig, "could not reach the Kubernetes API")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        out = subprocess.run([*TAUFORGE, "deploy", "--model", "m", "--version", "1", "--store", "s3://b/s", "--out",
                              str(tmp_path / "objects"), "--apply"], capture_output=True, text=True, cwd=tmp_path,
                             env={**env, "KUBECONFIG": str(config)}, timeout=300)
        assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_with_json_an_abbreviated_flag_an_unforeseen_failure_and_sigterm_still_end_stdout_with_the_error_object(
        tmp_path, monkeypatch, capsys):
    # A review: argparse takes --js for --json, but only the literal --json made a usage error JSON.
    out = run("models", "list", "--js", "--bogus")
    assert out.returncode == 2 and json.loads(out.stdout) == {"error": "unrecognized arguments: --bogus",
                                                              "exit_code": 2}
    # A version published through the Python API with a reference profile but no spec was a
    # KeyError's traceback and an empty stdout: the user's error, named.
    import pandas as pd

    from tauforge.components.registry import ModelStore

    source, logs = tmp_path / "version", tmp_path / "events"
    source.mkdir(), logs.mkdir()
    pd.DataFrame({"T": [0.0, 1.0]}).to_parquet(source / "reference.parquet")
    ModelStore(str(tmp_path / "store")).publish("m", str(source), {"note": "no spec"})
    out = run("monitor", "--store", str(tmp_path / "store"), "--model", "m", "--log-dir", str(logs), "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["error"].startswith(
        "version 1 of model 'm' has no spec with its covariates in its card"), out.stderr
    # Any other exception (outside ValueError, RuntimeError and OSError: a bug) was a traceback and
    # an empty stdout; it is the traceback on stderr, then the one-line failure and the error object.
    # Raised in process: no command line is known to raise one.
    from tauforge.pipelines import cli

    def broken(args):
        raise KeyError("spec")

    monkeypatch.setattr(cli, "_models", broken)
    assert cli.main(["models", "list", "--store", str(tmp_path / "store"), "--json"]) == 1
    stdout, stderr = capsys.readouterr()
    assert json.loads(stdout) == {"error": "KeyError: 'spec'", "exit_code": 1}
    assert "Traceback" in stderr and stderr.splitlines()[-1] == "tauforge models: failed: KeyError: 'spec'"
    # SIGTERM (a CI job's timeout) ends the command as Ctrl-C does, with the error object and 143:
    # here while it waits for an object store that accepted the connection and never answers.
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(120)
        env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
               "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
        proc = subprocess.Popen([*TAUFORGE, "models", "list", "--store", "s3://bucket/store", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        try:
            connection, _ = silent.accept()  # the command is running, past its start
            proc.terminate()
            stdout, _ = proc.communicate(timeout=120)
            connection.close()
        finally:
            proc.kill()
    assert proc.returncode == 143 and json.loads(stdout) == {"error": "stopped by SIGTERM", "exit_code": 143}


@pytest.mark.parametrize("value", ["--json=1", "--jso=1", "--js=1"])
def test_an_abbreviated_json_with_a_value_is_a_usage_error_ending_stdout_with_the_error_object(capsys, value):
    from tauforge.pipelines.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["models", "list", value])
    assert exc.value.code == 2
    assert json.loads(capsys.readouterr().out) == {"error": "argument --json: ignored explicit argument '1'",
                                                   "exit_code": 2}


def test_a_second_sigterm_during_the_firsts_report_still_ends_with_the_error_object_and_143(tmp_path, capsys,
                                                                                          monkeypatch):
    import signal

    from tauforge.pipelines import cli

    def func(args):
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    report = cli._report

    def report_during_a_second(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # a supervisor's repeat, as the first is reported
        return report(*args)

    def swallowed(signum, frame):  # the caller's handler: had main installed none, pytest lives on
        pass

    monkeypatch.setattr(cli, "_models", func)
    monkeypatch.setattr(cli, "_report", report_during_a_second)
    before = signal.signal(signal.SIGTERM, swallowed)
    try:
        code = cli.main(["models", "list", "--store", str(tmp_path), "--json"])
    except KeyboardInterrupt as exc:  # escaped main: a traceback and status 1 in a real process
        code = repr(exc)
    finally:
        left = signal.signal(signal.SIGTERM, before)
    assert code == 143 and json.loads(capsys.readouterr().out.splitlines()[-1])["exit_code"] == 143
    assert left is swallowed  # main put the caller's handler back


def test_models_diff_shows_a_fits_chosen_weights_briefly():
    # A walkthrough: `models diff` printed the candidate weights a fit chose, ten floats to 17
    # digits each side, beside real settings such as the seed (--json keeps every digit).
    from tauforge.pipelines.cli import _brief

    weights = [1.0790569415042095, 0.10690167332834394, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert _brief(weights) == "[1.08, 0.107, 0.1, 0.1, 0.1, 0.1, ... (10 values)]"
    assert _brief([0.5, 0.25]) == "[0.5, 0.25]"
    assert _brief(0.1) == 0.1 and _brief([0, 1]) == [0, 1] and _brief("auto") == "auto"
