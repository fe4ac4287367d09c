"""Real servers on 127.0.0.1 for the tests: free ports, waiting for one to answer, and moto's
S3-compatible server (the `s3` fixture in conftest.py starts one per session)."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager

BUCKET = "tauforge-test"


def free_port() -> int:
    """A port of 127.0.0.1 free now; the server it is for binds it seconds later (kserve imports
    first). Under xdist each worker takes only ports of its own remainder modulo the worker count:
    the other worker's free_port cannot hand out the same port in between, where the test would
    have reached the other worker's server. By the port halved: Linux hands bind() odd ports
    (connect() gets the even ones), and a worker waiting for an even one spun for ever."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    for _ in range(1000):  # with 2 workers, one try in 2 on average
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if (port // 2) % workers == worker:
            break
    return port  # the last one drawn, should 1,000 draws all be the other worker's


def wait_for_http(url: str, proc: subprocess.Popen, what: str, output, timeout: float = 60) -> None:
    """Return once `url` answers anything over HTTP; fail with the process's output if it died."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:  # an HTTP error is an answer: the server is up
            return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            output.seek(0)
            raise RuntimeError(f"{what} did not start:\n{output.read()}")
        time.sleep(0.1)


class S3Server:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def uri(self, name: str) -> str:
        """A store of its own for one test, in the shared bucket."""
        return f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"


@contextmanager
def s3_server():
    """moto's S3 server on a free port of 127.0.0.1 with one bucket; its endpoint and (dummy)
    credentials in os.environ for this process and the ones it starts; stopped at the end."""
    import fsspec
    import pytest

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    output = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads would fill and block the server
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=output, stderr=subprocess.STDOUT, text=True)
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)  # a developer's own settings would win over these
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never look for credentials off this machine
        try:
            wait_for_http(endpoint, proc, "moto's S3 server", output)
            fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
            yield S3Server(endpoint)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            output.close()


