"""Slow work in other processes that tests await (pipeline runs, kernel compiles): a test module
starts it in `start_background(tmp_path_factory)`, which conftest.py's `background` fixture calls
at the session's first test (see there why), and its tests await each process by name."""

import subprocess
import tempfile


class Processes:
    """Processes started together, each awaited by the tests that inspect it: (exit status,
    stdout, stderr) by name. Their output goes to files, not pipes: nothing reads it until a test
    awaits the process, minutes later, and a full pipe would stop it. Extra attributes (folders,
    data) travel with them."""

    def __init__(self, timeout: float = 600, **attributes):
        self.procs, self.outputs, self.results, self.timeout = {}, {}, {}, timeout
        self.__dict__.update(attributes)

    def start(self, name: str, cmd: list[str], **popen):
        self.outputs[name] = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.procs[name] = subprocess.Popen(cmd, stdout=self.outputs[name][0], stderr=self.outputs[name][1],
                                            text=True, **popen)
        return self

    def result(self, name: str):
        if name not in self.results:
            code = self.procs[name].wait(timeout=self.timeout)
            out, err = (f.seek(0) or f.read() for f in self.outputs[name])
            self.results[name] = code, out, err
        return self.results[name]

    def close(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for files in self.outputs.values():
            for f in files:
                f.close()
