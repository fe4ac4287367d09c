"""The model store on object storage, against a real S3-compatible server on 127.0.0.1 (moto's
standalone server, which honours S3's conditional writes): the round trip a user makes from the
command line, concurrent publishers and promoters in real processes, and planted defects.

The endpoint and credentials reach botocore the standard way, through the environment
($AWS_ENDPOINT_URL, $AWS_ACCESS_KEY_ID, ...), in this process and in every process it starts."""

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import numpy as np
import pytest
from background import Processes, compile_kernels
from publishers import publish_then_promote
from servers import free_port, wait_for_http

from tauforge.components.registry import CARD_FILE, ModelStore, StoreError
from tauforge.kernels import CausalForest
from tauforge.kernels.datasets import make_causal_data

TAUFORGE = [sys.executable, "-m", "tauforge.pipelines.cli"]
MODEL = "tauforge-model"  # the name `tauforge run` publishes under


def start_background(request):
    """`tauforge run --demo` publishing to an s3:// store, started at the session's first test
    (conftest.py), so that the other tests run while it does."""
    compile_kernels()
    store = request.getfixturevalue("s3").uri("demo")
    workdir = request.getfixturevalue("tmp_path_factory").mktemp("demo")
    cmd = [*TAUFORGE, "run", "--demo", "--store", store, "--trees", "20", "--folds", "2", "--shards", "1",
           "--pipeline-root", str(workdir / "runs"), "--json"]
    return Processes(store=store).start("demo", cmd, cwd=workdir)


@pytest.fixture(scope="module")
def demo_run(background):
    return background[__name__]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small version folder to publish: a saved forest and a report."""
    d = make_causal_data("simple", n=600, p=4, seed=1)
    forest = CausalForest(n_estimators=10, random_state=0).fit(d.X, d.T - d.e, d.Y - d.m)
    path = tmp_path_factory.mktemp("model")
    forest.save(path / "forest")
    (path / "report.html").write_text("<html></html>")
    return str(path), forest, d.X


def card(ate=0.5):
    return {"effect": {"ate": ate, "ate_lower": ate - 0.1, "ate_upper": ate + 0.1}, "data": {"rows": 600}}


def tauforge(*args, cwd=None):
    out = subprocess.run([*TAUFORGE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert out.returncode == 0, f"tauforge {' '.join(args)} exited {out.returncode}:\n{out.stderr}"
    assert "Traceback" not in out.stderr and "Logging error" not in out.stderr, out.stderr
    return out.stdout


# ---------------------------------------------------------------------- concurrency (real processes)
@pytest.fixture(scope="module")
def race(s3, model_dir):
    """Three processes publish three versions each to one new model on S3 at the same time, then
    each promotes its first version at the same time."""
    src = model_dir[0]
    uri = s3.uri("race")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=publish_then_promote, args=(uri, MODEL, src, card(), 3, barrier, results))
             for _ in range(3)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [message for status, message in outcomes if status == "error"]
    assert not errors, errors
    return uri, [versions for _, versions in outcomes]


def test_concurrent_publishers_to_one_model_on_s3_get_distinct_complete_versions(race, model_dir, tmp_path):
    uri, published = race
    _, forest, X = model_dir
    versions = sorted(v for per_process in published for v in per_process)
    assert versions == list(range(1, 10))  # nine publishes, nine numbers, none shared, none skipped
    store = ModelStore(uri)
    assert store.versions(MODEL) == versions and store.models() == [MODEL]
    for v in versions:
        loaded = store.load(MODEL, v, cache_dir=str(tmp_path))  # complete: every checksum verifies
        assert loaded.card["version"] == v
        np.testing.assert_array_equal(loaded.load_forest().predict(X[:5]), forest.predict(X[:5]))


def test_concurrent_promotions_on_s3_lose_no_update(race):
    uri, published = race
    promoted = {versions[0] for versions in published}
    entry = ModelStore(uri).aliases(MODEL)["champion"]
    # Each promotion read the alias, changed it and wrote it back only if no other had written
    # since (If-Match): so every promoted version is the champion or in its history, once.
    assert sorted([entry["version"], *entry["history"]]) == sorted(promoted)


# ---------------------------------------------------------------------- defects
def test_a_card_that_landed_though_its_answer_was_lost_keeps_its_version_on_s3(s3, model_dir, tmp_path, monkeypatch):
    # A review: the card's PUT reached the store and the connection then reset; the publisher
    # removed the version that readers could already see. The reset is faked after the real PUT.
    store = ModelStore(s3.uri("lost-answer"))
    real_create = ModelStore._create

    def create_then_reset(self, path, data):
        created = real_create(self, path, data)
        if path.endswith("/model_card.json"):
            raise ConnectionResetError(104, "Connection reset by peer")
        return created
    monkeypatch.setattr(ModelStore, "_create", create_then_reset)
    assert store.publish(MODEL, model_dir[0], card()) == 1
    monkeypatch.undo()
    assert store.versions(MODEL) == [1]
    store.load(MODEL, 1, cache_dir=str(tmp_path))  # whole: every file verifies


def test_a_file_changed_after_publishing_on_s3_fails_load_with_a_checksum_error(s3, model_dir, tmp_path):
    store = ModelStore(s3.uri("defect"))
    version = store.publish(MODEL, model_dir[0], card())
    folder = f"{store.root}/{MODEL}/{version}"
    store.load(MODEL, version, cache_dir=str(tmp_path / "before"))  # as published: it verifies

    original = store.fs.cat_file(f"{folder}/report.html")
    store.fs.pipe_file(f"{folder}/report.html", b"<html>edited</html>")
    with pytest.raises(StoreError, match=rf"{MODEL} version {version} in s3://.* fails verification: checksum "
                                         r"mismatch for .*report\.html"):
        store.load(MODEL, version, cache_dir=str(tmp_path / "after"))
    # A bad download is never kept: repaired in the store, the version loads through the same cache
    # (a user's review: the copy was cached before it was checked, and failed for good).
    store.fs.pipe_file(f"{folder}/report.html", original)
    assert store.load(MODEL, version, cache_dir=str(tmp_path / "after")).version == version
    # A cached copy that no longer verifies (another store of the same name) is fetched again.
    cached = tmp_path / "after" / MODEL / str(version) / "report.html"
    cached.write_text("<html>stale</html>")
    assert store.load(MODEL, version, cache_dir=str(tmp_path / "after")).version == version
    assert cached.read_bytes() == original
    # Without cache_dir: a folder of this uid's only, in the temp directory.
    default = store.load(MODEL, version).path
    assert os.stat(os.path.dirname(os.path.dirname(os.path.dirname(default)))).st_mode & 0o077 == 0

    store.fs.pipe_file(f"{folder}/extra.txt", b"planted")
    with pytest.raises(StoreError, match="holds files its card does not list: extra.txt"):
        store.load(MODEL, version, cache_dir=str(tmp_path / "planted"))

    edited = json.loads(store.fs.cat_file(f"{folder}/{CARD_FILE}"))
    edited["effect"]["ate"] = 9.9
    store.fs.pipe_file(f"{folder}/{CARD_FILE}", json.dumps(edited).encode())
    with pytest.raises(StoreError, match=f"card of {MODEL} version {version} fails its checksum"):
        store.load(MODEL, version, cache_dir=str(tmp_path / "card"))


def test_a_card_whose_write_landed_but_whose_answer_was_lost_is_published_not_refused(s3, model_dir, monkeypatch):
    # S3 answers a retried conditional PUT whose first attempt landed with 412: the card there is
    # ours, and the version is published (a user's review: publish raised, the version live).
    store = ModelStore(s3.uri("retried"))
    create = store._create

    def landed_then_refused(path, data, theirs=None):
        if not path.endswith(CARD_FILE):
            return create(path, data)
        create(path, data if theirs is None else theirs)
        return False

    monkeypatch.setattr(store, "_create", landed_then_refused)
    assert store.publish(MODEL, model_dir[0], card()) == 1 and store.load(MODEL, 1).version == 1
    # Another writer's card in that place is still refused, naming the store.
    monkeypatch.setattr(store, "_create", lambda path, data: landed_then_refused(path, data, theirs=b"{}"))
    with pytest.raises(StoreError, match="already has a model_card.json although this publisher claimed the number"):
        store.publish(MODEL, model_dir[0], card())


def test_another_writers_valid_card_at_a_claimed_number_is_refused_not_taken_for_ours(s3, model_dir, monkeypatch):
    # Whose card is there is told by its checksum, not by its being a readable card.
    from tauforge.components.registry import card_digest

    store = ModelStore(s3.uri("foreign-card"))
    create = store._create

    def theirs_lands_first(path, data):
        if path.endswith(CARD_FILE):
            theirs = dict(json.loads(data), effect={"ate": 9.9})
            theirs["card_sha256"] = card_digest(theirs)
            create(path, json.dumps(theirs).encode())
        return create(path, data)
    monkeypatch.setattr(store, "_create", theirs_lands_first)
    with pytest.raises(StoreError, match="already has a model_card.json although this publisher claimed the number"):
        store.publish(MODEL, model_dir[0], card())


@pytest.mark.parametrize("failure", ["a reset connection", "a file that never landed"])
def test_an_upload_that_fails_midway_leaves_no_file_under_its_number_and_burns_it(s3, model_dir, monkeypatch,
                                                                                 failure):
    store = ModelStore(s3.uri("failed-upload-" + failure.split()[-1]))
    put = store.fs.put_file
    uploaded = []

    def fail_on_the_second_file(lpath, rpath, **kwargs):
        if uploaded:
            if failure == "a reset connection":
                raise ConnectionResetError(104, "Connection reset by peer")
            return None  # dropped: the upload says nothing
        uploaded.append(rpath)
        return put(lpath, rpath, **kwargs)
    monkeypatch.setattr(store.fs, "put_file", fail_on_the_second_file)
    with pytest.raises((OSError, StoreError)):
        store.publish(MODEL, model_dir[0], card())
    monkeypatch.undo()
    assert uploaded and store.versions(MODEL) == [] and store.fs.find(f"{store.root}/{MODEL}/1") == []
    assert store.publish(MODEL, model_dir[0], card()) == 2


def test_a_promotion_whose_aliases_file_changed_after_it_was_read_is_retried_and_loses_no_update(
        s3, model_dir, monkeypatch):
    # Deterministic, where the racing processes above may not overlap: another promoter writes
    # between this one's read and its write; the write (If-Match) is refused and redone on theirs.
    uri = s3.uri("if-match")
    store, other = ModelStore(uri), ModelStore(uri)
    store.publish(MODEL, model_dir[0], card())
    store.set_alias(MODEL, "champion", 1)  # the aliases file exists: the next write replaces it
    real_read = ModelStore._read_aliases

    def read_then_another_promotes(self, model):
        read = real_read(self, model)
        if self is store and "challenger" not in other.aliases(model):
            other.set_alias(model, "challenger", 1)
        return read
    monkeypatch.setattr(ModelStore, "_read_aliases", read_then_another_promotes)
    store.set_alias(MODEL, "canary", 1)
    monkeypatch.undo()
    assert sorted(store.aliases(MODEL)) == ["canary", "challenger", "champion"]


def test_a_claimed_number_without_a_card_stays_invisible_and_is_never_reused(s3, model_dir):
    store = ModelStore(s3.uri("crashed"))
    # What a publisher killed after claiming number 1 and uploading part of its files leaves.
    store.fs.pipe_file(f"{store.root}/{MODEL}/.claims/1", b"{}")
    store.fs.pipe_file(f"{store.root}/{MODEL}/1/report.html", b"<html></html>")
    assert store.versions(MODEL) == [] and store.models() == []
    with pytest.raises(StoreError, match="has no published version"):
        store.load(MODEL)
    assert store.publish(MODEL, model_dir[0], card()) == 2
    assert store.versions(MODEL) == [2] and store.card(MODEL, 2)["parent_version"] is None


def test_a_store_without_credentials_is_a_clear_error_not_a_traceback(s3):
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)
    out = subprocess.run([*TAUFORGE, "models", "list", "--store", s3.uri("nocreds")], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "cannot use the model store s3://" in out.stderr and "Unable to locate credentials" in out.stderr


def test_models_list_of_a_mistyped_bucket_is_an_error_not_an_empty_store(s3):
    out = subprocess.run([*TAUFORGE, "models", "list", "--store", "s3://no-such-bucket/x"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "its bucket 'no-such-bucket' does not exist" in out.stderr, out.stderr


def test_a_run_checks_the_bucket_before_any_task(s3, monkeypatch):
    import fsspec

    from tauforge.components.registry import check_store

    check_store(s3.uri("new-store"))  # a bucket that answers; the store's folder comes at publish
    with pytest.raises(StoreError, match="s3://no-such-bucket/x cannot be used: its bucket "
                                         "'no-such-bucket' does not exist"):
        check_store("s3://no-such-bucket/x")
    check_store("s3://no-such-bucket/x", here=False)  # submit: the pods reach it with their own credentials
    # ... and the pipeline's first task checks it with them: a compiled or submitted run's wrong
    # bucket failed at publish, after the whole training (a Kubeflow review).
    from tauforge.components.data import validate_data

    with pytest.raises(StoreError, match="its bucket 'no-such-bucket' does not exist"):
        validate_data.python_func(source="unread.csv", spec="{}", store="s3://no-such-bucket/x", dataset=None)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    # fsspec keeps one filesystem per URI's options, holding the credentials it was made with.
    fsspec.get_filesystem_class("s3").clear_instance_cache()
    try:
        with pytest.raises(StoreError, match="cannot be reached: Unable to locate credentials"):
            check_store(s3.uri("nocreds"))
    finally:
        fsspec.get_filesystem_class("s3").clear_instance_cache()  # none without credentials for the next tests


# ---------------------------------------------------------------------- the user's round trip
def v1(port: int, rows: list[dict]):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict",
                                 data=json.dumps({"instances": rows}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


def test_a_user_runs_lists_promotes_rolls_back_and_serves_a_model_on_s3(s3, demo_run, tmp_path):
    store_uri = demo_run.store
    code, stdout, stderr = demo_run.result("demo")
    assert code == 0, stderr
    assert "Logging error" not in stderr and "Traceback" not in stderr, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["gate_passed"] and result["version"] == 1 and result["store"] == store_uri

    listed = json.loads(tauforge("models", "list", "--store", store_uri, "--json"))
    assert [(r["model"], r["version"], r["aliases"]) for r in listed] == [(MODEL, 1, [])]

    # A second version, as a second run would publish it: the first's files under a new run id.
    store = ModelStore(store_uri)
    first = store.load(MODEL, 1, cache_dir=str(tmp_path / "cache"))
    src = tmp_path / "second"
    shutil.copytree(first.path, src, ignore=shutil.ignore_patterns(CARD_FILE))
    assert store.publish(MODEL, str(src), dict(first.card, run={"run_id": "second"})) == 2

    shown = json.loads(tauforge("models", "show", "--store", store_uri, "--name", MODEL, "--version", "2"))
    assert shown["version"] == 2 and shown["parent_version"] == 1 and shown["run"]["run_id"] == "second"
    assert tauforge("models", "promote", "--store", store_uri, "--name", MODEL, "--version", "1").strip() \
        == f"{MODEL}: champion -> version 1"
    assert tauforge("models", "promote", "--store", store_uri, "--name", MODEL, "--version", "2").strip() \
        == f"{MODEL}: champion -> version 2"
    assert tauforge("models", "rollback", "--store", store_uri, "--name", MODEL).strip() \
        == f"{MODEL}: champion -> version 1"
    listed = json.loads(tauforge("models", "list", "--store", store_uri, "--json"))
    assert [(r["version"], r["aliases"]) for r in listed] == [(1, ["champion"]), (2, [])]
    # deploy takes the alias too, read from the store, and pins the version it names.
    tauforge("deploy", "--store", store_uri, "--model", MODEL, "--version", "champion", "--out", str(tmp_path / "k8s"))
    manifests = "".join(p.read_text() for p in (tmp_path / "k8s").iterdir())
    assert f"storageUri: {store_uri}/{MODEL}/1" in manifests and f"{MODEL}/2" not in manifests
    # And for the version that keeps answering a shadow (a review: it took a number only).
    tauforge("deploy", "--store", store_uri, "--model", MODEL, "--mode", "shadow", "--version", "2",
             "--champion-version", "champion", "--out", str(tmp_path / "k8s-shadow"))
    manifests = "".join(p.read_text() for p in (tmp_path / "k8s-shadow").iterdir())
    assert f"storageUri: {store_uri}/{MODEL}/1" in manifests and f"storageUri: {store_uri}/{MODEL}/2" in manifests

    # The champion, fetched fresh and verified: every file the card lists, with its sha256.
    champion = ModelStore(store_uri).load(MODEL, "champion", cache_dir=str(tmp_path / "fresh"))
    assert champion.version == 1
    for rel, digest in champion.card["files"].items():
        assert hashlib.sha256(open(os.path.join(champion.path, rel), "rb").read()).hexdigest() == digest

    # Served from the store: the champion (after the rollback, version 1) answers V1 over HTTP.
    port = free_port()
    output = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen([*TAUFORGE, "serve", "--store", store_uri, "--model", MODEL, "--port", str(port)],
                              cwd=str(tmp_path), stdout=output, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models/{MODEL}", server, "tauforge serve", output, timeout=90)
        row = {name: 0.5 for name in champion.card["spec"]["covariates"]}
        status, body = v1(port, [row, dict(row, unit_id="u1")])
        assert status == 200
        assert [(p["model"], p["version"], p["role"]) for p in body["predictions"]] == [(MODEL, 1, "champion")] * 2
        assert all(p["lower"] <= p["cate"] <= p["upper"] for p in body["predictions"])
    finally:
        server.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod
        try:
            code = server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
    assert code == 0
