"""`TrainingConfig`: everything a training run needs besides the data's location, checked when
it is made. The CLI builds one from its flags; `run_local`, `submit` and the pipeline's arguments
take one, so the same rules hold however a run is started."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

from tauforge.components._kfp import IMAGE
from tauforge.components.config import ConfigError, check_quantities, check_secret_name
from tauforge.components.constants import (
    DEFAULT_ALPHA,
    DEFAULT_FOLD_TASKS,
    DEFAULT_MODEL_NAME,
    DEFAULT_STORE,
    DEFAULT_TREES,
)
from tauforge.components.data import DataSpec, read_table, validate
from tauforge.components.estimate import ESTIMATORS, BootstrapConfig, check_bootstrap_settings, check_forest_settings
from tauforge.components.evaluate import GateConfig
from tauforge.components.graph import CausalGraph
from tauforge.components.nuisance import NuisanceConfig, check_fold_tasks, check_groups_for_folds
from tauforge.components.registry import StoreError, check_model_name, check_store

DEVICES = ("auto", "cpu", "cuda")


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainingConfig:
    """A training run's settings (see `tauforge run --help` for each as a flag).

    spec : the data's causal roles (`DataSpec`).
    store, model_name : where the version is published (a local folder or an fsspec URI).
    nuisance : the nuisance models and cross-fitting folds (`NuisanceConfig`).
    fold_tasks : the pipeline tasks the folds are spread over (1 to the number of folds; fold k in
        task k mod fold_tasks).
    trees, device, forest_options : the forest: its number of trees (an even number: trees come in
        little bags of 2 or more for the intervals), 'auto' / 'cpu' / 'cuda[:N]', and any other
        `CausalForest` parameter (`tauforge.kernels.forest.FOREST_PARAMS`).
    n_shards : forest tasks the trees are spread over (1 with estimator 'econml'), each a whole
        number of little bags.
    estimator : 'tauforge', or 'econml' (EconML's forest on the same residuals, in one task).
    seed : of folds, nuisance models and forest.
    gate : the publishing gate's thresholds (`GateConfig`); alpha : 1 - the intervals' level.
    bootstrap, bootstrap_shards : the full bootstrap (`BootstrapConfig`, off by default) and the
        tasks its replicates are spread over.
    graph : the declared causal graph (`CausalGraph`), or None. With one, the spec's covariates and
        controls must be a valid back-door adjustment set in it (checked here), and a spec without
        covariates takes them from the graph (`CausalGraph.adjusted_spec`): `spec` is the result.
    """

    spec: DataSpec
    store: str = DEFAULT_STORE
    model_name: str = DEFAULT_MODEL_NAME
    nuisance: NuisanceConfig = NuisanceConfig()
    trees: int = DEFAULT_TREES
    device: str = "auto"
    forest_options: dict = field(default_factory=dict)
    estimator: str = "tauforge"
    fold_tasks: int = DEFAULT_FOLD_TASKS
    n_shards: int = 2
    seed: int = 0
    gate: GateConfig = GateConfig()
    alpha: float = DEFAULT_ALPHA
    bootstrap: BootstrapConfig = BootstrapConfig()
    bootstrap_shards: int = 1
    graph: CausalGraph | None = None

    def __post_init__(self):
        def fail(name: str, problem: str):
            raise ConfigError(name, problem)

        self.spec.check()
        if self.graph is not None:
            object.__setattr__(self, "spec", self.graph.adjusted_spec(self.spec))  # frozen: set once, here
        try:
            check_model_name(self.model_name, new=True)
        except StoreError as exc:
            fail("model_name", f"is not a valid name: {exc}")
        if not (_integer(self.trees) and self.trees >= 2 and self.trees % 2 == 0):
            fail("trees", f"must be a positive even number (trees come in little bags for the intervals), "
                          f"got {self.trees}")
        if not (isinstance(self.device, str) and self.device.split(":")[0] in DEVICES):
            fail("device", f"must be one of auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.forest_options:  # kernels.forest loads numba and scikit-learn (2 s): only if there is a check
            from tauforge.kernels.forest import FOREST_PARAMS

            unknown = sorted(set(self.forest_options) - (set(FOREST_PARAMS) - {"n_estimators", "device"}))
        else:
            unknown = []
        if unknown:
            fail("forest_options", f"has unknown or reserved parameter(s) {', '.join(unknown)} (trees and device "
                                   f"have their own settings)")
        check_fold_tasks(self.fold_tasks, self.nuisance.folds)
        if self.spec.weight:
            self.nuisance.check_sample_weight()
        if self.estimator not in ESTIMATORS:
            fail("estimator", f"must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if not (_integer(self.seed) and 0 <= self.seed < 2**32):  # numpy's and scikit-learn's seeds
            fail("seed", f"must be an integer from 0 to 2**32 - 1, got {self.seed!r}")
        if not 0 < self.alpha < 1:
            fail("alpha", f"must be in (0, 1), got {self.alpha}")
        check_bootstrap_settings(self.bootstrap, self.bootstrap_tasks(), self.estimator)
        self.check_forest_options(len(self.spec.covariates) or None)  # and the shards: whole little bags

    def check_forest_options(self, n_features: int | None) -> None:
        """The forest's parameters and shards checked as the forest tasks would
        (`estimate.check_forest_settings`), so that a bad value fails here rather than after the
        nuisance models' fits."""
        check_forest_settings(self.forest_params(), self.n_shards, self.estimator, n_features, "forest_options",
                              grouped=bool(self.spec.group), trees_field="trees")

    def forest_params(self) -> dict:
        """The CausalForest parameters of the run (the pipeline parameter `forest_params`)."""
        return {"n_estimators": self.trees, "device": self.device, **self.forest_options}

    def bootstrap_tasks(self) -> int:
        """Bootstrap shard tasks in the graph: none unless the full bootstrap is on."""
        return self.bootstrap_shards if self.bootstrap.n_bootstrap else 0

    def check_local_run(self, source: str) -> None:
        """What a run on this machine can check before any task starts: for a local table, that the
        data satisfies the spec and the graph's observed nodes are its columns; that the store can
        be published to (`registry.check_store`); and that the device exists."""
        if "://" not in source or source.startswith("file://"):
            table = read_table(source, id_columns=[self.spec.unit_id, self.spec.group])
            if self.graph is not None:
                self.graph.check_columns(table.columns)
            data = validate(table, self.spec)
            self.check_forest_options(len(data.spec.covariates))
            self.nuisance.check_treatment_model(data.spec.binary)
            t = data.table[data.spec.treatment].to_numpy()
            # Cross-fitting splits the rows (stratified by arm for a binary treatment) into folds.
            rows, what = ((int(min((t == 0).sum(), (t == 1).sum())), "rows in the smaller treatment arm")
                          if data.spec.binary else (len(t), "rows"))
            if self.nuisance.folds > rows:
                raise ConfigError("folds", f"must be at most the {rows} {what}, got {self.nuisance.folds}")
            if data.spec.group:
                check_groups_for_folds(data, self.nuisance.folds)
        try:
            check_store(self.store, model=self.model_name)
        except StoreError as exc:
            raise ConfigError("store", str(exc)) from None
        # 'auto' and 'cpu' always resolve; only a GPU needs torch's word (torch takes over a second
        # to load, and this process needs it for nothing else).
        if self.device.startswith("cuda"):
            from tauforge.kernels._inputs import resolve_device

            try:
                resolve_device(self.device)
            except ValueError as exc:
                raise ConfigError("device", f"cannot be used here: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def absolute(path_or_uri: str) -> str:
    """A local path made absolute (pipeline tasks run from other directories); a URI as it is."""
    return path_or_uri if "://" in path_or_uri else os.path.abspath(path_or_uri)


_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Kubernetes' label values and qualified names (label and taint keys, extended resources).
_LABEL_VALUE = r"(?=.{0,63}$)([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
# Docker's reference grammar: a registry only if it has a dot or a port or is localhost; path
# components in lower case (a Kubeflow review: UPPER/Case:tag was accepted, and failed in the pods).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = (r"(?:(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?::[0-9]+)?/|[A-Za-z0-9-]+:[0-9]+/)?"
                    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
                    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")
_QUALIFIED_NAME = r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"


@dataclass(frozen=True)
class ClusterConfig:
    """How the pipeline's tasks run as pods on a Kubeflow cluster (`compile`, `submit`).

    image : the project image every task runs on; cuda_image : the image of GPU tasks (default:
        `image` with '-cuda' appended, as `make images` tags it).
    cpu, memory : requests and limits of every light task (validate, publish);
        compute_cpu, compute_memory : of the tasks that fit or score (folds and their join,
        shards, merges, evaluate, monitor). Each task's thread pools follow its CPU limit.
    gpus_per_shard, accelerator_type : accelerators of each forest and bootstrap shard, which
        then run on `cuda_image`; gpu_node_selector ((label, value), ...) and gpu_tolerations
        ((key, value, effect), ...) place them on GPU nodes.
    shard_retries : retries of a failed shard, with backoff (60 s, doubling).
    store_secret, store_secret_keys : a Kubernetes Secret whose keys become the environment of the
        tasks that read the data or write the store (validate, publish, monitor).
    """

    image: str = IMAGE
    cuda_image: str = ""
    cpu: str = "1"
    memory: str = "2Gi"
    compute_cpu: str = "2"
    compute_memory: str = "8Gi"
    gpus_per_shard: int = 0
    accelerator_type: str = "nvidia.com/gpu"
    gpu_node_selector: tuple = ()
    gpu_tolerations: tuple = ()
    shard_retries: int = 2
    store_secret: str = ""
    store_secret_keys: tuple = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

    def __post_init__(self):
        check_quantities(self, cpu=("cpu", "compute_cpu"), memory=("memory", "compute_memory"), whole_memory=True)
        if not (_integer(self.gpus_per_shard) and self.gpus_per_shard >= 0):
            raise ConfigError("gpus_per_shard", f"must be a non-negative integer, got {self.gpus_per_shard!r}")
        if not (_integer(self.shard_retries) and 0 <= self.shard_retries <= 10):
            raise ConfigError("shard_retries", f"must be an integer from 0 to 10, got {self.shard_retries!r}")
        for key in ("image", "cuda_image"):  # a task's pod with another image fails only on the cluster
            if (key == "image" or getattr(self, key)) and not re.fullmatch(_IMAGE_REFERENCE, getattr(self, key)):
                raise ConfigError(key, f"must be a container image reference ([registry/]repository[:tag][@digest], "
                                       f"the repository in lower case), got {getattr(self, key)!r}")
        if self.gpus_per_shard and not self.cuda_image and "@" in self.image:
            raise ConfigError("cuda_image", f"must be given with an image pinned by digest ({self.image}): the GPU "
                                            "shards' default, the image's name with '-cuda' appended, would not be "
                                            "an image reference")
        for selector in self.gpu_node_selector:
            if (len(selector) != 2 or not re.fullmatch(_QUALIFIED_NAME, selector[0])
                    or not selector[1] or not re.fullmatch(_LABEL_VALUE, selector[1])):
                raise ConfigError("gpu_node_selector", f"takes (label, value) pairs, each a Kubernetes label and "
                                                       f"label value, got {selector!r}")
        for toleration in self.gpu_tolerations:
            if (len(toleration) != 3 or not re.fullmatch(_QUALIFIED_NAME, toleration[0])
                    or not re.fullmatch(_LABEL_VALUE, toleration[1]) or toleration[2] not in ("", *_EFFECTS)):
                raise ConfigError("gpu_tolerations", f"takes (key, value, effect): a taint's key and value (as "
                                                     f"labels) and an effect, one of {', '.join(_EFFECTS)} or "
                                                     f"empty, got {toleration!r}")
        if self.gpus_per_shard and ("/" not in self.accelerator_type
                                    or not re.fullmatch(_QUALIFIED_NAME, self.accelerator_type)):
            raise ConfigError("accelerator_type", "must be the GPUs' Kubernetes resource name, a domain and a "
                                                  "name such as nvidia.com/gpu or amd.com/gpu (the KFP driver "
                                                  f"requests it as it is), got {self.accelerator_type!r}")
        if self.store_secret and not self.store_secret_keys:
            raise ConfigError("store_secret_keys", "must name at least one key of the store's Secret")
        if self.store_secret:
            check_secret_name(self.store_secret, "store_secret")
        for key in self.store_secret_keys:  # each becomes an env var of that name, read from the Secret's key
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ConfigError("store_secret_keys", f"must be environment variable names (letters, digits, '_'), "
                                                       f"got {key!r}")
        gpu_only = [k for k in ("gpu_tolerations", "gpu_node_selector", "cuda_image") if getattr(self, k)]
        if gpu_only and not self.gpus_per_shard:
            raise ConfigError(gpu_only[0], "applies to GPU shards: set gpus_per_shard (--gpus-per-shard) too")

    def gpu_image(self) -> str:
        return self.cuda_image or f"{self.image}-cuda"
