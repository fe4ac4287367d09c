"""The CPU image, built and run: `make image-cpu` once per session, started at the session's first
test (reused while the sources it is built from are unchanged), then the image as Kubernetes and
KFP run it: as uid 10001, as another uid, with a read-only root filesystem with and without a
writable /tmp, and a real KFP task on kfp.local's DockerRunner.

These tests need a Docker daemon (`.ci/docker-setup` installs and starts one, and builds the local
base image a machine with no container registry needs). Without one they skip, except under
CI=true, where they fail: CI must never skip them silently."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from background import Processes, compile_kernels
from kernel_probe import PROBE, TORCH_PROBE, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPOSITORY = "tauforge-test"
LOCAL_BASE = "tauforge-base:bookworm"
UID = "10001"


def docker(*args, timeout=600, check=True):
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} ... exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out


def run(image, *command, flags=(), timeout=600, check=True):
    """`docker run --rm` of the image, with no network (nothing here needs one)."""
    return docker("run", "--rm", "--network", "none", *flags, image, *command, timeout=timeout, check=check)


def docker_answers():
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def context_files():
    """What the image is built from: the Dockerfile, the Makefile and every file .dockerignore lets
    into the build context (without caches and wheels)."""
    entries = ["Dockerfile", ".dockerignore", "Makefile"]
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        entries += [line[1:].strip().rstrip("/") for line in f if line.startswith("!")]
    for entry in sorted(entries):
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            yield entry
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith((".pyc", ".nbi", ".nbc", ".whl")):
                    yield os.path.relpath(os.path.join(root, name), ROOT)


def source_hash():
    digest = hashlib.sha256()
    for rel in context_files():
        digest.update(rel.encode() + b"\0")
        with open(os.path.join(ROOT, rel), "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    base = docker("image", "inspect", "-f", "{{.Id}}", LOCAL_BASE, check=False)
    digest.update(base.stdout.strip().encode())  # a rebuilt local base rebuilds the image
    return digest.hexdigest()[:16]


class ImageBuild:
    """`make image-cpu` of these sources as tauforge-test:<hash of its sources>, started unless an
    image of that tag exists (or no Docker daemon answers)."""

    def __init__(self, folder):
        self.answers, self.proc = docker_answers(), None
        if not self.answers:
            return
        self.tag = f"{REPOSITORY}:{source_hash()}"
        self.reused = docker("image", "inspect", self.tag, check=False).returncode == 0
        if not self.reused:
            self.log = folder / "make-image-cpu.log"
            self.output = open(self.log, "w")
            self.started = time.time()
            # A process group of its own: stopping the build early also stops the docker client under make.
            self.proc = subprocess.Popen(["make", "image-cpu", f"IMAGE={self.tag}"], cwd=ROOT, stdout=self.output,
                                         stderr=subprocess.STDOUT, process_group=0)

    def wait(self):
        """make's exit status and the build's seconds (to its last line of output: it may have
        ended well before a test awaited it)."""
        code = self.proc.wait(timeout=3600)
        self.output.close()
        return code, min(time.time(), os.path.getmtime(self.log)) - self.started

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class ImageRuns:
    """The image build and the slow runs the tests inspect, started at the session's first test
    (conftest.py) so that they use the core the tests in the pytest process leave idle: the build
    (about 70 s after a change to the sources); once the image exists, at once or when its build
    ends, the runs of it (`start_container_runs`); and, once the kernels are compiled, the demo
    pipeline on the subprocess runner (it needs no image)."""

    def __init__(self, request):
        tmp_path_factory = request.getfixturevalue("tmp_path_factory")
        self.build = ImageBuild(tmp_path_factory.mktemp("image"))
        self.runs = Processes(root=tmp_path_factory.mktemp("pipelines"))
        self.waiter = None
        if not self.build.answers:
            return
        # The image and its runs first: they need none of this checkout's compiled kernels.
        if self.build.reused:
            start_container_runs(self.runs, self.build.tag)
        else:  # a thread that only waits for make; the image fixture reports a failed build
            self.waiter = threading.Thread(target=self._after_build, daemon=True)
            self.waiter.start()
        compile_kernels()  # into this checkout's cache, which the subprocess runner's tasks load
        self.runs.start("pipeline, subprocess runner", pipeline_command("subprocess", self.runs.root),
                        cwd=self.runs.root)

    def _after_build(self):
        if self.build.proc.wait() == 0:
            start_container_runs(self.runs, self.build.tag)

    def container_runs(self) -> Processes:
        """The runs, once the image fixture has the image (waited for its build, and failed if it
        failed)."""
        if self.waiter is not None:
            self.waiter.join()
        return self.runs

    def close(self):
        self.build.close()  # the waiter then starts nothing
        if self.waiter is not None:
            self.waiter.join()
        self.runs.close()


BACKGROUND_ORDER = 0  # before the modules that compile the kernels first (conftest.py)


def start_background(request):
    return ImageRuns(request)


@pytest.fixture(scope="session")
def image(request, background):
    """The CPU image of these sources, tagged tauforge-test:<hash of its sources>: built with
    `make image-cpu` unless an image of that tag exists; older test images are removed."""
    build = background[__name__].build
    if not build.answers:
        message = ("no Docker daemon answers (`docker info` failed); `.ci/docker-setup` installs Docker, "
                   "starts a daemon and builds the local base image")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: the image tests must run, but {message}")
        pytest.skip(message)
    tag = build.tag
    plugins = request.config.pluginmanager

    def say(line):  # on the terminal, not in the captured output
        with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
            if hasattr(request.config, "workerinput"):  # any xdist worker: its stderr is the terminal's
                print(line, file=sys.stderr, flush=True)
            else:
                plugins.get_plugin("terminalreporter").write_line(line)

    if build.reused:
        say(f"test_images: reusing {tag}")
    else:
        code, seconds = build.wait()
        if code != 0:
            pytest.fail(f"make image-cpu failed after {seconds:.0f} s; its last lines:\n"
                        f"{build.log.read_text()[-4000:]}")
        say(f"test_images: built {tag} with make image-cpu in {seconds:.0f} s, started at the session's start "
            f"(log: {build.log})")
    listed = docker("images", REPOSITORY, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for old in set(listed) - {tag}:
        docker("rmi", old, check=False)
    return tag


DEMO = ("tauforge", "demo", "--n", "2000", "--trees", "50")
READ_ONLY_TMP = ("--read-only", "--tmpfs", "/tmp")


def pipeline_command(runner, root):
    """`tauforge run --demo`, small, with the given runner, storing under root/runner."""
    return [sys.executable, "-m", "tauforge.pipelines.cli", "run", "--demo", "--trees", "20", "--folds", "2",
            "--shards", "2", "--seed", "4", "--runner", runner, "--json", "--store", str(root / runner / "store"),
            "--pipeline-root", str(root / runner / "runs")]


def start_container_runs(runs: Processes, image: str) -> None:
    """The slow runs of the image, started together and awaited by the tests that inspect them:
    the demo as uid 10001 on a read-only root with a writable /tmp; the torch backend's probe with
    nothing writable (its few kernels compile uncached: 7-8 s of CPU where the demo's every kernel
    took 35-40 s) and with NUMBA_CACHE_DIR emptied (it compiles them into /tmp); and the demo
    pipeline on the docker runner (beside the subprocess runner's, to compare). Each is mostly one
    process on one core or a wait for containers to start. (`docker run --rm` containers that a
    stopped session leaves behind end on their own within a minute.) The docker clients run at the
    lowest priority; the containers, children of dockerd, do not."""
    docker_run = ["docker", "run", "--rm", "--network", "none"]
    runs.start("demo, read-only root, writable /tmp", [*docker_run, *READ_ONLY_TMP, image, *DEMO])
    runs.start("probe, nothing writable", [*docker_run, "--read-only", image, "python", "-c", TORCH_PROBE])
    runs.start("probe, NUMBA_CACHE_DIR emptied", [*docker_run, *READ_ONLY_TMP, "-e", "NUMBA_CACHE_DIR=", image,
                                                  "python", "-c", TORCH_PROBE])
    runs.start("pipeline, docker runner", pipeline_command("docker", runs.root), cwd=runs.root,
               env={**os.environ, "TAUFORGE_IMAGE": image})
    runs.start("pipeline, docker runner, killed", [sys.executable, "-c", KILLED_RUN,
                                                   json.dumps(pipeline_command("docker", runs.root / "killed"))],
               cwd=runs.root, env={**os.environ, "TAUFORGE_IMAGE": image})


# A docker run killed with SIGKILL once its first container runs, then how long its containers
# (labelled with its process id by pipelines/container_reaper.py) outlive it, up to a minute.
KILLED_RUN = r"""
import json, signal, subprocess, sys, time

run = subprocess.Popen(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

def containers():
    labels = subprocess.run(["docker", "ps", "--all", "--filter", "label=tauforge.local-run", "--format",
                             '{{.Label "tauforge.local-run"}}'], capture_output=True, text=True).stdout.split()
    return [label for label in labels if label.startswith(f"{run.pid}-")]

# The count is the look that ended the wait: a second look raced the run's own removal of a short
# task's container (seen 0 in a CI run, 2026-12-06, the run killed while it went on).
deadline = time.monotonic() + 600
seen = 0
while not seen and run.poll() is None and time.monotonic() < deadline:
    time.sleep(0.5)
    seen = len(containers())
run.send_signal(signal.SIGKILL)  # nothing if it ended already: then seen is 0 and its stderr says why
waited = round(time.monotonic() - deadline + 600, 1)
error = run.communicate()[1]
killed = time.monotonic()
while containers() and time.monotonic() < killed + 60:
    time.sleep(0.5)
print(json.dumps({"seen": seen, "left": len(containers()), "seconds": round(time.monotonic() - killed, 1),
                  "waited": waited, "exit": run.returncode, "stderr": error[-2000:]}))
"""


@pytest.fixture(scope="module")
def containers(image, background):
    """The runs of `start_container_runs` and the subprocess runner's pipeline."""
    return background[__name__].container_runs()


def succeeded(containers, name):
    """The stdout and stderr of a run of `containers`, which must have exited 0."""
    code, out, err = containers.result(name)
    assert code == 0, f"{name} exited {code}:\n{(out + err)[-4000:]}"
    return out, err


def test_the_image_runs_tauforge_as_uid_10001_with_cpu_torch(image):
    help_ = run(image)  # the image's CMD: tauforge --help
    assert "usage: tauforge" in help_.stdout and "demo" in help_.stdout
    out = run(image, "python", "-c", "import os, sys, torch; print(os.getuid(), sys.executable, torch.version.cuda, "
                                     "torch.__version__)").stdout.split()
    assert out[0] == UID and out[1].startswith("/opt/tauforge/"), out
    assert out[2] == "None" and out[3].endswith("+cpu"), f"torch {out[3]} is not the CPU build"
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
    assert size < 3e9, f"{size / 1e9:.1f} GB: a CUDA build of torch or the build stage's leftovers got in"
    # The KFP task command runs `sh`, `mktemp` and `python3` from PATH; nothing is installed at run time.
    tools = run(image, "sh", "-c", "for c in mktemp python3; do command -v $c; done; python3 -c 'import kfp, tauforge'")
    assert tools.stdout.split() == ["/usr/bin/mktemp", "/opt/tauforge/bin/python3"]


def test_the_kernels_come_compiled_for_every_uid(image):
    # The build filled numba's cache (read-only at run time); uid 10001 and another uid (KFP may run
    # a task as any) each load every kernel from a private copy instead of compiling.
    for user in (UID, "4242:4242"):
        probe = parse(run(image, "python", "-c", PROBE, flags=["--user", user]).stdout)
        assert probe["finite"] and probe["enabled"], probe
        assert probe["seeded_from"] == "/opt/tauforge/numba-cache", probe
        assert probe["directory"] == f"/tmp/tauforge-numba-cache-{user.split(':')[0]}", probe
        # Every kernel is a dispatcher of numba_cpu, whose cache counts the probe sums: no miss is
        # no compile (a bound on the call's time failed on a busy machine, 5.9 s against 5).
        assert probe["misses"] == 0 and probe["hits"] >= 3, probe


def test_the_demo_runs_on_a_read_only_root_with_a_writable_tmp_and_keeps_the_cache(image, containers):
    # As the image's user (uid 10001: test_the_image_runs_tauforge_as_uid_10001_with_cpu_torch), on the
    # root filesystem a hardened pod gets.
    probe = parse(run(image, "python", "-c", PROBE, flags=READ_ONLY_TMP).stdout)
    assert probe["finite"] and probe["misses"] == 0 and probe["directory"].startswith("/tmp/"), probe
    out, err = succeeded(containers, "demo, read-only root, writable /tmp")
    assert re.search(r"ATE\s+-?\d", out) and "the interval covers it" in out, out
    assert "numba's cache is off" not in err


def test_without_numba_cache_dir_a_read_only_root_filesystem_caches_in_tmp(containers):
    # NUMBA_CACHE_DIR emptied by the user: numba's own places (site-packages, ~/.cache) are read-only,
    # so the kernels are compiled into a private folder in /tmp instead of failing on import.
    probe = parse(succeeded(containers, "probe, NUMBA_CACHE_DIR emptied")[0])
    assert probe["finite"] and probe["enabled"] and probe["seeded_from"] is None, probe
    assert probe["directory"] == f"/tmp/tauforge-numba-cache-{UID}" and probe["misses"] > 0, probe


def test_a_read_only_root_filesystem_with_nothing_writable_still_fits_and_predicts(containers):
    # numba alone raises on import here ("no locator available"); the kernels compile uncached instead.
    out, err = succeeded(containers, "probe, nothing writable")
    probe = parse(out)
    assert probe["finite"] and not probe["enabled"] and probe["misses"] > 0 and probe["hits"] == 0, probe
    assert "numba's cache is off" in err and "not writable" in err, err


KFP_TASK = r"""
import json, os, sys
import kfp.local
from tauforge.components.data import demo_table, validate_data

root = sys.argv[1]
table, _ = demo_table(n=300, seed=0)
source = os.path.join(root, "demo.parquet")
table.to_parquet(source)
kfp.local.init(runner=kfp.local.DockerRunner(network_mode="none"), pipeline_root=root)
task = validate_data(source=source, spec=json.dumps({"outcome": "Y", "treatment": "T"}), store=root)
dataset = task.outputs["dataset"]
print(json.dumps({"path": dataset.path, "metadata": dataset.metadata}))
"""


def test_a_kfp_task_runs_in_the_image_on_kfp_local_docker_runner(image, tmp_path):
    # The component as a cluster runs it: the command KFP generates, in the image (TAUFORGE_IMAGE),
    # as uid 10001, reading and writing artifacts under the pipeline root (mounted at its own path,
    # so uid 10001 must be able to write there).
    pytest.importorskip("docker", reason="the Docker SDK for Python (the test extra) runs kfp.local's DockerRunner")
    root = tmp_path / "pipeline-root"
    root.mkdir()
    root.chmod(0o777)
    out = subprocess.run([sys.executable, "-c", KFP_TASK, str(root)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TAUFORGE_IMAGE": image})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert f"Found image '{image}'" in out.stdout, "the task ran in the test image"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["metadata"]["rows"] == 300
    assert os.path.exists(os.path.join(result["path"], "table.parquet"))
    assert os.stat(result["path"]).st_uid == int(UID), "written by the image's user"


def test_make_images_skips_a_cuda_image_whose_base_it_cannot_have(image):
    # The CPU image comes from the build cache (nothing changed); the CUDA image's base is one no
    # registry holds, so make images must say it skipped it and still succeed.
    out = subprocess.run(["make", "images", f"IMAGE={image}", "CUDA_BASE=tauforge-test/no-such-base:0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert f"skipped {image}-cuda: its base tauforge-test/no-such-base:0 is not on this machine" in out.stderr
    assert "make image-cuda" in out.stderr
    assert docker("image", "inspect", f"{image}-cuda", check=False).returncode != 0


def test_make_image_cpu_says_what_to_do_without_its_base(image):
    out = subprocess.run(["make", "image-cpu", "IMAGE=tauforge-test:never", "PYTHON_BASE=tauforge-test/no-such-base:0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "the base image tauforge-test/no-such-base:0 is not on this machine" in out.stderr
    assert ".ci/docker-setup" in out.stderr


def test_the_pipeline_in_containers_publishes_what_the_subprocess_runner_does(image, containers):
    # `tauforge run --runner docker`: every task a container of the image, the command a cluster's
    # pod runs, on the graph `compile` writes. The same data and seed through the SubprocessRunner
    # must give the same ATE and the very same forest.
    import numpy as np

    pytest.importorskip("docker", reason="the Docker SDK for Python (the test extra) runs kfp.local's DockerRunner")
    from tauforge.components.registry import FOREST_DIR, ModelStore

    docker_result, local_result = (json.loads(succeeded(containers, f"pipeline, {runner} runner")[0].strip()
                                              .splitlines()[-1]) for runner in ("docker", "subprocess"))
    assert docker_result["gate_passed"] and docker_result["version"] == 1
    assert docker_result["ate"] == pytest.approx(local_result["ate"], rel=1e-9)
    forests = []
    for result in (docker_result, local_result):
        version = ModelStore(result["store"]).load("tauforge-model", 1)  # every checksum verified
        with np.load(os.path.join(version.path, FOREST_DIR, "arrays.npz"), allow_pickle=False) as arrays:
            forests.append({k: arrays[k] for k in arrays.files})
    assert forests[0].keys() == forests[1].keys()
    for key in forests[0]:
        np.testing.assert_array_equal(forests[0][key], forests[1][key], err_msg=key)
    # The tasks ran in containers of the test image (kfp.local says which image it found).
    log = open(docker_result["log"]).read()
    assert f"Found image '{image}'" in log and "Pulling image" not in log


SERVE_PROBE = r"""
import json, subprocess, time, urllib.request

port = 18080
server = subprocess.Popen(["tauforge", "serve", "--model-dir", "/mnt/models", "--model", "tauforge-model",
                           "--port", str(port), "--grpc-port", "0"])
deadline = time.time() + 120
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
        break
    except OSError:
        if time.time() > deadline or server.poll() is not None:
            raise SystemExit("the server did not become ready")
        time.sleep(0.5)
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/tauforge-model:predict",
                                 data=json.dumps({"instances": [[0.0] * 10]}).encode(),
                                 headers={"Content-Type": "application/json"})
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=30))))
server.terminate()
server.wait(timeout=30)
"""


def test_a_docker_run_killed_with_sigkill_leaves_no_container_behind(containers):
    # A failure review: kill -9 (or the OOM killer) of `tauforge run --runner docker` left its task
    # containers running, children of dockerd; its reaper (pipelines/container_reaper.py) removes
    # them once the run's process is gone. Without it the container ran on and stayed listed.
    pytest.importorskip("docker", reason="the Docker SDK for Python (the test extra) runs kfp.local's DockerRunner")
    found = json.loads(succeeded(containers, "pipeline, docker runner, killed")[0].strip().splitlines()[-1])
    assert found["seen"] >= 1, (f"no container of the run was seen in {found['waited']} s (the run's exit status: "
                                f"{found['exit']}, -9 if killed):\n{found['stderr']}")
    assert found["left"] == 0 and found["seconds"] < 30, found


def test_the_predictor_serves_as_the_runtime_runs_it_read_only_root_no_capabilities(image, containers):
    # components/deploy.py's serving containers: a read-only root filesystem with an emptyDir at
    # /tmp, every capability dropped, no privilege escalation, the version mounted read-only as
    # KServe's storage initializer leaves it. Here the version the docker runner's pipeline published.
    result = json.loads(succeeded(containers, "pipeline, docker runner")[0].strip().splitlines()[-1])
    version = os.path.join(result["store"], "tauforge-model", "1")
    out = run(image, "python", "-c", SERVE_PROBE, flags=[*READ_ONLY_TMP, "--cap-drop", "ALL", "--security-opt",
                                                         "no-new-privileges", "-v", f"{version}:/mnt/models:ro"])
    (answer,) = json.loads(out.stdout.strip().splitlines()[-1])["predictions"]
    assert answer["version"] == 1 and answer["lower"] < answer["cate"] < answer["upper"], answer


def test_the_docker_runner_says_what_is_missing_before_any_task(image, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tauforge.pipelines.cli", "run", "--demo", "--runner", "docker",
                          "--store", str(tmp_path / "store"), "--pipeline-root", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "TAUFORGE_IMAGE": "tauforge-test:no-such-image"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--runner 'docker' runs every task in the image tauforge-test:no-such-image, which is not on this " \
           "machine: build it with `make images`" in out.stderr
    assert not (tmp_path / "store").exists()
