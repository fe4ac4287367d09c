"""Kubernetes objects that serve a published version on KServe, and applying them.

    replace  one InferenceService `<model>` serving the version
    canary   the same InferenceService with the new version and `canaryTrafficPercent` (KServe
             keeps the previous revision for the rest; Serverless mode, where canaries work)
    shadow   a second InferenceService `<model>-shadow` (RawDeployment mode: an Istio mirror adds
             `-shadow` to the Host header, which Knative's host routing would reject) and an Istio
             VirtualService that mirrors `percent`% of the champion's traffic to it

The predictor is the project image running `tauforge serve --model-dir /mnt/models`; KServe's
storage initializer copies the version folder there from `STORAGE_URI`, and the server verifies
every checksum of the card before it answers.
"""

import copy
import os
from dataclasses import dataclass, field

import yaml

from ._kfp import IMAGE

MODES = ("replace", "canary", "shadow")
ISVC_API = ("serving.kserve.io", "v1beta1", "inferenceservices")
VS_API = ("networking.istio.io", "v1", "virtualservices")


@dataclass
class DeploySpec:
    model: str
    version: int
    mode: str = "replace"
    percent: float = 10.0
    namespace: str = "default"
    store: str = ""  # the model store URI the cluster reads (s3://..., gs://..., pvc://...)
    image: str = IMAGE
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 0
    service_account: str | None = None  # holds the store's credentials for the storage initializer
    node_selector: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.percent <= 100:
            raise ValueError(f"percent must be in (0, 100], got {self.percent}")
        if self.mode == "canary" and round(self.percent) < 1:
            raise ValueError(f"a canary takes a whole percent of traffic (canaryTrafficPercent), got {self.percent}")
        if "://" not in self.store:
            raise ValueError(f"the store {self.store!r} is not a URI the cluster can read; publish to s3://, "
                             "gs:// or pvc:// and pass that store")
        if self.gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {self.gpus}")

    @property
    def storage_uri(self) -> str:
        return f"{self.store.rstrip('/')}/{self.model}/{self.version}"


def inference_service(spec: DeploySpec, name: str, role: str, deployment_mode: str,
                      canary_percent: float | None = None) -> dict:
    limits = {"cpu": spec.cpu, "memory": spec.memory}  # requests == limits: Guaranteed QoS, steady latency
    if spec.gpus:
        limits["nvidia.com/gpu"] = str(spec.gpus)
    container = {
        "name": "kserve-container",
        "image": spec.image,
        "command": ["tauforge"],
        "args": ["serve", "--model-dir", "/mnt/models", "--model", spec.model, "--host", "0.0.0.0",
                 "--port", "8080", "--log-dir", "/var/log/tauforge"],
        "env": [{"name": "STORAGE_URI", "value": spec.storage_uri}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": limits},
    }
    predictor = {"minReplicas": 1, "containers": [container]}
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = int(round(canary_percent))
    if spec.service_account:
        predictor["serviceAccountName"] = spec.service_account
    if spec.node_selector:
        predictor["nodeSelector"] = dict(spec.node_selector)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name, "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/name": "tauforge", "tauforge.io/model": spec.model,
                       "tauforge.io/version": str(spec.version), "tauforge.io/role": role},
            "annotations": {"serving.kserve.io/deploymentMode": deployment_mode,
                            "prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                            "prometheus.io/path": "/metrics"},
        },
        "spec": {"predictor": predictor},
    }


def mirror_virtual_service(spec: DeploySpec) -> dict:
    """Route the champion's in-mesh host to itself and mirror `percent`% to the shadow."""
    ns = spec.namespace
    champion = f"{spec.model}-predictor.{ns}.svc.cluster.local"
    shadow = f"{spec.model}-shadow-predictor.{ns}.svc.cluster.local"
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": f"{spec.model}-shadow-mirror", "namespace": ns,
                     "labels": {"app.kubernetes.io/name": "tauforge", "tauforge.io/model": spec.model}},
        "spec": {
            "hosts": [champion],
            "http": [{"route": [{"destination": {"host": champion, "port": {"number": 80}}}],
                      "mirror": {"host": shadow, "port": {"number": 80}},
                      "mirrorPercentage": {"value": float(spec.percent)}}],
        },
    }


def render(spec: DeploySpec) -> list[dict]:
    """The objects that deploy `spec.version` of `spec.model` in `spec.mode`."""
    spec.validate()
    if spec.mode == "replace":
        return [inference_service(spec, spec.model, "champion", "Serverless")]
    if spec.mode == "canary":
        return [inference_service(spec, spec.model, "challenger", "Serverless", canary_percent=spec.percent)]
    return [inference_service(spec, f"{spec.model}-shadow", "shadow", "RawDeployment"), mirror_virtual_service(spec)]


def write(objects: list[dict], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for obj in objects:
        path = os.path.join(out_dir, f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(obj, f, sort_keys=False)
        paths.append(path)
    return paths


def apply(objects: list[dict], api_client=None) -> list[str]:
    """Create each object, or replace it when it exists, with the Kubernetes Python client.
    Needs a kubeconfig (or in-cluster credentials) allowed what manifests/namespace/rbac.yaml grants."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_client = client.ApiClient()
    api = client.CustomObjectsApi(api_client)
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
            body = dict(copy.deepcopy(obj), metadata={**obj["metadata"],
                                                      "resourceVersion": current["metadata"]["resourceVersion"]})
            api.replace_namespaced_custom_object(group, version, ns, plural, name, body)
            done.append(f"replaced {obj['kind']}/{name}")
    return done
