"""Kubernetes objects that serve a published version on KServe, and applying them.

Predictors take KServe's usual form: `modelFormat: tauforge` and a `storageUri`. The serving
runtime `tauforge` (a ClusterServingRuntime, or a namespaced ServingRuntime; `serving_runtime`,
written to manifests/runtime) runs `tauforge serve --model-dir /mnt/models` on the project image;
KServe's storage initializer copies the version folder there from `storageUri`, and the server
verifies every checksum of the card before it reports ready. `tauforge-gpu` is the same runtime
on the CUDA image, for predictors that ask for GPUs.

    replace  one InferenceService `<name>` serving the version (Serverless mode; RawDeployment with
             `raw`, for a champion a mesh shadow will mirror: KServe never changes a service's mode)
    canary   the same InferenceService with the new version and `canaryTrafficPercent`: Knative
             splits each request, not each unit (Serverless mode, where canaries work)
    shadow   the champion `<name>` and the challenger `<name>-shadow`, both RawDeployment, and one
             VirtualService of tauforge's own on the champion's host, which mirrors `percent`% of
             the requests to the challenger. In RawDeployment mode no Knative VirtualService owns
             that host, so the mirror is not lost to a second route (Istio does not merge two).
With `router="predictor"`, a canary or shadow is instead the router inside one predictor (no mesh
needed): one InferenceService running `tauforge serve --store ... --version <champion> --challenger
<version> --mode canary|shadow`, which loads both versions from the store (its credentials from
the store's Secret) and splits by unit: the same unit always meets the same version.

Each predictor says who it is: `TAUFORGE_ROLE` (champion, challenger or shadow) for its event log,
whose rows carry the version from the card, `TAUFORGE_EVENT_LOG` for where the log goes, and
`TAUFORGE_EXPLORE` for its exploration (`serve --explore`; none for a shadow, whose actions are never
taken).
"""

import contextlib
import copy
import ctypes
import errno
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import yaml

from tauforge.kernels.serialization import replaced_whole

from ._kfp import IMAGE, Artifact, Output, component
from .config import ConfigError, check_quantities, check_secret_name, parse_json
from .registry import StoreError, check_model_name

MODES = ("replace", "canary", "shadow")
ROUTERS = ("mesh", "predictor")
MODEL_FORMAT = "tauforge"
RUNTIME, GPU_RUNTIME = "tauforge", "tauforge-gpu"
DEFAULT_SERVICE_ACCOUNT = "tauforge-serving"  # manifests/namespace: it lists the store's credentials
ISVC_API = ("serving.kserve.io", "v1beta1", "inferenceservices")
VS_API = ("networking.istio.io", "v1", "virtualservices")
HTTP_PORT, GRPC_PORT = 8080, 8081
# A Kubernetes Service name (DNS-1035 label). KServe derives longer names from an InferenceService's
# ("<name>-shadow-predictor-00001-deployment-...") that must fit 63 characters: 45 leaves room.
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 45
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # a namespace's name (may start with a digit)
# A ServiceAccount's name (as a Secret's): dot-separated DNS-1123 labels, at most 253 characters.
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_name(name: str, what: str = "name") -> str:
    """`name` if it is a DNS-1035 label KServe can derive its objects' names from."""
    if len(name) > MAX_NAME or not DNS_1035.match(name):
        raise ConfigError(what, f"must be a DNS-1035 label of at most {MAX_NAME} characters (lower-case letters, "
                                f"digits and '-', starting with a letter, not ending with '-'), got {name!r}")
    return name


# Object stores fsspec writes to, which outlive a predictor's pod.
EVENT_LOG_PROTOCOLS = ("s3", "gs", "gcs")  # the image's [cloud] extra: s3fs, gcsfs


@dataclass(frozen=True)
class DeploySpec:
    """What to deploy. `model` and `version` name the published version in `store` (the URI the
    cluster reads); `name` is the InferenceService's (default: the model's, which must then be a
    DNS-1035 label); `champion_version` is the version a shadow deployment keeps answering with."""

    model: str
    version: int
    mode: str = "replace"
    percent: float = 10.0
    namespace: str = "default"
    store: str = ""
    name: str = ""
    champion_version: int | None = None
    router: str = "mesh"  # canary and shadow: KServe and Istio ("mesh"), or tauforge's router in one predictor
    store_secret: str = "tauforge-store-credentials"  # router="predictor": the store's credentials, as env
    image: str = IMAGE  # router="predictor": its image (a runtime's otherwise)
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 0
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    event_log: str = ""  # where predictors write their event logs: object storage (EVENT_LOG_PROTOCOLS)
    node_selector: dict = field(default_factory=dict)
    explore: float = 0.0  # epsilon-greedy exploration of every predictor (`serve --explore`), for the policy value
    raw: bool = False  # replace: a RawDeployment champion, which a mesh shadow can later mirror

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        try:  # the version's path in the store is built from it (a review: ../../other-team/x passed)
            check_model_name(self.model, new=True)
        except StoreError as exc:
            raise ConfigError("model", str(exc).removeprefix("model name ")) from None
        check_name(self.isvc_name, "name" if self.name else "model")
        if len(self.namespace) > 63 or not DNS_1123_LABEL.match(self.namespace):
            raise ConfigError("namespace", f"must be a DNS-1123 label of at most 63 characters (lower-case letters, "
                                           f"digits and '-', not starting or ending with '-'), got {self.namespace!r}")
        for key, number in (("version", self.version), ("champion_version", self.champion_version)):
            if number is not None and number < 1:
                raise ConfigError(key, f"must be a published version, numbered from 1, got {number}")
        if not 0 < self.percent <= 100:
            raise ConfigError("percent", f"must be in (0, 100], got {self.percent}")
        if self.mode == "canary" and self.router == "mesh" and self.percent != int(self.percent):
            # KServe's canaryTrafficPercent is an integer. Rounding without a word sent 99.6% as a
            # full rollout (a walkthrough); the router's own split takes any share.
            raise ConfigError("percent", f"must be a whole percent for a mesh canary (KServe's canaryTrafficPercent "
                                         f"is an integer), got {self.percent:g}: give "
                                         + " or ".join(str(n) for n in (int(self.percent), int(self.percent) + 1) if n)
                                         + ", or --router predictor for a share per unit")
        if not self.store:
            raise ConfigError("store", "is needed: the URI of the store the cluster reads the version from "
                                       "(s3://, gs:// or pvc://), or $TAUFORGE_STORE")
        if "://" not in self.store or self.store.startswith(("file://", "local://")):
            raise ConfigError("store", f"{self.store!r} is not a URI the cluster can read; publish to s3://, gs:// "
                                       "or pvc:// and pass that store")
        if self.event_log and ("://" not in self.event_log
                               or self.event_log.split("://")[0] not in EVENT_LOG_PROTOCOLS):
            # predictors have a read-only root and only an emptyDir /tmp: a path (or memory://) would
            # lose every row, and pvc:// is no protocol fsspec writes to
            raise ConfigError("event_log", f"{self.event_log!r} is not a location the predictors can keep their "
                                           f"logs in; give an object-store URI ({', '.join(EVENT_LOG_PROTOCOLS)})")
        if self.router not in ROUTERS:
            raise ConfigError("router", f"must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        if self.router == "predictor" and self.mode != "replace" and self.store.startswith("pvc://"):
            # Only KServe's storage initializer mounts a pvc:// store; the router reads the store itself.
            raise ConfigError("router", "'predictor' reads the store itself, which a pvc:// store does not allow "
                                        "(KServe's storage initializer mounts it for one version): publish to "
                                        "s3:// or gs://, or use the mesh router")
        if self.store_secret or self.router == "predictor":  # only the router's predictor reads it
            check_secret_name(self.store_secret, "store_secret")
        both = self.mode == "shadow" or (self.mode == "canary" and self.router == "predictor")
        if both and self.champion_version is None:
            where = " in one predictor" if self.router == "predictor" else ""
            raise ConfigError("champion_version", f"is needed by a {self.mode} deployment{where}: it serves both "
                                                  "the champion and the new version")
        if both and self.champion_version == self.version:
            raise ConfigError("champion_version", f"is version {self.version}, the version deployed: a {self.mode} "
                                                  "compares two versions")
        if not both and self.champion_version is not None:  # it was ignored
            raise ConfigError("champion_version", "applies to a shadow and to a canary in one predictor (--router "
                                                  "predictor); a mesh canary's champion is the version the "
                                                  "InferenceService serves now, and a replace serves one version")
        if self.gpus < 0:
            raise ConfigError("gpus", f"must be >= 0, got {self.gpus}")
        if not 0 <= self.explore <= 1:
            raise ConfigError("explore", f"must be in [0, 1], got {self.explore}")
        if self.raw and self.mode != "replace":
            raise ConfigError("raw", f"applies to --mode replace (a canary is Serverless, a shadow RawDeployment), "
                                     f"not {self.mode}")
        check_quantities(self, cpu=("cpu",), memory=("memory",))
        # Empty was the namespace's default account, which holds no store credentials. A
        # ServiceAccount's name is a DNS-1123 subdomain (KServe derives no name from it).
        if len(self.service_account) > 253 or not DNS_1123_SUBDOMAIN.match(self.service_account):
            raise ConfigError("service_account", "must be a Kubernetes ServiceAccount's name (a DNS-1123 subdomain: "
                                                 "lower-case letters, digits, '-' and '.'), got "
                                                 f"{self.service_account!r}")

    @property
    def isvc_name(self) -> str:
        return self.name or self.model

    def storage_uri(self, version: int) -> str:
        return f"{self.store.rstrip('/')}/{self.model}/{version}"


# Every serving container: not root, no privilege escalation, no capabilities, the runtime's
# default seccomp profile, a read-only root filesystem. It writes only below /tmp (an emptyDir):
# numba's private cache copy and the store's download cache (tests/test_images.py runs the image so).
CONTAINER_SECURITY = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                      "seccompProfile": {"type": "RuntimeDefault"}, "readOnlyRootFilesystem": True}
TMP_MOUNT = [{"name": "tmp", "mountPath": "/tmp"}]
TMP_VOLUME = [{"name": "tmp", "emptyDir": {}}]
# Before SIGTERM, a pause while the endpoints drop the pod: the server stops taking requests at
# SIGTERM, and callers routed to it meanwhile got resets and, over gRPC, NOT_FOUND (an ops review).
# RawDeployment predictors only: Knative's Service schema has no `lifecycle` (the API server drops
# or refuses it) and its queue-proxy drains a pod itself.
PRE_STOP = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
# Then the server drains: the shadows in flight (their timeout, 2 s by default), and the event
# log's last write (up to 30 s against a slow store): 38 s at worst, past Kubernetes' default 30 s
# grace, after which the kubelet kills the pod before it says records were lost. Knative sets its
# own grace, the revision's timeout (300 s by default).
GRACE_SECONDS = 60


def serving_runtime(kind: str = "ClusterServingRuntime", namespace: str | None = None, gpu: bool = False,
                    image: str = IMAGE) -> dict:
    """The serving runtime for `modelFormat: tauforge`: `tauforge serve` on the project image (the
    CUDA image, selected explicitly, with `gpu`), KServe's V1 and V2 protocols on port 8080 (gRPC
    on 8081), probes on the V2 health endpoints: ready only once the version's checksums are
    verified and its kernels warmed."""
    probe = {"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT}, "periodSeconds": 5, "timeoutSeconds": 2,
             "failureThreshold": 3}
    container = {
        "name": "kserve-container",
        "image": f"{image}-cuda" if gpu else image,
        "command": ["tauforge"],
        "args": ["serve", "--model-dir", "/mnt/models", "--model", "{{.Name}}", "--host", "0.0.0.0",
                 "--port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT)] + (["--device", "cuda"] if gpu else []),
        "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 90},  # up to 3 minutes to load and warm
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": HTTP_PORT}, "periodSeconds": 10,
                          "timeoutSeconds": 2, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": TMP_MOUNT,
    }
    metadata = {"name": GPU_RUNTIME if gpu else RUNTIME,
                "labels": {"app.kubernetes.io/name": "tauforge", "app.kubernetes.io/component": "serving-runtime"}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(HTTP_PORT), "prometheus.kserve.io/path": "/metrics"},
            # The GPU runtime is chosen by name (`runtime: tauforge-gpu`), never picked for a format alone.
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": not gpu,
                                       "priority": 1}],
            "protocolVersions": ["v1", "v2"],
            "containers": [container],
            "volumes": TMP_VOLUME,
        },
    }


def inference_service(spec: DeploySpec, name: str, version: int, role: str, deployment_mode: str,
                      canary_percent: float | None = None) -> dict:
    resources = {"requests": {"cpu": spec.cpu, "memory": spec.memory},
                 "limits": {"cpu": spec.cpu, "memory": spec.memory}}  # requests == limits: steady latency
    if spec.gpus:
        resources["limits"]["nvidia.com/gpu"] = str(spec.gpus)
    env = [{"name": "TAUFORGE_ROLE", "value": role}]
    if spec.event_log:
        env.append({"name": "TAUFORGE_EVENT_LOG", "value": spec.event_log})
    if spec.explore and role != "shadow":  # a shadow's actions are never taken: nothing to explore
        env.append({"name": "TAUFORGE_EXPLORE", "value": f"{spec.explore:g}"})
    model = {"modelFormat": {"name": MODEL_FORMAT}, "runtime": GPU_RUNTIME if spec.gpus else RUNTIME,
             "storageUri": spec.storage_uri(version), "env": env, "resources": resources}
    if role == "shadow":  # KServe appends these to the runtime's args (--model {{.Name}}, its own name): the
        # mirror copies the champion's paths (/v1/models/<champion>:predict), which the shadow must answer
        model["args"] = ["--model", spec.isvc_name]
    if deployment_mode == "RawDeployment":  # Knative's pods take no lifecycle (it drains through its queue-proxy)
        model["lifecycle"] = PRE_STOP
    # A predictor never calls the Kubernetes API: no token in its pods.
    predictor = {"minReplicas": 1, "model": model, "automountServiceAccountToken": False}
    if deployment_mode == "RawDeployment":
        predictor["terminationGracePeriodSeconds"] = GRACE_SECONDS
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = int(canary_percent)
    predictor["serviceAccountName"] = spec.service_account
    if spec.node_selector:
        predictor["nodeSelector"] = dict(spec.node_selector)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name, "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/name": "tauforge", "tauforge.io/model": spec.model,
                       "tauforge.io/version": str(version), "tauforge.io/role": role},
            "annotations": {"serving.kserve.io/deploymentMode": deployment_mode,
                            "prometheus.io/scrape": "true", "prometheus.io/port": str(HTTP_PORT),
                            "prometheus.io/path": "/metrics"},
        },
        "spec": {"predictor": predictor},
    }


def mirror_virtual_service(spec: DeploySpec) -> dict:
    """tauforge's own route on the champion's host: everything to the champion, `percent`% of it
    mirrored to the shadow (whose answers Envoy discards). It applies to callers in the mesh."""
    ns, name = spec.namespace, spec.isvc_name
    champion = f"{name}-predictor.{ns}.svc.cluster.local"
    shadow = f"{name}-shadow-predictor.{ns}.svc.cluster.local"
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": f"{name}-shadow-mirror", "namespace": ns,
                     "labels": {"app.kubernetes.io/name": "tauforge", "tauforge.io/model": spec.model}},
        "spec": {
            "hosts": [champion],
            "http": [{"route": [{"destination": {"host": champion, "port": {"number": 80}}}],
                      "mirror": {"host": shadow, "port": {"number": 80}},
                      "mirrorPercentage": {"value": float(spec.percent)}}],
        },
    }


def router_service(spec: DeploySpec) -> dict:
    """One predictor serving both versions with tauforge's router (canary by unit, or shadow)."""
    isvc = inference_service(spec, spec.isvc_name, spec.champion_version, "champion", "Serverless")
    model = isvc["spec"]["predictor"].pop("model")
    percent = f"{spec.percent:g}"
    container = {
        "name": "kserve-container",
        "image": f"{spec.image}-cuda" if spec.gpus else spec.image,
        "command": ["tauforge"],
        "args": ["serve", "--store", spec.store, "--model", spec.model, "--version", str(spec.champion_version),
                 "--challenger", str(spec.version), "--mode", spec.mode, "--percent", percent,
                 "--host", "0.0.0.0", "--port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT)]
                + (["--device", "cuda"] if spec.gpus else []),
        "env": model["env"],
        "envFrom": [{"secretRef": {"name": spec.store_secret}}],
        "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": model["resources"],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT}, "periodSeconds": 5},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": TMP_MOUNT,
    }
    isvc["spec"]["predictor"]["containers"] = [container]
    isvc["spec"]["predictor"]["volumes"] = TMP_VOLUME
    isvc["metadata"]["labels"]["tauforge.io/challenger-version"] = str(spec.version)
    isvc["metadata"]["labels"]["tauforge.io/router"] = spec.mode
    return isvc


def render(spec: DeploySpec) -> list[dict]:
    """The objects that deploy `spec.version` of `spec.model` in `spec.mode`."""
    name = spec.isvc_name
    if spec.mode != "replace" and spec.router == "predictor":
        return [router_service(spec)]
    if spec.mode == "replace":
        return [inference_service(spec, name, spec.version, "champion", "RawDeployment" if spec.raw else "Serverless")]
    if spec.mode == "canary":
        return [inference_service(spec, name, spec.version, "challenger", "Serverless",
                                  canary_percent=spec.percent)]
    return [inference_service(spec, name, spec.champion_version, "champion", "RawDeployment"),
            inference_service(spec, f"{name}-shadow", spec.version, "shadow", "RawDeployment"),
            mirror_virtual_service(spec)]


def write(objects: list[dict], out_dir: str) -> list[str]:
    """The objects as YAML files in `out_dir`, which then holds this deployment's objects and no
    others: `kubectl apply -f` on a folder that kept an earlier shadow deploy's files recreated that
    shadow and its mirror after a replace (an ops review). Where it can, the set is written whole:
    into a new folder beside it, swapped in (in one step on Linux, where the file system allows:
    `_exchange`), so a full disk leaves the earlier set as it was. A
    folder that cannot be swapped (a mount point, a parent this user cannot write) is written in
    place, file by file, and the earlier set's other files removed once the new ones are there. A
    folder holding files deploy did not write is refused."""
    out_dir = os.path.realpath(out_dir)  # a link to a folder: the folder is replaced, not the link
    earlier = []
    if os.path.isdir(out_dir):
        earlier = sorted(os.listdir(out_dir))
        foreign = [n for n in earlier if not _written_by_deploy(os.path.join(out_dir, n))]
        if foreign:
            raise ValueError(f"{out_dir} holds files tauforge deploy did not write ({', '.join(foreign[:3])}"
                             f"{' ...' if len(foreign) > 3 else ''}); it replaces the whole folder: give it a "
                             "folder of its own")
    names = [f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml" for obj in objects]
    try:
        _swap_in(objects, names, out_dir)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS):
            raise
        os.makedirs(out_dir, exist_ok=True)
        for obj, name in zip(objects, names, strict=True):
            with replaced_whole(os.path.join(out_dir, name)) as f:
                yaml.safe_dump(obj, f, sort_keys=False)
        for name in set(earlier) - set(names):
            os.remove(os.path.join(out_dir, name))
    return [os.path.join(out_dir, n) for n in names]


def _swap_in(objects: list[dict], names: list[str], out_dir: str) -> None:
    """Write the set into a new folder beside `out_dir` (its mode and group, if it exists), then
    put it in `out_dir`'s place; on any failure nothing of it is left."""
    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    moved = f"{staging}.old"
    try:
        if os.path.isdir(out_dir):
            shutil.copymode(out_dir, staging)
            with contextlib.suppress(OSError):  # a group the user may keep (setgid folders)
                os.chown(staging, -1, os.stat(out_dir).st_gid)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the manifests from the user's group
        for obj, name in zip(objects, names, strict=True):
            with open(os.path.join(staging, name), "w") as f:
                yaml.safe_dump(obj, f, sort_keys=False)
        if os.path.isdir(out_dir) and _exchange(staging, out_dir):
            shutil.rmtree(staging, ignore_errors=True)  # now the earlier set
        elif os.path.isdir(out_dir):  # no atomic exchange here: out_dir is absent between two renames
            os.rename(out_dir, moved)
            try:
                os.rename(staging, out_dir)
            except OSError:
                os.rename(moved, out_dir)  # the earlier set back in place
                raise
            shutil.rmtree(moved, ignore_errors=True)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # linux/fs.h, fcntl.h


def _exchange(a: str, b: str) -> bool:
    """Swap two folders in one step (Linux's renameat2 RENAME_EXCHANGE), so that a reader (kubectl,
    a GitOps agent) never finds `b` absent or half written; False where the system or file system
    has no such call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not glibc 2.28+, or not Linux
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without it
        return False
    raise OSError(code, os.strerror(code), b)


def _written_by_deploy(path: str) -> bool:
    """A YAML file of a Kubernetes object labelled as tauforge's (what `write` leaves)."""
    if not (path.endswith(".yaml") and os.path.isfile(path)):
        return False
    try:
        with open(path) as f:
            obj = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return False
    labels = obj.get("metadata", {}).get("labels", {}) if isinstance(obj, dict) else {}
    return isinstance(labels, dict) and labels.get("app.kubernetes.io/name") == "tauforge"


def _api_client(api_client=None):
    from kubernetes import client, config

    if api_client is not None:
        return api_client
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise RuntimeError(f"no cluster to apply to: no in-cluster credentials and no usable kubeconfig ({exc}); "
                               "set KUBECONFIG, or apply the written files with kubectl") from None
    return client.ApiClient()


def apply(objects: list[dict], api_client=None) -> list[str]:
    """Create each object, or replace it when it exists, with the Kubernetes Python client.
    Needs a kubeconfig (or in-cluster credentials) allowed what manifests/namespace/rbac.yaml grants."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CustomObjectsApi(_api_client(api_client))
    done = []
    for obj in objects:
        group, version, plural = ISVC_API if obj["kind"] == "InferenceService" else VS_API
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            api.create_namespaced_custom_object(group, version, ns, plural, copy.deepcopy(obj))
            done.append(f"created {obj['kind']}/{name}")
        except ApiException as exc:
            if exc.status != 409:
                raise RuntimeError(f"could not create {obj['kind']}/{name} in {ns}: {exc.status} {exc.reason}") \
                    from None
            current = api.get_namespaced_custom_object(group, version, ns, plural, name)
            if obj["kind"] == "InferenceService":
                _check_same_deployment_mode(current, obj)
            body = dict(copy.deepcopy(obj), metadata={**obj["metadata"],
                                                      "resourceVersion": current["metadata"]["resourceVersion"]})
            try:
                api.replace_namespaced_custom_object(group, version, ns, plural, name, body)
            except ApiException as exc:
                raise RuntimeError(f"could not replace {obj['kind']}/{name} in {ns}: {exc.status} {exc.reason}"
                                   + (f": {exc.body}" if exc.body else "")) from None
            done.append(f"replaced {obj['kind']}/{name}")
    return done


def _check_same_deployment_mode(current: dict, new: dict) -> None:
    """KServe refuses to change an InferenceService's deployment mode; say so, and what to do
    instead, before sending the change (its webhook's refusal says only that it refuses)."""
    key = "serving.kserve.io/deploymentMode"
    was = (current["metadata"].get("annotations") or {}).get(key, "Serverless")  # KServe's default
    wants = new["metadata"]["annotations"][key]
    if was != wants:
        name = new["metadata"]["name"]
        raise RuntimeError(f"InferenceService/{name} runs in {was} mode and KServe does not change an "
                           f"InferenceService's mode to {wants}: for a shadow of a Serverless champion use "
                           "--router predictor (both versions in one predictor), deploy a champion meant to be "
                           "mirrored with --mode replace --raw, or delete the InferenceService first")


def wait_ready(objects: list[dict], timeout: float = 600.0, api_client=None, interval: float = 5.0,
               progress=None) -> list[str]:
    """Wait until every InferenceService among `objects` reports Ready; return one line each.
    Raises RuntimeError naming the services still not ready and why (their conditions' reasons and
    messages) when `timeout` seconds pass. `progress(line)` hears what each is waiting for. (The
    same API client as `apply`: KServe's own client insists on loading a kubeconfig itself.)"""
    from kubernetes import client

    api = client.CustomObjectsApi(_api_client(api_client))
    group, version, plural = ISVC_API
    pending = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects
               if o["kind"] == "InferenceService"}
    deadline, why, done = time.monotonic() + timeout, {}, []
    while pending:
        for ns, name in sorted(pending):
            current = api.get_namespaced_custom_object(group, version, ns, plural, name)
            status = current.get("status") or {}
            conditions = status.get("conditions") or []
            # Until KServe has seen the spec just applied, the status is the earlier spec's (Ready).
            generation, observed = current.get("metadata", {}).get("generation"), status.get("observedGeneration")
            if generation is not None and observed is not None and observed < generation:
                why[name] = f"KServe has not yet seen generation {generation} (its status is generation {observed}'s)"
                if progress:
                    progress(f"waiting for InferenceService/{name}: {why[name]}")
                continue
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                pending.discard((ns, name))
                done.append(f"InferenceService/{name} is ready at {status.get('url', '(no url yet)')}")
                continue
            reasons = [f"{c['type']}: {c.get('reason') or c.get('status')}"
                       + (f" ({c['message']})" if c.get("message") else "")
                       for c in conditions if c.get("status") != "True"]
            why[name] = "; ".join(reasons) or "no status yet"
            if progress:
                progress(f"waiting for InferenceService/{name}: {why[name]}")
        if pending and time.monotonic() > deadline:
            raise RuntimeError("not ready after {:.0f} s: {}".format(
                timeout, "; ".join(f"InferenceService/{n}: {why[n]}" for _, n in sorted(pending))))
        if pending:
            time.sleep(interval)
    return done


# ----------------------------------------------------------------------------- KFP component
# The settings a pipeline's `deploy` parameter may hold: DeploySpec's but the version's own.
PIPELINE_DEPLOY_KEYS = ("mode", "percent", "namespace", "name", "champion_version", "router", "store_secret", "image",
                        "cpu", "memory", "gpus", "service_account", "event_log", "node_selector", "explore", "raw")


def pipeline_deploy_spec(deploy: str, model: str, version: int, store: str, champion: int | None) -> DeploySpec:
    """The DeploySpec of a training pipeline's deploy step: its `deploy` parameter (a JSON object
    of PIPELINE_DEPLOY_KEYS), the version just published, and for a shadow or a canary in one
    predictor without a champion_version, `champion` (the store's 'champion' alias when the step
    ran). The validate task calls it first, with the version publish would take."""
    settings = parse_json(deploy, "deploy")
    unknown = sorted(set(settings) - set(PIPELINE_DEPLOY_KEYS))
    if unknown:
        raise ConfigError("deploy", f"has unknown setting(s) {', '.join(unknown)}; known: "
                                    f"{', '.join(PIPELINE_DEPLOY_KEYS)}")
    both = settings.get("mode") == "shadow" or (settings.get("mode") == "canary"
                                                and settings.get("router") == "predictor")
    if both and settings.get("champion_version") is None:
        if champion is None or champion == version:
            raise ConfigError("deploy", f"mode {settings['mode']!r} compares the new version {version} with the "
                                        f"champion, and {model!r} has " + ("no 'champion' alias" if champion is None
                                                                           else "it as its champion")
                                        + ": promote a champion first, or deploy with mode 'replace'")
        settings = {**settings, "champion_version": champion}
    return DeploySpec(model=model, version=version, store=store, **settings)


def store_champion(store: str, model: str) -> int | None:
    """The version the store's 'champion' alias names, None without one (or without the model)."""
    from .registry import ModelStore

    try:
        return ModelStore(store).resolve(model, "champion")
    except StoreError:
        return None


@component
def deploy_version(version: int, store: str, model_name: str, deploy: str, apply_objects: bool,
                   manifests: Output[Artifact]):
    """The InferenceService(s) that serve the published `version`, as `deploy` says (a JSON object
    of `PIPELINE_DEPLOY_KEYS`, e.g. {"mode": "shadow", "percent": 10, "namespace": "ml"}), written
    as YAML to `manifests`; applied in the cluster with `apply_objects` (the task's service account
    needs manifests/namespace/rbac.yaml's rights). A shadow's champion is the store's 'champion'."""
    import os

    from tauforge.components.deploy import apply, pipeline_deploy_spec, render, store_champion, write

    spec = pipeline_deploy_spec(deploy, model_name, int(version), store, store_champion(store, model_name))
    objects = render(spec)
    for path in write(objects, manifests.path):
        print(f"tauforge: deploy: wrote {os.path.basename(path)}", flush=True)
    manifests.metadata.update(model=model_name, version=int(version), mode=spec.mode,
                              objects=[f"{o['kind']}/{o['metadata']['name']}" for o in objects])
    if apply_objects:
        for line in apply(objects):
            print(f"tauforge: deploy: {line}", flush=True)
