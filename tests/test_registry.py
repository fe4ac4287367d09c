"""The model store: numbered immutable versions, verified loads, aliases, concurrent and
interrupted publishing (real processes on a real local filesystem)."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tauforge.components.registry import ModelStore, StoreError
from tauforge.kernels import CausalForest
from tauforge.kernels.datasets import make_causal_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = make_causal_data("simple", n=600, p=4, seed=1)
    forest = CausalForest(n_estimators=10, random_state=0).fit(d.X, d.T - d.e, d.Y - d.m)
    path = tmp_path_factory.mktemp("model")
    forest.save(path / "forest")
    (path / "report.html").write_text("<html></html>")
    return str(path), forest, d.X


def card(ate=0.5):
    return {"effect": {"ate": ate, "ate_lower": ate - 0.1, "ate_upper": ate + 0.1}, "data": {"rows": 600}}


def test_publish_numbers_versions_and_load_verifies_every_file(model_dir, tmp_path):
    src, forest, X = model_dir
    store = ModelStore(str(tmp_path / "store"))
    assert store.publish("m", src, card(0.1)) == 1
    assert store.publish("m", src, card(0.2)) == 2
    assert store.versions("m") == [1, 2] and store.models() == ["m"]
    loaded = store.load("m")  # latest
    assert loaded.version == 2 and loaded.card["parent_version"] == 1 and loaded.card["effect"]["ate"] == 0.2
    np.testing.assert_array_equal(loaded.load_forest().predict(X[:20]), forest.predict(X[:20]))
    assert set(loaded.card["files"]) == {"forest/arrays.npz", "forest/model.json", "report.html"}

    with open(os.path.join(loaded.path, "report.html"), "a") as f:
        f.write("<!-- edited -->")
    with pytest.raises(StoreError, match="checksum mismatch for .*report.html"):
        store.load("m", 2)
    card_path = os.path.join(store.root, "m", "1", "model_card.json")
    edited = json.load(open(card_path))
    edited["effect"]["ate"] = 9.9
    json.dump(edited, open(card_path, "w"))
    with pytest.raises(StoreError, match="card of m version 1 fails its checksum"):
        store.load("m", 1)


def test_unknown_models_versions_and_aliases_are_clear_errors(model_dir, tmp_path):
    src, _, _ = model_dir
    store = ModelStore(str(tmp_path / "store"))
    with pytest.raises(StoreError, match="no published version"):
        store.load("m")
    store.publish("m", src, card())
    with pytest.raises(StoreError, match=r"no version 7 \(versions: \[1\]\)"):
        store.load("m", 7)
    with pytest.raises(StoreError, match="no alias 'champion'"):
        store.resolve("m", "champion")
    with pytest.raises(StoreError, match="model name '../x'"):
        store.publish("../x", src, card())


def test_promote_and_rollback_move_the_alias_through_its_history(model_dir, tmp_path):
    src, _, _ = model_dir
    store = ModelStore(str(tmp_path / "store"))
    for _ in range(3):
        store.publish("m", src, card())
    store.set_alias("m", "champion", 1)
    store.set_alias("m", "champion", 3)
    store.set_alias("m", "challenger", 2)
    assert store.resolve("m", "champion") == 3 and store.resolve("m", "challenger") == 2
    assert store.rollback("m", "champion")["version"] == 1
    with pytest.raises(StoreError, match="no earlier version"):
        store.rollback("m", "champion")
    assert oct(os.stat(os.path.join(store.root, "m", "aliases.json")).st_mode & 0o777) == "0o644"
    os.makedirs(os.path.join(store.root, "lost+found"))  # a volume's root: not a model, not an error
    assert store.models() == ["m"]
    with pytest.raises(StoreError, match="no version 9"):
        store.set_alias("m", "champion", 9)


def _publish_many(args):
    uri, src, count = args
    return [ModelStore(uri).publish("m", src, card()) for _ in range(count)]


def test_concurrent_publishers_get_distinct_complete_versions(model_dir, tmp_path):
    src, forest, X = model_dir
    uri = str(tmp_path / "store")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_publish_many, [(uri, src, 3)] * 4)
    versions = sorted(v for r in results for v in r)
    assert versions == list(range(1, 13))
    store = ModelStore(uri)
    for v in versions:
        np.testing.assert_array_equal(store.load("m", v).load_forest().predict(X[:5]), forest.predict(X[:5]))


KILLED_PUBLISHER = """
import sys, time
import tauforge.components.registry as registry
real_verify = registry.verify_files
def slow_verify(path, card):
    real_verify(path, card)
    open(sys.argv[3], "w").close()   # tell the test we are mid-publish
    time.sleep(60)
registry.verify_files = slow_verify
registry.ModelStore(sys.argv[1]).publish("m", sys.argv[2], {"effect": {}})
"""


def test_a_publisher_killed_mid_publish_leaves_no_visible_version(model_dir, tmp_path):
    src, _, _ = model_dir
    uri, flag = str(tmp_path / "store"), str(tmp_path / "mid-publish")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISHER, uri, src, flag], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not os.path.exists(flag):
            assert proc.poll() is None and time.time() < deadline, "the publisher never reached mid-publish"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    store = ModelStore(uri)
    assert store.versions("m") == [] and store.models() == []
    assert store.publish("m", src, card()) == 1  # the store is still usable, the number unburned
