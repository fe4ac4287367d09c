"""A real `tauforge serve` in shadow mode whose challenger is deliberately broken (it raises,
hangs or is slow), or whose champion raises NotImplementedError once ready (as a kernel does on a
device that lacks it), for tests/test_serving.py.
Run: python tests/serving_app.py STORE MODEL PORT LOG_DIR FAULT"""

import sys
import threading
import time

from tauforge.serving.server import build_model, serve

store, name, port, log_dir, fault = sys.argv[1:6]
model = build_model(store=store, model=name, version=1, challenger=2, mode="shadow", log_dir=log_dir,
                    shadow_timeout=6.0)
challenger = model.scorers["challenger"]
real_score = challenger.score


def broken_score(X):
    if fault == "raise":
        raise RuntimeError("the challenger is broken")
    if fault == "hang":
        threading.Event().wait()
    if fault == "slow":
        time.sleep(3.0)
    return real_score(X)


challenger.score = broken_score
if fault == "champion-not-implemented":  # build_model warmed it up already

    def unimplemented(X):
        raise NotImplementedError("Could not run 'aten::example' with arguments from the 'CUDA' backend")

    model.scorers["champion"].score = unimplemented
serve(model, port=int(port), grpc_port=0)
