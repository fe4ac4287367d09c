"""The `tauforge` command line.

    tauforge run      train, evaluate and publish a causal model (the KFP pipeline, run locally)
    tauforge compile  write the training or monitoring pipeline as KFP IR YAML for the Kubeflow UI
    tauforge submit   send a training run to Kubeflow Pipelines
    tauforge models   list | show | diff | promote | rollback published models
    tauforge serve    serve a published model on KServe's model server (canary, shadow)
    tauforge deploy   write (and apply) the KServe and Istio objects that serve a version
    tauforge monitor  check served traffic for drift; judge the champion against the challenger
    tauforge demo     fit the forest in-process on simulated data and compare with the truth

Errors in what the user gave (flags, data) exit with status 2 and a message naming the
problem; a run whose quality gate fails exits with status 1 and says why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from tauforge import __version__
from tauforge.components.constants import (
    ASSIGNMENTS,
    DEFAULT_FOLD_TASKS,
    DEFAULT_FOLDS,
    DEFAULT_MODEL_NAME,
    DEFAULT_STORE,
    DEFAULT_TREES,
    MONITOR_ALPHA,
    STORE_ENV,
    TREATMENT_TYPES,
)


def _given(value, default):
    """A flag's value, or its default where it was not given (None)."""
    return default if value is None else value


def _demo(args: argparse.Namespace) -> int:
    if not 0 <= args.seed <= 2**32 - 2:  # NumPy's seeds; the fresh rows are drawn with seed + 1
        raise ValueError(f"--seed must be an integer from 0 to 2**32 - 2, got {args.seed}")
    if args.n < 2:
        raise ValueError(f"--n {args.n}: a causal forest needs at least 2 training rows (in practice hundreds)")
    if args.n_test < 1:
        raise ValueError(f"--n-test {args.n_test}: the CATE's error needs at least 1 fresh row to score")
    if args.trees % 2:  # refused before any fit: the demo always reports CATE intervals
        raise ValueError(f"--trees {args.trees} is odd: the demo's CATE intervals need little bags of 2 trees, "
                         "give an even number")
    from tauforge.kernels import CausalForestDML
    from tauforge.kernels.datasets import make_causal_data

    try:
        train = make_causal_data(args.design, n=args.n, p=args.p, seed=args.seed)
        test = make_causal_data(args.design, n=args.n_test, p=args.p, seed=args.seed + 1)
    except ValueError as exc:
        raise ValueError(f"--design {args.design} --p {args.p}: {exc}") from None
    start = time.perf_counter()
    # Progress on stderr: a bar on a terminal, log lines elsewhere (kernels.progress).
    est = CausalForestDML(n_estimators=args.trees, device=args.device, random_state=args.seed, progress=True)
    try:
        est.fit(train.Y, train.T, X=train.X)
    except ValueError as exc:  # the settings' fault, said with the flags that set them
        raise ValueError(f"the demo's fit on --n {args.n} rows, --p {args.p}, --trees {args.trees}: {exc}") from None
    fit_seconds = time.perf_counter() - start
    tau = est.effect(test.X)
    lower, upper = est.effect_interval(test.X, alpha=0.05)
    ate_lower, ate_upper = est.ate_interval(alpha=0.05)
    result = {
        "design": args.design, "n": args.n, "p": args.p, "trees": args.trees, "seed": args.seed,
        "device": str(est.forest_.device_), "fit_seconds": round(fit_seconds, 3),
        "ate": est.ate_, "ate_stderr": est.ate_stderr_, "ate_lower": ate_lower, "ate_upper": ate_upper,
        "true_ate": train.ate,
        "cate_rmse": float(np.sqrt(np.mean((tau - test.tau) ** 2))),
        "cate_coverage": float(np.mean((lower <= test.tau) & (test.tau <= upper))),
        "cate_interval_width": float(np.mean(upper - lower)),
        "nuisance_scores": {k: float(np.mean(v)) for k, v in est.nuisance_scores_.items()},
    }
    if args.json:
        print(_strict_json(result))
        return 0
    covered = "covers" if ate_lower <= train.ate <= ate_upper else "MISSES"
    print(f"tauforge demo: design '{args.design}', n={args.n}, p={args.p}, {args.trees} trees on "
          f"{result['device']}, fit in {fit_seconds:.1f} s")
    print(f"  ATE  {est.ate_:.4f}  95% CI [{ate_lower:.4f}, {ate_upper:.4f}]  "
          f"(true {train.ate:.4f}; the interval {covered} it)")
    print(f"  CATE on {args.n_test} fresh rows: RMSE {result['cate_rmse']:.4f} against the true effect; "
          f"95% intervals cover it at {100 * result['cate_coverage']:.1f}% of rows "
          f"(mean width {result['cate_interval_width']:.3f})")
    scores = ", ".join(f"{k} {v:.3f}" for k, v in result["nuisance_scores"].items())
    print(f"  nuisance out-of-fold: {scores}")
    return 0



def _progress(line: str) -> None:
    """A progress line on stderr (stdout carries the result)."""
    print(f"  {line}", file=sys.stderr, flush=True)


def _store_uri(args: argparse.Namespace) -> str:
    """--store, else $TAUFORGE_STORE, else the default local store."""
    return args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE  # checked by _check_uris


def _existing_store(args: argparse.Namespace) -> str:
    """The store a command reads from; a local one must be a folder: a mistyped path is not an
    empty store (serve and monitor had said the model had "no published version" in it)."""
    from tauforge.components.registry import ModelStore

    store = ModelStore(_store_uri(args))
    if store.local and not os.path.isdir(store.root):
        problem = "is a file, not a folder" if os.path.exists(store.root) else "does not exist"
        given = ("--store" if args.store else f"${STORE_ENV}" if os.environ.get(STORE_ENV)
                 else "the default store (no --store given)")
        raise ValueError(f"{given} {store.uri}: {store.root} {problem}")
    return store.uri


def _shown(path: str) -> str:
    """A path as the user would write it: relative to the working directory when inside it."""
    if "://" in path:
        from tauforge.components.config import redacted_uri

        return redacted_uri(path)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _check_output(path: str, flag: str, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder where a file is
    to go (or the reverse), a file where a folder is needed above it, or a folder not writable."""
    kind, other = ("folder", "file") if folder else ("file", "folder")
    full = os.path.abspath(path)
    if not folder and os.path.exists(full) and not os.path.isdir(full) and not os.path.isfile(full):
        if not os.access(full, os.W_OK):  # a device or a pipe (/dev/stdout) is written as it is, in place
            raise ValueError(f"{flag} {path} cannot be written by uid {os.geteuid()}")
        return
    if os.path.exists(full) and os.path.isdir(full) != folder:
        raise ValueError(f"{flag} {path} is a {other}; give the path of a {kind}")
    parent = full if folder else os.path.dirname(full)
    while not os.path.exists(parent):  # made when written
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path} cannot be written: {_shown(parent)} is a file, not a folder; "
                         f"give a path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} cannot be written: {_shown(parent)} is not writable by uid {os.geteuid()}")


# The flag behind each setting of a training run, so that a bad setting is reported as the flag
# the user typed (the settings' own checks name the setting).
TRAINING_FLAGS = {"trees": "--trees", "n_shards": "--shards", "fold_tasks": "--fold-tasks", "seed": "--seed",
                  "store": "--store", "model_name": "--name", "estimator": "--estimator", "device": "--device",
                  "bootstrap_shards": "--bootstrap-shards", "n_bootstrap": "--bootstrap", "source": "--data",
                  "runner": "--runner", "graph": "--graph"}
NUISANCE_FLAGS = {"folds": "--folds", "model_y": "--model-y", "model_t": "--model-t",
                  "reweight": "--reweight-nuisance"}
BOOTSTRAP_FLAGS = {"n_bootstrap": "--bootstrap", "trees": "--bootstrap-trees", "interval": "--bootstrap-interval",
                   "nuisance": "--bootstrap-nuisance"}


@contextlib.contextmanager
def _as_flags(flags: dict[str, str], prefix: str = ""):
    """Report a ConfigError raised inside as a ValueError naming the flag of its setting."""
    from tauforge.components.config import ConfigError

    try:
        yield
    except ConfigError as exc:
        raise ValueError(f"{flags.get(exc.field, prefix + exc.field)} {exc.problem}") from None


def _parse_gate(items: list[str]) -> object:
    from tauforge.components.evaluate import GateConfig

    gate = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--gate takes KEY=VALUE, got {item!r}")
        gate[key.strip()] = value.strip()
    with _as_flags({"gate": "--gate"}, prefix="--gate "):
        return GateConfig.from_dict(gate)


def _training_setup(args: argparse.Namespace) -> tuple[str, object, float | None]:
    """(source, TrainingConfig, the demo's true ATE or None) from the run/submit flags."""
    from tauforge.components.config import refit_workers_from_environment
    from tauforge.components.data import DEMO_OUTCOME, DEMO_TREATMENT, DataSpec, demo_table
    from tauforge.components.estimate import BootstrapConfig
    from tauforge.components.graph import CausalGraph
    from tauforge.components.nuisance import NuisanceConfig
    from tauforge.pipelines.config import TrainingConfig

    if args.command == "run":
        _check_output(args.pipeline_root, "--pipeline-root", folder=True)
        refit_workers_from_environment()  # read by the evaluate task, after every fit
    if args.demo:
        if args.data:
            raise ValueError("pass --data PATH or --demo, not both")
        if args.command == "submit":
            raise ValueError("--demo writes a local file a cluster cannot read; upload the data and pass "
                             "--data URI (s3://, gs://, or a path mounted in the pipeline's pods)")
        source = os.path.abspath(os.path.join(args.pipeline_root, f"demo-{args.seed}.parquet"))
        # A walkthrough: --treatment x0 ran, and its effect was judged against the truth of T's.
        for flag, given, own in (("--treatment", args.treatment, DEMO_TREATMENT), ("--outcome", args.outcome,
                                                                                   DEMO_OUTCOME)):
            if given not in (None, own):
                raise ValueError(f"{flag} {given}: the demo table's {flag[2:]} is {own}, whose true effect the run "
                                 f"reports beside its estimate; drop {flag}, or pass a table of your own with --data")
        treatment, outcome = DEMO_TREATMENT, DEMO_OUTCOME
    else:
        if not args.data:
            raise ValueError("pass --data PATH (Parquet or CSV) or --demo")
        if not (args.treatment and args.outcome):
            raise ValueError("--treatment COL and --outcome COL are required with --data")
        # A relative path is this machine's: submit refuses it (training.submit) rather than send it to a cluster.
        source = args.data if "://" in args.data or args.command == "submit" else os.path.abspath(args.data)
        treatment, outcome = args.treatment, args.outcome
    if (args.assignment == "randomized") != (args.propensity is not None):
        raise ValueError("--assignment randomized and --propensity P go together (P: the known probability of "
                         "treatment)")
    if args.propensity is not None and not 0 < args.propensity < 1:
        raise ValueError(f"--propensity must be in (0, 1), got {args.propensity}")
    spec = DataSpec(outcome=outcome, treatment=treatment, covariates=args.covariates or [],
                    controls=args.controls or [], unit_id=args.unit_id, weight=args.weight, group=args.group,
                    timestamp=args.timestamp, treatment_type=args.treatment_type,
                    assignment=args.assignment, propensity=args.propensity)
    with _as_flags(NUISANCE_FLAGS):
        nuisance = NuisanceConfig(model_y=args.model_y, model_t=args.model_t, folds=args.folds,
                                  reweight=args.reweight_nuisance)
    given = [flag for flag, value in (("--bootstrap-shards", args.bootstrap_shards),
                                      ("--bootstrap-trees", args.bootstrap_trees),
                                      ("--bootstrap-interval", args.bootstrap_interval),
                                      ("--bootstrap-nuisance" if args.bootstrap_nuisance else "--no-bootstrap-nuisance",
                                       args.bootstrap_nuisance)) if value is not None]
    if given and not args.bootstrap:
        raise ValueError(f"{given[0]} sets the full bootstrap, which is off: add --bootstrap B (replicates)")
    defaults = BootstrapConfig()
    with _as_flags(BOOTSTRAP_FLAGS):
        bootstrap = BootstrapConfig(
            n_bootstrap=args.bootstrap, trees=_given(args.bootstrap_trees, defaults.trees),
            interval=_given(args.bootstrap_interval, defaults.interval),
            nuisance=_given(args.bootstrap_nuisance, defaults.nuisance))
    args.bootstrap_shards = _given(args.bootstrap_shards, 1)
    # EconML grows its trees in one task: its default is one shard.
    shards = args.shards if args.shards is not None else (1 if args.estimator == "econml" else 2)
    with _as_flags(TRAINING_FLAGS):
        graph = CausalGraph.read(args.graph) if args.graph else None
        config = TrainingConfig(spec=spec, store=_store_uri(args), model_name=args.name, nuisance=nuisance,
                                trees=args.trees, device=args.device, estimator=args.estimator, n_shards=shards,
                                fold_tasks=args.fold_tasks, seed=args.seed, gate=_parse_gate(args.gate),
                                bootstrap=bootstrap, bootstrap_shards=args.bootstrap_shards, graph=graph)
    true_ate = None
    if args.demo:  # drawn once the settings (its seed too) are found sound: a refused run left it behind
        from tauforge.kernels.serialization import replaced_whole

        table, true_ate = demo_table(n=5000, seed=args.seed)
        args.demo_made_root = not os.path.exists(args.pipeline_root)  # removed again if the run is refused
        os.makedirs(args.pipeline_root, exist_ok=True)
        # Runs in one --pipeline-root with one seed share this file: it is replaced whole (another
        # run's validate task may be reading it), and a refused run removes it only if it made it
        # and it is still the file it wrote (each write is a new inode: another run's rewrite stays).
        made = not os.path.exists(source)
        with replaced_whole(source, binary=True) as f:
            table.to_parquet(f, index=False)
        args.demo_inode = os.stat(source).st_ino if made else None
    return source, config, true_ate


def _run(args: argparse.Namespace) -> int:
    from tauforge.pipelines.config import absolute
    from tauforge.pipelines.training import run_local

    source, config, true_ate = _training_setup(args)
    stderr = sys.stderr  # the run redirects sys.stderr to its log; progress goes to the terminal
    say = (lambda line: print(f"  {line}", file=stderr, flush=True)) if not args.quiet else None
    began = []

    def started():  # once the checks before any task have passed: a failed check names no logs
        began.append(True)
        if say:
            say(f"running the training pipeline on {_shown(source)} (kfp.local; logs in {_shown(args.pipeline_root)})")

    start = time.perf_counter()
    try:
        with _as_flags({**TRAINING_FLAGS, **NUISANCE_FLAGS}):
            run = run_local(source, config, pipeline_root=args.pipeline_root, log=say, fan_in=args.fan_in,
                            runner=args.runner, started=started)
    except BaseException:
        if args.demo and not began and getattr(args, "demo_inode", None) is not None:  # refused here: no table left
            with contextlib.suppress(OSError):
                if os.stat(source).st_ino == args.demo_inode:
                    os.remove(source)
                if args.demo_made_root:  # and the folder it made for it (a walkthrough: an empty one was left)
                    os.rmdir(args.pipeline_root)  # only if empty: another run may have written there since
        raise
    version = run.version
    effect, verdict = run.evaluation["effect"], run.evaluation["verdict"]
    result = {"model": config.model_name, "version": version, "store": absolute(config.store), "run_id": run.run_id,
              "gate_passed": run.gate_passed, "reasons": verdict["reasons"], "warnings": verdict["warnings"],
              "ate": effect["ate"], "ate_stderr": effect["ate_stderr"], "ate_lower": effect["ate_lower"],
              "ate_upper": effect["ate_upper"], "seconds": round(time.perf_counter() - start, 1),
              "report": run.report_path, "outputs": run.run_dir, "log": run.log_path}
    if true_ate is not None:
        result["true_ate"] = true_ate
    if args.json:
        print(_strict_json(result))
    else:
        def four(v) -> str:  # evaluation.json is strict JSON: a number that was not finite is null
            return "n/a" if v is None else f"{v:.4f}"

        print(f"tauforge run: {_shown(source)}")
        print(f"  {effect['estimand']} {four(effect['ate'])}  "
              f"95% CI [{four(effect['ate_lower'])}, {four(effect['ate_upper'])}]  "
              f"({effect['method']}; interval: {effect['ate_interval']})")
        if true_ate is not None:
            bounds = (effect["ate_lower"], effect["ate_upper"])
            covers = "covers" if None not in bounds and bounds[0] <= true_ate <= bounds[1] else "MISSES"
            print(f"  true {effect['estimand']} of the simulated demo data {true_ate:.4f}: the interval {covers} it")
        for w in verdict["warnings"]:
            print(f"  warning: {w}")
        if run.gate_passed:
            print(f"  gate passed: published {config.model_name} version {version} to {_shown(result['store'])} "
                  f"in {result['seconds']} s")
        else:
            print("  gate FAILED, nothing published:")
            for r in verdict["reasons"]:
                print(f"    - {r}")
        print(f"  report: {_shown(run.report_path)}")
    return 0 if run.gate_passed else 1


CLUSTER_FLAGS = {"image": "--image", "cuda_image": "--cuda-image", "cpu": "--cpu", "memory": "--memory",
                 "compute_cpu": "--compute-cpu", "compute_memory": "--compute-memory",
                 "gpus_per_shard": "--gpus-per-shard", "accelerator_type": "--accelerator-type",
                 "gpu_node_selector": "--gpu-node-selector", "gpu_tolerations": "--gpu-toleration",
                 "shard_retries": "--shard-retries", "store_secret": "--store-secret",
                 "store_secret_keys": "--store-secret-key"}


def _cluster(args: argparse.Namespace):
    """The ClusterConfig of the compile/submit flags."""
    from tauforge.components._kfp import IMAGE
    from tauforge.pipelines.config import ClusterConfig

    selectors = []
    for item in args.gpu_node_selector or []:
        label, sep, value = item.partition("=")
        if not (sep and label and value):
            raise ValueError(f"--gpu-node-selector takes LABEL=VALUE, got {item!r}")
        selectors.append((label, value))
    if args.store_secret_key and not args.store_secret:
        raise ValueError("--store-secret-key needs --store-secret NAME, the Secret that holds the key")
    tolerations = []
    for item in args.gpu_toleration or []:
        key_value, _, effect = item.partition(":")
        key, _, value = key_value.partition("=")
        tolerations.append((key, value, effect))
    with _as_flags(CLUSTER_FLAGS):
        return ClusterConfig(image=IMAGE if args.image is None else args.image, cuda_image=args.cuda_image or "",
                             cpu=args.cpu,
                             memory=args.memory, compute_cpu=args.compute_cpu, compute_memory=args.compute_memory,
                             gpus_per_shard=args.gpus_per_shard, accelerator_type=args.accelerator_type,
                             gpu_node_selector=tuple(selectors), gpu_tolerations=tuple(tolerations),
                             shard_retries=args.shard_retries, store_secret=args.store_secret or "",
                             # the keys given are added to the default ones, as --help says
                             store_secret_keys=tuple(dict.fromkeys([*ClusterConfig.store_secret_keys,
                                                                    *(args.store_secret_key or [])])))


def _compile(args: argparse.Namespace) -> int:
    from tauforge.pipelines.training import compile_pipeline

    args.out = args.out or f"tauforge-{args.pipeline}.yaml"  # the monitoring one must not overwrite the training one
    to_stdout = args.out == "-"  # the YAML alone on stdout, as `deploy --out -` (a walkthrough: a file named '-')
    if not to_stdout:
        _check_output(args.out, "--out")
    cluster = _cluster(args)
    with tempfile.TemporaryDirectory() as scratch, _as_flags(
            {"n_folds": "--folds", "n_shards": "--shards", "bootstrap_shards": "--bootstrap-shards",
             "fold_tasks": "--fold-tasks", "fan_in": "--fan-in", "pipeline": "--pipeline", "deploy": "--deploy"}):
        path = compile_pipeline(os.path.join(scratch, "pipeline.yaml") if to_stdout else args.out, args.folds,
                                args.shards, pipeline=args.pipeline, bootstrap_shards=args.bootstrap_shards,
                                fold_tasks=args.fold_tasks, cluster=cluster, fan_in=args.fan_in, deploy=args.deploy)
        if to_stdout:
            with open(path, encoding="utf-8") as f:
                sys.stdout.write(f.read())
            return 0
    print(f"wrote {path}: the {args.pipeline} pipeline ({args.folds} nuisance folds in {args.fold_tasks} tasks, "
          f"{args.shards} forest shards"
          + (f", {args.bootstrap_shards} bootstrap shards" if args.bootstrap_shards else "")
          + (f", {cluster.gpus_per_shard} x {cluster.accelerator_type} per shard on {cluster.gpu_image()}"
             if cluster.gpus_per_shard else "")
          + f", {args.fan_in} fan-in" + (", a deploy step" if args.deploy else "") + f") on {cluster.image}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from tauforge.pipelines.training import submit

    source, config, _ = _training_setup(args)
    cluster = _cluster(args)
    if config.device.startswith("cuda") and not cluster.gpus_per_shard:
        raise ValueError(f"--device {config.device} needs GPU shards: add --gpus-per-shard N (no task of this "
                         "pipeline would have a GPU)")
    with _as_flags(TRAINING_FLAGS):
        run_id = submit(args.host, source, config, experiment=args.experiment, cluster=cluster,
                        cache=not args.no_cache, namespace=args.namespace)
    print(json.dumps({"run_id": run_id, "host": args.host}) if args.json else f"submitted run {run_id} to {args.host}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from tauforge.components.registry import ModelStore, StoreError, card_part, check_store

    if args.action is None:
        raise ValueError("models needs an action: list, show, diff, promote or rollback")
    store = ModelStore(_store_uri(args))
    if args.refs and args.action != "diff":
        raise ValueError(f"models {args.action} takes no versions as arguments ({' '.join(args.refs)}): "
                         "use --version V")
    # A flag an action does not read is refused, not ignored (`show --alias x` showed the latest).
    if args.version is not None and args.action not in ("show", "promote"):
        raise ValueError(f"models {args.action} takes no --version" + (": give the two versions as arguments"
                                                                       if args.action == "diff" else ""))
    if args.alias is not None and args.action not in ("promote", "rollback"):
        raise ValueError(f"models {args.action} takes no --alias" + (": pass the alias as --version"
                                                                     if args.action == "show" else ""))
    if args.alias == "":  # `--alias "$ALIAS"` with the variable unset would move the champion
        raise ValueError("--alias is empty: give an alias name, or leave --alias out for 'champion'")
    args.alias = args.alias or "champion"
    if args.action == "diff" and len(args.refs) != 2:
        raise ValueError(f"models diff takes two versions (numbers or aliases), got {len(args.refs)}: "
                         f"tauforge models diff --name MODEL V1 V2")
    _existing_store(args)  # after the arguments' own checks
    if args.action == "list":
        if args.name:
            store.resolve(args.name)  # a model that is not there is an error, not an empty listing
        names = [args.name] if args.name else store.models()
        rows, damaged = [], []
        for name in names:
            try:
                aliases = store.aliases(name)
            except StoreError as exc:  # a damaged aliases file must not hide the other models either
                damaged.append(str(exc))
                aliases = {}
            versions = store.versions(name)
            damaged += [f"{name}: alias {a!r} points at version {e['version']}, which is not published (versions: "
                        f"{versions}); serving it would fail: promote another version"
                        for a, e in sorted(aliases.items()) if e["version"] not in versions]
            for v in versions:
                try:
                    card = store.card(name, v)
                except StoreError as exc:  # one damaged version must not hide the others
                    damaged.append(f"{name} version {v}: {exc}")
                    continue
                # A card published through the Python API may lack parts, or hold null where one is:
                # read as empty, not an AttributeError that hid every model.
                effect, data = card_part(card, "effect"), card_part(card, "data")
                rows.append({"model": name, "version": v, "created": card.get("created"), "ate": effect.get("ate"),
                             "ate_lower": effect.get("ate_lower"), "ate_upper": effect.get("ate_upper"),
                             "rows": data.get("rows"),
                             "aliases": [a for a, e in sorted(aliases.items()) if e["version"] == v]})
        if args.json:
            print(_strict_json(rows))  # the problems go to stderr, as in text, and the exit code is 1
        elif not rows:
            if not store.local:  # nor a mistyped bucket (asked only now: HeadBucket needs more than a listing)
                check_store(store.uri)
            print(f"no models in {store.uri}")
        else:
            print(f"{'MODEL':20} {'VERSION':>7}  {'CREATED':25} {'ATE':>9}  {'95% CI':22} {'ROWS':>8}  ALIASES")
            for r in rows:
                ci = f"[{_number(r['ate_lower'], '.4f')}, {_number(r['ate_upper'], '.4f')}]"
                print(f"{r['model']:20} {r['version']:>7}  {_number(r['created'], '')[:25]:25} "
                      f"{_number(r['ate'], '.4f'):>9}  {ci:22} {_number(r['rows'], ''):>8}  {','.join(r['aliases'])}")
        for problem in damaged:
            print(f"tauforge models: {problem}", file=sys.stderr)
        return 1 if damaged else 0
    if not args.name:
        raise ValueError(f"models {args.action} needs --name MODEL")
    if args.action == "show":
        version = store.resolve(args.name, args.version)
        print(_strict_json(store.card(args.name, version), indent=2, sort_keys=True))
        return 0
    if args.action == "diff":
        return _models_diff(store, args)
    if args.action == "promote":
        if args.version is None:
            raise ValueError("models promote needs --version V")
        entry = store.set_alias(args.name, args.alias, store.resolve(args.name, args.version))
    else:  # rollback
        entry = store.rollback(args.name, args.alias)
    print(json.dumps({"model": args.name, "alias": args.alias, **entry}) if args.json else
          f"{args.name}: {args.alias} -> version {entry['version']}")
    return 0


def _strict_json(value, **kwargs) -> str:
    """JSON strict readers take: a NaN or infinity (a card's from before 2026-12-06, a monitor
    result's) as null."""
    from tauforge.kernels.serialization import finite_json

    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def _number(value, spec: str) -> str:
    """A card's number as text; n/a where it is missing or not a number."""
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if spec and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "n/a"  # a number's format for text (a hand-made card's "0.3") failed the whole listing
    return format(value, spec)


def _brief(value):
    """A setting as `models diff` shows it: a list of numbers (the candidate weights a fit chose,
    one per covariate) to 3 significant digits, and a long one cut (`--json` has every digit)."""
    if not (isinstance(value, list) and value and all(isinstance(v, float) for v in value)):
        return value
    shown = ", ".join(f"{v:.3g}" for v in value[:6])
    return f"[{shown}" + (f", ... ({len(value)} values)]" if len(value) > 6 else "]")


def _models_diff(store, args: argparse.Namespace) -> int:
    """`models diff V1 V2`: what changed from one version's card to the other's."""
    from tauforge.components.registry import diff_cards

    old, new = (store.card(args.name, store.resolve(args.name, ref)) for ref in args.refs)
    d = diff_cards(old, new)
    if args.json:
        print(_strict_json(d))
        return 0

    def short(digest):
        return digest[:12] if digest else "none"

    def changes(part: dict, what: str) -> list[str]:
        return [f"    + {what}: {x}" for x in part["added"]] + [f"    - {what}: {x}" for x in part["removed"]]

    lines = [f"{args.name}: version {d['from']['version']} -> version {d['to']['version']}"]
    g = d["graph"]
    if not g["changed"]:
        lines.append(f"  graph: same ({'sha256 ' + short(g['sha256'][0]) if g['given'][0] else 'none given'})")
    else:
        lines.append("  graph: " + " -> ".join(f"sha256 {short(h)}" if given else "none given"
                                               for h, given in zip(g["sha256"], g["given"])))
        for key in ("edges", "nodes", "latent"):
            lines += [f"    + {key[:-1] if key != 'latent' else 'latent'} {x}" for x in g[f"{key}_added"]]
            lines += [f"    - {key[:-1] if key != 'latent' else 'latent'} {x}" for x in g[f"{key}_removed"]]
    a = d["assumptions"]
    lines.append("  assumptions: " + ("changed" if a["changed"] else "same"))
    lines += changes(a, "assumption")
    data = d["data"]
    lines.append(f"  data: {'changed' if data['changed'] else 'same'} (fingerprint "
                 + " -> ".join(short(f) for f in dict.fromkeys(data["fingerprint"])) + ", rows "
                 + " -> ".join(_number(r, "") for r in dict.fromkeys(data["rows"])) + ")")
    sp = d["spec"]
    lines.append("  columns: " + ("changed" if sp["changed"] else "same"))
    for role in ("covariates", "controls"):
        lines += changes(sp[role], role[:-1])
    lines += [f"    {k}: {v[0]} -> {v[1]}" for k, v in sp["fields"].items()]
    est = d["estimator"]
    lines.append("  estimator: " + ("changed" if est["changed"] else "same"))
    lines += [f"    {k}: {_brief(v[0])} -> {_brief(v[1])}" for k, v in est["settings"].items()]
    n = d["nuisance"]
    lines.append("  nuisance learners: " + ("changed" if n["changed"] else "same"))
    lines += [f"    {k}: {v[0]} -> {v[1]}" for k, v in n["learners"].items()]
    lines += [f"    out-of-fold {k}: {_number(v[0], '.4g')} -> {_number(v[1], '.4g')}" for k, v in n["scores"].items()]
    gate = d["gate"]
    lines.append("  gate: " + " -> ".join("n/a" if p is None else "passed" if p else "failed" for p in gate["passed"]))
    if gate["thresholds"] is None:
        lines.append("    thresholds: not recorded in the older card")
    lines += [f"    threshold {k}: {v[0]} -> {v[1]}" for k, v in (gate["thresholds"] or {}).items()]
    lines += changes(gate["reasons"], "reason") + changes(gate["warnings"], "warning")
    lines += [f"    {k}: {_number(v[0], '.4g')} -> {_number(v[1], '.4g')}" for k, v in gate["checks"].items()]
    e = {k: [_number(x, ".4f") for x in v] for k, v in d["effect"].items()}
    lines.append(f"  ATE: {e['ate'][0]} [{e['ate_lower'][0]}, {e['ate_upper'][0]}] -> "
                 f"{e['ate'][1]} [{e['ate_lower'][1]}, {e['ate_upper'][1]}]")
    print("\n".join(lines))
    return 0


def _serve(args: argparse.Namespace) -> int:
    # OMP_WAIT_POLICY=PASSIVE (set by main) matters most here: after every request's parallel tree
    # walk, spinning threads took the cores the server's event loop needed (p99 34 ms -> 12 ms at
    # 100 req/s, tests/benchmarks/bench_serving.py).
    # KServe's REST server answers with FastAPI's ORJSONResponse, deprecated since: nothing a
    # user of `serve` can act on, printed at every start.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    if args.challenger and args.mode == "single":
        raise ValueError(f"--challenger {args.challenger} needs --mode canary or --mode shadow (single serves the "
                         "champion alone)")
    # A flag another mode reads would be ignored without a word (a user review: --percent 50 without
    # --mode canary served no canary).
    for flag, value, modes in (("--percent", args.percent, ("canary", "shadow")),
                               ("--shadow-timeout", args.shadow_timeout, ("shadow",))):
        if value is not None and args.mode not in modes:
            raise ValueError(f"{flag} {value:g} is for --mode {' or '.join(modes)}; this serves --mode {args.mode}")
    if args.log_dir and "://" not in args.log_dir and os.path.exists(args.log_dir) and not os.path.isdir(args.log_dir):
        # It failed once the model was loaded, with exit 1 and "File exists" (a CLI review).
        raise ValueError(f"--log-dir {args.log_dir} is a file: give a folder (made if missing) or an object-store "
                         "URI for the event log")
    if args.model_dir and args.store:
        raise ValueError(f"--store {args.store} and --model-dir: pass --store and --model to serve from the store, "
                         "or --model-dir alone")
    from tauforge.serving.server import build_model, check_ports, serve

    check_ports(args.host, args.port, args.grpc_port)  # before the model's load and warm-up
    store = None if args.model_dir else _existing_store(args)
    model = build_model(store=store, model=args.model, version=args.version, challenger=args.challenger,
                        mode=args.mode, percent=args.percent, explore=args.explore, log_dir=args.log_dir,
                        model_dir=args.model_dir, shadow_timeout=args.shadow_timeout, device=args.device,
                        role=args.role)
    champion, challenger = model.scorers["champion"], model.scorers["challenger"]
    print(f"tauforge serve: {model.name} version {champion.version}"
          + (f", challenger version {challenger.version} ({args.mode}"
             + (f", {model.routing.percent:g}%)" if args.mode != "single" else ")") if challenger else "")
          + f" on http://{args.host}:{args.port} (V1 /v1/models/{model.name}:predict, "
            f"V2 /v2/models/{model.name}/infer, /metrics" + (f"; gRPC on {args.host}:{args.grpc_port}"
                                                             if args.grpc_port else "") + ")",
          file=sys.stderr, flush=True)
    serve(model, port=args.port, host=args.host, grpc_port=args.grpc_port)
    if model.event_log is not None and model.event_log.lost_rows:  # a pod's exit then says so
        raise RuntimeError(f"the event log lost {model.event_log.lost_rows} records it could not write to "
                           f"{args.log_dir} (the warnings above say why)")
    return 0


DEPLOY_FLAGS = {"model": "--model", "name": "--name", "namespace": "--namespace", "mode": "--mode",
                "percent": "--percent", "store": "--store", "champion_version": "--champion-version",
                "gpus": "--gpus", "service_account": "--service-account", "router": "--router", "cpu": "--cpu",
                "memory": "--memory", "explore": "--explore", "raw": "--raw", "store_secret": "--store-secret",
                "version": "--version", "event_log": "--event-log"}


def _deployed_version(store: str, model: str, ref: str, flag: str) -> int:
    """The version a number or an alias names (an alias read from the store as this machine
    reaches it); the manifests pin that number (an InferenceService names one version folder)."""
    from tauforge.components.registry import ModelStore

    if ref.isdigit():
        return int(ref)
    try:
        return ModelStore(store).resolve(model, ref)
    except (ValueError, ImportError, OSError) as exc:
        raise ValueError(f"{flag} {ref!r}: give a version number, or an alias this machine can read from "
                         f"--store ({exc})") from None


def _deploy(args: argparse.Namespace) -> int:
    import yaml

    from tauforge.components.deploy import DeploySpec, apply, render, wait_ready, write

    # A flag another mode reads would be ignored without a word (a walkthrough: --percent 50 without
    # --mode canary wrote a replace, every request to the new version), as `serve` refuses them.
    router = args.router or DeploySpec.router  # the spec's default, for the checks and their messages
    shared = args.mode in ("canary", "shadow")
    for flag, given, applies, where in (
            ("--percent", args.percent, shared, "--mode canary or --mode shadow"),
            ("--router", args.router, shared, "--mode canary or --mode shadow"),
            ("--image", args.image, shared and router == "predictor", "a canary or shadow with --router predictor"),
            ("--store-secret", args.store_secret, shared and router == "predictor",
             "a canary or shadow with --router predictor"),
            ("--wait", args.wait, args.apply, "--apply")):
        if given is not None and not applies:
            shown = f"{given:g}" if isinstance(given, float) else given
            this = ("this writes the YAML only" if flag == "--wait" else
                    f"this writes --mode {args.mode}" + (f" with --router {router}" if shared else ""))
            raise ValueError(f"{flag} {shown} is for {where}; {this}")
    store = args.store or os.environ.get(STORE_ENV) or ""
    version = _deployed_version(store, args.model, args.version, "--version")
    champion = (None if args.champion_version is None
                else _deployed_version(store, args.model, args.champion_version, "--champion-version"))
    with _as_flags(DEPLOY_FLAGS):  # every setting checked before anything is written
        spec = DeploySpec(model=args.model, version=version, mode=args.mode, namespace=args.namespace,
                          store=store, name=args.name or "", champion_version=champion,
                          cpu=args.cpu, memory=args.memory, gpus=args.gpus, service_account=args.service_account,
                          event_log=args.event_log or "", explore=args.explore, raw=args.raw,
                          **{key: value for key, value in (("percent", args.percent), ("router", args.router),
                                                           ("image", args.image), ("store_secret", args.store_secret))
                             if value is not None})
    objects = render(spec)
    if args.out == "-":  # the YAML alone on stdout, for `| kubectl apply -f -`
        if args.apply:
            raise ValueError("--out - writes the YAML to stdout for kubectl; --apply applies it here: pass one")
        print(yaml.safe_dump_all(objects, sort_keys=False), end="")
        return 0
    _check_output(args.out, "--out", folder=True)
    try:
        written = write(objects, args.out)
    except OSError as exc:  # past the checks above (a review: /proc/x named write's temporary file)
        raise RuntimeError(f"--out {args.out} cannot be written: {exc.strerror or exc}") from None
    for path in written:
        print(f"wrote {_shown(path)}")
    if not args.apply:
        print(f"apply with: kubectl apply -f {_shown(args.out)}   (or rerun with --apply)")
        return 0
    import urllib3

    try:
        for line in apply(objects):
            print(line)
        if args.wait is None or args.wait > 0:  # None: wait_ready's own default
            timeout = {} if args.wait is None else {"timeout": args.wait}
            for line in wait_ready(objects, progress=_progress, **timeout):
                print(line)
    except urllib3.exceptions.HTTPError as exc:  # the API server unreachable (refused, TLS, DNS)
        raise RuntimeError(f"could not reach the Kubernetes API: {str(exc).splitlines()[0][:300]}") from None
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from tauforge.components.monitor import MonitorConfig, rows_text, run_monitor, write_gauges
    from tauforge.components.report import render_monitor_report
    from tauforge.kernels.serialization import replaced_whole

    for path, flag in ((args.report, "--report"), (args.metrics_file, "--metrics-file")):
        if path:
            _check_output(path, flag)
    if not args.log_dir.strip():  # read as this folder, which holds no log: "0 live rows" (a review)
        raise ValueError(f"--log-dir must name the event log's folder or URI, got {args.log_dir!r}")
    with _as_flags({"alpha": "--alpha"}):
        config = MonitorConfig(alpha=args.alpha)
    result = run_monitor(_existing_store(args), args.model, args.log_dir, version=args.version, outcomes=args.outcomes,
                         config=config, progress=True, since=args.since)
    for path in (args.report, args.metrics_file):  # made once there is something to write (not on a refusal)
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    version = result["version"]
    if args.report:
        with replaced_whole(args.report) as f:  # the last report stays whole if this one cannot be written
            f.write(render_monitor_report(result))
    if args.metrics_file:
        write_gauges(result, args.model, version, args.metrics_file)
    if args.json:
        print(_strict_json(result, default=float))  # NumPy's numbers as JSON's
        return 0
    print(f"tauforge monitor: {args.model} version {version}, {rows_text(result, 'live')}"
          + (f" since {result['since']}" if "since" in result else ""))
    if "note" in result:  # why nothing was judged (too few live rows, or a reference of too few groups)
        print(f"  {result['note']}")
    for problem in result.get("unreadable_files", []):
        print(f"  warning: an event-log file could not be read and was skipped: {problem}")
    if result.get("future_rows"):
        future = result["future_rows"]
        print(f"  warning: {future['rows']} rows are stamped over an hour ahead of this clock (the latest "
              f"{future['latest']}): left out until their time comes; check the serving pods' clocks")
    if result.get("other_champion_versions"):
        served = ", ".join(f"version {v} ({n} rows)" for v, n in result["other_champion_versions"].items())
        print(f"  the log's champion rows of {served} are not judged here: pass --version to monitor another")
    for a in result["alerts"]:
        print(f"  ALERT {a['check']}: {a['message']}")
    if not result["alerts"]:
        print("  no alerts")
    if "policy" in result:
        pol = result["policy"]
        if "confidence_sequence" in pol:
            lo, hi = pol["confidence_sequence"]
            what = ("canary, mean outcome of each version's traffic" if pol.get("judged") == "canary"
                    else "policy value")
            print(f"  {what} (doubly robust): champion {pol['value_champion_dr']:.4f}, challenger "
                  f"{pol['value_challenger_dr']:.4f}; difference {pol['difference_dr']:+.4f}, "
                  f"confidence sequence [{lo:.4f}, {hi:.4f}] over {pol['rows']} rows of {pol['units']} units")
        if pol.get("note"):
            print(f"  {pol['note']}")
    print(f"  recommendation: {result['recommendation']}" + ("; retrain: drift found" if result["retrain"] else ""))
    return 0


def _add_training_flags(p: argparse.ArgumentParser, local: bool = True) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--data", help="Parquet or CSV file (path or fsspec URI)")
    # submit parses --demo only to refuse it with the cure (upload the data): not offered in its help.
    data.add_argument("--demo", action="store_true",
                      help="use a built-in simulated table with a known effect" if local else argparse.SUPPRESS)
    data.add_argument("--treatment", help="treatment column (binary 0/1 or continuous); demo: T")
    data.add_argument("--outcome", help="outcome column; demo: Y")
    data.add_argument("--covariates", nargs="+", metavar="COL",
                      help="effect modifiers X (default: every other numeric column)")
    data.add_argument("--controls", nargs="+", metavar="COL", help="confounders W used by the nuisance models only")
    data.add_argument("--unit-id", help="unit id column (must be unique)")
    data.add_argument("--weight", help="sample weight column")
    data.add_argument("--group", metavar="COL",
                      help="column labelling rows that are not independent (a unit's repeated rows, a household, "
                           "a market): each group is held out whole in cross-fitting, drawn whole by the trees and "
                           "counted once in every standard error")
    data.add_argument("--timestamp", help="time column: must be in increasing order (checked, recorded in the card)")
    data.add_argument("--assignment", choices=ASSIGNMENTS, default="observational",
                      help="randomized: a binary treatment assigned with the known --propensity, which replaces "
                           "the fitted treatment model (default: observational)")
    data.add_argument("--propensity", type=float, metavar="P",
                      help="with --assignment randomized: the probability of treatment, in (0, 1)")
    data.add_argument("--treatment-type", choices=TREATMENT_TYPES, default="auto",
                      help="default: binary when the column is 0/1")
    data.add_argument("--graph", metavar="FILE",
                      help="causal graph, DOT or GML as DoWhy reads them (latent nodes: observed=\"no\"): the "
                           "covariates and controls must block every back-door path in it; without --covariates "
                           "they are its observed nodes that are not descendants of the treatment")
    model = p.add_argument_group("model")
    model.add_argument("--store", help=f"model store URI (default: ${STORE_ENV} or {DEFAULT_STORE})")
    model.add_argument("--name", default=DEFAULT_MODEL_NAME,
                       help=f"model name in the store (default: {DEFAULT_MODEL_NAME})")
    model.add_argument("--estimator", choices=("tauforge", "econml"), default="tauforge",
                       help="forest of the estimate step: tauforge (default) or EconML's econml.grf.CausalForest "
                            "(one task; imported as arrays for serving)")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda for the forest (default: auto)")
    model.add_argument("--trees", type=int, default=DEFAULT_TREES,
                       help=f"trees in the forest, an even number (default: {DEFAULT_TREES})")
    model.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                       help=f"cross-fitting folds (default: {DEFAULT_FOLDS})")
    model.add_argument("--fold-tasks", type=int, default=DEFAULT_FOLD_TASKS,
                       help=f"tasks the folds are spread over, 1 to --folds (default: {DEFAULT_FOLD_TASKS}; "
                            "--folds for one pod per fold on a cluster with large data)")
    model.add_argument("--shards", type=int,
                       help="forest shards, one task each (default: 2; 1 with --estimator econml)")
    model.add_argument("--seed", type=int, default=0,
                       help="seed of folds, nuisance models and forest, and of --demo's data (default: 0)")
    model.add_argument("--model-y", default="auto", help="outcome model: 'auto' or a scikit-learn import path")
    model.add_argument("--model-t", default="auto", help="treatment model: 'auto' or a scikit-learn import path")
    model.add_argument("--reweight-nuisance", action=argparse.BooleanOptionalAction, default=True,
                       help="refit a continuous treatment's nuisance models with inverse-variance weights (twice "
                            "the nuisance fits); --no-reweight-nuisance keeps the first fit, EconML's residuals "
                            "(default: on)")
    boot = p.add_argument_group("full bootstrap (off by default; intervals come from the little bags)")
    boot.add_argument("--bootstrap", type=int, default=0, metavar="B",
                      help="replicate forests on reweighted rows (Bayesian bootstrap); the ATE interval becomes "
                           "the bootstrap's (default: 0, off)")
    # Defaults None: set without --bootstrap, each is refused (it was ignored).
    boot.add_argument("--bootstrap-shards", type=int, default=None,
                      help="tasks the replicates are spread over (default: 1)")
    boot.add_argument("--bootstrap-trees", type=int, default=None, help="trees per replicate forest (default: 100)")
    boot.add_argument("--bootstrap-interval", choices=("normal", "percentile", "pivot"), default=None,
                      help="the ATE's bootstrap interval: normal from the replicates' standard error, or their "
                           "percentile or pivot interval (default: normal)")
    boot.add_argument("--bootstrap-nuisance", action=argparse.BooleanOptionalAction, default=None,
                      help="refit the nuisance models on every replicate (B x folds more model fits), so the "
                           "interval carries their uncertainty; --no-bootstrap-nuisance reuses the main fit's "
                           "residuals (default: on)")
    model.add_argument("--gate", action="append", metavar="KEY=VALUE",
                       help="gate threshold, e.g. max_share_outside_overlap=0.05 or min_placebo_pvalue=off")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")


IMAGE_HELP = "image every task runs on (default: the project image, $TAUFORGE_IMAGE or components/_kfp.py's)"


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    pods = p.add_argument_group("pods (how each task runs on the cluster)")
    pods.add_argument("--image", help=IMAGE_HELP)
    pods.add_argument("--cuda-image", help="image of GPU tasks (default: --image with -cuda appended)")
    pods.add_argument("--cpu", default="1", help="CPU request and limit of light tasks (default: 1)")
    pods.add_argument("--memory", default="2Gi", help="memory request and limit of light tasks (default: 2Gi)")
    pods.add_argument("--compute-cpu", default="2",
                      help="CPU request and limit of folds, shards, merges, evaluate and monitor; their thread "
                           "pools follow it (default: 2)")
    pods.add_argument("--compute-memory", default="8Gi",
                      help="memory request and limit of folds, shards, merges, evaluate and monitor (default: 8Gi)")
    pods.add_argument("--gpus-per-shard", type=int, default=0,
                      help="accelerators per forest and bootstrap shard, which then run on --cuda-image (default: 0)")
    pods.add_argument("--accelerator-type", default="nvidia.com/gpu",
                      help="the GPUs' Kubernetes resource name that GPU shards request, e.g. amd.com/gpu "
                           "(default: nvidia.com/gpu)")
    pods.add_argument("--gpu-node-selector", action="append", metavar="LABEL=VALUE",
                      help="node label GPU shards must run on; repeatable")
    pods.add_argument("--gpu-toleration", action="append", metavar="KEY[=VALUE][:EFFECT]",
                      help="taint GPU shards tolerate, e.g. nvidia.com/gpu:NoSchedule; repeatable")
    pods.add_argument("--shard-retries", type=int, default=2,
                      help="retries of a failed shard, with backoff from 60 s (default: 2)")
    pods.add_argument("--store-secret", metavar="NAME",
                      help="Kubernetes Secret whose keys become the environment of the tasks that read the data "
                           "or write the store (validate, publish, monitor)")
    pods.add_argument("--store-secret-key", action="append", metavar="KEY",
                      help="a key of --store-secret to pass besides AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
                           "repeatable, e.g. AWS_ENDPOINT_URL for an S3-compatible store")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors (a bad flag, type or choice) also end stdout with
    `--json`'s error object when `json_errors` is set (`main` sets it when --json is given)."""
    json_errors = False

    def error(self, message: str):
        if _Parser.json_errors:
            print(json.dumps({"error": message, "exit_code": 2}), flush=True)
        super().error(message)  # usage and message on stderr, exit 2


def build_parser() -> argparse.ArgumentParser:
    from tauforge.kernels.datasets import DESIGNS

    parser = _Parser(prog="tauforge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"tauforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit the causal forest on simulated data with a known effect")
    demo.add_argument("--design", choices=DESIGNS, default="simple", help="simulation design (default: simple)")
    demo.add_argument("--n", type=int, default=5000, help="training rows (default: 5000)")
    demo.add_argument("--n-test", type=int, default=2000, help="fresh rows to score the CATE on (default: 2000)")
    demo.add_argument("--p", type=int, default=10, help="covariates (default: 10)")
    demo.add_argument("--trees", type=int, default=DEFAULT_TREES,
                      help=f"trees in the forest (default: {DEFAULT_TREES})")
    demo.add_argument("--seed", type=int, default=0, help="seed for data, folds and forest (default: 0)")
    demo.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", help="train, evaluate and publish a model with the local KFP runner")
    _add_training_flags(run)
    run.add_argument("--pipeline-root", default="./tauforge-runs", help="where runs write outputs and logs")
    run.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    run.add_argument("--fan-in", choices=("collected", "explicit"), default="collected",
                     help="collected (default): a group's tasks run side by side; explicit: the graph `compile` "
                          "writes, its tasks one after another")
    run.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                     help="subprocess (default): every task a process of this environment; docker: every task a "
                          "container of the project image (make images), as a cluster's pods run them, on the "
                          "graph compile writes")
    run.set_defaults(func=_run)

    submit = sub.add_parser("submit", help="send a training run to a Kubeflow Pipelines host")
    submit.add_argument("--host", required=True, help="Kubeflow Pipelines API URL")
    submit.add_argument("--experiment", help="experiment name")
    submit.add_argument("--namespace", help="the Kubeflow profile namespace of the run and its experiment "
                                            "(multi-user Kubeflow; kfp's client sends none by default)")
    submit.add_argument("--no-cache", action="store_true",
                        help="run every task afresh (validate, publish and monitor never use the cache anyway)")
    _add_training_flags(submit, local=False)
    _add_cluster_flags(submit)
    submit.set_defaults(func=_submit)

    comp = sub.add_parser("compile", help="write the training (or monitoring) pipeline as KFP IR YAML")
    comp.add_argument("--pipeline", choices=("training", "monitoring"), default="training",
                      help="training, or monitoring (monitor -> If(retrain) -> training)")
    comp.add_argument("--out", help="output path (default: tauforge-training.yaml, or tauforge-monitoring.yaml "
                                    "for --pipeline monitoring); '-': the YAML on stdout")
    comp.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                      help=f"cross-fitting folds (default: {DEFAULT_FOLDS})")
    comp.add_argument("--fold-tasks", type=int, default=DEFAULT_FOLD_TASKS,
                      help=f"nuisance tasks the folds are spread over (default: {DEFAULT_FOLD_TASKS})")
    comp.add_argument("--shards", type=int, default=2, help="forest shard tasks (default: 2)")
    comp.add_argument("--bootstrap-shards", type=int, default=0,
                      help="tasks of the full bootstrap in the training graph (default: 0, none); a run sets "
                           "its replicates with the pipeline parameter 'bootstrap' (default: 100)")
    comp.add_argument("--fan-in", choices=("explicit", "collected"), default="explicit",
                      help="how a group's tasks are gathered: explicit (one input each; every KFP backend from 2.2) "
                           "or collected (dsl.ParallelFor + dsl.Collected; backend 2.14 and newer)")
    comp.add_argument("--deploy", action="store_true",
                      help="training: a deploy step after publish, set by the pipeline parameters 'deploy' (JSON; "
                           "default a 10%% shadow of the champion) and 'apply_deploy' (default false: the "
                           "InferenceServices as the step's artifact only)")
    _add_cluster_flags(comp)
    comp.set_defaults(func=_compile)

    srv = sub.add_parser("serve", help="serve a published model on KServe's model server")
    srv.add_argument("--store", help=f"model store URI (default: ${STORE_ENV} or {DEFAULT_STORE})")
    srv.add_argument("--model", help="model name in the store")
    srv.add_argument("--version", help="champion version or alias (default: alias 'champion', else latest)")
    srv.add_argument("--model-dir", help="serve the version folder DIR instead (KServe's /mnt/models)")
    srv.add_argument("--challenger", help="challenger version or alias")
    srv.add_argument("--mode", choices=("single", "canary", "shadow"), default="single",
                     help="canary: a sticky weighted split; shadow: the challenger scores off the response path")
    srv.add_argument("--percent", type=float, help="canary: %% of units to the challenger (default 10); "
                                                   "shadow: %% of requests mirrored (default 100)")
    srv.add_argument("--shadow-timeout", type=float,
                     help="shadow: seconds a shadow answer may take (default 2)")
    srv.add_argument("--explore", type=float, metavar="EPS", default=os.environ.get("TAUFORGE_EXPLORE"),
                     help="epsilon-greedy exploration: answers carry a drawn action and its propensity "
                          "(default: $TAUFORGE_EXPLORE, set by tauforge deploy --explore, else none)")
    srv.add_argument("--port", type=int, default=8080, help="HTTP port (default: 8080)")
    srv.add_argument("--grpc-port", type=int, default=8081, help="V2 gRPC port, 0 for none (default: 8081)")
    srv.add_argument("--device", default="cpu",
                     help="cpu, or cuda to score on the GPU (refused when none is visible) (default: cpu)")
    srv.add_argument("--role", choices=("champion", "challenger", "shadow"),
                     default=os.environ.get("TAUFORGE_ROLE", "champion"),
                     help="what this server is to the deployment, as its event log and metrics say (default: "
                          "$TAUFORGE_ROLE, set by tauforge deploy, else champion)")
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1; 0.0.0.0 in a pod)")
    srv.add_argument("--log-dir", default=os.environ.get("TAUFORGE_EVENT_LOG"),
                     help="write the prediction event log (Parquet) here (default: $TAUFORGE_EVENT_LOG, none)")
    srv.set_defaults(func=_serve)

    dep = sub.add_parser("deploy", help="write (and apply) the KServe / Istio objects that serve a version")
    dep.add_argument("--model", required=True, help="model name in the store")
    dep.add_argument("--version", required=True,
                     help="version to deploy: a number, or an alias (champion) read from --store")
    dep.add_argument("--mode", choices=("replace", "canary", "shadow"), default="replace",
                     help="replace: all traffic (also how a canary is promoted); canary: canaryTrafficPercent, split "
                          "per request; shadow: champion and shadow as RawDeployment with tauforge's own Istio "
                          "mirror (for a split per unit, see tauforge serve --challenger)")
    dep.add_argument("--percent", type=float, help="canary traffic or mirrored %% (default: 10)")
    dep.add_argument("--champion-version",
                     help="shadow, and canary with --router predictor: the version that keeps answering, a number "
                          "or an alias read from --store")
    dep.add_argument("--router", choices=("mesh", "predictor"),
                     help="canary/shadow: mesh (KServe's canaryTrafficPercent, split per request; an Istio mirror) "
                          "or predictor (tauforge's router in one predictor with both versions, split per unit; "
                          "no mesh needed)")
    dep.add_argument("--image", help="with --router predictor, the predictor's image (default: the project image)")
    dep.add_argument("--store-secret",
                     help="with --router predictor, the Secret whose keys give the predictor the store's credentials "
                          "(default: tauforge-store-credentials)")
    dep.add_argument("--name", help="InferenceService name, a DNS-1035 label (default: the model name)")
    dep.add_argument("--namespace", default="default", help="Kubernetes namespace (default: default)")
    dep.add_argument("--store", help="the store URI as the cluster reads it (s3://, gs://, pvc://; "
                                     f"default: ${STORE_ENV})")
    dep.add_argument("--cpu", default="1", help="CPU request and limit (default: 1)")
    dep.add_argument("--memory", default="2Gi", help="memory request and limit (default: 2Gi)")
    dep.add_argument("--gpus", type=int, default=0,
                     help="nvidia.com/gpu per replica; the predictor then runs the tauforge-gpu runtime (default: 0)")
    dep.add_argument("--service-account", default="tauforge-serving",
                     help="service account holding the store's credentials (default: tauforge-serving, from "
                          "manifests/namespace)")
    dep.add_argument("--event-log", metavar="URI", help="where predictors write their event logs (s3://, gs://)")
    dep.add_argument("--explore", type=float, default=0.0, metavar="EPS",
                     help="epsilon-greedy exploration of the champion and canary predictors, not a shadow's "
                          "(serve --explore): logged actions of known propensity, which the monitor's policy value "
                          "needs (default: 0, none)")
    dep.add_argument("--raw", action="store_true",
                     help="with --mode replace, a RawDeployment champion that a --mode shadow can later mirror "
                          "(KServe does not change an InferenceService's mode)")
    dep.add_argument("--out", default="tauforge-deploy",
                     help="directory for the YAML, replaced whole by this deployment's objects (default: "
                          "tauforge-deploy); '-': the YAML on stdout")
    dep.add_argument("--apply", action="store_true", help="apply with the Kubernetes Python client")
    dep.add_argument("--wait", type=float, metavar="SECONDS",
                     help="with --apply, wait this long for the InferenceServices to be Ready and say why not "
                          "(default: 600; 0: do not wait)")
    dep.set_defaults(func=_deploy)

    mon = sub.add_parser("monitor", help="check served traffic for drift; judge champion against challenger")
    mon.add_argument("--store", help=f"model store URI (default: ${STORE_ENV} or {DEFAULT_STORE})")
    mon.add_argument("--model", required=True, help="model name")
    mon.add_argument("--version", help="version to monitor (default: the 'champion' alias if it answered in the log's "
                                       "last hour, else the version that answered most champion rows then)")
    mon.add_argument("--log-dir", required=True,
                     help="the serving event log, a folder or a URI (s3://, gs://): tauforge serve --log-dir")
    mon.add_argument("--outcomes", help="Parquet or CSV of request_id and row (or unit_id) with an 'outcome' column")
    mon.add_argument("--since", help="judge only rows logged since then: a duration back from now (24h, 7d) or "
                                     "an ISO-8601 time (default: the whole log)")
    mon.add_argument("--alpha", type=float, default=MONITOR_ALPHA,
                     help=f"false-alarm rate of all drift tests together (default: {MONITOR_ALPHA})")
    mon.add_argument("--report", help="write an HTML report here")
    mon.add_argument("--metrics-file", help="write Prometheus gauges here (textfile collector format)")
    mon.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    mon.set_defaults(func=_monitor)

    models = sub.add_parser("models", help="list, show, diff, promote or roll back published models")
    # Optional to argparse, required below: a bare `models` was told "required: action, V", though
    # only diff takes versions (a CLI review).
    models.add_argument("action", nargs="?", choices=("list", "show", "diff", "promote", "rollback"))
    models.add_argument("refs", nargs="*", metavar="V",
                        help="diff: the two versions (numbers or aliases) to compare, old then new")
    models.add_argument("--store", help=f"model store URI (default: ${STORE_ENV} or {DEFAULT_STORE})")
    models.add_argument("--name", help="model name")
    models.add_argument("--version", help="version number or alias (show: default latest; promote: required)")
    models.add_argument("--alias", help="promote, rollback: the alias to move (default: champion)")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP workers sleep rather than spin, in this process and the tasks it starts (read
    # when OpenMP loads: set before any import of it). Spinning workers took the cores from
    # everything else: `demo --n 1000 --trees 100` took 16.7 s against 4.3 s beside other work,
    # and on a quiet machine passive waiting cost nothing (docs/benchmarks.md, "make run").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    _Parser.json_errors = _wants_json(sys.argv[1:] if argv is None else argv)
    # argparse gives a positional list that follows the action only the words right after it:
    # `models diff --name M 1 2` leaves `1 2` over; they are the versions to compare.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "models" and not any(e.startswith("-") for e in extra):
        args.refs = [*args.refs, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # A user reads "what to do", not the library line that raised it.
        print(f"tauforge {args.command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show_warning
    # A CI timeout or `kill`: the JSON error object and 143, as Ctrl-C's 130 (serve stops its
    # servers on SIGTERM itself; a local run's tasks are stopped by run_local's own handler).
    own_sigterm = args.command != "serve" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if own_sigterm else None
    try:
        _check_uris(args)
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader that left is then caught below
        return code
    except KeyboardInterrupt as exc:  # Ctrl-C; in a local run also SIGTERM (training.RunInterrupted)
        signum = getattr(exc, "signum", signal.SIGINT)
        notes = " ".join(getattr(exc, "__notes__", ()))
        message = f"stopped by {signal.Signals(signum).name}" + (f": {notes}" if notes else "")
        return _report(args, "interrupted", message, 128 + signum)
    except BrokenPipeError:  # stdout's reader left (`| head`): stop quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a tool its signal stopped
    except ValueError as exc:  # the user's input: data, flags, store references (2); a damaged store (1)
        code = getattr(exc, "exit_code", 2)
        return _report(args, "error" if code == 2 else "failed", str(exc), code)
    except RuntimeError as exc:  # a pipeline task failed
        return _report(args, "failed", str(exc), 1)
    except OSError as exc:  # the machine's: a full disk, a file that cannot be written, a connection refused
        return _report(args, "failed", f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename
                       else str(exc), 1)
    except Exception as exc:  # unforeseen (a bug, a store's file of an unexpected shape): the traceback for a
        # report on stderr, and the one-line failure (the JSON error object under --json) as for any failure
        import traceback

        traceback.print_exc()
        return _report(args, "failed", f"{type(exc).__name__}: {exc}", 1)
    finally:  # main() called in process (tests, a notebook) leaves the caller's handler as it was
        if own_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, reported as Ctrl-C is (the JSON error object under --json, exit 143)."""
    signum = signal.SIGTERM


def _terminated(signum, frame):
    # Once: a second SIGTERM (a process group's and the process's own, a supervisor's repeat) must
    # not escape the first's report as a traceback with status 1 and no error object (SIGKILL remains).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated()


def _wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for --json as argparse reads it: also an abbreviation
    (--js, --jso; no other flag starts with --j), before a `--`."""
    for arg in argv:
        if arg == "--":
            return False
        flag = arg.split("=", 1)[0]  # --json=1, --js=1: argparse's usage error, which is then JSON too
        if len(flag) >= 3 and "--json".startswith(flag):
            return True
    return False


# The flags that take a URI (an object store's, a data file's): each is recorded somewhere (the
# run's parameters, a card, a manifest, logs), where a user name or password must not go.
URI_FLAGS = {"data": "--data", "store": "--store", "log_dir": "--log-dir", "outcomes": "--outcomes",
             "event_log": "--event-log"}


def _check_uris(args: argparse.Namespace) -> None:
    from tauforge.components.config import check_no_credentials

    given = {flag: getattr(args, key, None) for key, flag in URI_FLAGS.items()}
    if hasattr(args, "store") and not args.store and os.environ.get(STORE_ENV):  # a command that reads the store
        given[f"${STORE_ENV}"] = os.environ[STORE_ENV]
    for flag, value in given.items():
        # An empty value (`--store "$STORE"` with the variable unset) is a mistake, not the default:
        # a walkthrough's `models list --store ''` listed ./tauforge-store.
        if value == "" and not flag.startswith("$"):
            raise ValueError(f"{flag} is empty: give a URI or a path")
        if isinstance(value, str):
            with _as_flags({"uri": flag}):
                check_no_credentials(value, "uri")


def _report(args: argparse.Namespace, kind: str, message: str, code: int) -> int:
    """A command's end in error: one line on stderr and, with --json, one JSON object on stdout (a
    script reads why, not an empty line); `code` back, whatever stdout can take."""
    print(f"tauforge {args.command}: {kind}: {message}", file=sys.stderr)
    try:
        if getattr(args, "json", False):
            print(json.dumps({"error": message, "exit_code": code}))
        sys.stdout.flush()
    except OSError:  # stdout itself cannot be written (a reader gone, a redirect to a full disk)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or Python's flush at exit fails again
    return code


if __name__ == "__main__":
    sys.exit(main())
