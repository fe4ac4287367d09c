"""Kubernetes objects from `tauforge deploy` and manifests/ validate strictly: KServe and Istio kinds
against the CRD schemas vendored in tests/schemas, built-in kinds against Kubernetes' own schemas
(kubernetes-validate), prometheus-operator kinds against a small structural schema here; unknown
fields are rejected everywhere. The RBAC stays least-privilege."""

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import pytest
import yaml

from tauforge.components.config import ConfigError
from tauforge.components.deploy import DeploySpec, apply, render, serving_runtime, wait_ready

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = os.path.join(ROOT, "tests", "schemas")  # vendored CRDs: see tests/schemas/README.md
CRDS = {("InferenceService", "serving.kserve.io/v1beta1"): ("kserve-inferenceservice-crd.yaml", "v1beta1"),
        ("ClusterServingRuntime", "serving.kserve.io/v1alpha1"): ("kserve-clusterservingruntimes-crd.yaml",
                                                                  "v1alpha1"),
        ("ServingRuntime", "serving.kserve.io/v1alpha1"): ("kserve-servingruntimes-crd.yaml", "v1alpha1"),
        ("VirtualService", "networking.istio.io/v1"): ("istio-virtualservice-crd.yaml", "v1")}
KUSTOMIZATIONS = ["namespace", "runtime", "base", "overlays/canary", "overlays/shadow", "overlays/gpu",
                  "overlays/namespaced-runtime", "monitoring"]
CLUSTER_SCOPED = {"Namespace", "ClusterServingRuntime"}
NAMESPACE = "tauforge"
STORE_SECRET = "tauforge-store-credentials"  # the one secret anything here may name
K8S_VERSION = "1.30"  # the oldest Kubernetes current KServe supports; the manifests are checked against it


def closed(schema):
    """The schema with every object that lists `properties` closed to other fields, unless
    Kubernetes marks it as preserving unknown fields."""
    schema = copy.deepcopy(schema)
    # Every object has these; some CRDs (Istio's) list only spec and status at the top.
    top = schema.setdefault("properties", {})
    top.setdefault("apiVersion", {"type": "string"})
    top.setdefault("kind", {"type": "string"})
    top.setdefault("metadata", {"type": "object", "x-kubernetes-preserve-unknown-fields": True})

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def validators():
    out = {}
    for key, (filename, version) in CRDS.items():
        # libyaml's parser: PyYAML's own took 7-8 s over these schemas, libyaml's about 1 s.
        for doc in yaml.load_all(open(os.path.join(SCHEMAS, filename)), Loader=yaml.CSafeLoader):
            if doc and doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == key[0]:
                (v,) = [x for x in doc["spec"]["versions"] if x["name"] == version]
                out[key] = jsonschema.Draft7Validator(closed(v["schema"]["openAPIV3Schema"]))
    assert set(out) == set(CRDS)
    return out


def check(validators, obj):
    key = (obj["kind"], obj["apiVersion"])
    if key not in validators:
        return False
    errors = sorted(validators[key].iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
    return True


def spec(**kw):
    return DeploySpec(**{"model": "uplift", "version": 3, "namespace": "causal", "store": "s3://bucket/models", **kw})


def drain_seconds() -> float:
    """A RawDeployment predictor's stop at worst: the pre-stop pause, the shadows' default timeout
    plus the second the server waits past it, and the event log's last write."""
    import inspect

    from tauforge.components.deploy import PRE_STOP
    from tauforge.serving.event_log import EventLog
    from tauforge.serving.routing import ShadowRouting

    pause = float(PRE_STOP["preStop"]["exec"]["command"][1])
    last_write = inspect.signature(EventLog).parameters["close_timeout"].default
    return pause + ShadowRouting().timeout_seconds + 1.0 + last_write


DRAIN_SECONDS = drain_seconds()


@pytest.mark.parametrize("kw", [
    {"mode": "replace"},
    {"mode": "replace", "raw": True, "explore": 0.2, "namespace": "1team"},  # a namespace may start with a digit
    {"mode": "canary", "percent": 20, "event_log": "s3://bucket/events"},
    {"mode": "shadow", "percent": 50, "champion_version": 2, "gpus": 1,
     "node_selector": {"nvidia.com/gpu.present": "true"}},
])
def test_every_generated_object_validates_strictly(validators, kw):
    objects = render(spec(**kw))
    assert all(check(validators, obj) for obj in objects)
    by_name = {o["metadata"]["name"]: o for o in objects}
    isvc = by_name["uplift-shadow" if kw["mode"] == "shadow" else "uplift"]
    model = isvc["spec"]["predictor"]["model"]  # KServe's usual form: a model format and a storage URI
    assert model["modelFormat"] == {"name": "tauforge"} and model["storageUri"] == "s3://bucket/models/uplift/3"
    role = {"replace": "champion", "canary": "challenger", "shadow": "shadow"}[kw["mode"]]
    env = {e["name"]: e["value"] for e in model["env"]}
    assert env["TAUFORGE_ROLE"] == role and env.get("TAUFORGE_EVENT_LOG") == kw.get("event_log")
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "tauforge-serving"  # holds the store's credentials
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    # The pre-stop pause only where it takes: Knative's Service has no `lifecycle` (a review).
    for obj in (o for o in objects if o["kind"] == "InferenceService"):
        raw = obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        assert ("lifecycle" in obj["spec"]["predictor"]["model"]) == raw
        # And a grace period the drain fits in (a serving review: 38 s at worst against the
        # default 30, so the kubelet killed the pod before it said records were lost).
        assert obj["spec"]["predictor"].get("terminationGracePeriodSeconds", 0) >= (DRAIN_SECONDS if raw else 0)
    if kw["mode"] == "canary":
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20 and mode == "Serverless"
    if kw["mode"] == "shadow":
        # The champion and the shadow both RawDeployment (no Knative route on the champion's host),
        # and one VirtualService of tauforge's own that mirrors to the shadow.
        champion = by_name["uplift"]
        assert champion["spec"]["predictor"]["model"]["storageUri"] == "s3://bucket/models/uplift/2"
        assert {o["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] for o in (champion, isvc)} \
            == {"RawDeployment"}
        vs = by_name["uplift-shadow-mirror"]["spec"]
        assert vs["hosts"] == ["uplift-predictor.causal.svc.cluster.local"]
        assert vs["http"][0]["mirror"]["host"] == "uplift-shadow-predictor.causal.svc.cluster.local"
        assert vs["http"][0]["mirrorPercentage"] == {"value": 50.0}
        assert model["runtime"] == "tauforge-gpu" and model["resources"]["limits"]["nvidia.com/gpu"] == "1"
        # The mirror copies the champion's paths (/v1/models/uplift:predict): the shadow must serve,
        # and log, under the champion's name, where the runtime names it for its own InferenceService
        # (a review: every mirrored request met a 404). KServe appends the model's args to the runtime's.
        from tauforge.pipelines.cli import build_parser

        runtime_args = [a.replace("{{.Name}}", "uplift-shadow")
                        for a in serving_runtime(gpu=True)["spec"]["containers"][0]["args"]]
        assert build_parser().parse_args(runtime_args + model["args"]).model == "uplift"
    else:
        assert "args" not in model


@pytest.mark.parametrize("kind, namespace", [("ClusterServingRuntime", None), ("ServingRuntime", "causal")])
@pytest.mark.parametrize("gpu", [False, True])
def test_the_serving_runtime_validates_strictly_and_serves_the_tauforge_format(validators, kind, namespace, gpu):
    runtime = serving_runtime(kind, namespace, gpu=gpu)
    assert check(validators, runtime)
    assert "lifecycle" not in runtime["spec"]["containers"][0]  # shared with Serverless predictors
    spec_ = runtime["spec"]
    assert spec_["supportedModelFormats"] == [{"name": "tauforge", "version": "1", "autoSelect": not gpu,
                                               "priority": 1}]
    assert spec_["protocolVersions"] == ["v1", "v2"]
    (container,) = spec_["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["image"].endswith("-cuda") == gpu
    from tauforge.pipelines.cli import build_parser

    args = build_parser().parse_args(container["args"])  # the command the runtime runs is one tauforge takes
    assert args.command == "serve" and args.model_dir == "/mnt/models"


@pytest.mark.parametrize("mode", ["canary", "shadow"])
def test_the_router_in_one_predictor_serves_both_versions_by_unit_with_no_mesh(validators, mode):
    objects = render(spec(mode=mode, percent=30, champion_version=2, router="predictor", event_log="s3://b/e"))
    (isvc,) = objects  # one predictor, no VirtualService: nothing for a mesh to do
    assert check(validators, isvc)
    (container,) = isvc["spec"]["predictor"]["containers"]
    from tauforge.pipelines.cli import build_parser

    args = build_parser().parse_args(container["args"])  # a command tauforge takes
    assert (args.command, args.store, args.model, args.version, args.challenger, args.mode, args.percent) == (
        "serve", "s3://bucket/models", "uplift", "2", "3", mode, 30.0)
    assert container["envFrom"] == [{"secretRef": {"name": "tauforge-store-credentials"}}]
    assert {e["name"]: e["value"] for e in container["env"]}["TAUFORGE_EVENT_LOG"] == "s3://b/e"
    with pytest.raises(ValueError, match="champion_version is needed by a canary deployment in one predictor"):
        spec(mode="canary", router="predictor")


def test_a_bad_name_is_refused_before_anything_is_written(tmp_path):
    for name, flag in (("Uplift_Model", "--model"), ("x" * 46, "--model")):
        out = subprocess.run([sys.executable, "-m", "tauforge.pipelines.cli", "deploy", "--model", name, "--version",
                              "1", "--store", "s3://b/m", "--out", str(tmp_path / "out")], capture_output=True,
                             text=True, cwd=ROOT)
        assert out.returncode == 2 and f"{flag} must be a DNS-1035 label" in out.stderr and repr(name) in out.stderr
        assert not (tmp_path / "out").exists()
    out = subprocess.run([sys.executable, "-m", "tauforge.pipelines.cli", "deploy", "--model", "Uplift_Model",
                          "--name", "uplift-model", "--version", "1", "--store", "s3://b/m", "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr  # a store name that is no DNS label, served under one that is
    (path,) = (tmp_path / "out").iterdir()
    isvc = yaml.safe_load(path.read_text())
    assert isvc["metadata"]["name"] == "uplift-model"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://b/m/Uplift_Model/1"


def test_the_validator_rejects_a_misspelt_field(validators):
    obj = render(spec(mode="canary"))[0]
    obj["spec"]["predictor"]["canaryTrafficPercnt"] = obj["spec"]["predictor"].pop("canaryTrafficPercent")
    with pytest.raises(AssertionError, match="canaryTrafficPercnt"):
        check(validators, obj)


def test_deploy_refuses_a_store_the_cluster_cannot_read():
    with pytest.raises(ValueError, match="not a URI the cluster can read"):
        render(spec(store="./tauforge-store"))
    with pytest.raises(ValueError, match="champion_version is needed by a shadow deployment"):
        spec(mode="shadow")


def kustomize(path):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "manifests", path)], capture_output=True,
                         text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


# The prometheus-operator CRDs are not among the vendored CRD schemas (tests/schemas), so their
# objects are checked against
# this structural schema of the fields we use (closed: a misspelt field fails), not the full CRD.
_RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": {"type": "string"}}, "separator": {"type": "string"},
    "regex": {"type": "string"}, "targetLabel": {"type": "string"}, "replacement": {"type": "string"},
    "action": {"enum": ["replace", "keep", "drop", "labeldrop", "labelkeep", "labelmap", "hashmod"]}}}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRINGS, "annotations": _STRINGS}}
_DURATION = {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}
PROMETHEUS_OPERATOR = {
    ("PodMonitor", "monitoring.coreos.com/v1"): {"type": "object", "properties": {"spec": {
        "type": "object", "required": ["selector", "podMetricsEndpoints"], "additionalProperties": False,
        "properties": {
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": _STRINGS,
                "matchExpressions": {"type": "array", "items": {
                    "type": "object", "required": ["key", "operator"], "additionalProperties": False,
                    "properties": {"key": {"type": "string"},
                                   "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                   "values": {"type": "array", "items": {"type": "string"}}}}}}},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {"port": {"type": "string"},
                               "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                               "path": {"type": "string"}, "interval": _DURATION,
                               "relabelings": {"type": "array", "items": _RELABEL},
                               "metricRelabelings": {"type": "array", "items": _RELABEL}}}}}}}},
    ("PrometheusRule", "monitoring.coreos.com/v1"): {"type": "object", "properties": {"spec": {
        "type": "object", "required": ["groups"], "additionalProperties": False, "properties": {"groups": {
            "type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "interval": _DURATION, "rules": {"type": "array", "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                   "expr": {"type": "string", "minLength": 1}, "for": _DURATION,
                                   "labels": _STRINGS, "annotations": _STRINGS}}}}}}}}}},
}
for _schema in PROMETHEUS_OPERATOR.values():
    _schema.update(required=["apiVersion", "kind", "metadata", "spec"], additionalProperties=False)
    _schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata=_METADATA)


def check_any(validators, obj):
    """Validate one object of any kind strictly; fail for a kind nothing here can check."""
    import kubernetes_validate

    if check(validators, obj):
        return
    key = (obj["kind"], obj["apiVersion"])
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if key in PROMETHEUS_OPERATOR:
        errors = list(jsonschema.Draft7Validator(PROMETHEUS_OPERATOR[key]).iter_errors(obj))
        assert not errors, f"{name}: " + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        pytest.fail(f"{name}: no schema for {obj['apiVersion']} {obj['kind']} (not a built-in kind, nor one "
                    "of tests/schemas or the prometheus-operator kinds checked here)")
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{name}: {'/'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomizations_build_into_strictly_valid_objects_in_one_namespace(validators, path):
    docs = kustomize(path)
    for doc in docs:
        check_any(validators, doc)
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        elif doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_the_strict_validators_reject_misspelt_fields_of_every_family(validators):
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verb": ["get"]}]}
    with pytest.raises(pytest.fail.Exception, match="verb"):
        check_any(validators, role)
    (monitor,) = [d for d in kustomize("monitoring") if d["kind"] == "PodMonitor"]
    monitor["spec"]["podMetricsEndpoints"][0]["portNumbr"] = 8080
    with pytest.raises(AssertionError, match="portNumbr"):
        check_any(validators, monitor)
    with pytest.raises(pytest.fail.Exception, match="no schema"):
        check_any(validators, {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_rbac_is_namespaced_and_names_no_secret_but_the_store_credentials():
    docs = [d for path in KUSTOMIZATIONS for d in kustomize(path)]
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "nothing cluster-wide"
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    assert set(roles) == {"tauforge-deployer"}
    for rule in roles["tauforge-deployer"]["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        if "secrets" in rule["resources"]:  # only `get`, only the named secret
            assert rule["resources"] == ["secrets"] and rule.get("resourceNames") == [STORE_SECRET]
            assert rule["verbs"] == ["get"]
    granted = {r for rule in roles["tauforge-deployer"]["rules"] for r in rule["resources"]}
    assert granted <= {"inferenceservices", "virtualservices", "secrets"}
    assert {"inferenceservices", "virtualservices"} <= granted
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] in roles
        for subject in binding["subjects"]:
            # The API server refuses a ServiceAccount subject without a namespace.
            assert subject["kind"] == "ServiceAccount" and subject.get("namespace"), subject
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert set(accounts) == {"tauforge-deployer", "tauforge-serving"}
    assert accounts["tauforge-serving"]["secrets"] == [{"name": STORE_SECRET}]
    assert "secrets" not in accounts["tauforge-deployer"]
    assert "Secret" not in kinds, "credentials never live in the manifests"
    # Every predictor runs as the account that holds the store's credentials.
    for isvc in (d for d in docs if d["kind"] == "InferenceService"):
        assert isvc["spec"]["predictor"]["serviceAccountName"] == "tauforge-serving"


def test_overlays_are_the_objects_tauforge_deploy_generates():
    common = dict(model="tauforge-model", namespace="tauforge", store="s3://tauforge-models")
    by_name = lambda docs: {(d["kind"], d["metadata"]["name"]): d for d in docs}  # noqa: E731
    (base,) = [d for d in kustomize("base") if d["kind"] == "InferenceService"]
    assert base == render(DeploySpec(version=1, **common))[0]
    canary = by_name(kustomize("overlays/canary"))
    assert canary[("InferenceService", "tauforge-model")] == render(
        DeploySpec(version=2, mode="canary", percent=10, **common))[0]
    shadow = by_name(kustomize("overlays/shadow"))
    for obj in render(DeploySpec(version=2, mode="shadow", percent=100, champion_version=1, **common)):
        assert shadow[(obj["kind"], obj["metadata"]["name"])] == obj
    gpu = by_name(kustomize("overlays/gpu"))[("InferenceService", "tauforge-model")]
    assert gpu["spec"]["predictor"]["model"] == render(DeploySpec(version=1, gpus=1, **common))[0]["spec"][
        "predictor"]["model"]
    # The runtimes, cluster-wide and namespaced, are `serving_runtime`'s.
    assert kustomize("runtime") == [serving_runtime(), serving_runtime(gpu=True)]
    namespaced = [d for d in kustomize("overlays/namespaced-runtime") if d["kind"] == "ServingRuntime"]
    assert namespaced == [serving_runtime("ServingRuntime", "tauforge"),
                          serving_runtime("ServingRuntime", "tauforge", gpu=True)]


class FakeKubernetesAPI:
    """A stand-in for the Kubernetes API server (none runs here): it stores custom objects by
    path, answers 409 for a second create, refuses a replace without the resourceVersion it
    replaces, bumps `generation` when a replace changes the spec, and records every call. The
    client side (the Kubernetes Python client, components.deploy.apply) is real."""

    def __init__(self):
        self.objects, self.calls = {}, []
        self.statuses = {}  # path -> the statuses its GETs answer, one after another (the last one stays)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self):
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def do_POST(self):
                obj = self.body()
                key = f"{self.path}/{obj['metadata']['name']}"
                fake.calls.append(("POST", key))
                if key in fake.objects:
                    return self.reply(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                obj["metadata"].update(resourceVersion="1", generation=1)
                fake.objects[key] = obj
                self.reply(201, obj)

            def do_GET(self):
                fake.calls.append(("GET", self.path))
                obj = dict(fake.objects[self.path])
                statuses = fake.statuses.get(self.path)
                if statuses:
                    obj["status"] = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                self.reply(200, obj)

            def do_PUT(self):
                obj = self.body()
                fake.calls.append(("PUT", self.path))
                # As the API server: a custom object's update names the resourceVersion it replaces.
                held = fake.objects[self.path]["metadata"]["resourceVersion"]
                sent = obj["metadata"].get("resourceVersion")
                if sent != held:
                    return self.reply(422 if sent is None else 409, {
                        "kind": "Status", "code": 422 if sent is None else 409,
                        "reason": "Invalid" if sent is None else "Conflict",
                        "message": "metadata.resourceVersion: must be specified for an update" if sent is None
                        else "the object has been modified"})
                before = fake.objects[self.path]
                obj["metadata"].update(resourceVersion=str(int(held) + 1), generation=before["metadata"]["generation"]
                                       + (obj.get("spec") != before.get("spec")))  # a new spec, a new generation
                fake.objects[self.path] = obj
                self.reply(200, obj)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kube_api():
    """A FakeKubernetesAPI and a real Kubernetes client of it: (fake, api_client); stopped after the test."""
    from kubernetes import client

    fake = FakeKubernetesAPI()
    try:
        yield fake, client.ApiClient(client.Configuration(host=fake.url))
    finally:
        fake.close()


def test_apply_creates_then_replaces_through_the_kubernetes_client(kube_api):
    fake, api = kube_api
    objects = render(spec(mode="shadow", champion_version=2))
    assert apply(objects, api) == ["created InferenceService/uplift", "created InferenceService/uplift-shadow",
                                   "created VirtualService/uplift-shadow-mirror"]
    assert apply(objects, api) == ["replaced InferenceService/uplift", "replaced InferenceService/uplift-shadow",
                                   "replaced VirtualService/uplift-shadow-mirror"]
    isvc = "/apis/serving.kserve.io/v1beta1/namespaces/causal/inferenceservices/uplift-shadow"
    assert ("PUT", isvc) in fake.calls
    assert fake.objects[isvc]["spec"] == objects[1]["spec"]
    # Each kind at its own API's path: the mirror is Istio's VirtualService, not a KServe object.
    assert sorted(fake.objects) == [
        "/apis/networking.istio.io/v1/namespaces/causal/virtualservices/uplift-shadow-mirror",
        "/apis/serving.kserve.io/v1beta1/namespaces/causal/inferenceservices/uplift",
        isvc]
    assert {o["metadata"]["resourceVersion"] for o in fake.objects.values()} == {"2"}  # each replaced, not refused


def test_apply_refuses_to_change_a_services_deployment_mode_and_says_what_to_do(kube_api):
    # KServe's webhook refuses a Serverless InferenceService turned RawDeployment (replace, then a
    # mesh shadow); the fake API server (no Kubernetes here) holds what the first apply created.
    _, api = kube_api
    apply(render(spec(mode="replace", version=1)), api)
    with pytest.raises(RuntimeError, match="InferenceService/uplift runs in Serverless mode and KServe does not "
                                           "change an InferenceService's mode to RawDeployment: .*--router "
                                           "predictor.*--mode replace --raw"):
        apply(render(spec(mode="shadow", champion_version=1)), api)
    # A champion deployed --raw can be mirrored later (on an API server of its own).
    from kubernetes import client

    raw = FakeKubernetesAPI()
    try:
        api = client.ApiClient(client.Configuration(host=raw.url))
        apply(render(spec(mode="replace", version=1, raw=True)), api)
        assert apply(render(spec(mode="shadow", champion_version=1)), api)[0] == "replaced InferenceService/uplift"
    finally:
        raw.close()


def test_explore_reaches_every_predictor_that_answers_but_not_the_shadow():
    shadow = render(spec(mode="shadow", champion_version=1, explore=0.1))
    env = {o["metadata"]["name"]: o["spec"]["predictor"]["model"]["env"]
           for o in shadow if o["kind"] == "InferenceService"}
    assert {"name": "TAUFORGE_EXPLORE", "value": "0.1"} in env["uplift"]
    assert not any(e["name"] == "TAUFORGE_EXPLORE" for e in env["uplift-shadow"])  # its actions are never taken
    (router,) = render(spec(mode="canary", router="predictor", champion_version=1, explore=0.1))
    assert {"name": "TAUFORGE_EXPLORE", "value": "0.1"} in router["spec"]["predictor"]["containers"][0]["env"]
    from tauforge.pipelines.cli import build_parser  # and serve reads it, as deploy sets it

    os.environ["TAUFORGE_EXPLORE"] = "0.1"
    try:
        assert build_parser().parse_args(["serve", "--model", "m"]).explore == 0.1
    finally:
        del os.environ["TAUFORGE_EXPLORE"]
    with pytest.raises(ValueError, match="explore must be in"):
        spec(explore=2)


READY = {"url": "http://uplift.causal.example.com", "conditions": [{"type": "Ready", "status": "True"}]}
NOT_READY = {"conditions": [{"type": "PredictorReady", "status": "False", "reason": "RevisionMissing",
                             "message": "storage-initializer: AccessDenied"},
                            {"type": "Ready", "status": "False", "reason": "RevisionMissing"}]}


def test_apply_waits_until_ready_and_says_why_an_inference_service_is_not(kube_api):
    # KServe's own client reads the status; the API server is the fake above (none runs here).
    fake, api = kube_api
    objects = render(spec(mode="canary", percent=20))
    apply(objects, api)
    path = "/apis/serving.kserve.io/v1beta1/namespaces/causal/inferenceservices/uplift"
    heard = []
    fake.statuses[path] = [NOT_READY, NOT_READY, READY]
    assert wait_ready(objects, timeout=30, api_client=api, interval=0.05, progress=heard.append) == [
        "InferenceService/uplift is ready at http://uplift.causal.example.com"]
    assert heard and "PredictorReady: RevisionMissing (storage-initializer: AccessDenied)" in heard[0]
    fake.statuses[path] = [NOT_READY]  # never ready: the error says why
    with pytest.raises(RuntimeError, match="InferenceService/uplift: PredictorReady: RevisionMissing "
                                           r"\(storage-initializer: AccessDenied\)"):
        wait_ready(objects, timeout=0.2, api_client=api, interval=0.05)


def test_wait_ready_does_not_take_the_status_of_the_spec_a_canary_replaced_for_its_own(kube_api):
    # A serving-deploy review: right after `apply` replaces a Ready InferenceService's spec, its
    # status is still the one KServe wrote for the earlier generation (Ready), until the controller
    # has seen the new spec; wait_ready called that ready at once, before the canary existed.
    fake, api = kube_api
    apply(render(spec(version=2)), api)
    objects = render(spec(mode="canary", percent=20))
    apply(objects, api)
    path = "/apis/serving.kserve.io/v1beta1/namespaces/causal/inferenceservices/uplift"
    assert fake.objects[path]["metadata"]["generation"] == 2
    heard = []
    fake.statuses[path] = [{**READY, "observedGeneration": 1}, {**NOT_READY, "observedGeneration": 2},
                           {**READY, "observedGeneration": 2}]
    assert wait_ready(objects, timeout=30, api_client=api, interval=0.05, progress=heard.append) == [
        "InferenceService/uplift is ready at http://uplift.causal.example.com"]
    assert len(heard) == 2 and "generation 2" in heard[0] and "RevisionMissing" in heard[1], heard
    fake.statuses[path] = [{**READY, "observedGeneration": 1}]  # never seen: the error says so
    with pytest.raises(RuntimeError, match="InferenceService/uplift: .*generation 2"):
        wait_ready(objects, timeout=0.2, api_client=api, interval=0.05)
    fake.statuses[path] = [READY]  # a KServe that writes no observedGeneration: its Ready is taken
    assert wait_ready(objects, timeout=30, api_client=api, interval=0.05)


def test_deploy_command_writes_the_yaml(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tauforge.pipelines.cli", "deploy", "--model", "uplift",
                          "--version", "3",
                          "--mode", "canary", "--percent", "20", "--namespace", "causal", "--store", "s3://b/m",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    (path,) = tmp_path.iterdir()
    obj = yaml.safe_load(path.read_text())
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 20

    def deploy(*flags):
        return subprocess.run([sys.executable, "-m", "tauforge.pipelines.cli", "deploy", "--model", "uplift",
                               "--store", "s3://b/m", *flags], capture_output=True, text=True, cwd=ROOT)

    # The folder holds the last deployment's objects only: after a shadow, a replace left the
    # shadow and its mirror there, and `kubectl apply -f` recreated them (an ops review).
    folder = tmp_path / "deploy"
    assert deploy("--version", "3", "--mode", "shadow", "--champion-version", "2", "--out", str(folder)).returncode == 0
    assert len(list(folder.iterdir())) == 3
    assert deploy("--version", "3", "--mode", "replace", "--raw", "--out", str(folder)).returncode == 0
    (path,) = folder.iterdir()
    assert yaml.safe_load(path.read_text())["metadata"]["labels"]["tauforge.io/version"] == "3"
    (folder / "notes.txt").write_text("mine")
    refused = deploy("--version", "4", "--out", str(folder))
    assert refused.returncode == 2 and "holds files tauforge deploy did not write (notes.txt)" in refused.stderr
    assert sorted(p.name for p in folder.iterdir()) == [path.name, "notes.txt"] and "'3'" in path.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    piped = deploy("--version", "4", "--out", "-")
    assert piped.returncode == 0 and yaml.safe_load(piped.stdout)["kind"] == "InferenceService"


def test_deploy_writes_into_a_mount_point_in_place_leaving_the_last_set_only(tmp_path):
    # A review: the folder swap failed with 'Device or resource busy' on a mount point (a volume
    # given to a container as its --out), where deploy had written before. Needs root for mount.
    from tauforge.components.deploy import write

    folder = tmp_path / "out"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (and a mount namespace that allows it)")
    try:
        write(render(spec(mode="shadow", champion_version=2)), str(folder))
        assert len(list(folder.iterdir())) == 3
        (path,) = write(render(spec()), str(folder))
        assert [p.name for p in folder.iterdir()] == [os.path.basename(path)]
        assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no staging folder beside it
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_deploy_replaces_a_folder_in_one_step_where_linux_can(tmp_path, monkeypatch):
    # With two renames the folder was absent between them, and a crash there left it absent.
    # Where the file system has renameat2's exchange (tmpfs, ext4, xfs, overlayfs) it never is:
    # the folder is never renamed away.
    from tauforge.components import deploy

    folder = tmp_path / "out"
    deploy.write(render(spec(mode="shadow", champion_version=2)), str(folder))
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir()
    probe_b.mkdir()
    if not deploy._exchange(str(probe_a), str(probe_b)):
        pytest.skip("this file system has no atomic exchange of folders")
    renamed = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renamed.append(os.fspath(a)), real_rename(a, b)))
    (path,) = deploy.write(render(spec()), str(folder))
    assert str(folder) not in renamed
    assert [p.name for p in folder.iterdir()] == [os.path.basename(path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]  # no staging folder beside it


# From a mutation test of components/deploy.py: each test below failed a change that passed every
# other test (named in its comment).
def test_every_predictor_keeps_its_node_selector_and_mounts_no_api_token(validators):
    # Dropping the node selector (GPU nodes) or the token's opt-out passed every test.
    selector = {"nvidia.com/gpu.present": "true"}
    renders = [render(spec(node_selector=selector)), render(spec(mode="canary", node_selector=selector)),
               render(spec(mode="shadow", champion_version=2, node_selector=selector)),
               render(spec(mode="canary", router="predictor", champion_version=2, node_selector=selector))]
    predictors = [o["spec"]["predictor"] for objects in renders for o in objects if o["kind"] == "InferenceService"]
    assert len(predictors) == 5
    for predictor in predictors:
        assert predictor["nodeSelector"] == selector and predictor["automountServiceAccountToken"] is False
    assert all(check(validators, o) for objects in renders for o in objects)


def test_a_store_given_with_a_trailing_slash_names_the_same_version_folder():
    (isvc,) = render(spec(store="s3://bucket/models/"))  # s3://bucket/models//uplift/3 is another key
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://bucket/models/uplift/3"


def test_a_mesh_canarys_share_is_a_whole_percent_and_nothing_else_is_rounded_into_one():
    # canaryTrafficPercent is an integer. The share was once rounded without a word, and 99.6%
    # asked for became 100%, a full rollout (a walkthrough): a fractional share is refused, naming
    # the whole percents on either side, and the router's own split (per unit) keeps it.
    for asked in (1, 12, 100, 12.0):
        (isvc,) = render(spec(mode="canary", percent=asked))
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == int(asked), asked
    for asked, offered in ((99.6, "99 or 100"), (12.5, "12 or 13"), (0.5, "give 1,")):
        with pytest.raises(ConfigError, match="whole percent") as refused:
            spec(mode="canary", percent=asked)
        assert offered in str(refused.value), (asked, str(refused.value))
    # A mirror's percentage is a float in Istio: a shadow keeps its fraction.
    *_, mirror = render(spec(mode="shadow", champion_version=2, percent=12.5))
    assert mirror["spec"]["http"][0]["mirrorPercentage"] == {"value": 12.5}


def test_a_replace_with_the_predictor_router_serves_one_version_through_the_runtime(validators):
    # --router applies to a canary or a shadow: a replace still serves one version on the runtime
    # (a router for it would run `serve --version None`).
    (isvc,) = render(spec(router="predictor"))
    predictor = isvc["spec"]["predictor"]
    assert "containers" not in predictor and predictor["model"]["storageUri"] == "s3://bucket/models/uplift/3"
    assert check(validators, isvc)


def test_the_router_on_gpus_runs_the_cuda_image_on_cuda_and_keeps_a_fractional_share(validators):
    (isvc,) = render(spec(mode="canary", router="predictor", champion_version=2, percent=12.5, gpus=1,
                          image="registry.example.com/tauforge:1.0"))
    assert check(validators, isvc)
    (container,) = isvc["spec"]["predictor"]["containers"]
    from tauforge.pipelines.cli import build_parser

    args = build_parser().parse_args(container["args"])
    assert args.percent == 12.5 and args.device == "cuda"  # str(int(percent)) sent 12
    assert container["image"] == "registry.example.com/tauforge:1.0-cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    labels = isvc["metadata"]["labels"]
    assert (labels["tauforge.io/version"], labels["tauforge.io/challenger-version"], labels["tauforge.io/role"]) == (
        "2", "3", "champion")


def test_a_router_canary_or_shadow_follows_a_replaced_champion_in_place(kube_api):
    # The router is Serverless, as a replace is: KServe never changes a service's mode, so a
    # RawDeployment router was refused over every champion `deploy` had put there.
    fake, api = kube_api
    apply(render(spec(version=2)), api)
    for mode in ("canary", "shadow"):
        assert apply(render(spec(mode=mode, router="predictor", champion_version=2)), api) == [
            "replaced InferenceService/uplift"]


def test_a_service_without_a_mode_annotation_is_taken_as_kserves_default_serverless(kube_api):
    # An InferenceService created by hand often carries no deploymentMode: KServe's default
    # (Serverless) then applies, which a mesh shadow's RawDeployment champion cannot replace.
    fake, api = kube_api
    apply(render(spec(version=1)), api)
    path = "/apis/serving.kserve.io/v1beta1/namespaces/causal/inferenceservices/uplift"
    del fake.objects[path]["metadata"]["annotations"]
    with pytest.raises(RuntimeError, match="InferenceService/uplift runs in Serverless mode"):
        apply(render(spec(mode="shadow", champion_version=1)), api)
    assert not [c for c in fake.calls if c[0] == "PUT"]  # refused before anything was sent


def test_wait_ready_waits_for_the_inference_services_of_a_shadow_and_not_its_virtual_service(kube_api):
    fake, api = kube_api
    objects = render(spec(mode="shadow", champion_version=2))
    apply(objects, api)
    for name in ("uplift", "uplift-shadow"):
        fake.statuses[f"/apis/serving.kserve.io/v1beta1/namespaces/causal/inferenceservices/{name}"] = [READY]
    assert wait_ready(objects, timeout=30, api_client=api, interval=0.05) == [
        f"InferenceService/{name} is ready at {READY['url']}" for name in ("uplift", "uplift-shadow")]
    assert not [c for c in fake.calls if c[0] == "GET" and "virtualservices" in c[1]]


def test_a_write_that_fails_leaves_the_earlier_set_whole_and_no_staging_folder(tmp_path, monkeypatch):
    from tauforge.components import deploy

    folder = tmp_path / "out"
    earlier = deploy.write(render(spec(mode="shadow", champion_version=2)), str(folder))
    before = {p: open(p).read() for p in earlier}
    unwritable = render(spec())
    unwritable[0]["metadata"]["labels"]["x"] = object()  # yaml.safe_dump refuses it mid-way
    with pytest.raises(yaml.YAMLError):
        deploy.write(unwritable, str(folder))
    assert {str(p): p.read_text() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # Where the folder is swapped by two renames (no atomic exchange) and the second fails, the
    # earlier set is put back: the folder is never left absent.
    monkeypatch.setattr(deploy, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(a, b):
        if os.path.basename(os.fspath(a)).startswith(".out.") and not os.fspath(a).endswith(".old"):
            raise OSError(28, "No space left on device")  # not one of write's in-place fallbacks
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        deploy.write(render(spec()), str(folder))
    assert {str(p): p.read_text() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_written_folders_keep_their_mode_and_a_new_one_follows_the_umask(tmp_path):
    # mkdtemp's staging folder is 0700: unchanged, it hid the manifests from the user's group
    # (a GitOps agent reading them) in a new folder, and narrowed an existing one.
    from tauforge.components.deploy import write

    old = os.umask(0o022)
    try:
        write(render(spec()), str(tmp_path / "new"))
    finally:
        os.umask(old)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o755
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o750)
    write(render(spec()), str(tmp_path / "shared"))
    write(render(spec(version=4)), str(tmp_path / "shared"))
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o750


def test_a_folder_holding_another_tools_yaml_is_refused_and_kept(tmp_path):
    # Only YAML labelled app.kubernetes.io/name=tauforge is deploy's to replace: a mutation that
    # took any YAML mapping for its own deleted a user's kustomization.yaml and passed every test.
    from tauforge.components.deploy import write

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text("resources: [isvc.yaml]\n")
    with pytest.raises(ValueError, match=r"holds files tauforge deploy did not write \(kustomization.yaml\)"):
        write(render(spec()), str(folder))
    assert [p.name for p in folder.iterdir()] == ["kustomization.yaml"]


def exported_metric_names(tmp_path, with_event_log: bool = False):
    """Every series name tauforge exports: the serving metrics (serving/metrics.py) and the gauges
    `tauforge monitor --metrics-file` writes (components/monitor.py, with every optional one); with
    `with_event_log`, also the event log's (serving/event_log.py: a server's, with no model label,
    so alerted on but not on the dashboard, whose panels follow the model and version)."""
    from prometheus_client import parser
    from prometheus_client.metrics import MetricWrapperBase

    from tauforge.components.monitor import write_gauges
    from tauforge.serving import event_log, metrics

    result = {"alerts": [], "retrain": False, "live_rows": 1, "recommendation": "hold",
              "checks": {"domain_classifier": {"auc": 0.5}, "shadow": {"spearman": 1.0}},
              "policy": {"judged": "canary", "challenger_version": 2, "difference_dr": 0.1,
                         "confidence_sequence": [-0.1, 0.3]}}
    write_gauges(result, "m", 1, str(tmp_path / "g.prom"))
    names = {f.name for f in parser.text_string_to_metric_families((tmp_path / "g.prom").read_text())}
    for metric in [*vars(metrics).values(), *(vars(event_log).values() if with_event_log else ())]:
        if isinstance(metric, MetricWrapperBase):
            names |= {f.name for f in metric.collect()}
    suffixes = ("", "_total", "_bucket", "_count", "_sum")  # counters' and histograms' series
    return {n + s for n in names for s in suffixes}


def used_metric_names(texts):
    import re

    return {m for t in texts for m in re.findall(r"\b(tauforge_[a-z_]+)", t)}


def test_alert_rules_and_dashboard_use_only_metrics_tauforge_exports(tmp_path):
    exported = exported_metric_names(tmp_path, with_event_log=True)
    rules = yaml.safe_load(open(os.path.join(ROOT, "manifests", "monitoring", "prometheus-rules.yaml")))
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    used = used_metric_names(exprs)
    assert used and used <= exported, used - exported

    dashboard = json.load(open(os.path.join(ROOT, "manifests", "monitoring", "grafana-dashboard.json")))
    panels = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = used_metric_names(panels + variables)
    exported = exported_metric_names(tmp_path)
    assert used <= exported, used - exported
    # Every metric family has a panel, and every panel follows the model and version selectors.
    assert {n.removesuffix("_total").removesuffix("_bucket") for n in used} == {
        n for n in exported if not n.endswith(("_total", "_bucket", "_count", "_sum"))}
    assert all('model=~"$model", version=~"$version"' in q for q in panels)


def test_the_runbooks_alert_table_lists_every_alert_rule_with_its_severity():
    # A docs review: TauforgeMonitorStale was missing from the table an on-call engineer reads.
    import re

    rules = yaml.safe_load(open(os.path.join(ROOT, "manifests", "monitoring", "prometheus-rules.yaml")))
    alerts = {r["alert"]: r["labels"]["severity"] for g in rules["spec"]["groups"] for r in g["rules"] if "alert" in r}
    runbook = open(os.path.join(ROOT, "docs", "runbook.md")).read()
    table = dict(re.findall(r"^\| `(Tauforge\w+)` \|.*\| (page|ticket) \|$", runbook, flags=re.M))
    assert table == alerts


def test_a_shadows_failures_are_a_ticket_never_a_page():
    # A serving review: shadow timeouts and sheds counted in TauforgeScoringErrors, a page, though a
    # shadow is off the response path (70% of a loaded shadow's requests timed out).
    import re

    rules = yaml.safe_load(open(os.path.join(ROOT, "manifests", "monitoring", "prometheus-rules.yaml")))
    alerts = {r["alert"]: r for g in rules["spec"]["groups"] for r in g["rules"] if "alert" in r}
    pages = [r["expr"] for r in alerts.values() if r["labels"]["severity"] == "page"]
    selectors = [m for e in pages for m in re.findall(r"tauforge_(?:errors|requests)_total\{([^}]*)\}", e)]
    assert selectors and all('role!="shadow"' in m for m in selectors), selectors
    for name in ("TauforgeShadowFails", "TauforgeShadowTimeouts"):
        assert alerts[name]["labels"]["severity"] == "ticket" and 'role="shadow"' in alerts[name]["expr"]


def test_grafana_dashboard_ships_as_a_labelled_config_map():
    (cm,) = [d for d in kustomize("monitoring") if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["grafana-dashboard.json"])
    assert shipped == json.load(open(os.path.join(ROOT, "manifests", "monitoring", "grafana-dashboard.json")))
    assert shipped["uid"] and shipped["panels"]


def test_the_pipelines_deploy_step_shadows_the_stores_champion_with_the_new_version(validators, s3, tmp_path):
    # The training pipeline's deploy task (compile --deploy), run as its function on a real S3 store:
    # its shadow keeps the champion the store names, and it refuses one that would compare a version
    # with itself.
    import types

    from tauforge.components.deploy import deploy_version
    from tauforge.components.registry import ModelStore
    from tauforge.kernels import CausalForest
    from tauforge.kernels.datasets import make_causal_data

    d = make_causal_data("simple", n=300, p=3, seed=0)
    CausalForest(n_estimators=8, random_state=0).fit(d.X, d.T - d.e, d.Y - d.m).save(tmp_path / "v" / "forest")
    (tmp_path / "v" / "report.html").write_text("<html></html>")
    uri = s3.uri("pipeline-deploy")
    store = ModelStore(uri)
    card = {"effect": {"ate": 0.5, "ate_lower": 0.4, "ate_upper": 0.6}, "data": {"rows": 300}}
    assert [store.publish("uplift", str(tmp_path / "v"), card) for _ in range(2)] == [1, 2]
    manifests = types.SimpleNamespace(path=str(tmp_path / "out"), metadata={})
    with pytest.raises(ConfigError, match="has no 'champion' alias: promote a champion first"):
        deploy_version.python_func(version=2, store=uri, model_name="uplift", deploy='{"mode": "shadow"}',
                                   apply_objects=False, manifests=manifests)
    # The pipeline's first task sees it too, with the version publish would take (a review: fixed
    # placeholders refused a valid champion_version and let this one through to after publish).
    from tauforge.components.data import validate_data

    for deploy, problem in (('{"mode": "shadow"}', "compares the new version 3 with the champion, and 'uplift' has "
                                                   "no 'champion' alias"),
                            ('{"mode": "shadow", "champion_version": 3}', "champion_version is version 3")):
        with pytest.raises(ConfigError, match=problem):
            validate_data.python_func(source="unread.csv", spec="{}", store=uri, dataset=None, model_name="uplift",
                                      deploy=deploy)
    store.set_alias("uplift", "champion", 1)
    deploy_version.python_func(version=2, store=uri, model_name="uplift",
                               deploy='{"mode": "shadow", "percent": 20, "namespace": "ml"}', apply_objects=False,
                               manifests=manifests)
    objects = [doc for name in sorted(os.listdir(manifests.path))
               for doc in yaml.safe_load_all(open(os.path.join(manifests.path, name))) if doc]
    assert all(check(validators, obj) for obj in objects)
    served = {o["metadata"]["name"]: o["spec"]["predictor"]["model"]["storageUri"] for o in objects
              if o["kind"] == "InferenceService"}
    assert served == {"uplift": f"{uri}/uplift/1", "uplift-shadow": f"{uri}/uplift/2"}
    assert manifests.metadata["objects"] == ["InferenceService/uplift", "InferenceService/uplift-shadow",
                                             "VirtualService/uplift-shadow-mirror"]
    with pytest.raises(ConfigError, match="unknown setting"):
        deploy_version.python_func(version=2, store=uri, model_name="uplift", deploy='{"modes": "shadow"}',
                                   apply_objects=False, manifests=manifests)
