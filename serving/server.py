"""Start KServe's model server with a `CateModel`: what `tauforge serve` runs, locally or in the
predictor container of an InferenceService.

    serve(build_model(store="./tauforge-store", model="tauforge-model"), port=8080)
"""

import logging
import sys

from tauforge.components.registry import ModelStore

from .event_log import EventLog
from .routing import EpsilonGreedy, make_routing
from .scoring import VersionScorer

log = logging.getLogger("tauforge.serving")


def build_model(*, store: str | None = None, model: str | None = None, version=None, challenger=None,
                mode: str = "single", percent: float | None = None, explore: float | None = None,
                log_dir: str | None = None, model_dir: str | None = None, shadow_timeout: float = 2.0):
    """A ready CateModel. The champion is `version` (a number or an alias; default: the
    'champion' alias if set, else the latest), or the version folder `model_dir` (KServe's
    storage initializer layout, /mnt/models); `challenger` is a second version of the same model."""
    from .predictor import CateModel

    if model_dir:
        champion = VersionScorer.from_directory(model_dir)
        name = model or champion.model
        if challenger is not None:
            raise ValueError("--challenger needs --store: a model folder holds one version")
    else:
        if not (store and model):
            raise ValueError("pass --store URI and --model NAME, or --model-dir DIR")
        registry = ModelStore(store)
        if version is None:
            version = "champion" if "champion" in registry.aliases(model) else None
        champion = VersionScorer(registry.load(model, version))
        name = model
    if mode != "single" and challenger is None:
        raise ValueError(f"--mode {mode} needs --challenger VERSION")
    second = VersionScorer(ModelStore(store).load(model, challenger)) if challenger is not None else None
    routing = make_routing(mode if second is not None else "single", percent, shadow_timeout)
    cate_model = CateModel(name, champion, second, routing=routing,
                           explore=EpsilonGreedy(explore) if explore else None,
                           event_log=EventLog(log_dir) if log_dir else None)
    cate_model.load()
    return cate_model


def serve(model, port: int = 8080, host: str = "127.0.0.1") -> None:
    """Serve `model` with KServe's ModelServer (V1, V2, /metrics) until SIGTERM or SIGINT."""
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv at import; our flags are not its
    import kserve.model_server as model_server
    from kserve import ModelServer

    if host != "0.0.0.0":
        # KServe binds 0.0.0.0 unconditionally; a laptop server (and every test) should bind the
        # loopback address, so set the host on the uvicorn config KServe builds.
        class BoundRESTServer(model_server.RESTServer):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.config.host = host

        model_server.RESTServer = BoundRESTServer
    log.info("serving %s on http://%s:%d", model.name, host, port)
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])
