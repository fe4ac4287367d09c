"""The prediction event log's writer: records (`tauforge.components.events`, the log's schema and
reader) gathered off the event loop and written as rotated Parquet files.

`append` only puts records on a queue; one writer thread gathers them and writes a file of the
log (`events.write_events`) once `rotate_rows` records have gathered, once the oldest
unwritten record is `rotate_seconds` old (an idle server's records do not wait for the next
request), and on `close` (the server calls it on shutdown, SIGTERM included). So no file is
written on the server's event loop, and `append` takes no lock: KServe calls `close` from a
signal handler, which may interrupt `append` on the same thread.

When writing fails (a full disk, a lost object store) the records are kept and the write is
retried after a pause that doubles up to `MAX_RETRY_SECONDS`, one warning line a failure; beyond
`max_backlog_rows` unwritten records the oldest are dropped and counted, so a store that stays
down costs a bounded amount of memory. Metrics: `tauforge_event_log_write_errors_total`,
`tauforge_event_log_dropped_rows_total`, `tauforge_event_log_backlog_rows`.
"""

import datetime as _dt
import logging
import os
import queue
import threading
import time

from prometheus_client import Counter, Gauge

from tauforge.components.events import RECORD_ERRORS, remove_events, unstorable, write_events

log = logging.getLogger("tauforge.serving")
MAX_RETRY_SECONDS = 60.0

WRITE_ERRORS = Counter("tauforge_event_log_write_errors", "Event-log files that could not be written (retried)")
DROPPED_ROWS = Counter("tauforge_event_log_dropped_rows",
                       "Event-log records dropped: past the backlog cap, unwritten at close, or not storable")
BACKLOG_ROWS = Gauge("tauforge_event_log_backlog_rows", "Event-log records not yet written")


class EventLog:
    def __init__(self, directory: str, rotate_rows: int = 10_000, rotate_seconds: float = 60.0,
                 close_timeout: float = 30.0, max_backlog_rows: int = 200_000):
        self.directory = directory  # a local folder or an fsspec URI (s3://, gs://)
        self.rotate_rows = rotate_rows
        self.rotate_seconds = rotate_seconds
        self.close_timeout = close_timeout
        self.max_backlog_rows = max_backlog_rows  # about 1 KB a record with a few covariates
        if "://" not in directory:
            os.makedirs(directory, exist_ok=True)
        self.files_written: list[str] = []
        self.lost_rows = 0  # records dropped past the backlog or unwritten at close (DROPPED_ROWS, per log)
        self._backlog = 0  # records not yet written (BACKLOG_ROWS, per log)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe inside a signal handler
        self._seq = 0
        self._failed_writes = 0  # since the last write that succeeded
        self._closing = False  # the write under way is the last, at close: a failure is not retried
        self._retry_name: tuple | None = None  # (seq, stamp) of the batch being retried
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, daemon=True, name="tauforge-event-log")
        self._writer.start()

    def append(self, records: list[dict]) -> None:
        if records:
            self._queue.put(records)

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything appended so far; True once written (False on timeout, or when the
        write failed and the records wait for the next attempt)."""
        done = threading.Event()
        done.written = False
        self._queue.put(done)
        return done.wait(timeout) and done.written

    def close(self) -> None:
        """Write what is buffered and stop the writer. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(self.close_timeout)
        if self._writer.is_alive():
            log.error("the event log writer did not finish within %.0f s; records may be lost", self.close_timeout)
            self.lost_rows += max(1, self._backlog)  # its unwritten records, at least one batch

    def _write_loop(self) -> None:
        buffer: list[dict] = []
        due = None  # monotonic time the buffer is next written (None: nothing buffered)
        pause = 0.0  # after a failed write: how long to wait before the next attempt
        while True:
            wait = None if due is None else max(0.0, due - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = ()  # the buffer is due
            if isinstance(item, list):
                buffer += item
                if len(buffer) > self.max_backlog_rows:  # the store is down: keep the newest
                    DROPPED_ROWS.inc(len(buffer) - self.max_backlog_rows)
                    self.lost_rows += len(buffer) - self.max_backlog_rows
                    buffer = buffer[-self.max_backlog_rows:]
                self._set_backlog(len(buffer))
                due = time.monotonic() + self.rotate_seconds if due is None else due
                if len(buffer) < self.rotate_rows or (pause and time.monotonic() < due):
                    continue  # not full yet, or still pausing after a failure
            self._closing = item is None
            buffer = self._write(buffer)
            self._set_backlog(len(buffer))
            pause = min(2 * pause or 1.0, MAX_RETRY_SECONDS) if buffer else 0.0
            due = (time.monotonic() + pause) if buffer else None
            if isinstance(item, threading.Event):
                item.written = not buffer
                item.set()
            elif item is None:
                if buffer:  # closing, and the last attempt failed: said and counted, not kept in silence
                    log.error("the event log could not write its last %d records to %s; they are lost",
                              len(buffer), self.directory)
                    DROPPED_ROWS.inc(len(buffer))
                    self.lost_rows += len(buffer)
                self._set_backlog(0)
                return

    def _set_backlog(self, rows: int) -> None:
        self._backlog = rows
        BACKLOG_ROWS.set(rows)

    def _kept(self, records: list[dict], failure: str, exc: Exception) -> list[dict]:
        """A failed attempt, counted and said: the records are kept for the next one."""
        WRITE_ERRORS.inc()
        self._failed_writes += 1
        log.warning("%s (%s: %s); %s", failure, type(exc).__name__, exc,
                    "that was the last attempt, at close" if self._closing  # said "retrying", then "lost" (a review)
                    else f"keeping {len(records)} records and retrying")
        return records

    def _write(self, records: list[dict]) -> list[dict]:
        """Write records as one file; an empty buffer back (records are kept if writing fails)."""
        if not records:
            return []
        now = _dt.datetime.now(_dt.UTC)
        # A batch's files keep their names through its retries (see write_events), within a day: a
        # file's date folder must be no earlier than its records (read_events skips by it). Past
        # midnight the batch takes a new name once what its old one may have left is removed.
        if self._retry_name is not None and self._retry_name[1].date() != now.date():
            try:
                remove_events(records, self.directory, *self._retry_name)
            except PermissionError as exc:  # a store that takes writes but no deletes: say so, and go on
                log.warning("could not remove an earlier attempt's event-log files in %s (%s); if one was stored "
                            "after all, its records are logged twice", self.directory, exc)
            except Exception as exc:  # noqa: BLE001 (still unreachable: keep the old name, retry later)
                return self._kept(records, f"could not clear an earlier attempt's event-log files in {self.directory}",
                                  exc)
            self._retry_name = None
        if self._retry_name is None:
            self._seq += 1
            self._retry_name = (self._seq, now)
        try:
            paths = write_events(records, self.directory, *self._retry_name)
        except Exception as exc:  # noqa: BLE001 (a full disk or a lost store must not kill the writer; retry later)
            # Only an error a record can cause starts the scan: it costs a table per record, and a
            # store that is down (OSError, or botocore's own errors) must not pay it every retry.
            bad = unstorable(records) if isinstance(exc, RECORD_ERRORS) and not isinstance(exc, OSError) else set()
            if bad:  # dropped and counted, or they block every other record forever
                log.error("dropping %d event-log records the log's schema cannot hold (%s: %s)", len(bad),
                          type(exc).__name__, exc)
                DROPPED_ROWS.inc(len(bad))
                self.lost_rows += len(bad)
                return self._write([r for i, r in enumerate(records) if i not in bad])
            return self._kept(records, f"could not write {len(records)} event-log records to {self.directory}", exc)
        self._retry_name = None
        if self._failed_writes:  # the warnings above said it stopped; this says it is whole again
            log.warning("the event log wrote the %d records it kept to %s, after %d failed attempts",
                        len(records), self.directory, self._failed_writes)
            self._failed_writes = 0
        self.files_written += paths
        return []
