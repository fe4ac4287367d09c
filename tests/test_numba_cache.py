"""Where the numba kernels cache (kernels/backends/numba_cache.py), outside Docker: fresh processes
whose NUMBA_CACHE_DIR cannot be written, or is a read-only prebuilt cache, or whose temp directory
is unusable too, must still fit and predict. The same in the image: tests/test_images.py."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from background import Processes
from kernel_probe import PROBE, TORCH_PROBE, parse

from tauforge.kernels.backends import numba_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(**extra):
    out = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "TMPDIR", "NUMBA_DEBUG_CACHE")}
    out.update(extra)
    return out


BACKGROUND_ORDER = -1  # first (conftest.py): its processes use caches of their own


def start_background(request):
    """Three fresh processes at once (conftest.py starts them at the session's start): a
    NUMBA_CACHE_DIR that cannot be created, the same with no usable temp directory either (each
    the torch backend's probe, which compiles a handful of kernels in 7-8 s of CPU: where they
    cache does not need them all), and the image's build-time warm-up filling a cache (every
    kernel, 35-40 s)."""
    base = request.getfixturevalue("tmp_path_factory").mktemp("numba-cache")
    blocker = base / "a-file"
    blocker.write_text("NUMBA_CACHE_DIR below a regular file cannot be created\n")
    (base / "tmp").mkdir()
    nothing_writable = f"import tempfile; tempfile.tempdir = {str(blocker / 'tmp')!r}\n" + TORCH_PROBE
    processes = Processes(base=base)
    for name, args, extra in (
        ("unwritable", ["-c", TORCH_PROBE], {"NUMBA_CACHE_DIR": str(blocker / "cache"), "TMPDIR": str(base / "tmp")}),
        ("nothing writable", ["-c", nothing_writable], {"NUMBA_CACHE_DIR": str(blocker / "cache")}),
        ("warmup", ["-m", "tauforge.kernels.warmup"], {"NUMBA_CACHE_DIR": str(base / "prebuilt")}),
    ):
        processes.start(name, [sys.executable, *args], cwd=ROOT, env=env(**extra))
    return processes


@pytest.fixture(scope="module")
def runs(background):
    processes = background[__name__]
    results = {}
    for name in processes.procs:
        code, out, err = processes.result(name)
        assert code == 0, err[-3000:]
        results[name] = out, err
    return processes.base, results


def test_an_unwritable_numba_cache_dir_caches_in_a_private_temp_folder(runs):
    base, results = runs
    out, _ = results["unwritable"]
    probe = parse(out)
    assert probe["finite"] and probe["enabled"] and probe["misses"] > 0
    assert probe["directory"] == str(base / "tmp" / f"{numba_cache.PRIVATE_PREFIX}{os.getuid()}")
    assert probe["seeded_from"] is None
    index = [f for _, _, files in os.walk(probe["directory"]) for f in files if f.endswith(".nbi")]
    assert len(index) >= 3, "the compiled kernels are cached there"
    assert os.stat(probe["directory"]).st_mode & 0o077 == 0, "a private folder"


def test_with_nothing_writable_the_kernels_run_uncached_with_a_warning(runs):
    base, results = runs
    out, err = results["nothing writable"]
    probe = parse(out)
    assert probe["finite"] and not probe["enabled"] and probe["misses"] > 0 and probe["hits"] == 0
    assert "numba's cache is off" in err and "NUMBA_CACHE_DIR" in err


def test_the_warmup_fills_the_cache_it_is_given(runs):
    base, results = runs
    out, _ = results["warmup"]
    assert f"kernels cached in {base / 'prebuilt'}" in out
    assert (base / "prebuilt").is_dir() and any(base.joinpath("prebuilt").rglob("*.nbc"))


def read_only(path):
    """The command prefix that runs a process with `path` read-only, whoever runs the tests: a
    read-only bind mount in a mount namespace of its own for root (which ignores file modes), the
    file modes for anyone else."""
    if os.geteuid() != 0:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o555)
        os.chmod(path, 0o555)
        return []
    if shutil.which("unshare") is None:
        pytest.skip("root, and no unshare(1) to mount a folder read-only")
    check = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if check.returncode != 0:
        pytest.skip(f"root without mount namespaces (unshare: {check.stderr.decode().strip()})")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(path)]


def test_a_read_only_prebuilt_cache_is_copied_and_its_kernels_load_without_compiling(runs):
    # The image's situation: NUMBA_CACHE_DIR is the build-time cache, readable, not writable.
    base, _ = runs
    prebuilt = base / "prebuilt"
    before = sorted(p.name for p in prebuilt.rglob("*"))
    tmp = base / "tmp-readonly"
    tmp.mkdir()
    prefix = read_only(prebuilt)
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                         env=env(NUMBA_CACHE_DIR=str(prebuilt), TMPDIR=str(tmp)), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    probe = parse(out.stdout)
    assert probe["finite"] and probe["enabled"]
    assert probe["seeded_from"] == str(prebuilt) and probe["copied"] >= len(before) // 2
    assert probe["directory"].startswith(str(tmp))
    assert probe["misses"] == 0 and probe["hits"] >= 3, "every kernel came from the prebuilt cache"
    assert sorted(p.name for p in prebuilt.rglob("*")) == before, "the prebuilt cache is left as it was"


def test_a_temp_folder_another_user_could_write_is_not_used(tmp_path, monkeypatch):
    # numba loads pickles from its cache: a folder others may write must not be reused.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = tmp_path / f"{numba_cache.PRIVATE_PREFIX}{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    chosen = numba_cache.private_directory()
    assert chosen is not None and chosen != str(shared) and os.path.dirname(chosen) == str(tmp_path)
    assert os.stat(chosen).st_mode & 0o077 == 0
    shared.chmod(0o700)
    assert numba_cache.private_directory() == str(shared), "this uid's own private folder is reused"


def test_copying_a_cache_never_overwrites_what_is_there(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.nbi").write_text("prebuilt a")
    (source / "sub" / "b.nbc").write_text("prebuilt b")
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "a.nbi").write_text("newer a, with more entries")
    assert numba_cache.copy_missing(str(source), str(target)) == 1
    assert (target / "sub" / "a.nbi").read_text() == "newer a, with more entries"
    assert (target / "sub" / "b.nbc").read_text() == "prebuilt b"
    assert sorted(p.name for p in (target / "sub").iterdir()) == ["a.nbi", "b.nbc"], "no partial files left"
