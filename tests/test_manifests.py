"""Kubernetes objects from `tauforge deploy` and manifests/ validate strictly against the CRD
schemas in ../shared/schemas (unknown fields rejected), and the RBAC stays least-privilege."""

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

from components.deploy import DeploySpec, apply, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = os.path.join(ROOT, "..", "shared", "schemas")
CRDS = {("InferenceService", "serving.kserve.io/v1beta1"): ("kserve-inferenceservice-crd.yaml", "v1beta1"),
        ("VirtualService", "networking.istio.io/v1"): ("istio-virtualservice-crd.yaml", "v1")}
KUSTOMIZATIONS = ["base", "overlays/canary", "overlays/shadow", "overlays/gpu"]


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
    if not os.path.isdir(SCHEMAS):
        pytest.skip(f"CRD schemas not found at {SCHEMAS} (../shared/schemas from the project root)")
    out = {}
    for key, (filename, version) in CRDS.items():
        for doc in yaml.safe_load_all(open(os.path.join(SCHEMAS, filename))):
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


@pytest.mark.parametrize("kw", [
    {"mode": "replace"},
    {"mode": "canary", "percent": 20},
    {"mode": "shadow", "percent": 50, "gpus": 1, "service_account": "tauforge-serving",
     "node_selector": {"nvidia.com/gpu.present": "true"}},
])
def test_every_generated_object_validates_strictly(validators, kw):
    objects = render(spec(**kw))
    assert all(check(validators, obj) for obj in objects)
    isvc = objects[0]
    env = isvc["spec"]["predictor"]["containers"][0]["env"]
    assert env == [{"name": "STORAGE_URI", "value": "s3://bucket/models/uplift/3"}]
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    if kw["mode"] == "canary":
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20 and mode == "Serverless"
    if kw["mode"] == "shadow":
        assert isvc["metadata"]["name"] == "uplift-shadow" and mode == "RawDeployment"
        vs = objects[1]["spec"]["http"][0]
        assert vs["mirror"]["host"] == "uplift-shadow-predictor.causal.svc.cluster.local"
        assert vs["mirrorPercentage"] == {"value": 50.0}
        assert isvc["spec"]["predictor"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_validator_rejects_a_misspelt_field(validators):
    obj = render(spec(mode="canary"))[0]
    obj["spec"]["predictor"]["canaryTrafficPercnt"] = obj["spec"]["predictor"].pop("canaryTrafficPercent")
    with pytest.raises(AssertionError, match="canaryTrafficPercnt"):
        check(validators, obj)


def test_deploy_refuses_a_store_the_cluster_cannot_read():
    with pytest.raises(ValueError, match="not a URI the cluster can read"):
        render(spec(store="./tauforge-store"))


def kustomize(path):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "manifests", path)], capture_output=True,
                         text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomizations_build_into_valid_objects_with_least_privilege_rbac(validators, path):
    docs = kustomize(path)
    kinds = [d["kind"] for d in docs]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    assert sum(check(validators, d) for d in docs) == kinds.count("InferenceService") + kinds.count("VirtualService")
    (role,) = [d for d in docs if d["kind"] == "Role"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"inferenceservices", "virtualservices"}
    assert all(d["metadata"]["namespace"] == "tauforge" for d in docs)


def test_overlays_are_the_objects_tauforge_deploy_generates():
    common = dict(model="tauforge-model", namespace="tauforge", store="s3://tauforge-models",
                  service_account="tauforge-serving")
    by_name = lambda docs: {(d["kind"], d["metadata"]["name"]): d for d in docs}  # noqa: E731
    canary = by_name(kustomize("overlays/canary"))
    assert canary[("InferenceService", "tauforge-model")] == render(
        DeploySpec(version=2, mode="canary", percent=10, **common))[0]
    shadow = by_name(kustomize("overlays/shadow"))
    for obj in render(DeploySpec(version=2, mode="shadow", percent=100, **common)):
        assert shadow[(obj["kind"], obj["metadata"]["name"])] == obj


class FakeKubernetesAPI:
    """A stand-in for the Kubernetes API server (none runs here): it stores custom objects by
    path, answers 409 for a second create, and records every call. The client side (the
    Kubernetes Python client, components.deploy.apply) is real."""

    def __init__(self):
        self.objects, self.calls = {}, []
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
                obj["metadata"]["resourceVersion"] = "1"
                fake.objects[key] = obj
                self.reply(201, obj)

            def do_GET(self):
                fake.calls.append(("GET", self.path))
                self.reply(200, fake.objects[self.path])

            def do_PUT(self):
                obj = self.body()
                fake.calls.append(("PUT", self.path))
                fake.objects[self.path] = obj
                self.reply(200, obj)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_apply_creates_then_replaces_through_the_kubernetes_client():
    from kubernetes import client

    fake = FakeKubernetesAPI()
    try:
        api = client.ApiClient(client.Configuration(host=fake.url))
        objects = render(spec(mode="shadow"))
        assert apply(objects, api) == ["created InferenceService/uplift-shadow",
                                       "created VirtualService/uplift-shadow-mirror"]
        assert apply(objects, api) == ["replaced InferenceService/uplift-shadow",
                                       "replaced VirtualService/uplift-shadow-mirror"]
    finally:
        fake.close()
    isvc = "/apis/serving.kserve.io/v1beta1/namespaces/causal/inferenceservices/uplift-shadow"
    assert ("PUT", isvc) in fake.calls
    assert fake.objects[isvc]["spec"] == objects[0]["spec"]


def test_deploy_command_writes_the_yaml(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "deploy", "--model", "uplift", "--version", "3",
                          "--mode", "canary", "--percent", "20", "--namespace", "causal", "--store", "s3://b/m",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    (path,) = tmp_path.iterdir()
    obj = yaml.safe_load(path.read_text())
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 20


def test_alert_rules_use_only_metrics_tauforge_exports(tmp_path):
    import re

    from prometheus_client import parser

    from components.monitor import write_gauges
    from serving import metrics

    rules = yaml.safe_load(open(os.path.join(ROOT, "manifests", "monitoring", "prometheus-rules.yaml")))
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    write_gauges({"alerts": [], "retrain": False, "live_rows": 1, "recommendation": "hold", "checks": {}},
                 "m", 1, str(tmp_path / "g.prom"))
    exported = {f.name for f in parser.text_string_to_metric_families((tmp_path / "g.prom").read_text())}
    for metric in (metrics.REQUESTS, metrics.ERRORS, metrics.LATENCY, metrics.SHADOW_DISAGREEMENT):
        exported |= {f.name for f in metric.collect()}
    exported = {n + s for n in exported for s in ("", "_total", "_bucket")}
    used = {m for e in exprs for m in re.findall(r"\b(tauforge_[a-z_]+)", e)}
    assert used and used <= exported, used - exported
