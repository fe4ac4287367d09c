"""Scoring one published version: request rows in, CATE with its interval out.

Library code with no server in it: `RowParser` turns V1 instances or V2 tensors into a float
matrix in the card's covariate order (or says exactly what is wrong with them), and
`VersionScorer` holds one verified version and scores such a matrix.
"""

import json
import math
import reprlib
import struct
import time
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from tauforge.components.constants import UNIT_ID_FIELD
from tauforge.components.events import MAX_ID_LENGTH, id_string
from tauforge.components.registry import ModelVersion, card_covariates, read_card, verify_files


class RequestError(ValueError):
    """The request cannot be scored as sent (a 4xx, never a 500); the message says why."""


def parse_json_body(body: bytes):
    """A request body read as JSON, or a RequestError saying where it is not. NaN, Infinity and
    numbers too large for a double are not JSON, but serializers write them (Python's json,
    pandas): they are read as numbers here so that `RowParser` names the row and column that
    holds one, instead of a parser's "unexpected character at column 17"."""
    import orjson

    try:
        return orjson.loads(body)  # fast, and strict: everything that is JSON
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)  # slow, and lenient: NaN, Infinity, -Infinity, 1e999, 2**64
    except RecursionError:
        raise RequestError("the request body is nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise RequestError(f"the request body is not valid JSON: {exc}") from None


def _text(value: bytes, row: int) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise RequestError(f"row {row}: {UNIT_ID_FIELD} is not UTF-8 text") from None


@dataclass
class Rows:
    """Parsed request rows: covariates in the card's order, and each row's unit id (or None)."""

    X: np.ndarray
    unit_ids: list = field(default_factory=list)


MAX_ROWS = 10_000  # rows of one request


def v1_rows_key(payload) -> str | None:
    """Which key of a V1 body holds its rows: "instances", or "inputs" as KServe's own servers also
    take it (`kserve.utils.utils.get_predict_input`; a review: refused here); None for neither.
    Both: a RequestError, as which is meant cannot be told."""
    if not isinstance(payload, dict):
        return None
    if "instances" in payload and "inputs" in payload:
        raise RequestError('a V1 request holds its rows under "instances" (or "inputs"), not both')
    return "instances" if "instances" in payload else "inputs" if "inputs" in payload else None


class RowParser:
    """Rows as objects keyed by covariate name, or as arrays in `columns` order."""

    def __init__(self, columns: list[str], max_rows: int = MAX_ROWS):
        self.columns = list(columns)
        self.index = {c: j for j, c in enumerate(self.columns)}
        self.max_rows = max_rows

    def v1(self, payload: dict) -> Rows:
        key = v1_rows_key(payload)
        if key is None:
            raise RequestError('a V1 request is {"instances": [row, ...]}; "instances" is missing')
        rows = payload[key]
        if not isinstance(rows, list) or not rows:
            raise RequestError(f'"{key}" must be a non-empty list of rows')
        if key == "inputs" and isinstance(rows[0], dict) and {"datatype", "data"} <= set(rows[0]):
            raise RequestError('this is a V2 request (tensors with "datatype" and "data"): post it to '
                               "/v2/models/<name>/infer, or send rows as {\"instances\": [row, ...]} here")
        self._check_count(len(rows))
        X = np.empty((len(rows), len(self.columns)))
        units = []
        for i, row in enumerate(rows):
            if isinstance(row, dict):
                self._check_names([k for k in row if k != UNIT_ID_FIELD], f"row {i}: ", "column")
                values = [row[c] for c in self.columns]
                units.append(self._unit_id(row.get(UNIT_ID_FIELD), i))
            elif isinstance(row, list):
                if len(row) != len(self.columns):
                    raise RequestError(f"row {i} has {len(row)} values; the model takes {len(self.columns)} "
                                       f"({', '.join(self.columns)})")
                values = row
                units.append(None)
            else:
                raise RequestError(f"row {i} must be an object keyed by covariate or an array, "
                                   f"got {type(row).__name__}")
            for j, v in enumerate(values):
                X[i, j] = self._number(v, i, self.columns[j])
        return Rows(X, units)

    def v2(self, inputs: list) -> Rows:
        """V2 inputs: one [n, p] tensor in column order, or one [n] tensor per covariate
        (named after it); an optional BYTES tensor 'unit_id'."""
        names = [t.name for t in inputs]
        repeated = next((name for name in names if names.count(name) > 1), None)
        if repeated is not None:
            raise RequestError(f"input {reprlib.repr(repeated)} appears {names.count(repeated)} times; send each "
                               "input once")
        by_name = {t.name: t for t in inputs}
        units = self._unit_ids(by_name.pop(UNIT_ID_FIELD)) if UNIT_ID_FIELD in by_name else None
        tensors = list(by_name.values())
        if not tensors:
            raise RequestError("the V2 request has no input tensors")
        for t in tensors:
            self._check_shape(t)
        if len(tensors) == 1 and tensors[0].name not in self.index:
            t = tensors[0]
            shape = list(t.shape)
            if len(shape) != 2 or shape[1] != len(self.columns):
                raise RequestError(f"input {reprlib.repr(t.name)} has shape {reprlib.repr(shape)}; expected "
                                   f"[rows, {len(self.columns)}] in the order {', '.join(self.columns)}")
            self._check_count(shape[0])
            X = self._matrix(t, shape[0] * len(self.columns), self.columns).reshape(shape[0], len(self.columns))
        else:
            self._check_names(list(by_name), "", "input")
            # Python's product of the (checked, non-negative int) dimensions: NumPy's wraps at 2**64,
            # and a shape of 2**64 + 1 values read as 1 row (a serving review).
            n = math.prod(by_name[self.columns[0]].shape)
            for c in self.columns:
                if math.prod(by_name[c].shape) != n:
                    raise RequestError(f"input {c!r} has {math.prod(by_name[c].shape)} values, "
                                       f"{self.columns[0]!r} has {n}")
            self._check_count(n)  # before anything of that size is allocated
            X = np.empty((n, len(self.columns)))
            for j, c in enumerate(self.columns):
                X[:, j] = self._matrix(by_name[c], n)
        self._check_count(X.shape[0])
        if X.shape[0] == 0:
            raise RequestError("the request holds no rows")
        if units is not None and len(units) != X.shape[0]:
            raise RequestError(f"'unit_id' has {len(units)} values for {X.shape[0]} rows")
        return Rows(X, units if units is not None else [None] * X.shape[0])

    def _check_shape(self, tensor) -> None:
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in tensor.shape):
            raise RequestError(f"input {reprlib.repr(tensor.name)} has shape {reprlib.repr(list(tensor.shape))}; "
                               "dimensions must be non-negative integers")
        self._check_count(tensor.shape[0] if tensor.shape else 0)  # rows come first in every accepted shape

    def _unit_ids(self, tensor) -> list:
        """The optional 'unit_id' tensor: one id per value, as many values as its shape says. Its
        binary data (gRPC raw contents, HTTP binary) is read here, where a BYTES buffer whose
        length prefixes overrun it, or numbers of a size the datatype does not fit, are the
        caller's error (they were a 500)."""
        self._check_shape(tensor)
        values = tensor.data
        if getattr(tensor, "_raw_data", None) is not None:
            try:
                values = tensor.as_numpy().ravel().tolist()
            except (ValueError, TypeError, struct.error) as exc:
                raise RequestError(f"input {UNIT_ID_FIELD!r}: its binary data does not fit datatype "
                                   f"{str(tensor.datatype)[:32]} and shape {list(tensor.shape)}: {exc}") from None
        values = np.asarray(values if isinstance(values, (list, tuple, np.ndarray)) else [values], dtype=object).ravel()
        size = math.prod(tensor.shape)
        if len(values) != size:
            raise RequestError(f"input {UNIT_ID_FIELD!r} holds {len(values)} values; its shape needs {size}")
        # The declared datatype holds: INT64 data of "abc" was taken as the unit "abc" (a review).
        datatype = str(tensor.datatype)
        if datatype != "BYTES" and datatype not in NUMERIC_DATATYPES:
            raise RequestError(f"input {UNIT_ID_FIELD!r} has datatype {datatype[:32]}; unit ids are BYTES or integers")
        if datatype != "BYTES":
            wrong = next((i for i, u in enumerate(values) if u is not None and type(u) not in _NUMBER_TYPES
                          and not isinstance(u, (np.integer, np.floating))), None)
            if wrong is not None:
                raise RequestError(f"row {wrong}: {UNIT_ID_FIELD} {reprlib.repr(values[wrong])} is not a number, but "
                                   f"the tensor's datatype is {datatype}: send text ids as BYTES")
        return [self._unit_id(_text(u, i) if isinstance(u, bytes) else u, i) for i, u in enumerate(values)]

    def _check_names(self, names: list[str], where: str, what: str) -> None:
        """Names (row keys or V2 tensor names) must be exactly the covariates."""
        unknown = [k for k in names if k not in self.index]
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise RequestError(f"{where}unknown {what}(s) {', '.join(map(reprlib.repr, unknown[:5]))}{more}; the "
                               f"model's covariates are {', '.join(self.columns)}")
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise RequestError(f"{where}missing {what}(s) {', '.join(map(repr, missing))}")

    def _check_count(self, n: int) -> None:
        if n > self.max_rows:
            raise RequestError(f"{n} rows in one request; the limit is {self.max_rows}")

    @staticmethod
    def _unit_id(v, row: int) -> str | None:
        """A unit id as the routing hashes it and the log keeps it: one string per unit, whether it
        came as "7", 7 or 7.0 (V2 numeric tensors), so a unit meets the same version either way."""
        try:
            unit = id_string(v)
        except ValueError as exc:
            raise RequestError(f"row {row}: {UNIT_ID_FIELD} {exc}") from None
        if unit is not None and len(unit) > MAX_ID_LENGTH:  # 1e300 is 301 characters once written out
            raise RequestError(f"row {row}: {UNIT_ID_FIELD} is {len(unit)} characters long; at most {MAX_ID_LENGTH}")
        # "" (one unit of every such row), control characters and lone surrogates (Parquet cannot
        # store them: one failed every later write of the event log). Format characters (a
        # zero-width joiner in an emoji or Persian text) and unusual spaces are ids like any other.
        if unit is not None and (not unit or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in unit)):
            raise RequestError(f"row {row}: {UNIT_ID_FIELD} {reprlib.repr(unit)} must be non-empty text without "
                               "control characters")
        return unit

    @staticmethod
    def _number(v, row: int, column: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RequestError(f"row {row}, column {column!r}: {reprlib.repr(v)} is not a number")
        try:
            x = float(v)
        except OverflowError:
            raise RequestError(f"row {row}, column {column!r}: an integer beyond the range of a double") from None
        if not math.isfinite(x):
            raise RequestError(f"row {row}, column {column!r}: {reprlib.repr(v)} is not a finite number")
        return x

    @staticmethod
    def _matrix(tensor, size: int, columns: list[str] | None = None) -> np.ndarray:
        """A numeric tensor's data as `size` float64 numbers, or a RequestError saying why not.
        Covariates are numbers: a BYTES or BOOL tensor, or strings and booleans inside a numeric
        one, are refused rather than coerced. `columns`: those of an [n, p] tensor, row-major; else
        the tensor is one covariate's. A value refused is named by its row and column, as V1's are."""
        name = reprlib.repr(tensor.name)  # the caller's: shown short

        def at(index: int) -> str:
            row, column = divmod(index, len(columns)) if columns else (index, None)
            return f"input {name}, row {row}, column {columns[column] if columns else tensor.name!r}"
        if tensor.datatype not in NUMERIC_DATATYPES:
            raise RequestError(f"input {name} has datatype {tensor.datatype[:32]}; covariates must be numeric "
                               f"({', '.join(sorted(NUMERIC_DATATYPES))})")
        data = tensor.data
        if getattr(tensor, "_raw_data", None) is not None:  # binary data (gRPC raw contents, HTTP binary)
            try:
                data = tensor.as_numpy()  # bytes of the declared numeric type: numbers by construction
            except ValueError as exc:
                raise RequestError(f"input {name}: its binary data does not fit datatype {tensor.datatype}: "
                                   f"{exc}") from None
        elif not isinstance(data, np.ndarray):
            values = np.asarray(data, dtype=object).ravel()
            bad = next((i for i, v in enumerate(values) if type(v) not in _NUMBER_TYPES), None)
            if bad is not None:
                raise RequestError(f"{at(bad)}: {reprlib.repr(values[bad])} is not a number")
            try:
                data = values.astype(np.float64) if values.size else values
            except OverflowError:
                raise RequestError(f"input {name} holds an integer beyond the range of a double") from None
            if tensor.datatype in _INTEGER_RANGES and values.size:
                _check_integers(name, tensor.datatype, values, data)
            elif tensor.datatype in _FLOAT_RANGES and values.size:
                # As for the integers: a number the declared type cannot hold (1e39 as FP32, a review).
                beyond = np.abs(data) > _FLOAT_RANGES[tensor.datatype]
                if beyond.any():
                    raise RequestError(f"input {name} holds {data[beyond][0]:g}, beyond the range of "
                                       f"{tensor.datatype} (+-{_FLOAT_RANGES[tensor.datatype]:g})")
        a = np.asarray(data, dtype=np.float64).ravel()
        if a.size == 0 and size:  # gRPC: the values sent in another type's contents field (a review)
            raise RequestError(f"input {name} holds no values of its datatype {tensor.datatype} (over gRPC, values "
                               f"in another type's contents field arrive as none); its shape needs {size}")
        if a.size != size:
            raise RequestError(f"input {name} holds {a.size} values; its shape needs {size}")
        if not np.isfinite(a).all():
            first = int(np.flatnonzero(~np.isfinite(a))[0])
            raise RequestError(f"{at(first)}: {a[first]} is not a finite number")
        return a


NUMERIC_DATATYPES = frozenset({"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16",
                               "UINT32", "UINT64"})
# Every datatype of the Open Inference Protocol (the V2 tensors a request may hold).
V2_DATATYPES = NUMERIC_DATATYPES | {"BOOL", "BYTES"}
_NUMBER_TYPES = frozenset({int, float})  # exact types: bool is an int subclass and must not pass
_INTEGER_RANGES = {t: np.iinfo(t.lower()) for t in NUMERIC_DATATYPES if "INT" in t}
_FLOAT_RANGES = {"FP32": float(np.finfo(np.float32).max)}  # KServe refuses FP16 in JSON itself


def _check_integers(name: str, datatype: str, values: np.ndarray, data: np.ndarray) -> None:
    """JSON numbers in a tensor declared integer must be whole and within the type's range, as
    the Open Inference Protocol's datatypes say (1.5 as INT64 was scored as 1.5; Triton refuses it)."""
    bounds = _INTEGER_RANGES[datatype]
    bad = (data != np.floor(data)) | (data < bounds.min) | (data > bounds.max)
    edge = np.abs(data) >= 2.0**53  # doubles there are whole but round: 2**63 reads as INT64's largest
    if edge.any():
        bad[edge] = [not bounds.min <= v <= bounds.max for v in values[edge]]  # Python's exact comparison
    if bad.any():
        value = reprlib.repr(values[np.flatnonzero(bad)[0]])
        raise RequestError(f"input {name} has datatype {datatype} but holds {value}, which is not an integer in "
                           f"[{bounds.min}, {bounds.max}]; declare FP64 for fractional values")


@dataclass
class Scores:
    cate: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    seconds: float


class VersionScorer:
    """One published version, checksums verified, ready to score."""

    def __init__(self, version: ModelVersion, alpha: float = 0.05, device: str = "cpu"):
        self.model = version.model
        self.version = version.version
        self.card = version.card
        self.alpha = alpha
        self.columns = card_covariates(version.card)
        self.forest = version.load_forest(device=device)  # 'cuda' without a visible GPU: a ValueError
        self.parser = RowParser(self.columns)

    @classmethod
    def from_directory(cls, path: str, device: str = "cpu") -> "VersionScorer":
        """A version folder as KServe's storage initializer leaves it (e.g. /mnt/models)."""
        card = read_card(path)
        verify_files(path, card)
        return cls(ModelVersion(card["model"], card["version"], card, path), device=device)

    def score(self, X: np.ndarray) -> Scores:
        start = time.perf_counter()
        tau, lower, upper = self.forest.predict_with_interval(X, self.alpha)
        return Scores(tau, lower, upper, time.perf_counter() - start)
