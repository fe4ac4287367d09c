"""What every KFP component here shares: the image it runs on and how it is declared.

Components are lightweight Python components on the project's image: their bodies import the
project, nothing is installed at run time, and `kfp.local`'s SubprocessRunner runs the very same
definitions in this environment. The image is set here, once; `TAUFORGE_IMAGE` overrides it.

A step that gathers the outputs of parallel tasks takes them as one `Input[List[...]]`, which the
pipeline fills with `dsl.Collected` (KFP backends 2.14 and newer, and kfp.local). `explicit_fan_in`
derives, from the same step, a component with one input per task, for backends without
`dsl.Collected`: the number of folds and shards is fixed when the pipeline is compiled.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import os
import signal
import textwrap
import threading
import time
from typing import List  # noqa: UP035 (KFP's collected inputs are typed with typing.List)

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

# An empty TAUFORGE_IMAGE is unset, as for other variables of the shell (a review: it was refused as
# "--image ''", a flag the user never gave).
IMAGE = os.environ.get("TAUFORGE_IMAGE") or "ghcr.io/tauforge/tauforge:0.1.0"

if hasattr(dsl, "component"):
    component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
else:  # inside a running task (_KFP_RUNTIME=true) kfp.dsl has no decorators, and none are needed
    def component(func):
        return func

    def _exit_on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second would cut the cleanup short
        raise SystemExit(128 + signum)

    # A task stopped with SIGTERM (a pod deleted, an interrupted local run) unwinds instead of
    # vanishing, so its cleanup runs: publish's staging folder and temporary copy are removed.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def _stop_with_the_run(pid: int) -> None:
        """A local run's task ends with the run's process (`TAUFORGE_RUN_PID`, which
        `training._run_task_process` sets): a run killed with SIGKILL (the OOM killer, `kill -9`)
        cannot stop its tasks, which run in sessions of their own, and they ran on as orphans until
        they next wrote to their closed pipe (a slow nuisance model's fit: minutes; a failure review)."""
        import select

        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = None  # gone already
        except OSError:  # no pidfd here (Linux before 5.3): nothing watched
            return
        if fd is not None:
            select.select([fd], [], [])
        # The task's own process group (its shell leads it when the run gave it a session), not the
        # run's: decided before the shell can go.
        group = os.getpgid(0) if os.getpgid(0) == os.getppid() else None
        os.kill(os.getpid(), signal.SIGTERM)  # unwinds as a stopped task does: its cleanup runs
        # ...within the grace an interrupted run gives; a task that does not unwind (a non-daemon
        # thread's fit, SystemExit swallowed) is killed, as there.
        from .constants import STOP_GRACE_SECONDS

        time.sleep(STOP_GRACE_SECONDS)
        if group is not None:
            os.killpg(group, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.environ.get("TAUFORGE_RUN_PID", "").isdigit() and hasattr(os, "pidfd_open"):
        threading.Thread(target=_stop_with_the_run, args=(int(os.environ["TAUFORGE_RUN_PID"]),), daemon=True,
                         name="tauforge-run-watch").start()



@functools.cache
def explicit_fan_in(collector, count: int):
    """`collector` (a component taking one `Input[List[X]]`, say `shards`) as a component taking
    `count` inputs `shards_0` ... `shards_{count-1}` of type `Input[X]`; its body is the same, with
    `shards` rebuilt as their list first. The component keeps its name, so its task does too."""
    func = collector.python_func
    source = textwrap.dedent(inspect.getsource(func))
    (definition,) = ast.parse(source).body
    definition.decorator_list = []
    (collected,) = [a for a in definition.args.args if _is_list_input(a.annotation)]
    item_type = collected.annotation.slice.slice  # Input[List[X]] -> X
    parts = [ast.arg(arg=f"{collected.arg}_{k}", annotation=ast.Subscript(
        value=ast.Name("Input", ast.Load()), slice=item_type, ctx=ast.Load())) for k in range(count)]
    at = definition.args.args.index(collected)
    definition.args.args[at:at + 1] = parts
    gather = ast.parse(f"{collected.arg} = [{', '.join(p.arg for p in parts)}]").body[0]
    has_docstring = isinstance(definition.body[0], ast.Expr) and isinstance(definition.body[0].value, ast.Constant)
    definition.body.insert(1 if has_docstring else 0, gather)
    text = ast.unparse(ast.fix_missing_locations(definition)) + "\n"
    # KFP embeds the function's source in the task (inspect.getsource): keep it where inspect looks.
    filename = f"<tauforge explicit fan-in: {func.__name__} of {count}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace = dict(func.__globals__)
    exec(compile(text, filename, "exec", dont_inherit=True), namespace)  # annotations evaluated, as KFP needs
    return component(namespace[func.__name__])


def _is_list_input(annotation) -> bool:
    """Whether an annotation reads `Input[List[...]]`."""
    return (isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "Input"
            and isinstance(annotation.slice, ast.Subscript) and getattr(annotation.slice.value, "id", None) == "List")


__all__ = ["HTML", "IMAGE", "Artifact", "Dataset", "Input", "List", "Metrics", "Model", "Output", "component",
           "explicit_fan_in"]
