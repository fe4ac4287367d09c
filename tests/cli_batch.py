"""Many `tauforge` command lines in one Python process: `python tests/cli_batch.py CASES RESULTS`,
CASES a JSON list of {"argv": [...], "cwd": folder}, RESULTS where the list of {"returncode",
"stdout", "stderr"} is written, one per case in order.

Each case calls the CLI's `main` as its console script does (`sys.exit(main())`), in its own
working folder, with stdout and stderr redirected at the file descriptors (so whatever holds a
reference to the streams writes to the case's files too) and the environment, signal handlers
and warning filters put back after it. A traceback or a `sys.exit` inside is what the process
would have printed and returned. It is for command lines refused before any work (argument and
settings errors): starting a process for each took 0.8 s, nearly all of each case's time. Tests
of a whole command's work, or of what a command imports, start a process of their own."""

import json
import os
import signal
import sys
import tempfile
import traceback
import warnings

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
# A case refused before any work takes well under a second; one that starts work (a server, a
# fit) by mistake is stopped after this long, its case named, rather than hanging the batch.
CASE_SECONDS = 120


class CaseTimeout(Exception):
    pass


def run_case(main, argv: list[str], cwd: str) -> dict:
    environ, handlers, folder = dict(os.environ), {s: signal.getsignal(s) for s in SIGNALS}, os.getcwd()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.argv = [sys.argv[0], *argv]
        try:
            os.chdir(cwd)

            def too_long(signum, frame):
                raise CaseTimeout(f"tests/cli_batch.py: tauforge {' '.join(argv)} ran for more than {CASE_SECONDS} s: "
                                  "it started work a refused command line should not")

            signal.signal(signal.SIGALRM, too_long)
            signal.alarm(CASE_SECONDS)
            with warnings.catch_warnings():
                code = main(argv)
        except SystemExit as exc:  # what Python's exit does with it
            code = exc.code
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - an uncaught error: the traceback and status 1
            traceback.print_exc()
            code = 1
        finally:
            signal.alarm(0)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            os.chdir(folder)
            os.environ.clear()
            os.environ.update(environ)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        out.seek(0)
        err.seek(0)
        return {"returncode": 0 if code is None else code, "stdout": out.read(), "stderr": err.read()}


if __name__ == "__main__":
    from tauforge.pipelines.cli import main

    cases_path, results_path = sys.argv[1:3]  # each case sets sys.argv as its command line
    with open(cases_path) as f:
        cases = json.load(f)
    results = [run_case(main, case["argv"], case["cwd"]) for case in cases]
    with open(results_path, "w") as f:
        json.dump(results, f)
