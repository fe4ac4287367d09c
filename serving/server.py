"""Start KServe's model server with a `CateModel`: what `tauforge serve` runs, locally or in the
predictor container of an InferenceService.

    serve(build_model(store="./tauforge-store", model="tauforge-model"), port=8080)
"""

import json
import logging
import os
import re
import reprlib
import signal
import struct
import sys

from tauforge.components.registry import ModelStore

from .event_log import EventLog
from .routing import CHAMPION, EpsilonGreedy, make_routing
from .scoring import MAX_ROWS, V2_DATATYPES, RequestError, VersionScorer, parse_json_body

log = logging.getLogger("tauforge.serving")


def build_model(*, store: str | None = None, model: str | None = None, version=None, challenger=None,
                mode: str = "single", percent: float | None = None, explore: float | None = None,
                log_dir: str | None = None, model_dir: str | None = None, shadow_timeout: float | None = None,
                device: str = "cpu", role: str = "champion"):
    """A ready (loaded and warmed) CateModel. The champion is `version` (a number or an alias;
    default: the 'champion' alias if set, else the latest), or the version folder `model_dir`
    (KServe's storage initializer layout, /mnt/models); `challenger` is a second version of the
    same model. `device` 'cuda' puts the forests on the GPU (the torch kernels) and fails when no
    GPU is visible; `role` is what this server is to the deployment (see CateModel)."""
    from tauforge.kernels.cpus import limit_thread_pools

    from .predictor import CateModel

    limit_thread_pools()  # the pod's CPU limit, not the node's cores (the manifests set no thread variables)
    if model_dir:
        if version is not None:  # it would be ignored: the folder holds one version (a user review)
            raise ValueError(f"--version {version} and --model-dir: a model folder holds one version; pass "
                             "--store and --model with --version, or --model-dir alone")
        champion = VersionScorer.from_directory(model_dir, device=device)
        name = model or champion.model
        if challenger is not None:
            raise ValueError("--challenger needs --store: a model folder holds one version")
    else:
        if not (store and model):
            raise ValueError("pass --store URI and --model NAME, or --model-dir DIR")
        registry = ModelStore(store)
        if version is None:
            version = "champion" if "champion" in registry.aliases(model) else None
        champion = VersionScorer(registry.load(model, version), device=device)
        if version is None:  # never promoted (or its aliases file was removed): say what is served
            print(f"tauforge serve: model {model!r} has no 'champion' alias, so its latest version "
                  f"({champion.version}) is served; promote one with tauforge models promote", file=sys.stderr)
        name = model
    if mode != "single" and challenger is None:
        raise ValueError(f"--mode {mode} needs --challenger VERSION")
    second = (VersionScorer(ModelStore(store).load(model, challenger), device=device)
              if challenger is not None else None)
    if second is not None and role != "champion":  # both versions' records and metrics took that role (a review)
        raise ValueError(f"--role {role} is for a predictor serving one version; with --challenger this server "
                         "routes between champion and challenger and labels each by its own role ($TAUFORGE_ROLE "
                         "may set it)")
    if second is not None and second.version == champion.version:  # a comparison of a version with itself
        raise ValueError(f"--challenger {challenger} is version {second.version}, the version served as champion: "
                         f"--mode {mode} needs another version")
    routing = make_routing(mode if second is not None else "single", percent, shadow_timeout,
                           rollout=f"{name}:{second.version}" if second is not None else "")
    cate_model = CateModel(name, champion, second, routing=routing,
                           explore=EpsilonGreedy(explore) if explore else None,
                           event_log=EventLog(log_dir) if log_dir else None, role=role)
    cate_model.load()
    return cate_model


def serve(model, port: int = 8080, host: str = "127.0.0.1", grpc_port: int = 8081) -> None:
    """Serve `model` with KServe's ModelServer (V1 and V2 over REST, V2 over gRPC on `grpc_port`
    unless 0, /metrics) until SIGTERM or SIGINT, both listening on `host`."""
    check_ports(host, port, grpc_port)
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv at import; our flags are not its
    import kserve.model_server as model_server

    _log_as_kserve()
    model_server.RESTServer = _rest_server(host, model)
    model_server.GRPCServer = _bound_grpc_server("[::]" if host == "0.0.0.0" else _bracketed(host), model)
    log.info("serving %s on http://%s:%d%s", model.name, _bracketed(host), port,
             f" and grpc {grpc_port}" if grpc_port else "")
    server = _draining_server(model)(http_port=port, grpc_port=grpc_port or 8081, enable_grpc=bool(grpc_port),
                                     workers=1)
    # KServe's timing lines, two a request beside the access log's: tauforge_request_latency_seconds
    # holds the same (an ops review counted 5,184 lines for 1,728 requests).
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.dataplane = _json_data_plane()(model_registry=server.registered_models)
    # SIGHUP (a closed terminal, or an operator expecting a reload) stops the server as SIGTERM
    # does, its event log written; before, it killed the process and the buffered rows with it.
    # A new version is served by a restart (docs/runbook.md).
    signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    try:
        server.start([model])
    finally:
        model.close()  # drained when the servers stopped already, unless they never started


def _log_as_kserve() -> None:
    """tauforge's server lines (its 400s, shadows, event log) in KServe's format, INFO and above:
    they went through Python's last-resort handler, with no time, level, logger or pid, and its
    INFO lines not at all (a serving review)."""
    from kserve.logging import KSERVE_LOGGER_DATE_FORMAT, KSERVE_LOGGER_FORMAT

    logger = logging.getLogger("tauforge")
    if not (logger.handlers or logging.getLogger().handlers):  # a host application's own configuration stays
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(KSERVE_LOGGER_FORMAT, KSERVE_LOGGER_DATE_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _bracketed(host: str) -> str:
    """An IPv6 address as an address:port needs it, in brackets ([::1]:8081); gRPC refused
    '::1:8081' as a misformatted domain name (a serving review)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _draining_server(model):
    """KServe's ModelServer, which on SIGTERM stops its servers and then `model.drain()`s: once
    neither the REST nor the gRPC server answers anything, the shadows still scoring finish (or
    time out) and the event log is written and closed. KServe's own stop also unloads every model
    at once, while requests are still in flight: gRPC calls then got NOT_FOUND, and the event log
    was closed under the last requests and their shadows (an interrupt review)."""
    from kserve import ModelServer

    class DrainingModelServer(ModelServer):
        async def _serve(self):
            try:
                await super()._serve()
            finally:
                await model.drain()

        def stop(self, sig: int):
            unload, self.registered_models.unload = self.registered_models.unload, lambda name: None
            try:
                super().stop(sig)
            finally:
                self.registered_models.unload = unload

    return DrainingModelServer


def check_ports(host: str, port: int, grpc_port: int) -> None:
    """A clear error before starting (the CLI calls it before loading the model too), instead of a
    server that cannot listen or, for gRPC, which sets SO_REUSEPORT by default, one that silently
    shares the port with another server."""
    for flag, number, lowest in (("--port", port, 1), ("--grpc-port", grpc_port, 0)):
        if not lowest <= number <= 65535:  # else socket's OverflowError
            raise ValueError(f"{flag} must be a port number from {lowest} to 65535, got {number}"
                             + (" (0: no gRPC)" if lowest == 0 else ""))
    if port == grpc_port:  # each alone is free; the second server would fail once the model is loaded
        raise ValueError(f"--port and --grpc-port are both {port}: REST and gRPC need a port each "
                         "(--grpc-port 0: no gRPC)")
    for flag, number in (("--port", port), ("--grpc-port", grpc_port)):
        if number:
            _check_port_free(host, number, flag)


def _check_port_free(host: str, port: int, flag: str) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the servers bind: a port whose last connections linger in TIME_WAIT (a server just
        # restarted) is free to them; one that another socket listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"{flag} {port} on {host} cannot be used: {exc.strerror}; pass another {flag}"
                             + (" (or 0 for no gRPC)" if flag == "--grpc-port" else "")) from None


def _rest_server(host: str, model):
    """KServe's REST server listening on `host` (KServe's binds 0.0.0.0 unconditionally; a laptop
    server, and every test, should listen on the loopback address only), and answering a request
    body that does not fit the V2 schema with a 400 and a message (FastAPI's own answer, a 422,
    echoes the body, and a NaN in it cannot be written as JSON: the caller got a 500). Every 400
    counts in `model`'s bad-request metric, also those refused before they reach it."""
    import kserve.model_server as model_server
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput, ModelNotFound
    from starlette.exceptions import HTTPException

    async def invalid_request(_, exc: RequestValidationError):
        message = _validation_message(exc.errors())
        log.warning("400: %s", message)
        model.count_bad_request()
        return JSONResponse(status_code=400, content={"error": message})

    async def invalid_input(_, exc: InvalidInput):
        # A caller's mistake: one warning line. KServe's handler logs it as an ERROR with the
        # server's traceback, 20 lines a bad request.
        log.warning("400: %s", exc)
        if not getattr(exc, "counted", False):
            model.count_bad_request()
        return JSONResponse(status_code=400, content={"error": str(exc)})

    async def unparsed_body(request, exc: HTTPException):
        # FastAPI's 400 for a body it could not parse at all (JSON nested past Python's recursion
        # limit): in this server's form, and counted.
        if exc.status_code != 400:
            return await http_exception_handler(request, exc)
        message = f"the request body cannot be read: {exc.detail}"
        log.warning("400: %s", message)
        model.count_bad_request()
        return JSONResponse(status_code=400, content={"error": message})

    async def model_not_found(_, exc: ModelNotFound):
        log.warning("404: %s", exc)  # KServe's handler logs a traceback for a caller's typo
        return JSONResponse(status_code=404, content={"error": str(exc)})

    async def not_implemented(request, exc: NotImplementedError):
        # KServe's routes for versions and :explain are a caller's request, not a fault of the
        # server: KServe's handler logged a 20-line traceback as an ERROR (a serving review). Any
        # other NotImplementedError (a kernel's, while scoring) is a fault: KServe's 500.
        path = request.url.path
        if "/versions/" not in path and not path.endswith(":explain"):
            from kserve.errors import generic_exception_handler

            return await generic_exception_handler(request, exc)
        message = f"{path[:200]} is not served: {str(exc) or 'not implemented'}"
        log.warning("501: %s", message)
        return JSONResponse(status_code=501, content={"error": message})

    class TauforgeRESTServer(model_server.RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

        def _add_middlewares(self, app):
            super()._add_middlewares(app)
            app.add_middleware(BodyLimit, limit=max_request_bytes(model.scorers[CHAMPION].columns),
                               on_refused=model.count_bad_request)
            app.add_middleware(NoRepositoryRoutes)
            app.add_middleware(ServedVersionRoutes, model=model)

        def _add_exception_handlers(self, app):
            super()._add_exception_handlers(app)
            app.add_exception_handler(RequestValidationError, invalid_request)
            app.add_exception_handler(InvalidInput, invalid_input)
            app.add_exception_handler(HTTPException, unparsed_body)
            app.add_exception_handler(ModelNotFound, model_not_found)
            app.add_exception_handler(NotImplementedError, not_implemented)

    return TauforgeRESTServer


# The largest request body read, whatever the model: parsing a JSON body costs about 20 times its
# size in memory, so 32 MiB stays well inside the predictor's 2 GiB. Larger bodies are refused
# before they are read (413); `max_request_bytes` lowers the limit to what a model's rows need.
MAX_REQUEST_BYTES = 32 * 2**20
# Bytes of a V1 object row (the widest layout) beyond its covariates' names: a value's digits,
# quotes and pretty-printing's indent, and a row's braces and unit id.
VALUE_BYTES, ROW_BYTES = 48, 320


def max_request_bytes(columns: list[str]) -> int:
    """The request body limit of a model taking `columns`: MAX_ROWS rows keyed by name, each
    value with VALUE_BYTES beside its quoted name (a unit id of ASCII text), at most MAX_REQUEST_BYTES.
    A fixed 32 MiB let a few bodies of 300,000 short rows, each parsed whole before its rows were
    counted, stall the probes for 6 s and take 1.5 GB (a serving review)."""
    row = ROW_BYTES + sum(len(name.encode()) + 2 + VALUE_BYTES for name in columns)
    return min(MAX_REQUEST_BYTES, MAX_ROWS * row)
REPOSITORY_PREFIX = "/v2/repository"


class NoRepositoryRoutes:
    """ASGI middleware: a 404 for KServe's model repository routes, which let any caller unload
    the model while the server still reports ready (a predictor has no credentials): the version
    served is chosen at start."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(REPOSITORY_PREFIX):
            log.warning("404: %s %s is not served", scope.get("method"), scope["path"][:100])
            return await _answer(send, 404, "model repository calls are not served")
        return await self.app(scope, receive, send)


class ServedVersionRoutes:
    """ASGI middleware: REST's V2 `versions/<version>` routes as gRPC's model_version (a serving
    review: KServe answers them 501, where gRPC answered the served version): the served version's
    path is the unversioned one; another version of the model is a 404 saying what is served."""

    _PATH = re.compile(r"/v2/models/([^/]+)/versions/([^/]+)(/infer|/ready)?")

    def __init__(self, app, model):
        self.app, self.model = app, model

    async def __call__(self, scope, receive, send):
        found = self._PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if found:
            name, version, rest = found.group(1), found.group(2), found.group(3) or ""
            unserved = self.model.unserved_version(version) if name == self.model.name else None
            if unserved:
                log.warning("404: %s", unserved)
                return await _answer(send, 404, unserved)
            path = f"/v2/models/{name}{rest}"  # another model's name: KServe's own 404
            scope = {**scope, "path": path, "raw_path": path.encode()}
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a 413 with a message for a body over `limit` bytes, by its Content-Length
    or, sent in chunks without one, as soon as the chunks pass it; nothing larger is buffered."""

    def __init__(self, app, limit: int, on_refused=None):
        self.app, self.limit, self.on_refused = app, limit, on_refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        if length is not None:  # uvicorn stops reading at the declared length
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            chunks.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(send)
            if not message.get("more_body", False):
                return await self.app(scope, _replay(chunks), send)

    async def _refuse(self, send):
        if self.on_refused:
            self.on_refused()
        log.warning("413: a request body over %d bytes", self.limit)
        await _answer(send, 413, f"the request body is over {self.limit / 2**20:.1f} MiB; send at most "
                                 f"{MAX_ROWS:,} rows a request, in several requests")


async def _answer(send, status: int, error: str) -> None:
    """An ASGI JSON answer {"error": ...}, as KServe's error handlers write them."""
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _replay(messages: list):
    """An ASGI receive that gives back messages already read, then waits for the disconnect."""
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    return receive


def _validation_message(errors) -> str:
    """FastAPI's validation errors of a request body as one sentence, without the values."""
    for e in errors:
        if e.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
    # loc is ("body", <the member of the body's union type tried>, field, index, ...): the member
    # names say nothing to a caller, and "not valid bytes" only that the body is not binary either
    errors = [e for e in errors if tuple(e["loc"][:2]) != ("body", "bytes")] or errors
    problems = [f"{'.'.join(str(part) for part in e['loc'][2:]) or 'the body'}: {e['msg']}" for e in errors]
    return "the request does not fit the V2 inference request schema: " + "; ".join(dict.fromkeys(problems))


def _json_data_plane():
    """KServe's data plane reading a V1 JSON body with `parse_json_body`: KServe's own reader
    refuses NaN with "Unrecognized request format: unexpected character ... column 17", so the
    caller never learned which row and column held it."""
    from cloudevents.sdk.converters.util import has_binary_headers
    from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, PredictorProtocol
    from kserve.errors import InvalidInput
    from kserve.protocol.dataplane import JSON_HEADERS, DataPlane
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from pydantic import ValidationError

    v1, v2 = PredictorProtocol.REST_V1.value, PredictorProtocol.REST_V2.value

    class JsonDataPlane(DataPlane):
        def metadata(self) -> dict:
            # The model repository routes are not served (NoRepositoryRoutes, NoRepositoryServicer):
            # a client that read the extension here tried them (a serving review). REST and gRPC.
            return {**super().metadata(), "extensions": []}

        async def model_metadata(self, model_name: str) -> dict:
            # The served version (KServe lists none: "model versioning is not supported yet").
            metadata = await super().model_metadata(model_name)
            version = getattr(self.get_model_from_registry(model_name), "served_version", None)
            return metadata if version is None else {**metadata, "versions": [version]}

        def decode(self, body, headers, protocol_version: str = v1, model_name: str | None = None):
            headers = headers or {}
            # A V2 body without a JSON content type reaches here as bytes, which KServe reads as
            # binary tensors and refuses for want of their header; without that header the whole
            # body is JSON (tritonclient's JSON requests, curl's default form type).
            if (isinstance(body, bytes) and protocol_version.lower() == v2
                    and INFERENCE_CONTENT_LENGTH_HEADER not in {k.lower() for k in headers}):
                try:
                    body = InferenceRequest.model_validate_json(body)
                except ValidationError as exc:
                    raise InvalidInput(_validation_message(
                        [{**e, "loc": ("body", "json", *e["loc"])} for e in exc.errors()])) from None
            # What KServe's decode reads as JSON itself: a V1 body with a JSON (or no) content type.
            if (isinstance(body, bytes) and protocol_version.lower() == v1 and not has_binary_headers(headers)
                    and headers.get("content-type", JSON_HEADERS[0]) in JSON_HEADERS):
                try:
                    body = parse_json_body(body)
                except RequestError as exc:
                    raise InvalidInput(str(exc)) from None
            try:
                return super().decode(body, headers, protocol_version, model_name)
            except InvalidInput:
                raise
            except (ValueError, TypeError, struct.error) as exc:
                # KServe reads binary tensors (HTTP's binary extension) here, before the model sees
                # them: sizes that disagree with the header or the shape were a 500.
                if INFERENCE_CONTENT_LENGTH_HEADER not in {k.lower() for k in headers}:
                    raise InvalidInput(f"the request body cannot be decoded: {exc}") from None
                raise InvalidInput("the request's binary tensors do not fit their JSON header (each input's "
                                   "parameters.binary_data_size must be the bytes its shape and datatype take, "
                                   f"BYTES elements each after a 4-byte length): {exc}") from None

    return JsonDataPlane


def _bound_grpc_server(address: str, model):
    """KServe's gRPC server listening on `address` (KServe's listens on every interface) and not
    sharing its port (KServe's lets gRPC set SO_REUSEPORT, so a second server on the same port
    would silently take half of the first one's calls); every INVALID_ARGUMENT counts in
    `model`'s bad-request metric, also those KServe refuses before they reach it."""
    from concurrent import futures

    import grpc
    from grpc import aio
    from kserve.errors import InvalidInput, ModelNotFound
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer

    from .predictor import VersionNotServed

    class CallerErrorsAsWarnings(ExceptionToStatusInterceptor):
        """KServe's interceptor, but a caller's bad request is one warning line (as over REST),
        not an ERROR with the server's traceback."""

        async def handle_exception(self, ex, request_or_iterator, context, method_name):
            if isinstance(ex, InvalidInput):
                log.warning("400: %s (gRPC %s)", ex, method_name)
                if not getattr(ex, "counted", False):
                    model.count_bad_request()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ex.reason)  # abort raises: the call ends
            elif isinstance(ex, NotImplementedError):
                log.warning("%s (gRPC %s)", ex, method_name)
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(ex))
            elif isinstance(ex, ModelNotFound):  # a caller's mistake (VersionNotServed too), as REST's 404
                reason = getattr(ex, "reason", str(ex))
                log.warning("404: %s (gRPC %s)", reason, method_name)
                await context.abort(grpc.StatusCode.NOT_FOUND, reason)
            else:
                await super().handle_exception(ex, request_or_iterator, context, method_name)

    class NoRepositoryServicer(InferenceServicer):
        """KServe's servicer without the model repository calls (see `_rest_server`), and with
        the served version in ModelReady and ModelMetadata (KServe's ignore a request's version:
        ready for any, and metadata listing none)."""

        async def ModelInfer(self, request, context):
            # KServe reads a tensor's contents by its datatype before the model sees it: an empty or
            # unknown one was "invalid content type", naming nothing (a serving review).
            for tensor in request.inputs:
                if tensor.datatype not in V2_DATATYPES:
                    raise InvalidInput(f"input {reprlib.repr(tensor.name)} has datatype "
                                       f"{reprlib.repr(tensor.datatype) if tensor.datatype else 'none'}; a V2 "
                                       f"tensor's is one of {', '.join(sorted(V2_DATATYPES))}")
            return await super().ModelInfer(request, context)

        async def ModelReady(self, request, context):
            if model.unserved_version(request.version) and request.name == model.name:
                return pb.ModelReadyResponse(ready=False)
            return await super().ModelReady(request, context)

        async def ModelMetadata(self, request, context):
            unserved = model.unserved_version(request.version) if request.name == model.name else None
            if unserved:
                raise VersionNotServed(unserved)
            reply = await super().ModelMetadata(request, context)
            if request.name == model.name:
                reply.versions.append(model.served_version)
            return reply

        async def RepositoryModelLoad(self, request, context):
            raise NotImplementedError("model repository calls are not served")

        async def RepositoryModelUnload(self, request, context):
            raise NotImplementedError("model repository calls are not served")

    class BoundGRPCServer(GRPCServer):
        async def start(self, max_workers):
            self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                      interceptors=(LoggingInterceptor(), CallerErrorsAsWarnings()),
                                      options=[("grpc.so_reuseport", 0),
                                               ("grpc.max_send_message_length",
                                                self._kwargs.get("grpc_max_send_message_length")),
                                               ("grpc.max_receive_message_length",
                                                self._kwargs.get("grpc_max_receive_message_length"))])
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                NoRepositoryServicer(self._data_plane, self._model_repository_extension), self._server)
            self._server.add_insecure_port(f"{address}:{self._port}")
            await self._server.start()
            await self._server.wait_for_termination()

    return BoundGRPCServer
