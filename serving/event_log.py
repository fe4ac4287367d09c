"""The prediction event log: one record per scored row, as rotated Parquet files.

Records are buffered and written as `events-<UTC time>-<pid>-<seq>.parquet` once `rotate_rows`
records or `rotate_seconds` have gathered, and on `close` (the server calls it on shutdown,
SIGTERM included). Each file is written under a temporary name and renamed, so a reader (the
monitoring step) never sees half a file.
"""

import datetime as _dt
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

EVENT_FIELDS = ("time", "request_id", "row", "unit_id", "model", "version", "role", "cate", "lower", "upper",
                "recommended_action", "action", "propensity", "latency_ms")


class EventLog:
    def __init__(self, directory: str, rotate_rows: int = 10_000, rotate_seconds: float = 60.0):
        self.directory = directory
        self.rotate_rows = rotate_rows
        self.rotate_seconds = rotate_seconds
        os.makedirs(directory, exist_ok=True)
        self._records: list[dict] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._seq = 0
        self.files_written: list[str] = []

    def append(self, records: list[dict]) -> None:
        with self._lock:
            self._records.extend(records)
            due = (len(self._records) >= self.rotate_rows
                   or time.monotonic() - self._last_flush >= self.rotate_seconds)
        if due:
            self.flush()

    def flush(self) -> str | None:
        with self._lock:
            records, self._records = self._records, []
            self._last_flush = time.monotonic()
            self._seq += 1
            seq = self._seq
        if not records:
            return None
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = os.path.join(self.directory, f"events-{stamp}-{os.getpid()}-{seq:06d}.parquet")
        tmp = path + ".tmp"
        pq.write_table(pa.Table.from_pylist(records), tmp)
        os.replace(tmp, path)
        self.files_written.append(path)
        return path

    def close(self) -> None:
        self.flush()


def read_events(directory: str):
    """Every logged record under `directory` as one pandas DataFrame (for monitoring and tests)."""
    import pandas as pd

    files = sorted(f for f in os.listdir(directory) if f.startswith("events-") and f.endswith(".parquet"))
    if not files:
        return pd.DataFrame(columns=EVENT_FIELDS)
    return pd.concat([pq.read_table(os.path.join(directory, f)).to_pandas() for f in files], ignore_index=True)
