"""The training pipeline: validate -> nuisance folds -> forest shards -> merge -> (bootstrap
shards -> merge) -> evaluate -> publish if the gate passed. One definition, run three ways:
`run_local` (kfp.local, no cluster), `compile_pipeline` (IR YAML for the Kubeflow UI), `submit`
(kfp.Client against a Kubeflow Pipelines host); and the monitoring pipeline around it.

The number of folds, the tasks they are spread over and the shards (forest and bootstrap) shape
the graph (a task per fold task and per shard), so they are arguments of
`build_training_pipeline`; everything else is a pipeline parameter. The tasks of a group gather
in one step in one of two ways: `fan_in="explicit"` (what `compile` and
`submit` write) gives the gathering step one input per task, which every KFP backend from 2.2 on
runs; `fan_in="collected"` puts the group in a `dsl.ParallelFor` gathered by `dsl.Collected`,
which needs backend 2.14, and is how kfp.local runs a group's tasks side by side.
"""

import builtins
import collections
import contextlib
import dataclasses
import functools
import inspect
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
import warnings
from dataclasses import dataclass

from kfp import dsl

from tauforge.components._kfp import explicit_fan_in
from tauforge.components.config import ConfigError
from tauforge.components.constants import (
    DEFAULT_ALPHA,
    DEFAULT_FOLD_TASKS,
    DEFAULT_MODEL_NAME,
    DEFAULT_TREES,
    MONITOR_ALPHA,
    STOP_GRACE_SECONDS,
)
from tauforge.components.data import DataValidationError, validate_data
from tauforge.components.deploy import deploy_version
from tauforge.components.estimate import (
    BootstrapConfig,
    bootstrap_shard,
    forest_shard,
    merge_bootstrap_shards,
    merge_forest_shards,
)
from tauforge.components.evaluate import evaluate_model
from tauforge.components.nuisance import check_fold_tasks, combine_nuisance, nuisance_folds
from tauforge.components.publish import publish_model
from tauforge.components.registry import StoreError, check_store
from tauforge.kernels.cpus import usable_cpus
from tauforge.kernels.serialization import replaced_whole

from .config import ClusterConfig, TrainingConfig, absolute

PIPELINE_NAME = "tauforge-training"
MONITORING_PIPELINE_NAME = "tauforge-monitoring"
DEFAULT_FOREST_PARAMS = json.dumps({"n_estimators": DEFAULT_TREES})
DEFAULT_DEPLOY = json.dumps({"mode": "shadow", "percent": 10})  # a graph with a deploy step (compile --deploy)
FAN_INS = ("explicit", "collected")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# Shard tasks a pipeline may have: each is a pod growing whole little bags (125 bags at the
# default 1,000 trees), and an explicit fan-in of 100,000 inputs kept `compile` busy for minutes.
MAX_SHARD_TASKS = 256


def build_training_pipeline(n_folds: int = 5, n_shards: int = 2, bootstrap_shards: int = 0, *,
                            fold_tasks: int = DEFAULT_FOLD_TASKS, cluster: ClusterConfig | None = None,
                            fan_in: str = "explicit", parallelism: int = 0, threads_per_task: int = 0,
                            deploy: bool = False):
    """The training pipeline with `n_folds` cross-fitting folds spread over `fold_tasks` nuisance
    tasks (at most one task per fold), `n_shards` forest tasks and `bootstrap_shards` tasks of the
    full bootstrap (0: no bootstrap in the graph); with `deploy`, a deploy task after publish
    (`components.deploy.deploy_version`: the new version's InferenceServices, as the pipeline's
    `deploy` parameter says, applied with `apply_deploy`).

    cluster : how the tasks run as pods (resources, retries, GPUs, images, the store's Secret);
        None for a run on this machine.
    fan_in : 'explicit' or 'collected' (see the module's docstring).
    parallelism, threads_per_task : with 'collected', how many tasks of a group run at once (0: no
        cap) and, above 0, the thread pools of each (tasks side by side must share one machine's cores).
    """
    if n_folds < 2:
        raise ConfigError("n_folds", f"must be at least 2, got {n_folds}")
    check_fold_tasks(fold_tasks, n_folds)
    if not 1 <= n_shards <= MAX_SHARD_TASKS:
        raise ConfigError("n_shards", f"must be between 1 and {MAX_SHARD_TASKS}, got {n_shards}")
    if not 0 <= bootstrap_shards <= MAX_SHARD_TASKS:
        raise ConfigError("bootstrap_shards", f"must be 0 (no bootstrap) to {MAX_SHARD_TASKS}, got {bootstrap_shards}")
    if fan_in not in FAN_INS:
        raise ConfigError("fan_in", f"must be one of {', '.join(FAN_INS)}, got {fan_in!r}")
    pods = _Pods(cluster, threads_per_task if fan_in == "collected" else 0)
    deploy_step = deploy

    def fan_out(n: int, name: str, make):
        """`make(k)` for k in 0..n-1, as `fan_in` says; returns the gathering step's arguments for an
        output of those tasks (`gathered(output, parameter)`) and the gathering step itself."""
        if fan_in == "explicit":
            tasks = [make(k).set_display_name(f"{name}-{k + 1}") for k in range(n)]
            for task in tasks:
                pods.parallel(task)

            def gathered(output: str, parameter: str) -> dict:
                return {f"{parameter}_{k}": t.outputs[output] for k, t in enumerate(tasks)}

            return gathered, lambda collector: explicit_fan_in(collector, n)
        loop = name if name.endswith("s") else f"{name}s"  # the UI showed "nuisance-foldss" (a review)
        with dsl.ParallelFor(items=list(range(n)), parallelism=parallelism, name=loop) as k:
            task = make(k).set_display_name(name)
            pods.parallel(task)
        return (lambda output, parameter: {parameter: dsl.Collected(task.outputs[output])}), (lambda c: c)

    def training(source: str, spec: str, store: str, model_name: str = DEFAULT_MODEL_NAME, seed: int = 0,
                 model_y: str = "auto", model_t: str = "auto", forest_params: str = DEFAULT_FOREST_PARAMS,
                 gate: str = "{}", alpha: float = DEFAULT_ALPHA, estimator: str = "tauforge", graph: str = "",
                 reweight_nuisance: bool = True, deploy: str = DEFAULT_DEPLOY, apply_deploy: bool = False,
                 bootstrap: str = BootstrapConfig(n_bootstrap=100).to_json()) -> bool:
        """Train, evaluate and publish a causal model.

        Args:
            source: The training table: a Parquet or CSV file (s3://, gs:// or a path the pods mount).
            spec: The columns' causal roles as JSON, e.g. {"outcome": "Y", "treatment": "T"}; covariates default to
                every other numeric column; "group": a column of labels for rows that are not independent, each
                group kept whole and counted once in standard errors (DataSpec).
            store: The model store the version is published to: s3://, gs://, or a path on a volume the pods mount.
            model_name: The model's name in the store.
            seed: The seed of folds, nuisance models and forest.
            model_y: The outcome model: 'auto' or a scikit-learn estimator's import path.
            model_t: The treatment model: 'auto' or a scikit-learn estimator's import path (a classifier for a binary
                treatment).
            forest_params: The causal forest's parameters as JSON, e.g. {"n_estimators": 2000, "device": "cuda"}.
            gate: The publishing gate's thresholds as JSON, e.g. {"min_robustness_value": 0.1}; "off" switches a check
                off.
            alpha: One minus the confidence level of the intervals.
            estimator: The forest: tauforge, or econml (EconML's forest on the same residuals) in a graph compiled
                with one forest shard (`tauforge compile --shards 1`).
            graph: The causal graph as DOT or GML text, e.g. digraph { Z -> T; Z -> Y; T -> Y }; empty for none. The
                covariates and controls must block every back-door path in it; spec without covariates takes them
                from it.
            reweight_nuisance: A continuous treatment's nuisance models refit with inverse-variance weights (default
                true); false keeps the first fit (EconML's residuals).
            deploy: How the published version is deployed, as JSON: mode replace, canary or shadow (a shadow of
                the store's champion), percent, namespace, router and the other settings of `tauforge deploy`.
            apply_deploy: Apply the deploy step's InferenceServices in the cluster (its service account needs the
                rights of manifests/namespace/rbac.yaml); false writes them as the step's artifact only.
            bootstrap: The full bootstrap as JSON: n_bootstrap replicates of `trees` trees, the ATE's interval
                normal (default), percentile or pivot, nuisance false to keep the main fit's residuals instead of
                refitting the nuisance models (default true).
        """
        validated = validate_data(source=source, spec=spec, store=store, graph=graph, gate=gate,
                                  forest_params=forest_params, alpha=alpha, estimator=estimator, n_shards=n_shards,
                                  **({"model_name": model_name, "deploy": deploy} if deploy_step else {}),
                                  **({"bootstrap": bootstrap, "bootstrap_shards": bootstrap_shards}
                                     if bootstrap_shards else {}))
        validated.set_display_name("validate")
        pods.reads_store(pods.light(validated))
        validated.set_caching_options(False)  # reads a URI whose contents may change under the same name
        dataset = validated.outputs["dataset"]

        gathered, collector = fan_out(fold_tasks, "nuisance-folds", lambda k: nuisance_folds(
            dataset=dataset, task=k, n_tasks=fold_tasks, n_folds=n_folds, seed=seed, model_y=model_y,
            model_t=model_t))
        residuals = collector(combine_nuisance)(dataset=dataset, seed=seed, model_y=model_y, model_t=model_t,
                                                reweight_nuisance=reweight_nuisance, **gathered("predictions", "folds"))
        pods.compute(residuals.set_display_name("residuals"))  # a continuous treatment's refit runs here

        gathered, collector = fan_out(n_shards, "forest-shard", lambda k: pods.shard(forest_shard(
            dataset=dataset, residuals=residuals.outputs["residuals"], params=forest_params, seed=seed, shard=k,
            n_shards=n_shards, estimator=estimator)))
        merged = collector(merge_forest_shards)(dataset=dataset, residuals=residuals.outputs["residuals"],
                                                alpha=alpha, **gathered("forest", "shards"))
        pods.compute(merged.set_display_name("merge-forest"))
        forest, estimate = merged.outputs["forest"], merged.outputs["estimate"]

        if bootstrap_shards:
            gathered, collector = fan_out(bootstrap_shards, "bootstrap-shard", lambda k: pods.shard(bootstrap_shard(
                dataset=dataset, residuals=residuals.outputs["residuals"], estimate=estimate, params=forest_params,
                seed=seed, shard=k, n_shards=bootstrap_shards, bootstrap=bootstrap, n_folds=n_folds,
                model_y=model_y, model_t=model_t, reweight_nuisance=reweight_nuisance)))
            combined = collector(merge_bootstrap_shards)(estimate=estimate, bootstrap=bootstrap,
                                                         **gathered("replicates", "shards"))
            pods.compute(combined.set_display_name("merge-bootstrap"))
            estimate = combined.outputs["result"]

        evaluated = evaluate_model(dataset=dataset, residuals=residuals.outputs["residuals"], estimate=estimate,
                                   gate=gate, seed=seed, n_folds=n_folds, model_y=model_y, model_t=model_t,
                                   graph=graph, model_name=model_name, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                   reweight_nuisance=reweight_nuisance)
        pods.compute(evaluated.set_display_name("evaluate"))
        with dsl.If(evaluated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
            published = publish_model(dataset=dataset, forest=forest, estimate=estimate,
                                      reference=merged.outputs["reference"], evaluation=evaluated.outputs["evaluation"],
                                      report=evaluated.outputs["report"], store=store, model_name=model_name,
                                      source=source, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                      run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, estimator=estimator,
                                      n_folds=n_folds, model_y=model_y, model_t=model_t, graph=graph,
                                      reweight_nuisance=reweight_nuisance)
            pods.reads_store(pods.light(published.set_display_name("publish")))
            published.set_caching_options(False)  # a cached publish would announce a version it never wrote
            if deploy_step:
                deployed = deploy_version(version=published.outputs["Output"], store=store, model_name=model_name,
                                          deploy=deploy, apply_objects=apply_deploy)
                pods.reads_store(pods.light(deployed.set_display_name("deploy")))
                deployed.set_caching_options(False)  # it reads the store's champion, and may apply
        return evaluated.outputs["Output"]

    # A graph offers only the parameters its tasks read: none for a bootstrap or deploy it lacks.
    dropped = ([] if bootstrap_shards else ["bootstrap"]) + ([] if deploy_step else ["deploy", "apply_deploy"])
    if dropped:
        signature = inspect.signature(training)
        offered = signature.replace(parameters=[p for p in signature.parameters.values() if p.name not in dropped])
        full = training

        @functools.wraps(full)
        def training(*args, **kwargs):  # kfp passes the offered parameters by position
            return full(**offered.bind(*args, **kwargs).arguments)

        training.__signature__ = offered
    return dsl.pipeline(name=PIPELINE_NAME, description="Causal forest with cross-fitted nuisance models, evaluated "
                                                        "and published if the quality gate passes.")(training)


def build_monitoring_pipeline(n_folds: int = 5, n_shards: int = 2, *, fold_tasks: int = DEFAULT_FOLD_TASKS,
                              cluster: ClusterConfig | None = None, fan_in: str = "explicit"):
    """monitor -> If(retrain needed): the training pipeline on fresh data (`source`)."""
    from tauforge.components.monitor import monitor_model

    training = build_training_pipeline(n_folds, n_shards, fold_tasks=fold_tasks, cluster=cluster, fan_in=fan_in)
    pods = _Pods(cluster, 0)

    @dsl.pipeline(name=MONITORING_PIPELINE_NAME,
                  description="Check served traffic against the model's training data; retrain when it drifted.")
    def monitoring(store: str, model_name: str, log_dir: str, source: str, spec: str, version: str = "",
                   outcomes: str = "", monitor_alpha: float = MONITOR_ALPHA, seed: int = 0, model_y: str = "auto",
                   model_t: str = "auto", forest_params: str = DEFAULT_FOREST_PARAMS, gate: str = "{}",
                   alpha: float = DEFAULT_ALPHA, estimator: str = "tauforge", graph: str = "",
                   since: str = "", reweight_nuisance: bool = True) -> bool:
        """Monitor a served model's traffic and retrain it when the traffic drifted.

        Args:
            store: The model store the served model was published to (s3://, gs:// or a mounted path).
            model_name: The served model's name in the store.
            log_dir: The serving event log (the predictor's --log-dir).
            source: The fresh training table a retrain reads (Parquet or CSV).
            spec: The columns' causal roles as JSON, as for training.
            version: The version to monitor; empty: the champion alias if it answered in the log's last hour,
                else the one that answered most champion rows then.
            outcomes: Optional Parquet of request_id and row (or unit_id) with an 'outcome' column, for policy value.
            monitor_alpha: The false-alarm rate of all drift tests together.
            seed: The retrain's seed.
            model_y: The retrain's outcome model.
            model_t: The retrain's treatment model.
            forest_params: The retrain's forest parameters as JSON.
            gate: The retrain's gate thresholds as JSON.
            alpha: One minus the confidence level of the retrain's intervals.
            estimator: The retrain's forest: tauforge or econml.
            graph: The retrain's causal graph as DOT or GML text; empty for none.
            since: Judge only rows logged since then: a duration back from the run (24h, 7d) or an ISO-8601 time;
                empty: the whole log. A schedule's period, so that each run judges its own traffic.
            reweight_nuisance: Whether the retrain refits a continuous treatment's nuisance models with
                inverse-variance weights.
        """
        checked = monitor_model(store=store, model_name=model_name, version=version, log_dir=log_dir,
                                outcomes=outcomes, alpha=monitor_alpha, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                since=since)
        pods.reads_store(pods.compute(checked.set_display_name("monitor")))
        checked.set_caching_options(False)  # the log grows under the same path: a cached verdict is stale
        with dsl.If(checked.outputs["Output"] == True, name="retrain-needed"):  # noqa: E712 (a KFP condition)
            training(source=source, spec=spec, store=store, model_name=model_name, seed=seed, model_y=model_y,
                     model_t=model_t, forest_params=forest_params, gate=gate, alpha=alpha,
                     estimator=estimator, graph=graph, reweight_nuisance=reweight_nuisance).set_display_name("retrain")
        return checked.outputs["Output"]

    return monitoring


def _setters_without_stack_walk() -> None:
    """kfp's task setters (set_env_variable, set_cpu_limit, set_retry, ...) first check that the
    task is a container step, calling inspect.stack() only to name the setter in that check's
    error. inspect.stack() reads the source of every frame on the stack, and for a frame without a
    source file (`<frozen runpy>` under `python -m`, code run by exec) it scans every loaded
    module: in a process holding torch, EconML and kserve (4,600 modules), a pipeline built under 40
    such frames took 55-64 s instead of 0.3 s, and a profile of the test suite found 241 of its
    895 s in 1,176 setter calls. The same check and message, naming the setter from its own frame."""
    from kfp.dsl.pipeline_task import PipelineTask

    def _ensure_container_spec_exists(self) -> None:
        if self.container_spec is None:
            setter = sys._getframe(1).f_code.co_name
            raise ValueError(f"{setter} can only be used on single-step components, not pipelines used as "
                             "components, or special components like importers.")

    if hasattr(PipelineTask, "_ensure_container_spec_exists"):
        PipelineTask._ensure_container_spec_exists = _ensure_container_spec_exists


_setters_without_stack_walk()


class _Pods:
    """What each kind of task asks of its pod, from a ClusterConfig (None: nothing, a local run)."""

    def __init__(self, cluster: ClusterConfig | None, local_threads: int):
        self.cluster = cluster
        self.local_threads = local_threads

    def _resources(self, task, cpu: str, memory: str):
        if self.cluster is not None:
            task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
            _limit_threads(task, _threads(cpu))  # pools sized to the CPU limit, not to the node's cores
        return task

    def light(self, task):
        """Reading and publishing: small and quick."""
        return self._resources(task, self.cluster.cpu, self.cluster.memory) if self.cluster else task

    def compute(self, task):
        """Steps that score every training row with the whole forest (merges, evaluate, monitor),
        or fit models on every row (the folds' join, which refits a continuous treatment's nuisance
        models with inverse-variance weights)."""
        return self._resources(task, self.cluster.compute_cpu, self.cluster.compute_memory) if self.cluster else task

    def parallel(self, task):
        """A task of a group: folds and shards."""
        if self.cluster is None:
            _limit_threads(task, self.local_threads)
            return task
        return self.compute(task)

    def shard(self, task):
        """Forest and bootstrap shards: retried (a preempted GPU node should not fail the run), and
        on accelerators and the CUDA image when asked for."""
        c = self.cluster
        if c is None:
            return task
        if c.shard_retries:
            task.set_retry(num_retries=c.shard_retries, backoff_duration="60s", backoff_factor=2.0)
        if c.gpus_per_shard:
            from kfp import kubernetes

            task.set_accelerator_type(c.accelerator_type).set_accelerator_limit(c.gpus_per_shard)
            task.set_container_image(c.gpu_image())
            for key, value in c.gpu_node_selector:
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for key, value, effect in c.gpu_tolerations:
                kubernetes.add_toleration(task, key=key, operator="Equal" if value else "Exists", value=value or None,
                                          effect=effect or None)
        return task

    def reads_store(self, task):
        """Tasks that read the data or write the store get its credentials from the Secret."""
        if self.cluster is not None and self.cluster.store_secret:
            from kfp import kubernetes

            kubernetes.use_secret_as_env(task, self.cluster.store_secret,
                                         {key: key for key in self.cluster.store_secret_keys})
        return task


def _threads(cpu: str) -> int:
    """Whole cores in a Kubernetes CPU quantity ('2', '1.5', '500m'), at least 1."""
    value = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, int(value))


def _limit_threads(task, threads: int) -> None:
    if threads > 0:
        for name in THREAD_VARIABLES:
            task.set_env_variable(name, str(threads))


def pipeline_arguments(source: str, config: TrainingConfig) -> dict:
    """The training pipeline's parameters for a run of `config` on `source`."""
    arguments = {"source": source, "spec": config.spec.to_json(), "store": config.store,
                 "model_name": config.model_name, "seed": config.seed, "model_y": config.nuisance.model_y,
                 "model_t": config.nuisance.model_t, "forest_params": json.dumps(config.forest_params()),
                 "gate": config.gate.to_json(), "alpha": config.alpha, "estimator": config.estimator,
                 "reweight_nuisance": config.nuisance.reweight,
                 "graph": (config.graph.text or config.graph.to_dot()) if config.graph else ""}
    if config.bootstrap_tasks():
        arguments["bootstrap"] = config.bootstrap.to_json()
    return arguments


def compile_pipeline(path: str, n_folds: int = 5, n_shards: int = 2, *, pipeline: str = "training",
                     bootstrap_shards: int = 0, fold_tasks: int = DEFAULT_FOLD_TASKS,
                     cluster: ClusterConfig | None = None, fan_in: str = "explicit", deploy: bool = False) -> str:
    """Write the pipeline's IR YAML to `path`, its tasks set up as `cluster` says (default:
    `ClusterConfig()`, the project image). `bootstrap_shards` > 0 puts the full bootstrap's tasks
    in the training graph, `deploy` a deploy task after publish."""
    from kfp import compiler

    cluster = cluster or ClusterConfig()
    if pipeline == "training":
        built = build_training_pipeline(n_folds, n_shards, bootstrap_shards, fold_tasks=fold_tasks, cluster=cluster,
                                        fan_in=fan_in, deploy=deploy)
    elif pipeline != "monitoring":
        raise ConfigError("pipeline", f"must be training or monitoring, got {pipeline!r}")
    elif deploy:
        raise ConfigError("deploy", "is for the training pipeline: the monitoring pipeline's retraining publishes, "
                                    "and `tauforge deploy` (or a training run compiled with it) deploys")
    elif bootstrap_shards:
        raise ConfigError("bootstrap_shards", "must be 0 for the monitoring pipeline, which retrains without the "
                                              "full bootstrap")
    else:
        built = build_monitoring_pipeline(n_folds, n_shards, fold_tasks=fold_tasks, cluster=cluster, fan_in=fan_in)
    with tempfile.TemporaryDirectory() as scratch:  # kfp writes straight to its path: not over an earlier file
        compiled = os.path.join(scratch, "pipeline.yaml")
        compiler.Compiler().compile(built, compiled)
        _finish_ir(compiled, path, cluster.image)
    return path


# The oldest Kubeflow Pipelines backend the compiled pipelines are written for: 2.2.0, what
# Kubeflow 1.9 ships (1.10 ships 2.4.0). Its SDKs wrote resources as plain numbers and Secrets by
# name only; the fields below came later (kfp SDK 2.11+, kfp-kubernetes 2.x) and are written beside
# the old ones, so the compiled YAML keeps the old ones and drops these. `dsl.Collected` (2.14) is
# not used with the explicit fan-in, and retry policies, which 2.2-2.4 ignore, do no harm there.
OLDEST_BACKEND = "2.2.0"
NEWER_IR_FIELDS = {"resourceCpuLimit", "resourceCpuRequest", "resourceMemoryLimit", "resourceMemoryRequest",
                   "resourceType", "resourceCount", "secretNameParameter"}


def _finish_ir(compiled: str, path: str, image: str) -> None:
    """kfp's YAML at `compiled`, written to `path` for the backends from OLDEST_BACKEND on: every
    executor that still names the components' own image names `image` instead (components fix
    their image when they are defined; GPU shards already name their CUDA image, which may be that
    same image), and the newer fields go."""
    import yaml

    from tauforge.components._kfp import IMAGE

    with open(compiled) as f:
        text = f.read()
    header = "".join(line for line in text.splitlines(keepends=True)[:20] if line.startswith("#"))
    # The pipeline spec, then the Kubernetes platform spec if any; libyaml's parser where PyYAML has it (faster).
    docs = list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        container = executor["container"]
        if container["image"] == IMAGE and "accelerator" not in container.get("resources", {}):
            container["image"] = image
    docs = [_without_newer_fields(doc) for doc in docs]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # only once every setting was accepted
    with replaced_whole(path) as f:  # an earlier compile's file stays whole if this one cannot be written
        f.write(header)
        yaml.safe_dump_all(docs, f, sort_keys=False)


def _without_newer_fields(node):
    if isinstance(node, dict):
        kept = {k: _without_newer_fields(v) for k, v in node.items() if k not in NEWER_IR_FIELDS}
        if "secretName" in kept and kept.get("optional") is False:
            kept.pop("optional")  # the default, and a field the older Secret spec does not have
        return kept
    if isinstance(node, list):
        return [_without_newer_fields(v) for v in node]
    return node


@dataclass
class LocalRun:
    run_id: str
    gate_passed: bool
    version: int | None  # the version published, if the gate passed
    evaluation: dict
    report_path: str  # the evaluate step's HTML report
    run_dir: str  # the pipeline's outputs (kfp.local's pipeline root for this run)
    log_path: str


RUNNERS = ("subprocess", "docker")


def run_local(source: str, config: TrainingConfig, pipeline_root: str = "./tauforge-runs",
              parallelism: int = 2, log=None, fan_in: str = "collected", runner: str = "subprocess",
              started=None) -> LocalRun:
    """Run the pipeline with kfp.local's SubprocessRunner in this Python environment, after
    checking what can be checked here first (`TrainingConfig.check_local_run`: the device, and
    a local table against the spec), so a bad run fails before any task starts.

    Task output goes to `<pipeline_root>/<run_id>.log`; `log(line)` receives one line per
    finished step (progress), if given; `started()`, if given, is called once the checks have
    passed, before the first task. kfp.local runs the tasks of a `dsl.ParallelFor` side by side
    (`parallelism` at a time) and the tasks of an explicit fan-in one after another, so a local run
    gathers with `fan_in="collected"` unless told to run the graph `compile` writes ("explicit").

    runner : 'subprocess' (every task a process of this Python environment) or 'docker' (every
        task a container of the project image, `kfp.local.DockerRunner`: the command a cluster's
        pod runs, on the graph `compile` writes)."""
    from kfp import local

    if runner not in RUNNERS:
        raise ConfigError("runner", f"must be one of {', '.join(RUNNERS)}, got {runner!r}")
    config.check_local_run(source)
    if runner == "subprocess":
        _check_task_tmpdir()
    # Tasks run in processes of their own, from another directory: local paths must be absolute.
    source = absolute(source)
    config = dataclasses.replace(config, store=absolute(config.store))
    # Docker is checked before the run starts: a refusal after the "running" line left an empty
    # run folder behind (a Kubeflow review).
    docker_runner = _docker_runner(source, config.store) if runner == "docker" else None
    if started:
        started()
    run_id = uuid.uuid4().hex[:12]
    root = os.path.abspath(os.path.join(pipeline_root, run_id))
    os.makedirs(root, exist_ok=True)
    log_path = os.path.abspath(os.path.join(pipeline_root, f"{run_id}.log"))
    if docker_runner is not None:
        local.init(docker_runner, pipeline_root=root, raise_on_error=True)
        fan_in, parallelism = "explicit", 0
    else:
        from kfp.local import subprocess_task_handler

        subprocess_task_handler.run_local_subprocess = _run_task_process
        local.init(local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=True)
    threads = max(1, usable_cpus() // parallelism) if parallelism > 1 else 0
    pipeline = build_training_pipeline(config.nuisance.folds, config.n_shards, config.bootstrap_tasks(),
                                       fold_tasks=config.fold_tasks, fan_in=fan_in, parallelism=parallelism,
                                       threads_per_task=threads)
    failure, tee = None, None
    log_file = open(log_path, "w")
    try:
        with _capture(log_file, log) as tee, _job_id(run_id), _tasks_stopped_on_signals():
            try:
                task = pipeline(**pipeline_arguments(source, config))
            except RuntimeError as exc:
                failure = _uncoloured(str(exc))
    except RunInterrupted as exc:
        exc.add_note(_after_interrupt(config.store, config.model_name, run_id, log_path))
        raise
    finally:
        try:
            log_file.close()
        except OSError as exc:  # its last buffered lines: a full disk
            if tee is None:
                raise
            tee.fail(exc)
    if tee.error is not None:
        print(f"tauforge: the run's log {log_path} is incomplete: {tee.error.strerror}", file=sys.stderr)
    if failure is not None:  # read once the log is closed, with everything the tasks wrote
        if tee.error is None:
            with open(log_path, errors="replace") as f:
                log_text = f.read()
        else:  # the file lacks what its buffer held when the disk filled
            log_text = tee.tail()
        cause = _task_error(log_text)
        invalid = f"{DataValidationError.__module__}.{DataValidationError.__name__}: "
        if cause is not None and cause.startswith(invalid):
            # A table at a URI is read first by the validate task: the user's data, as a local
            # table's checks before the run say it (exit status 2), not a failed run.
            raise DataValidationError(f"{cause[len(invalid):]} (found by the validate step, which reads a table at "
                                      f"a URI; its log: {log_path})")
        if cause is None and (stopped := _task_stopped(log_text)):
            cause = f"Its process {stopped}."
        elif cause is not None:
            cause = f"It raised {cause.rstrip('.')}."
        raise PipelineFailed(f"{failure}" + (f" {cause}" if cause else "")
                             + f" The task logs are in {log_path}"
                             + (f" (incomplete: {tee.error.strerror})" if tee.error is not None else ""))
    gate_passed = bool(task.outputs["Output"])
    evaluate_dir = _step_dir(root, "evaluate-model")
    with open(os.path.join(evaluate_dir, "evaluation")) as f:
        evaluation = json.load(f)
    version = _published_version(root) if gate_passed else None
    return LocalRun(run_id, gate_passed, version, evaluation, _report_html(evaluate_dir), root, log_path)


def _check_task_tmpdir() -> None:
    """Every subprocess task starts with kfp's `mktemp -d`, which uses $TMPDIR as it is (Python's
    tempfile falls back to /tmp): an unwritable $TMPDIR failed the validate task, and the run, with
    exit status 1 and no cause named (a failure review). Refused here, before any task."""
    given = os.environ.get("TMPDIR")
    if not given:
        return
    try:
        tempfile.TemporaryDirectory(dir=given).cleanup()
    except OSError as exc:
        raise ValueError(f"$TMPDIR={given} cannot hold the tasks' temporary folders ({exc.strerror}): set TMPDIR "
                         "to a writable folder, or unset it") from None


def _report_html(evaluate_dir: str) -> str:
    """The evaluation report under a name that opens in a browser: KFP names the artifact after its
    output ("report"), so report.html beside it, a hard link (no second copy on a full disk), else a
    copy; else, since the run has published by now and must not fail, the artifact itself."""
    artifact, report = os.path.join(evaluate_dir, "report"), os.path.join(evaluate_dir, "report.html")
    try:
        os.link(artifact, report)
    except OSError:
        try:
            shutil.copyfile(artifact, report)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(report)  # a partial copy
            print(f"tauforge: could not write {report} ({exc.strerror}); the report is {artifact}", file=sys.stderr)
            return artifact
    return report


@contextlib.contextmanager
def _job_id(run_id: str):
    """kfp.local with `run_id` as the pipeline's job id (dsl.PIPELINE_JOB_ID_PLACEHOLDER, which
    the card and the report record), instead of the random number it draws for every run:
    its pipeline orchestrator's one call of placeholder_utils.make_random_id gives it.
    tests/test_cli.py checks the published card's run id."""
    from unittest import mock

    from kfp.local import pipeline_orchestrator, placeholder_utils

    ids = types.SimpleNamespace(**vars(placeholder_utils))  # the module's own, the job id's aside
    ids.make_random_id = lambda: run_id
    with mock.patch.object(pipeline_orchestrator, "placeholder_utils", ids):
        yield


class PipelineFailed(RuntimeError):
    """A task of the local run failed."""


def _uncoloured(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # kfp.local colours its messages


STOPPED_BY = "tauforge: the task's process "  # what _run_task_process says of a task that failed without a word


def _task_stopped(log: str) -> str | None:
    """How the first task that a signal or a bare exit status ended, ended ("was stopped by SIGKILL (out
    of memory?)", "exited with status 1 ...: mktemp: ..."), or None."""
    said = [line.strip() for line in map(_uncoloured, log.split("\n")) if line.strip().startswith(STOPPED_BY)]
    return said[0].removeprefix(STOPPED_BY) if said else None


def _task_error(log: str) -> str | None:
    """The exception line ("ValueError: ...") of the traceback the first failed task left in the
    run's log text, or None. kfp.local indents each task's output, and a traceback's last line sits
    at the indentation of its "Traceback" header; of chained ones the last is the one raised."""
    lines = [_uncoloured(line) for line in log.split("\n")]
    end = next((i for i, line in enumerate(lines) if "finished with status FAILURE" in line), len(lines))
    cause = None
    for i, line in enumerate(lines[:end]):
        if line.lstrip() == "Traceback (most recent call last):":
            indent = line[:len(line) - len(line.lstrip())]
            for after in lines[i + 1:end]:
                if after.startswith(indent) and after[len(indent):len(indent) + 1] not in (" ", ""):
                    cause = after.strip()
                    break
    return cause


def _docker_runner(source: str, store: str):
    """kfp.local's DockerRunner for this machine: the project image, present here (kfp.local would
    try to pull it from a registry); host network (a local daemon often has no bridge); the
    caller's uid, so that tasks write the pipeline root and the store as the caller would; and the
    data's folder (read-only) and the store mounted where they are, as a pod mounts a volume."""
    from tauforge.components._kfp import IMAGE

    try:
        import docker
        from docker.types import Mount
    except ImportError:
        raise ConfigError("runner", "'docker' needs the docker Python package: pip install 'tauforge[docker]'") \
            from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no socket, daemon down, permission: all mean "no Docker here"
        raise ConfigError("runner", f"'docker' needs a running Docker daemon, and none answered: {exc}") from None
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        raise ConfigError("runner", f"'docker' runs every task in the image {IMAGE}, which is not on this machine: "
                                    "build it with `make images` (or set TAUFORGE_IMAGE to one that is)") from None
    finally:
        client.close()
    from kfp import local
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = _run_docker_container
    mounts = []
    if "://" not in source:
        mounts.append(Mount(target=os.path.dirname(source), source=os.path.dirname(source), type="bind",
                            read_only=True))
    if "://" not in store:
        os.makedirs(store, exist_ok=True)
        mounts.append(Mount(target=store, source=store, type="bind"))
    return local.DockerRunner(network_mode="host", user=f"{os.getuid()}:{os.getgid()}", mounts=mounts)


class RunInterrupted(KeyboardInterrupt):
    """A local run stopped by SIGINT (Ctrl-C) or SIGTERM, its tasks stopped; a KeyboardInterrupt,
    so that no `except Exception` on the way (kfp.local's) takes it for a task's failure. Its
    note says whether a version was published before the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The local run's live tasks: processes (a process group each) and containers. An interrupted run
# stops them: kfp.local's runners do not, and a task's command is a shell whose Python child
# outlives a signal to the shell, so tasks ran on, and a publish task published after its run had
# died (an interrupt review, 2026-12-05).
_LIVE_TASKS: set = set()
_LIVE_LOCK = threading.RLock()  # re-entrant: the signal handler takes it in a thread that may hold it
_STOPPING = threading.Event()  # set by a signal: no task starts after it
_GUARDED = threading.Event()  # set while `_tasks_stopped_on_signals` holds the signals: tasks get groups


def _run_task_process(full_command: list[str], env_vars: dict | None = None) -> int:
    """kfp.local's `run_local_subprocess` (its output printed line by line into the run's log),
    with the task in a process group of its own, which an interrupted run stops whole (the shell,
    the task's Python, evaluate's refit processes). Says when a signal ended the task."""
    if _STOPPING.is_set():
        return 128 + signal.SIGTERM
    # The task stops if this process dies without stopping it (components/_kfp.py).
    env = {**os.environ, **(env_vars or {}), "TAUFORGE_RUN_PID": str(os.getpid())}
    process = subprocess.Popen(full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               env=env,
                               start_new_session=_GUARDED.is_set())  # else a terminal's Ctrl-C still reaches it
    with _LIVE_LOCK:
        _LIVE_TASKS.add(process)
    if _STOPPING.is_set():  # a signal came between the start and the line above: stopped all the same
        _signal_group(process.pid, signal.SIGTERM)
    output = _TaskOutput()
    for line in iter(process.stdout.readline, ""):
        output.show(line)
    process.stdout.close()  # here, not on an interrupt: a task stopping may still write its last lines
    print("\n")
    code = process.wait()
    with _LIVE_LOCK:
        _LIVE_TASKS.discard(process)
    output.say_how_it_ended(code)
    return code


class _TaskOutput:
    """A task's output printed into the run's log as it comes, and, when the task failed without
    a traceback, the cause said after it."""

    def __init__(self):
        self.last, self.started = "", False  # the last line; whether kfp's executor (Python) started
        self.line_open = False  # output ended inside a line (a container's last chunk, without its newline)

    def show(self, text: str) -> None:
        print(text, end="")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        self.last = lines[-1] if lines else self.last
        self.started = self.started or "[KFP Executor" in text
        self.line_open = not text.endswith("\n") if text else self.line_open

    def say_how_it_ended(self, code: int) -> None:
        if self.line_open and code != 0:  # the cause on a line of its own, where _task_stopped reads it
            print()
        signum = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else None  # a shell says 128 + n
        if signum in set(signal.Signals):
            # Any signal: a segfault or abort in native code (a nuisance model's, numba's) left no
            # traceback either, and the run's message named no cause (a failure review).
            hint = " (the run was interrupted)" if _STOPPING.is_set() else SIGNAL_HINTS.get(signum, "")
            print(f"{STOPPED_BY}was stopped by {signal.Signals(signum).name}{hint}")
        elif code != 0:
            # A task that exits without a traceback (a model calling os._exit; kfp's shell when
            # `mktemp -d` fails under an unwritable $TMPDIR): its status, and the shell's last line,
            # are the cause (once the executor has started, its last line is its input's JSON).
            said = f" before Python started: {_uncoloured(self.last)[:300]}" if self.last and not self.started else ""
            print(f"{STOPPED_BY}exited with status {code}{said}")


SIGNAL_HINTS = {signal.SIGKILL: " (out of memory?)", signal.SIGSEGV: " (a crash in native code)",
                signal.SIGBUS: " (a crash in native code)", signal.SIGILL: " (a crash in native code)",
                signal.SIGFPE: " (a crash in native code)", signal.SIGABRT: " (aborted by native code)"}


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):  # gone already
        os.killpg(pid, signum)  # the group: the task's children too


def _signal_tasks(signum: int) -> None:
    with _LIVE_LOCK:
        live = list(_LIVE_TASKS)
    for task in live:
        if isinstance(task, subprocess.Popen):
            _signal_group(task.pid, signum)
        else:  # a docker container: its first process, a shell, ignores SIGTERM, so it is killed
            with contextlib.suppress(Exception):
                task.kill()


def _tasks_running() -> bool:
    with _LIVE_LOCK:
        return any(not isinstance(task, subprocess.Popen) or task.poll() is None for task in _LIVE_TASKS)


def _wait_for_tasks(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _tasks_running() and time.monotonic() < deadline:
        time.sleep(0.05)


def _stop_tasks(grace: float = STOP_GRACE_SECONDS) -> None:
    """After the signal's SIGTERM: up to `grace` seconds for the tasks to end (their cleanup runs;
    a second SIGTERM would cut it short), then SIGKILL to whatever is left of them."""
    _wait_for_tasks(grace)
    _signal_tasks(signal.SIGKILL)
    _wait_for_tasks(grace)


@contextlib.contextmanager
def _tasks_stopped_on_signals():
    """While a local run runs: SIGINT (Ctrl-C) and SIGTERM stop its tasks and raise RunInterrupted
    in the run's thread. Tasks run in process groups of their own, so a terminal's Ctrl-C reaches
    them only through this. A second signal kills them at once. Outside the main thread (where
    Python cannot take signals) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    kill_timer = None

    def interrupted(signum, frame):
        nonlocal kill_timer
        if _STOPPING.is_set():  # the second: no more waiting
            _signal_tasks(signal.SIGKILL)
            return
        _STOPPING.set()
        _signal_tasks(signal.SIGTERM)
        # kfp.local waits for its worker threads' tasks before this exception reaches the
        # `finally` below: a task slow to stop would hold the run there, so the SIGKILL is timed
        # from here.
        kill_timer = threading.Timer(STOP_GRACE_SECONDS, _signal_tasks, (signal.SIGKILL,))
        kill_timer.daemon = True
        kill_timer.start()
        raise RunInterrupted(signum)

    previous = {signum: signal.signal(signum, interrupted) for signum in (signal.SIGINT, signal.SIGTERM)}
    _GUARDED.set()
    try:
        yield
    finally:
        try:
            if _STOPPING.is_set():
                _stop_tasks()
        finally:
            if kill_timer is not None:
                kill_timer.cancel()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            _GUARDED.clear()
            _STOPPING.clear()
            with _LIVE_LOCK:
                _LIVE_TASKS.clear()


def _after_interrupt(store_uri: str, model: str, run_id: str, log_path: str) -> str:
    """What an interrupted run leaves: whether its publish step published (the store's word: the
    step can be stopped between its rename and its output), and where its log is."""
    from tauforge.components.registry import ModelStore

    published = None
    with contextlib.suppress(Exception):  # no store yet, no model yet: nothing published
        store = ModelStore(store_uri)
        for version in reversed(store.versions(model)):
            if (store.card(model, version).get("run") or {}).get("run_id") == run_id:
                published = version
                break
    done = "nothing was published" if published is None else f"version {published} of {model} was published before it"
    return f"the run's tasks were stopped; {done}. The task logs are in {log_path}"


DOCKER_API_TIMEOUT = 600.0  # seconds a docker runner's task waits for each answer of the daemon


def _run_docker_container(client, image: str, command: list[str], volumes: dict, **container_run_args) -> int:
    """kfp.local's `run_docker_container` without its race: it runs the task's container with
    auto_remove, so a task that ends quickly can be removed before its logs are read; Docker then
    answers 409 ("dead or marked for removal", which kfp does not catch) and the run failed with a
    task that had succeeded (a clean `make test`, 2026-12-05). Here the container is
    removed only once its logs are read and its exit status known. The image is found (or
    pulled), and said, as kfp does."""
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    # kfp's client waits 60 s for each answer; a daemon busy starting a run's containers beside an
    # image build took longer, and the run failed with "Read timed out" (a test run, 2026-12-06).
    client.api.timeout = max(client.api.timeout or 0, DOCKER_API_TIMEOUT)
    image = add_latest_tag_if_not_present(image=image)
    if any(image in (found.tags + found.attrs["RepoDigests"]) for found in client.images.list()):
        print(f"Found image {image!r}\n")
    else:
        print(f"Pulling image {image!r}")
        client.images.pull(image)
        print("Image pull complete\n")
    if _STOPPING.is_set():
        return 128 + signal.SIGTERM
    from .container_reaper import run_label

    # Labelled for the reaper, which removes them if this process is killed with SIGKILL.
    labels = {**container_run_args.pop("labels", {}), **run_label()}
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, labels=labels, **container_run_args)
    with _LIVE_LOCK:
        _LIVE_TASKS.add(container)
    try:
        output = _TaskOutput()
        for chunk in container.logs(stream=True):
            output.show(chunk.decode(errors="replace"))
        code = container.wait()["StatusCode"]
        output.say_how_it_ended(code)  # a container's shell says 128 + n for a signal
        return code
    finally:
        container.remove(force=True)
        with _LIVE_LOCK:
            _LIVE_TASKS.discard(container)


def _published_version(root: str) -> int:
    """The version the publish step returned (its executor output, as kfp.local leaves it)."""
    with open(os.path.join(_step_dir(root, "publish-model"), "executor_output.json")) as f:
        return int(json.load(f)["parameterValues"]["Output"])


def _step_dir(root: str, task: str) -> str:
    """Where kfp.local left a task's outputs (<root>/<run>/<task>/<output>)."""
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) == task and files:
            return dirpath
    raise PipelineFailed(f"the {task} step left no outputs under {root}")


# The run's output kept in memory, for the failed task's error when its log could not be written.
TAIL_CHARS = 1 << 20


@contextlib.contextmanager
def _capture(log_file, progress):
    """Send everything the run prints (kfp.local logs to stdout, task output included) to
    `log_file`, and pass the lines our components print ("tauforge: ...") to `progress`."""
    class Tee(io.TextIOBase):
        """Where the run's output goes. It also keeps the output's last TAIL_CHARS characters: when
        the log file cannot be written (a full disk: what its buffer held is lost too), it stops
        writing there, and the failed task's error is read from that tail instead (`tail`, `error`),
        so that the run does not fail on its own log."""

        def __init__(self):
            self._pending = ""
            self.error: OSError | None = None
            self._tail: collections.deque[str] = collections.deque()
            self._tail_chars = 0

        def fail(self, exc: OSError) -> None:
            self.error = self.error or exc

        def tail(self) -> str:
            return "".join(self._tail)

        def write(self, s: str) -> int:
            if self.error is None:
                try:
                    log_file.write(s)
                except OSError as exc:
                    self.fail(exc)
            self._tail.append(s)
            self._tail_chars += len(s)
            while self._tail_chars - len(self._tail[0]) >= TAIL_CHARS:
                self._tail_chars -= len(self._tail.popleft())
            *lines, self._pending = (self._pending + s).split("\n")
            for line in lines:
                text = line.strip()
                if progress and text.startswith("tauforge: "):
                    progress(text[len("tauforge: "):])
            return len(s)

        def flush(self) -> None:
            if self.error is None:
                try:
                    log_file.flush()
                except OSError as exc:
                    self.fail(exc)

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
            yield tee
    finally:
        builtins.print = saved_print
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def submit(host: str, source: str, config: TrainingConfig, experiment: str | None = None,
           cluster: ClusterConfig | None = None, cache: bool = True, namespace: str | None = None) -> str:
    """Submit a run to Kubeflow Pipelines at `host`, its tasks set up as `cluster` says; return its
    run id. The data and the store must be where the cluster's pods can reach them: URIs (s3://,
    gs://) or absolute paths on a volume mounted in them. `cache=False` runs every task afresh
    (validate, publish and monitor never take a cached result anyway). `namespace`: the profile
    namespace of a multi-user Kubeflow the run and its experiment belong to (kfp's own default:
    none, which a multi-user backend refuses)."""
    import kfp

    for name, where in (("source", source), ("store", config.store)):
        if "://" not in where and not os.path.isabs(where):
            raise ConfigError(name, f"must be a URI the cluster's pods can reach (s3://..., gs://...) or an "
                                    f"absolute path on a volume mounted in them, got {where!r}")
    try:  # the protocol only: the pods reach the store with their own volumes and credentials
        check_store(config.store, here=False)
    except StoreError as exc:
        raise ConfigError("store", str(exc)) from None
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(os.path.join(tmp, "pipeline.yaml"), config.nuisance.folds, config.n_shards,
                                   bootstrap_shards=config.bootstrap_tasks(), fold_tasks=config.fold_tasks,
                                   cluster=cluster)
        try:
            with warnings.catch_warnings():  # kfp's "only works with v2.0.0-beta.2 and later", at every call
                warnings.filterwarnings("ignore", "This client only works", FutureWarning)
                client = kfp.Client(host=host)
            result = client.create_run_from_pipeline_package(
                package, arguments=pipeline_arguments(source, config), experiment_name=experiment,
                run_name=f"tauforge-{config.model_name}-{uuid.uuid4().hex[:8]}",
                enable_caching=None if cache else False, namespace=namespace or None)
        except Exception as exc:  # the client raises urllib3, ApiException, ValueError... all mean "not submitted"
            reason = str(exc).splitlines()[0][:300]
            raise PipelineFailed(f"could not submit to Kubeflow Pipelines at {host}: {type(exc).__name__}: "
                                 f"{reason}") from None
    return result.run_id
