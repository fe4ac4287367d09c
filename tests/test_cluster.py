"""The cluster path as far as it can be checked without a cluster: the images' Dockerfiles (built and
run by tests/test_images.py), one image tag everywhere, compiled pipelines that name only that image and install
nothing at run time, and a runbook walkthrough (docs/runbook.md) whose every `tauforge` command parses."""

import builtins
import importlib
import inspect
import json
import os
import pkgutil
import re
import shlex
import shutil
import subprocess
import symtable
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml

import tauforge
import tauforge.components
from tauforge.components import _kfp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def default_image():
    """The project image's default tag, as components/_kfp.py sets it (whatever $TAUFORGE_IMAGE is)."""
    (tag,) = re.findall(r'os\.environ\.get\("TAUFORGE_IMAGE"\) or "([^"]+)"', read("components", "_kfp.py"))
    return tag


def instructions(dockerfile):
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in read(dockerfile).splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def stages(dockerfile):
    out = []
    for op, args in instructions(dockerfile):
        if op == "FROM":
            out.append([])
        if out:
            out[-1].append((op, args))
    return out


def build_and_final(dockerfile):
    """The instructions of the stages before the last (the build, in one or more stages) and of the last."""
    *build, final = stages(dockerfile)
    return [instruction for stage in build for instruction in stage], final


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_is_multi_stage_non_root_with_a_health_check(dockerfile):
    # Their shape; tests/test_images.py builds and runs the CPU image where Docker runs.
    build, final = build_and_final(dockerfile)
    assert len(stages(dockerfile)) >= 2 and " AS " in build[0][1].upper()
    assert any(op == "COPY" and args.startswith("--from=") for op, args in final), "the final stage copies the build"
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "runs as a non-root user"
    assert any(op == "HEALTHCHECK" and "health/live" in args for op, args in final)
    assert ("EXPOSE", "8080") in final
    # The project is installed (with kfp, a dependency), from sources that exist, in the build stage.
    assert "kfp" in read("pyproject.toml")
    assert any(op == "RUN" and re.search(r'pip install "?\.\[', args) for op, args in build)
    for op, args in build:
        if op == "COPY" and not args.startswith("--from="):
            for source in args.split()[:-1]:
                assert os.path.exists(os.path.join(ROOT, source)), source
    assert not any(op == "RUN" and "pip install" in args for op, args in final), "nothing installed late"


def test_cpu_image_takes_cpu_torch_and_cuda_image_a_pytorch_cuda_base():
    cpu = dict((op, args) for op, args in instructions("Dockerfile") if op == "RUN" and "torch" in args)
    (install,) = [args for args in cpu.values() if "--index-url https://download.pytorch.org/whl/cpu" in args]
    # or a local wheel (make images TORCH_WHEELS=DIR), and a CUDA build of torch stops the build.
    assert "--find-links /tmp/wheels" in install and "torch.version.cuda" in install
    assert re.search(r"^ARG PYTHON_BASE=python:3\.11-slim-bookworm$", read("Dockerfile"), re.M)
    (base,) = re.findall(r"ARG CUDA_BASE=(\S+)", read("Dockerfile.cuda"))
    assert base.startswith("pytorch/pytorch:") and "cuda" in base


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_carry_a_generic_numba_cache_every_user_reads(dockerfile):
    build, final = build_and_final(dockerfile)
    runs = [args for op, args in build if op == "RUN"]
    assert any("python -m tauforge.kernels.warmup" in args and "a+rX /opt/tauforge/numba-cache" in args
               for args in runs)
    for stage in (build, final):  # the same cache directory and CPU target when it is filled and read
        env = " ".join(args for op, args in stage if op == "ENV")
        assert "NUMBA_CACHE_DIR=/opt/tauforge/numba-cache" in env and "NUMBA_CPU_NAME=generic" in env


def test_dockerignore_sends_only_what_the_images_copy():
    patterns = [p for p in read(".dockerignore").splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {source.rstrip("/") for dockerfile in DOCKERFILES for op, args in instructions(dockerfile)
              if op == "COPY" and not args.startswith("--from=") for source in args.split()[:-1]}
    assert allowed == copied
    # A wheel put there for a build is never committed.
    assert "/docker-wheels/*.whl" in read(".gitignore").splitlines()


def test_one_image_tag_everywhere():
    image = default_image()
    assert _kfp.IMAGE == (os.environ.get("TAUFORGE_IMAGE") or image)
    assert image.endswith(f":{tauforge.__version__}"), "the tag is the project's version"
    assert f"IMAGE ?= $(or $(TAUFORGE_IMAGE),{image})" in read("Makefile")
    assert "CUDA_IMAGE ?= $(IMAGE)-cuda" in read("Makefile")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    # Predictors take their image from the serving runtimes: the project image, and its CUDA twin.
    for path in ("runtime", "overlays/namespaced-runtime"):
        out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "manifests", path)], capture_output=True,
                             text=True, check=True).stdout
        images = {d["metadata"]["name"]: c["image"] for d in yaml.safe_load_all(out)
                  if d and d["kind"] in ("ClusterServingRuntime", "ServingRuntime") for c in d["spec"]["containers"]}
        assert images == {"tauforge": image, "tauforge-gpu": f"{image}-cuda"}, path


def test_make_images_builds_the_cpu_image_and_the_cuda_one_if_it_can_or_says_it_needs_docker():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(["make", "-n", "images", "IMAGE=registry.example.com/ml/tauforge:t", "PYTHON_BASE=b:1",
                           "TORCH_WHEELS="], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert re.search(r"docker build .*-f Dockerfile --build-arg PYTHON_BASE=b:1 ", plan)
    assert "-t registry.example.com/ml/tauforge:t ." in plan
    assert re.search(r"docker build .*-f Dockerfile.cuda .*-t registry.example.com/ml/tauforge:t-cuda \.", plan)
    assert "skipped registry.example.com/ml/tauforge:t-cuda" in plan, "the CUDA image only where its base is"
    # A local torch wheel goes into the build context when one is given, and out afterwards.
    wheels = subprocess.run(["make", "-n", "image-cpu", "TORCH_WHEELS=/w", "PYTHON_BASE=b:1"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    assert "rm -f docker-wheels/*.whl" in wheels
    # Without a daemon (none at this address) it says what to do.
    out = subprocess.run(["make", "images"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert out.returncode != 0 and "needs Docker" in out.stderr and ".ci/docker-setup" in out.stderr


@pytest.mark.parametrize("pipeline", ["training", "monitoring"])
@pytest.mark.parametrize("image", [None, "registry.example.com/ml/tauforge:abc123"])
def test_compiled_pipeline_names_only_the_project_image_and_installs_nothing(tmp_path, capsys, pipeline, image):
    from tauforge.pipelines.cli import main

    path = tmp_path / "pipeline.yaml"
    assert main(["compile", "--pipeline", pipeline, "--out", str(path), "--folds", "2", "--shards", "2",
                 *(["--image", image] if image else [])]) == 0
    assert (image or _kfp.IMAGE) in capsys.readouterr().out
    text = path.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    executors = docs[0]["deploymentSpec"]["executors"]
    assert len(executors) >= 6  # every step, the nested training pipeline's too
    assert {e["container"]["image"] for e in executors.values()} == {image or _kfp.IMAGE}
    for name, executor in executors.items():
        line = " ".join(executor["container"].get("command", []) + executor["container"].get("args", []))
        assert "pip install" not in line and "pip3 install" not in line, name
    assert "pip install" not in text
    assert text.startswith("# PIPELINE DEFINITION")


def components():
    """Every KFP component the project defines, by module."""
    for info in pkgutil.iter_modules(tauforge.components.__path__):
        module = importlib.import_module(f"tauforge.components.{info.name}")
        for value in vars(module).values():
            if hasattr(value, "python_func") and value.python_func.__module__ == module.__name__:
                yield value


def body_globals(func) -> set[str]:
    """The names the body of `func` (nested functions included) reads from its module."""
    source = textwrap.dedent(inspect.getsource(func))
    (table,) = symtable.symtable(source, func.__name__, "exec").get_children()

    def free(t) -> set[str]:
        names = {s.get_name() for s in t.get_symbols() if s.is_global() and s.is_referenced()}
        return names.union(*(free(child) - set(t.get_identifiers()) for child in t.get_children()))

    return free(table) - set(dir(builtins))


def test_every_component_body_imports_what_it_uses():
    # A lightweight component runs its function's source alone, in a module of its own: a name the
    # body takes from the module it was written in (an import the linter calls redundant, say)
    # is a NameError in the task, found only when a pipeline runs (ce15746's `config` was one).
    found = list(components())
    assert len(found) >= 10
    assert {c.name: sorted(body_globals(c.python_func)) for c in found if body_globals(c.python_func)} == {}

    def planted():  # the check sees a module name read in a body, nested or not
        return [importlib.import_module(name) for name in ("json",)]

    assert body_globals(planted) == {"importlib"}


# ----------------------------------------------------------------------------- the runbook walkthrough

def walkthrough():
    runbook = read("docs", "runbook.md")
    start = runbook.index("## Running on a cluster")
    return runbook[start:runbook.index("\n## ", start + 1)]


def walkthrough_commands(program):
    """Every `program ...` command of the walkthrough: in indented blocks and in `backticks`."""
    text = walkthrough()
    blocks = re.sub(r"\\\n\s*", " ", "\n".join(line[4:] for line in text.splitlines() if line.startswith("    ")))
    found = [line.split("  #")[0].strip() for line in blocks.splitlines() if line.strip().startswith(program + " ")]
    found += [c for c in re.findall(r"`([^`]+)`", text) if c.startswith(program + " ")]
    return [shlex.split(c) for c in dict.fromkeys(found)]


def test_every_tauforge_command_of_the_walkthrough_parses_with_its_flags(capsys):
    from tauforge.pipelines.cli import build_parser

    commands = walkthrough_commands("tauforge")
    shown = {(argv[1], argv[2] if argv[1] == "models" else argv[argv.index("--mode") + 1] if "--mode" in argv
              else "") for argv in commands}
    assert {("compile", ""), ("submit", ""), ("deploy", "replace"), ("deploy", "canary"), ("deploy", "shadow"),
            ("monitor", ""), ("models", "list"), ("models", "promote"), ("models", "rollback")} <= shown, shown
    for argv in commands:
        try:
            args = build_parser().parse_args(argv[1:])  # what `tauforge` would run, without running it
        except SystemExit:
            pytest.fail(f"the walkthrough's `{shlex.join(argv)}` does not parse: {capsys.readouterr().err}")
        assert args.command == argv[1]
    for sub in sorted({argv[1] for argv in commands}):  # and each subcommand's --help works
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([sub, "--help"])
        assert exit_.value.code == 0 and "--" in capsys.readouterr().out


def test_every_file_and_kustomization_the_walkthrough_names_exists():
    commands = walkthrough_commands("kubectl")
    assert len(commands) >= 10
    local = [argv[argv.index(flag) + 1] for argv in commands for flag in ("-k", "-f")
             if flag in argv and argv[1] == "apply" and not argv[argv.index(flag) + 1].startswith(("http", "github"))]
    assert "manifests/namespace" in local and "manifests/monitoring" in local
    for path in local:
        assert os.path.exists(os.path.join(ROOT, path)) or path == "tauforge-deploy", path  # written by deploy --out
    for argv in walkthrough_commands("make"):
        assert re.search(rf"^{argv[1]}:", read("Makefile"), re.M), f"make target {argv[1]}"


# ----------------------------------------------------------------------------- what a cluster reads
def compiled(tmp_path, *flags, pipeline="training"):
    from tauforge.pipelines.cli import main

    path = tmp_path / f"{pipeline}.yaml"
    assert main(["compile", "--pipeline", pipeline, "--out", str(path), "--folds", "2", "--shards", "2",
                 "--store-secret", "tauforge-store-credentials", *flags]) == 0
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return path.read_text(), docs[0], (docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
                                       if len(docs) > 1 else {})


def test_gpu_shards_keep_a_cuda_image_that_is_also_the_components_own(tmp_path):
    # A review: with --cuda-image equal to the components' built-in image, the shards were given
    # --image too, while the command said they run the CUDA image.
    _, spec, _ = compiled(tmp_path, "--image", "registry.example/cpu:1", "--gpus-per-shard", "1",
                          "--cuda-image", _kfp.IMAGE)
    executors = spec["deploymentSpec"]["executors"].values()
    gpu = [e["container"]["image"] for e in executors if "accelerator" in e["container"]["resources"]]
    assert len(gpu) == 2 and set(gpu) == {_kfp.IMAGE}
    assert {e["container"]["image"] for e in executors if "accelerator" not in e["container"]["resources"]} \
        == {"registry.example/cpu:1"}


def every_task(spec):
    """(name, task) of every task of the pipeline and of the components it nests."""
    yield from spec["root"]["dag"]["tasks"].items()
    for component in spec["components"].values():
        yield from component.get("dag", {}).get("tasks", {}).items()


@pytest.mark.parametrize("pipeline, flags, takers", [
    ("training", [], {"combine-nuisance", "evaluate-model", "publish-model"}),
    ("training", ["--bootstrap-shards", "2"], {"combine-nuisance", "bootstrap-shard", "evaluate-model",
                                               "publish-model"}),
    ("monitoring", [], {"tauforge-training"}),  # the retrain
])
def test_every_task_takes_the_runs_parameters_not_their_defaults(tmp_path, pipeline, flags, takers):
    # A graph without bootstrap tasks drops the bootstrap parameter from the pipeline's signature,
    # and kfp binds parameters by position: one placed after it reached every task as its
    # default, whatever the run passed (--no-reweight-nuisance did nothing).
    _, spec, _ = compiled(tmp_path, *flags, pipeline=pipeline)
    parameters = set(spec["root"]["inputDefinitions"]["parameters"])
    assert "reweight_nuisance" in parameters and ("bootstrap" in parameters) == bool(flags)
    given_to = set()
    for name, task in every_task(spec):
        for parameter, given in task.get("inputs", {}).get("parameters", {}).items():
            if parameter in parameters:
                assert "runtimeValue" not in given, (name, parameter, given)
                if parameter == "reweight_nuisance":
                    given_to.add(name.rstrip("-0123456789"))
    assert given_to >= takers, given_to


@pytest.mark.parametrize("pipeline, flags", [
    ("training", ["--bootstrap-shards", "2", "--gpus-per-shard", "1", "--compute-cpu", "3",
                  "--gpu-node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
                  "--gpu-toleration", "nvidia.com/gpu:NoSchedule"]),
    ("monitoring", ["--store-secret-key", "AWS_ENDPOINT_URL"]),
])
def test_the_compiled_pipeline_is_safe_on_kubeflow_backends_from_2_2(tmp_path, pipeline, flags):
    from tauforge.pipelines.training import NEWER_IR_FIELDS

    text, spec, platform = compiled(tmp_path, *flags, pipeline=pipeline)
    # No IR the oldest backend claimed (2.2.0) cannot read: no dsl.Collected, no ParallelFor, none
    # of the fields later SDKs add beside the old ones.
    for field in (*NEWER_IR_FIELDS, "isArtifactList", "parameterIterator", "artifactIterator"):
        assert f"{field}:" not in text, field
    # Steps with side effects or outside inputs are never served from the cache; the rest are.
    tasks = dict(every_task(spec))
    for name in ("validate-data", "publish-model", "monitor-model"):
        if name in tasks:
            assert not tasks[name].get("cachingOptions", {}).get("enableCache"), name
    assert tasks["nuisance-folds"]["cachingOptions"]["enableCache"]
    # Every task asks for CPU and memory, and its thread pools follow its CPU limit.
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        container = executor["container"]
        resources = container["resources"]
        assert {"cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"} <= set(resources), name
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env["OMP_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == str(int(resources["cpuLimit"])), name
    # GPU shards (and only they) run the CUDA image, placed on GPU nodes.
    gpu = {name for name, e in executors.items() if "accelerator" in e["container"]["resources"]}
    assert {executors[name]["container"]["image"] for name in gpu} <= {f"{_kfp.IMAGE}-cuda"}
    assert {e["container"]["image"] for name, e in executors.items() if name not in gpu} == {_kfp.IMAGE}
    if pipeline == "training":
        assert {name.rstrip("-0123456789") for name in gpu} == {"exec-forest-shard", "exec-bootstrap-shard"}
        assert len(gpu) == 4 and all(executors[name]["container"]["resources"]["cpuLimit"] == 3.0 for name in gpu)
        for name in gpu:
            assert platform[name]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert platform[name]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                      "effect": "NoSchedule"}]
    # The store's credentials reach exactly the tasks that read the data or write the store.
    with_secret = {name.rstrip("-0123456789") for name, e in platform.items() if "secretAsEnv" in e}
    assert with_secret == ({"exec-validate-data", "exec-publish-model"} | ({"exec-monitor-model"}
                                                                          if pipeline == "monitoring" else set()))
    keys = {m["secretKey"] for e in platform.values() for s in e.get("secretAsEnv", []) for m in s["keyToEnv"]}
    assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} | ({"AWS_ENDPOINT_URL"} if "monitoring" == pipeline
                                                                     else set())  # a key given adds to the two
    # Every parameter says what it is; the store has no default (a pod-local folder would vanish).
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert all(p.get("description") for p in parameters.values()), [k for k, p in parameters.items()
                                                                     if not p.get("description")]
    assert "defaultValue" not in parameters["store"] and "run_id" not in parameters


def test_task_settings_never_walk_the_stack_and_a_pipeline_task_is_still_refused_them(tmp_path, monkeypatch):
    # kfp's setters call inspect.stack() to name themselves in an error, which scans every loaded
    # module per frame without a source file: pipelines/training.py names them from their frame.
    from kfp import dsl

    from tauforge.components.data import validate_data

    def walk(*args, **kwargs):
        raise AssertionError("inspect.stack() was called")

    monkeypatch.setattr(inspect, "stack", walk)
    _, spec, platform = compiled(tmp_path, "--bootstrap-shards", "2", "--gpus-per-shard", "1",
                                 "--gpu-toleration", "nvidia.com/gpu:NoSchedule")
    assert any("accelerator" in e["container"]["resources"] for e in spec["deploymentSpec"]["executors"].values())

    @dsl.pipeline
    def inner(source: str):
        validate_data(source=source, spec="{}", store="")

    @dsl.pipeline
    def outer(source: str):
        with pytest.raises(ValueError, match="^set_cpu_limit can only be used on single-step components"):
            inner(source=source).set_cpu_limit("1")


def test_a_training_pipeline_without_bootstrap_tasks_offers_no_bootstrap_parameter(tmp_path):
    _, spec, _ = compiled(tmp_path)
    assert "bootstrap" not in spec["root"]["inputDefinitions"]["parameters"]
    (validate,) = [task for name, task in every_task(spec) if name == "validate-data"]
    assert "bootstrap" not in validate["inputs"]["parameters"]
    _, spec, _ = compiled(tmp_path, "--bootstrap-shards", "2")
    assert "bootstrap" in spec["root"]["inputDefinitions"]["parameters"]
    # The first task checks the bootstrap's settings against the graph's two bootstrap tasks.
    (validate,) = [task for name, task in every_task(spec) if name == "validate-data"]
    given = validate["inputs"]["parameters"]
    assert given["bootstrap"] == {"componentInputParameter": "bootstrap"}
    assert given["bootstrap_shards"]["runtimeValue"]["constant"] == 2


def test_a_store_inside_the_pod_is_refused_and_one_on_a_volume_is_not(tmp_path, monkeypatch):
    from tauforge.components.registry import StoreError, check_store_location

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # what every pod's environment holds
    check_store_location("s3://bucket/models")  # object storage: fine anywhere
    mounted = next(m.split()[1] for m in open("/proc/mounts") if m.split()[1] not in ("/", "/proc")
                   and os.path.isdir(m.split()[1]) and os.access(m.split()[1], os.R_OK))
    check_store_location(os.path.join(mounted, "store"))  # on a mounted volume: fine
    unmounted = [p for p in ("/opt/tauforge-store", "/srv/store") if not any(
        os.path.ismount(a) for a in (p, os.path.dirname(p)) if a != "/")]
    with pytest.raises(StoreError, match="a folder inside this pod and would vanish"):
        check_store_location(unmounted[0])
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    check_store_location(unmounted[0])  # on a laptop a local folder is what is meant


@pytest.mark.parametrize("settings, field, problem", [
    ({"gate": '{"min_placebo_pvalue": 2}'}, "min_placebo_pvalue", "must be at least 0 and below 1"),
    ({"forest_params": '{"n_estimators": 1000, "min_samples_leaf": -3}'}, "forest_params", "min_samples_leaf"),
    ({"forest_params": '{"n_estimators": 4}', "n_shards": 3}, "n_shards", "must be between 1 and 2"),
    ({"forest_params": '{"n_estimators": 1000, "mtry": 3}'}, "forest_params", "mtry must be an integer between 1 "
                                                                               "and 2 (features), got 3"),
    ({"estimator": "econml", "n_shards": 2}, "n_shards", "must be 1 with estimator 'econml'"),
    ({"forest_params": "[1000]"}, "forest_params", "must be a JSON object"),
    ({"alpha": 1.5}, "alpha", "must be in (0, 1)"),
    ({"spec": '{"outcome": "Y"}'}, "DataSpec", "needs 'treatment'"),
    ({"deploy": '{"mode": "blue-green"}', "model_name": "m"}, "mode", "must be one of replace, canary, shadow"),
    # A graph with bootstrap tasks: the bootstrap's JSON, its replicates against the tasks, the forest.
    ({"bootstrap": '{"n_bootstrap": 0}', "bootstrap_shards": 2}, "n_bootstrap", "must be at least 2 in a graph"),
    ({"bootstrap": '{"n_bootstrap": 3}', "bootstrap_shards": 4}, "bootstrap_shards", "must be between 1 and 3"),
    ({"bootstrap": '{"n_bootstrap": 50, "interval": "bca"}', "bootstrap_shards": 2}, "interval", "must be one of"),
    ({"bootstrap": '{"n_bootstrap": 50}', "bootstrap_shards": 1, "estimator": "econml"}, "n_bootstrap",
     "must be 0 with estimator 'econml'"),
])
def test_the_first_task_refuses_settings_a_later_task_would_fail_on(tmp_path, settings, field, problem):
    # A Kubeflow review: a compiled run's bad gate, forest parameters or shard count failed only in
    # the evaluate or forest tasks, after the nuisance models' fits, and each shard retried twice.
    # The validate task now checks them; the mtry case needs the table's covariates (two here).
    from tauforge.components.config import ConfigError
    from tauforge.components.data import validate_data

    source = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame({"x0": rng.normal(size=60), "x1": rng.normal(size=60), "T": np.tile([0.0, 1.0], 30),
                  "Y": rng.normal(size=60)}).to_csv(source, index=False)
    arguments = {"source": str(source), "spec": '{"outcome": "Y", "treatment": "T"}', "store": str(tmp_path / "store"),
                 "dataset": None, **settings}
    with pytest.raises(ConfigError) as refused:
        validate_data.python_func(**arguments)
    assert refused.value.field == field and problem in refused.value.problem, str(refused.value)


def test_compile_deploy_adds_a_deploy_task_after_publish_reading_the_published_version(tmp_path):
    # The design's "publish -> deploy as shadow or canary" (a Kubeflow review: no pipeline deployed).
    _, spec, platform = compiled(tmp_path, "--deploy")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert json.loads(params["deploy"]["defaultValue"]) == {"mode": "shadow", "percent": 10}
    assert params["apply_deploy"]["defaultValue"] is False
    gated = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    deploy = gated["deploy-version"]
    assert deploy["inputs"]["parameters"]["version"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "publish-model"}
    assert not deploy["cachingOptions"].get("enableCache")  # it reads the champion and may apply
    assert "exec-deploy-version" in platform  # the store's Secret: it reads the champion alias
    _, plain, _ = compiled(tmp_path)
    assert "deploy" not in plain["root"]["inputDefinitions"]["parameters"]
    assert "deploy-version" not in plain["components"]["comp-condition-1"]["dag"]["tasks"]
    from tauforge.pipelines.cli import main

    assert main(["compile", "--pipeline", "monitoring", "--deploy", "--out", str(tmp_path / "m.yaml")]) == 2
