"""`CateModel`: the KServe model that serves a causal model's champion, and its challenger under
canary or shadow routing. A thin `kserve.Model` over `serving.scoring` (what a row scores) and
`serving.routing` (who scores it); it adds the protocol (V1 and V2), the event log and metrics.

Answers per row: cate, lower, upper, and the model version and role that produced them; with
exploration on, the recommended action, the drawn action and its propensity. V2 (Open Inference
Protocol, REST and gRPC): the model's metadata lists one FP64 input per covariate and these
outputs, and a request that names `outputs` gets those only.
"""

import asyncio
import logging
import reprlib
import threading
import time
import uuid

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, RequestedOutput

from tauforge.components.events import MAX_ID_LENGTH, event_record
from tauforge.components.registry import card_part

from . import metrics
from .event_log import EventLog
from .routing import CHALLENGER, CHAMPION, SHADOW, EpsilonGreedy, SingleRouting
from .scoring import RequestError, Rows, Scores, VersionScorer, parse_json_body, v1_rows_key

log = logging.getLogger("tauforge.serving")
INLINE_ROWS = 64  # requests up to this many rows are scored on the event loop itself
SHADOW_THREADS = 4  # shadow scorings at once; beyond that, shadow requests are shed, not queued
WARM_ROWS = 8  # rows scored by load(): compiles and caches every kernel before the server says ready
ROLES = (CHAMPION, CHALLENGER, SHADOW)
# The V2 outputs: name -> datatype (each of shape [rows]); the exploration ones only with --explore.
OUTPUTS = {"cate": "FP64", "lower": "FP64", "upper": "FP64", "version": "INT64", "role": "BYTES"}
EXPLORATION_OUTPUTS = {"recommended_action": "INT64", "action": "INT64", "propensity": "FP64"}


class VersionNotServed(ModelNotFound):
    """A V2 call naming a version this server does not answer (`CateModel.unserved_version`): as an
    unknown model, REST's 404 and gRPC's NOT_FOUND, with the reason saying what is served."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason


class CateModel(Model):
    """`role` is what this server is to the rest of a deployment (champion, or a challenger or
    shadow that KServe or the mesh routes to): the label of the rows its first version answers."""

    def __init__(self, name: str, champion: VersionScorer, challenger: VersionScorer | None = None,
                 routing=None, explore: EpsilonGreedy | None = None, event_log: EventLog | None = None,
                 role: str = CHAMPION):
        super().__init__(name)
        routing = routing or SingleRouting()
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if routing.mode != "single" and challenger is None:
            raise ValueError(f"{routing.mode} routing needs a challenger version")
        if challenger is not None and challenger.columns != champion.columns:
            raise ValueError(f"champion (version {champion.version}) and challenger (version {challenger.version}) "
                             f"take different covariates: {champion.columns} and {challenger.columns}")
        continuous = [s for s in (champion, challenger) if s is not None
                      and card_part(s.card, "spec").get("treatment_type") == "continuous"]
        if explore is not None and continuous:
            # Exploration draws action 0 or 1 (treat where the CATE exceeds a threshold); a continuous
            # treatment's CATE is a slope per unit of T, and 0 and 1 need not be doses at all (a review).
            raise ValueError(f"--explore draws a binary action, but version {continuous[0].version} of "
                             f"{continuous[0].model!r} has a continuous treatment "
                             f"({card_part(continuous[0].card, 'spec').get('treatment')!r}), whose CATE is a slope "
                             "per unit of it: serve it without --explore")
        self.scorers = {CHAMPION: champion, CHALLENGER: challenger}
        self.routing = routing
        self.explore = explore
        self.event_log = event_log
        self.role = role
        self._shadow_tasks: set[asyncio.Task] = set()
        self._shadow_slots = threading.BoundedSemaphore(SHADOW_THREADS)
        self.ready = False

    def load(self) -> bool:
        """Score a few rows with every loaded version before saying ready: the first request then
        meets compiled, cached kernels (numba compiles on first use)."""
        for scorer in filter(None, self.scorers.values()):
            scorer.score(np.zeros((WARM_ROWS, len(scorer.columns))))
        # Every series at 0 from the start: a version that fails every request still has a
        # request series, so the error-rate alert (errors over requests and errors) can fire.
        # Every error kind too (a serving review: rate() missed the first timeout, which alone made
        # its series): the first version's request-level kinds, the in-process shadow's own.
        second = {"canary": CHALLENGER, "shadow": SHADOW}.get(self.routing.mode)
        for scorer, role, kinds in ((self.scorers[CHAMPION], self.role, ("scoring", "internal", "bad_request")),
                                    (self.scorers[CHALLENGER], second,
                                     ("scoring", "timeout", "shed") if second == SHADOW else ("scoring",))):
            if scorer is not None and role is not None:
                labels = (self.name, str(scorer.version), role)
                metrics.REQUESTS.labels(*labels), metrics.ROWS.labels(*labels), metrics.LATENCY.labels(*labels)
                for kind in kinds:
                    metrics.ERRORS.labels(*labels, kind)
        self.ready = True
        return self.ready

    # ------------------------------------------------------------------ V2 metadata
    def get_input_types(self) -> list[dict]:
        """One FP64 tensor of shape [rows] per covariate, by name (a single [rows, p] tensor in the
        card's column order is accepted too); `unit_id` (BYTES) is optional."""
        return [{"name": c, "datatype": "FP64", "shape": [-1]} for c in self.scorers[CHAMPION].columns]

    def get_output_types(self) -> list[dict]:
        outputs = {**OUTPUTS, **(EXPLORATION_OUTPUTS if self.explore is not None else {})}
        return [{"name": name, "datatype": datatype, "shape": [-1]} for name, datatype in outputs.items()]

    def stop(self) -> None:
        """KServe's unload. Nothing to do: the event log is closed by `drain`, once the servers have
        stopped answering (`serving.server`; closed here, at KServe's SIGTERM, it lost the last
        shadows' records)."""

    async def drain(self) -> None:
        """At the server's shutdown, once no request is in flight: wait for the shadows still
        scoring (their timeout at most), then write what the event log holds and close it."""
        if self._shadow_tasks:
            await asyncio.wait(set(self._shadow_tasks), timeout=self.routing.timeout_seconds + 1.0)
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Write what the event log still holds and stop its writer (once; again does nothing)."""
        if self.event_log is not None:
            self.event_log.close()

    # ------------------------------------------------------------------ predict
    def count_bad_request(self) -> None:
        """A caller's malformed request, under this model's labels: those refused here, and those
        the REST server refuses before they reach `predict` (bad JSON, not the V2 schema)."""
        metrics.ERRORS.labels(self.name, str(self.scorers[CHAMPION].version), self.role, "bad_request").inc()

    @property
    def served_version(self) -> str:
        """The version a V2 caller may name: the champion's (V2 metadata lists it)."""
        return str(self.scorers[CHAMPION].version)

    def unserved_version(self, version: str | None) -> str | None:
        """Why a V2 `model_version` is not answered here, or None for the champion's or none.
        Answering another version than the one asked for, silently, was worse than refusing (gRPC's
        model_version, REST's versions/ paths: `server.ServedVersionRoutes`); routing, not the
        caller, chooses between champion and challenger."""
        if version in (None, "", self.served_version):
            return None
        served = f"version {self.scorers[CHAMPION].version}" + (
            f" (and {self.scorers[CHALLENGER].version} by its routing)" if self.scorers[CHALLENGER] else "")
        return (f"model_version {reprlib.repr(version)} is not served here: this server answers {served}; "
                "send no model_version")

    async def predict(self, payload, headers=None):
        start = time.perf_counter()
        # The mesh's (or the caller's) x-request-id, else a new one; never a V2 body's `id`, which
        # callers reuse ("id": "42" in every request): as the key that splits rows without a unit
        # id, it sent all such requests to one arm (a review of 0ac3d85).
        request_id = _request_id((headers or {}).get("x-request-id"))
        v2 = isinstance(payload, InferRequest)
        parser = self.scorers[CHAMPION].parser
        unserved = self.unserved_version(payload.model_version) if v2 else None
        if unserved:  # as an unknown model: NOT_FOUND, where ModelMetadata said so and ModelInfer INVALID_ARGUMENT
            raise VersionNotServed(unserved)
        try:
            if isinstance(payload, (bytes, bytearray)):  # KServe passes a non-JSON content type through raw
                payload = parse_json_body(payload)
            parse = (lambda: parser.v2(payload.inputs)) if v2 else (lambda: parser.v1(payload))
            rows = await _by_size(_row_count(payload, v2), parse)
            requested = self._requested_outputs(payload) if v2 else None
        except RequestError as exc:
            self.count_bad_request()
            error = InvalidInput(str(exc))
            error.counted = True  # the REST server's 400 handler counts only what did not reach here
            raise error from None

        try:
            return await self._answer(payload, v2, request_id, rows, requested, start)
        except Exception as exc:
            # Any other failure is a 500 the error-rate alert must see (only scoring was counted).
            if not getattr(exc, "counted", False):
                metrics.ERRORS.labels(self.name, str(self.scorers[CHAMPION].version), self.role, "internal").inc()
            raise

    async def _answer(self, payload, v2, request_id, rows, requested, start):
        roles = self.routing.assign(rows.unit_ids, request_id)
        labels = [self.role if r == CHAMPION else r for r in roles]  # what the log, metrics and answer say
        n = rows.X.shape[0]
        out = {k: np.empty(n) for k in ("cate", "lower", "upper")}
        versions = np.empty(n, dtype=np.int64)
        records, answered = [], []  # answered: (version, label) of each version that scored rows
        for role in (CHAMPION, CHALLENGER):
            idx = [i for i, r in enumerate(roles) if r == role]
            if not idx:
                continue
            scorer, label = self.scorers[role], labels[idx[0]]

            def score_and_record(scorer=scorer, label=label, idx=idx):
                scores = self._score(scorer, label, rows.X[idx])
                return scores, self._records(request_id, rows, idx, scorer, label, scores)

            scores, scored = await _by_size(len(idx), score_and_record)
            for k in out:
                out[k][idx] = getattr(scores, k)
            versions[idx] = scorer.version
            records += scored
            answered.append((scorer.version, label))
        actions = None
        if self.explore is not None:
            seed = self.explore.new_seed()
            actions = self.explore.decide(out["cate"], seed)
            for rec in records:
                i = rec["row"]
                rec.update(recommended_action=int(actions[0][i]), action=int(actions[1][i]),
                           propensity=float(actions[2][i]), explore_seed=seed)
        if self.event_log is not None:
            self.event_log.append(records)
        if self.routing.mirror(request_id):
            task = asyncio.create_task(self._shadow(request_id, rows, out["cate"]))
            self._shadow_tasks.add(task)  # keep a reference until done
            task.add_done_callback(self._shadow_tasks.discard)
        response = self._response(payload, v2, request_id, out, versions, labels, actions, requested)
        # The request's time in the model (rows read, scored, logged, answered), under every
        # version that scored some of its rows: what a caller waits for beyond the transport.
        for version, label in answered:
            metrics.LATENCY.labels(self.name, str(version), label).observe(time.perf_counter() - start)
        return response

    def _score(self, scorer: VersionScorer, role: str, X: np.ndarray) -> Scores:
        labels = (self.name, str(scorer.version), role)
        try:
            scores = scorer.score(X)
        except Exception as exc:
            metrics.ERRORS.labels(*labels, "scoring").inc()
            exc.counted = True
            raise
        metrics.REQUESTS.labels(*labels).inc()
        metrics.ROWS.labels(*labels).inc(len(X))
        return scores

    async def _shadow(self, request_id: str, rows: Rows, champion_cate: np.ndarray) -> None:
        """Score the request with the challenger in a worker thread, off the response path; log it
        paired with the champion by request id. Nothing here can reach the caller."""
        scorer = self.scorers[CHALLENGER]
        labels = (self.name, str(scorer.version), SHADOW)
        timeout = self.routing.timeout_seconds
        if not self._shadow_slots.acquire(blocking=False):
            metrics.ERRORS.labels(*labels, "shed").inc()  # every slot held by a slow or hung challenger
            return
        try:
            scores = await asyncio.wait_for(_in_daemon_thread(scorer.score, rows.X, self._shadow_slots), timeout)
        except TimeoutError:
            metrics.ERRORS.labels(*labels, "timeout").inc()
            log.warning("shadow %s version %s timed out after %.1f s on request %s", self.name, scorer.version,
                        timeout, request_id)
            return
        except Exception as exc:  # noqa: BLE001 (a shadow's failure is only counted and logged)
            metrics.ERRORS.labels(*labels, "scoring").inc()
            log.warning("shadow %s version %s failed on request %s: %s", self.name, scorer.version, request_id, exc)
            return

        def record() -> None:
            metrics.REQUESTS.labels(*labels).inc()
            metrics.ROWS.labels(*labels).inc(len(rows.X))
            metrics.LATENCY.labels(*labels).observe(scores.seconds)
            for d in np.abs(scores.cate - champion_cate):
                metrics.SHADOW_DISAGREEMENT.labels(*labels).observe(float(d))
            threshold = self.explore.threshold if self.explore else 0.0
            metrics.SHADOW_ACTION_DISAGREEMENT.labels(*labels).inc(
                int(np.sum((scores.cate > threshold) != (champion_cate > threshold))))
            if self.event_log is not None:
                self.event_log.append(self._records(request_id, rows, range(len(rows.X)), scorer, SHADOW, scores))

        await _by_size(len(rows.X), record)  # 10,000 rows' histogram and records: 70 ms

    # ------------------------------------------------------------------ log and response
    def _records(self, request_id, rows: Rows, idx, scorer: VersionScorer, role, scores: Scores) -> list[dict]:
        """Event-log records of rows `idx` scored by `scorer` (scores in the order of idx), filed
        under the store's model name, which monitoring reads: the served name may differ (KServe
        serves an InferenceService's name, `tauforge deploy --name`)."""
        now, latency_ms = time.time(), 1000 * scores.seconds
        return [event_record(time=now, request_id=request_id, row=i, unit_id=_str(rows.unit_ids[i]), model=scorer.model,
                             version=scorer.version, role=role, cate=float(scores.cate[k]),
                             lower=float(scores.lower[k]), upper=float(scores.upper[k]), latency_ms=latency_ms,
                             inputs=dict(zip(scorer.columns, rows.X[i].tolist())))
                for k, i in enumerate(idx)]

    def _requested_outputs(self, payload) -> list[str] | None:
        """The outputs a V2 request names (None: all), each one this model has."""
        if not payload.request_outputs:
            return None
        known = [o["name"] for o in self.get_output_types()]
        names = [o.name for o in payload.request_outputs]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise RequestError(f"unknown output(s) {', '.join(map(repr, unknown))}; the model's outputs are "
                               f"{', '.join(known)}")
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated is not None:  # it was answered twice (a serving review); an input named twice is refused too
            raise RequestError(f"output {repeated!r} is asked for {names.count(repeated)} times; ask for each once")
        return names

    def _response(self, payload, v2, request_id, out, versions, roles, actions, requested=None):
        n = len(versions)
        if not v2:
            preds = []
            for i in range(n):
                row = {"cate": float(out["cate"][i]), "lower": float(out["lower"][i]), "upper": float(out["upper"][i]),
                       "model": self.name, "version": int(versions[i]), "role": roles[i]}
                if actions is not None:
                    row.update(recommended_action=int(actions[0][i]), action=int(actions[1][i]),
                               propensity=float(actions[2][i]))
                preds.append(row)
            return {"predictions": preds, "model": self.name, "versions": sorted(set(int(v) for v in versions)),
                    "request_id": request_id}
        values = {**out, "version": versions, "role": np.array(roles, dtype=object)}
        if actions is not None:
            values.update(zip(EXPLORATION_OUTPUTS, actions))
        # Binary (raw) outputs where the request asks for them: gRPC requests with raw inputs (what
        # Triton's clients send, and all they read back), REST requests with binary_data_output,
        # or per output its binary_data parameter (tritonclient's InferRequestedOutput sends it;
        # a review saw it ignored), which KServe's REST encoding reads from requested_outputs.
        binary = bool(payload.use_binary_outputs)
        names = list(requested or values)
        per_output = {} if payload.from_grpc else {o.name: bool(o.binary_data) for o in payload.request_outputs or ()
                                                   if o.binary_data is not None}
        flags = {name: per_output.get(name, binary) for name in names}
        outputs = [self._tensor(name, values[name], flags[name]) for name in names]
        single = len(set(versions.tolist())) == 1
        return InferResponse(response_id=payload.id or request_id, model_name=self.name, infer_outputs=outputs,
                             model_version=str(versions[0]) if single else None, use_binary_outputs=binary,
                             requested_outputs=None if payload.from_grpc else [
                                 RequestedOutput(name, {"binary_data": flags[name]}) for name in names],
                             parameters={"model": self.name,
                                         "versions": ",".join(str(v) for v in sorted(set(versions.tolist()))),
                                         "request_id": request_id})

    @staticmethod
    def _tensor(name: str, values: np.ndarray, binary: bool = False) -> InferOutput:
        datatype = {"f": "FP64", "i": "INT64", "O": "BYTES"}[values.dtype.kind]
        t = InferOutput(name=name, shape=[len(values)], datatype=datatype)
        t.set_data_from_numpy(values.astype(np.float64) if datatype == "FP64" else values, binary_data=binary)
        return t


def _in_daemon_thread(func, arg, slots: threading.BoundedSemaphore) -> asyncio.Future:
    """Run func(arg) on a daemon thread (a hung challenger must not keep the server from exiting,
    as a thread of asyncio's default executor would); its slot is released when it returns."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, error):
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def work():
        try:
            result, error = func(arg), None
        except BaseException as exc:  # noqa: BLE001 (handed to the awaiting coroutine)
            result, error = None, exc
        finally:
            slots.release()
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the server stopped while this shadow ran; nobody waits for it
            pass

    threading.Thread(target=work, daemon=True, name="tauforge-shadow").start()
    return future


def _str(v):
    return None if v is None else str(v)


async def _by_size(rows: int, work):
    """`work()` on the event loop for a few rows (about a millisecond; a thread hop, with its GIL
    handoff, would cost more), in a worker thread for more: the loop answers everyone, and an ops
    review saw one-row requests wait 332 ms behind one request of 10,000 rows read on it."""
    return await asyncio.to_thread(work) if rows > INLINE_ROWS else work()


def _row_count(payload, v2: bool) -> int:
    """How many rows a request holds, before reading them (0 when its form is not the expected one:
    the parser says what is wrong, on the loop)."""
    if v2:
        shapes = [list(getattr(t, "shape", None) or [0]) for t in payload.inputs]
        return max((s[0] for s in shapes if isinstance(s[0], int)), default=0)
    try:
        key = v1_rows_key(payload)
    except RequestError:
        return 0
    rows = payload[key] if key else None
    return len(rows) if isinstance(rows, list) else 0


def _request_id(header: str | None) -> str:
    """The caller's (or the mesh's) x-request-id when it is a short printable id, else a new one:
    it is stored in every record of the request and decides the arm of rows without a unit id."""
    if header and len(header) <= MAX_ID_LENGTH and header.isprintable() and header.isascii():
        return header
    return uuid.uuid4().hex
