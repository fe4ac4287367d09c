"""The training pipeline: validate -> nuisance folds -> forest shards -> merge -> (bootstrap
shards -> merge) -> evaluate -> publish if the gate passed. One definition, run three ways:
`run_local` (kfp.local's SubprocessRunner, no cluster), `compile_pipeline` (IR YAML for the
Kubeflow UI), `submit` (kfp.Client against a Kubeflow Pipelines host).

The number of folds and shards (forest and bootstrap) shapes the graph (one task each, in
`dsl.ParallelFor` groups), so they are arguments of `build_training_pipeline`; everything else
is a pipeline parameter.
"""

import builtins
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import tempfile
import uuid
import warnings
from dataclasses import dataclass

from kfp import dsl

from tauforge.components.config import ConfigError
from tauforge.components.constants import DEFAULT_ALPHA, DEFAULT_MODEL_NAME, DEFAULT_STORE, DEFAULT_TREES, MONITOR_ALPHA
from tauforge.components.data import validate_data
from tauforge.components.estimate import (
    BootstrapConfig,
    bootstrap_shard,
    forest_shard,
    merge_bootstrap_shards,
    merge_forest_shards,
)
from tauforge.components.evaluate import evaluate_model
from tauforge.components.nuisance import combine_nuisance, nuisance_fold
from tauforge.components.publish import publish_model

from .config import TrainingConfig, absolute

PIPELINE_NAME = "tauforge-training"
DEFAULT_FOREST_PARAMS = json.dumps({"n_estimators": DEFAULT_TREES})


THREAD_VARIABLES = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def build_training_pipeline(n_folds: int = 5, n_shards: int = 2, gpus_per_shard: int = 0,
                            accelerator_type: str = "nvidia.com/gpu", parallelism: int = 0,
                            threads_per_task: int = 0, bootstrap_shards: int = 0):
    """The training pipeline with `n_folds` nuisance tasks, `n_shards` forest tasks and
    `bootstrap_shards` tasks of the full bootstrap (0: no bootstrap in the graph), forest and
    bootstrap tasks each asking for `gpus_per_shard` accelerators of `accelerator_type`;
    `parallelism` caps how many of a group run at once (0: no cap); `threads_per_task` > 0 caps
    the thread pools of the parallel tasks (on one machine, tasks side by side must share its cores)."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, got {n_shards}")
    if bootstrap_shards < 0:
        raise ValueError(f"bootstrap_shards must be 0 (no bootstrap) or more, got {bootstrap_shards}")
    # With bootstrap tasks in the graph, a run that sets no bootstrap still gets one.
    default_bootstrap = BootstrapConfig(n_bootstrap=100).to_json() if bootstrap_shards else "{}"

    def on_accelerators(task) -> None:
        if gpus_per_shard > 0:
            task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus_per_shard)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Causal forest with cross-fitted nuisance models, evaluated and published if the "
                              "quality gate passes.")
    def training(source: str, spec: str, store: str = DEFAULT_STORE, model_name: str = DEFAULT_MODEL_NAME,
                 seed: int = 0, model_y: str = "auto", model_t: str = "auto",
                 forest_params: str = DEFAULT_FOREST_PARAMS, gate: str = "{}", alpha: float = DEFAULT_ALPHA,
                 run_id: str = "", estimator: str = "tauforge", bootstrap: str = default_bootstrap) -> bool:
        validated = validate_data(source=source, spec=spec)
        validated.set_display_name("validate")
        dataset = validated.outputs["dataset"]

        with dsl.ParallelFor(items=list(range(n_folds)), parallelism=parallelism, name="nuisance-folds") as fold:
            folds = nuisance_fold(dataset=dataset, fold=fold, n_folds=n_folds, seed=seed,
                                  model_y=model_y, model_t=model_t)
            folds.set_display_name("nuisance-fold")
            _limit_threads(folds, threads_per_task)
        residuals = combine_nuisance(dataset=dataset,
                                     folds=dsl.Collected(folds.outputs["predictions"]))
        residuals.set_display_name("residuals")

        with dsl.ParallelFor(items=list(range(n_shards)), parallelism=parallelism, name="forest-shards") as shard:
            shards = forest_shard(dataset=dataset, residuals=residuals.outputs["residuals"],
                                  params=forest_params, seed=seed, shard=shard, n_shards=n_shards,
                                  estimator=estimator)
            shards.set_display_name("forest-shard")
            _limit_threads(shards, threads_per_task)
            on_accelerators(shards)
        merged = merge_forest_shards(dataset=dataset, residuals=residuals.outputs["residuals"],
                                     shards=dsl.Collected(shards.outputs["forest"]), alpha=alpha)
        merged.set_display_name("merge-forest")
        forest, estimate = merged.outputs["forest"], merged.outputs["estimate"]

        if bootstrap_shards:
            with dsl.ParallelFor(items=list(range(bootstrap_shards)), parallelism=parallelism,
                                 name="bootstrap-shards") as part:
                replicates = bootstrap_shard(dataset=dataset, residuals=residuals.outputs["residuals"],
                                             estimate=estimate, params=forest_params, seed=seed, shard=part,
                                             n_shards=bootstrap_shards, bootstrap=bootstrap, n_folds=n_folds,
                                             model_y=model_y, model_t=model_t)
                replicates.set_display_name("bootstrap-shard")
                _limit_threads(replicates, threads_per_task)
                on_accelerators(replicates)
            combined = merge_bootstrap_shards(estimate=estimate, bootstrap=bootstrap,
                                              shards=dsl.Collected(replicates.outputs["replicates"]))
            combined.set_display_name("merge-bootstrap")
            estimate = combined.outputs["result"]

        evaluated = evaluate_model(dataset=dataset, residuals=residuals.outputs["residuals"], estimate=estimate,
                                   gate=gate, seed=seed, n_folds=n_folds, model_y=model_y, model_t=model_t)
        evaluated.set_display_name("evaluate")
        with dsl.If(evaluated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
            publish_model(dataset=dataset, forest=forest, estimate=estimate, reference=merged.outputs["reference"],
                          evaluation=evaluated.outputs["evaluation"], report=evaluated.outputs["report"],
                          store=store, model_name=model_name, source=source, run_id=run_id, estimator=estimator,
                          n_folds=n_folds, model_y=model_y, model_t=model_t).set_display_name("publish")
        return evaluated.outputs["Output"]

    return training


MONITORING_PIPELINE_NAME = "tauforge-monitoring"


def build_monitoring_pipeline(n_folds: int = 5, n_shards: int = 2, gpus_per_shard: int = 0,
                              accelerator_type: str = "nvidia.com/gpu"):
    """monitor -> If(retrain needed): the training pipeline on fresh data (`source`)."""
    from tauforge.components.monitor import monitor_model

    training = build_training_pipeline(n_folds, n_shards, gpus_per_shard, accelerator_type)

    @dsl.pipeline(name=MONITORING_PIPELINE_NAME,
                  description="Check served traffic against the model's training data; retrain when it drifted.")
    def monitoring(store: str, model_name: str, log_dir: str, source: str, spec: str, version: str = "",
                   outcomes: str = "", monitor_alpha: float = MONITOR_ALPHA, seed: int = 0, model_y: str = "auto",
                   model_t: str = "auto", forest_params: str = DEFAULT_FOREST_PARAMS, gate: str = "{}",
                   alpha: float = DEFAULT_ALPHA, estimator: str = "tauforge") -> bool:
        checked = monitor_model(store=store, model_name=model_name, version=version, log_dir=log_dir,
                                outcomes=outcomes, alpha=monitor_alpha)
        checked.set_display_name("monitor")
        with dsl.If(checked.outputs["Output"] == True, name="retrain-needed"):  # noqa: E712 (a KFP condition)
            # Every training parameter passes through; the run id is the Kubeflow run's own.
            training(source=source, spec=spec, store=store, model_name=model_name, seed=seed, model_y=model_y,
                     model_t=model_t, forest_params=forest_params, gate=gate, alpha=alpha,
                     run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, estimator=estimator).set_display_name("retrain")
        return checked.outputs["Output"]

    return monitoring


def _limit_threads(task, threads: int) -> None:
    if threads > 0:
        for name in THREAD_VARIABLES:
            task.set_env_variable(name, str(threads))


def pipeline_arguments(source: str, config: TrainingConfig, run_id: str) -> dict:
    """The training pipeline's parameters for a run of `config` on `source`."""
    arguments = {"source": source, "spec": config.spec.to_json(), "store": config.store,
                 "model_name": config.model_name, "seed": config.seed, "model_y": config.nuisance.model_y,
                 "model_t": config.nuisance.model_t, "forest_params": json.dumps(config.forest_params()),
                 "gate": config.gate.to_json(), "alpha": config.alpha, "run_id": run_id,
                 "estimator": config.estimator}
    if config.bootstrap_tasks():
        arguments["bootstrap"] = config.bootstrap.to_json()
    return arguments


def compile_pipeline(path: str, n_folds: int = 5, n_shards: int = 2, gpus_per_shard: int = 0,
                     accelerator_type: str = "nvidia.com/gpu", pipeline: str = "training",
                     image: str | None = None, bootstrap_shards: int = 0) -> str:
    """Write the pipeline's IR YAML to `path`; every task runs on `image` (default: the project
    image of components/_kfp.py, $TAUFORGE_IMAGE). `bootstrap_shards` > 0 puts the full
    bootstrap's tasks in the training graph."""
    from kfp import compiler

    if pipeline == "training":
        built = build_training_pipeline(n_folds, n_shards, gpus_per_shard, accelerator_type,
                                        bootstrap_shards=bootstrap_shards)
    elif bootstrap_shards:
        raise ValueError("the monitoring pipeline retrains without the full bootstrap; drop bootstrap_shards")
    else:
        built = build_monitoring_pipeline(n_folds, n_shards, gpus_per_shard, accelerator_type)
    compiler.Compiler().compile(built, path)
    if image:
        set_image(path, image)
    return path


def set_image(path: str, image: str) -> None:
    """Point every executor of the compiled pipeline at `image`.

    Components fix their base image when they are defined (at import, components/_kfp.py), so a
    different image for one compile is set on the compiled IR: all our executors are the same
    project image, and an executor's image is all that names it."""
    import yaml

    with open(path) as f:
        text = f.read()
    header = "".join(line for line in text.splitlines(keepends=True)[:20] if line.startswith("#"))
    docs = list(yaml.safe_load_all(text))  # the pipeline spec, then a platform spec if any
    executors = docs[0]["deploymentSpec"]["executors"]
    for executor in executors.values():
        executor["container"]["image"] = image
    with open(path, "w") as f:
        f.write(header)
        yaml.safe_dump_all(docs, f, sort_keys=False)


@dataclass
class LocalRun:
    run_id: str
    gate_passed: bool
    evaluation: dict
    report_path: str  # the evaluate step's HTML report
    run_dir: str  # the pipeline's outputs (kfp.local's pipeline root for this run)
    log_path: str


def run_local(source: str, config: TrainingConfig, pipeline_root: str = "./tauforge-runs",
              parallelism: int = 2, log=None) -> LocalRun:
    """Run the pipeline with kfp.local's SubprocessRunner in this Python environment, after
    checking what can be checked here first (`TrainingConfig.check_local_run`: the device, and
    a local table against the spec), so a bad run fails before any task starts.

    Task output goes to `<pipeline_root>/<run_id>.log`; `log(line)` receives one line per
    finished step (progress), if given."""
    from kfp import local

    config.check_local_run(source)
    # Tasks run in processes of their own, from another directory: local paths must be absolute.
    source = absolute(source)
    config = dataclasses.replace(config, store=absolute(config.store))
    run_id = uuid.uuid4().hex[:12]
    root = os.path.abspath(os.path.join(pipeline_root, run_id))
    os.makedirs(root, exist_ok=True)
    log_path = os.path.abspath(os.path.join(pipeline_root, f"{run_id}.log"))
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=True)
    threads = max(1, (os.cpu_count() or 1) // parallelism) if parallelism > 1 else 0
    pipeline = build_training_pipeline(config.nuisance.folds, config.n_shards, 0, config.accelerator_type,
                                       parallelism, threads, config.bootstrap_tasks())
    with open(log_path, "w") as log_file, _capture(log_file, log):
        try:
            task = pipeline(**pipeline_arguments(source, config, run_id))
        except RuntimeError as exc:
            message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp.local colours its messages
            raise PipelineFailed(f"{message} The task logs are in {log_path}") from None
    gate_passed = bool(task.outputs["Output"])
    evaluate_dir = _step_dir(root, "evaluate-model")
    with open(os.path.join(evaluate_dir, "evaluation")) as f:
        evaluation = json.load(f)
    return LocalRun(run_id, gate_passed, evaluation, os.path.join(evaluate_dir, "report"), root, log_path)


class PipelineFailed(RuntimeError):
    """A task of the local run failed."""


def _step_dir(root: str, task: str) -> str:
    """Where kfp.local left a task's outputs (<root>/<run>/<task>/<output>)."""
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) == task and files:
            return dirpath
    raise PipelineFailed(f"the {task} step left no outputs under {root}")


@contextlib.contextmanager
def _capture(log_file, progress):
    """Send everything the run prints (kfp.local logs to stdout, task output included) to
    `log_file`, and pass the lines our components print ("tauforge: ...") to `progress`."""
    class Tee(io.TextIOBase):
        def __init__(self):
            self._pending = ""

        def write(self, s: str) -> int:
            log_file.write(s)
            *lines, self._pending = (self._pending + s).split("\n")
            for line in lines:
                text = line.strip()
                if progress and text.startswith("tauforge: "):
                    progress(text[len("tauforge: "):])
            return len(s)

        def flush(self) -> None:
            log_file.flush()

    tee = Tee()
    # kfp.local indents task output by swapping builtins.print, and swaps the root logger's
    # handlers for one writing to sys.stdout (here: the log file) at INFO; with tasks in parallel
    # threads the swaps interleave and can leave either installed after the run. A handler left
    # behind writes to the closed log file: every later INFO record (botocore's "Found credentials"
    # when the CLI reads an s3:// store) printed "--- Logging error ---" and a traceback.
    saved_print = builtins.print
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
            yield
    finally:
        builtins.print = saved_print
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def submit(host: str, source: str, config: TrainingConfig, experiment: str | None = None,
           image: str | None = None) -> str:
    """Submit a run to Kubeflow Pipelines at `host`, its tasks on `image` (default: the project
    image); return its run id. The data and the store must be where the cluster's pods can reach
    them: URIs (s3://, gs://) or absolute paths on a volume mounted in them."""
    import kfp

    for name, where in (("source", source), ("store", config.store)):
        if "://" not in where and not os.path.isabs(where):
            raise ConfigError(name, f"must be a URI the cluster's pods can reach (s3://..., gs://...) or an "
                                    f"absolute path on a volume mounted in them, got {where!r}")
    run_id = uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(os.path.join(tmp, "pipeline.yaml"), config.nuisance.folds, config.n_shards,
                                   config.gpus_per_shard, config.accelerator_type, image=image,
                                   bootstrap_shards=config.bootstrap_tasks())
        try:
            client = kfp.Client(host=host)
            result = client.create_run_from_pipeline_package(
                package, arguments=pipeline_arguments(source, config, run_id), experiment_name=experiment,
                run_name=f"tauforge-{run_id}")
        except Exception as exc:  # the client raises urllib3, ApiException, ValueError... all mean "not submitted"
            reason = str(exc).splitlines()[0][:300]
            raise PipelineFailed(f"could not submit to Kubeflow Pipelines at {host}: {type(exc).__name__}: "
                                 f"{reason}") from None
    return result.run_id
