"""The monitoring data contract, owned here: the prediction event log that serving writes and
monitoring reads, and the reference profile that publishing stores with each version and
monitoring compares the log with. Both carry a row's covariates as `input.<covariate>` columns.

Event log: one record per scored row (`EVENT_FIELDS` plus the inputs), written as Parquet files
`events-<UTC time>-<pid>-<seq>.parquet` under one directory, each under a temporary name and then
renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import datetime as _dt
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .constants import REFERENCE_ROWS

EVENT_FIELDS = ("time", "request_id", "row", "unit_id", "model", "version", "role", "cate", "lower", "upper",
                "recommended_action", "action", "propensity", "explore_seed", "latency_ms")
INPUT_PREFIX = "input."
_FILE_PREFIX, _FILE_SUFFIX = "events-", ".parquet"


def input_columns(covariates: list[str]) -> list[str]:
    """The event-log (and reference-profile) columns that hold these covariates."""
    return [INPUT_PREFIX + c for c in covariates]


def event_record(*, time: float, request_id: str, row: int, unit_id: str | None, model: str, version: int,
                 role: str, cate: float, lower: float, upper: float, latency_ms: float,
                 inputs: dict[str, float]) -> dict:
    """One scored row as the log stores it; exploration fields (`recommended_action`, `action`,
    `propensity`, `explore_seed`) start empty and are set where the server drew an action."""
    record = {"time": time, "request_id": request_id, "row": row, "unit_id": unit_id, "model": model,
              "version": version, "role": role, "cate": cate, "lower": lower, "upper": upper,
              "recommended_action": None, "action": None, "propensity": None, "explore_seed": None,
              "latency_ms": latency_ms}
    record.update({INPUT_PREFIX + c: v for c, v in inputs.items()})
    return record


def write_events(records: list[dict], directory: str, seq: int) -> str:
    """Write records as one new file of the log in `directory` (atomically); return its path."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    path = os.path.join(directory, f"{_FILE_PREFIX}{stamp}-{os.getpid()}-{seq:06d}{_FILE_SUFFIX}")
    tmp = path + ".tmp"
    pq.write_table(pa.Table.from_pylist(records), tmp)
    os.replace(tmp, path)
    return path


def read_events(directory: str) -> pd.DataFrame:
    """Every logged record under `directory` as one DataFrame (empty, with the fields, if none)."""
    if not os.path.isdir(directory):
        raise ValueError(f"the event log {directory} is not a directory")
    files = sorted(f for f in os.listdir(directory) if f.startswith(_FILE_PREFIX) and f.endswith(_FILE_SUFFIX))
    if not files:
        return pd.DataFrame(columns=list(EVENT_FIELDS))
    return pd.concat([pq.read_table(os.path.join(directory, f)).to_pandas() for f in files], ignore_index=True)


def reference_profile(X: np.ndarray, covariates: list[str], T: np.ndarray, cate, seed: int = 0) -> pd.DataFrame:
    """What monitoring compares live traffic with: a sample of the training covariates (as
    `input.<covariate>` columns), their treatment `T` and the published forest's CATE for them
    (`cate(X)`, as the server answers)."""
    n = len(T)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, REFERENCE_ROWS), replace=False))
    frame = pd.DataFrame(X[rows], columns=input_columns(covariates))
    frame["T"] = T[rows]
    frame["cate"] = np.asarray(cate(X[rows]), dtype=np.float64)
    return frame


def load_reference(path: str) -> pd.DataFrame:
    """A reference profile saved as Parquet at `path` (a version's, `ModelVersion.reference_path`)."""
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist: the version was published before monitoring existed; "
                         "publish a new version")
    return pd.read_parquet(path)
