"""The prediction event log's writer: records (`tauforge.components.events`, the log's schema and
reader) gathered off the event loop and written as rotated Parquet files.

`append` only puts records on a queue; one writer thread gathers them and writes a file of the
log (`events.write_events`) once `rotate_rows` records have gathered, once the oldest
unwritten record is `rotate_seconds` old (an idle server's records do not wait for the next
request), and on `close` (the server calls it on shutdown, SIGTERM included). So no file is
written on the server's event loop, and `append` takes no lock: KServe calls `close` from a
signal handler, which may interrupt `append` on the same thread.
"""

import logging
import os
import queue
import threading
import time

from tauforge.components.events import write_events

log = logging.getLogger("tauforge.serving")


class EventLog:
    def __init__(self, directory: str, rotate_rows: int = 10_000, rotate_seconds: float = 60.0,
                 close_timeout: float = 30.0):
        self.directory = directory  # a local folder or an fsspec URI (s3://, gs://)
        self.rotate_rows = rotate_rows
        self.rotate_seconds = rotate_seconds
        self.close_timeout = close_timeout
        if "://" not in directory:
            os.makedirs(directory, exist_ok=True)
        self.files_written: list[str] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe inside a signal handler
        self._seq = 0
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, daemon=True, name="tauforge-event-log")
        self._writer.start()

    def append(self, records: list[dict]) -> None:
        if records:
            self._queue.put(records)

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything appended so far; True once written (False on timeout)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is buffered and stop the writer. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(self.close_timeout)
        if self._writer.is_alive():
            log.error("the event log writer did not finish within %.0f s; records may be lost", self.close_timeout)

    def _write_loop(self) -> None:
        buffer: list[dict] = []
        oldest = None  # monotonic time of the oldest unwritten record
        while True:
            wait = None if oldest is None else max(0.0, oldest + self.rotate_seconds - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = ()  # the oldest record is due
            if isinstance(item, list):
                buffer += item
                oldest = time.monotonic() if oldest is None else oldest
                if len(buffer) < self.rotate_rows:
                    continue
            buffer = self._write(buffer)
            oldest = time.monotonic() if buffer else None  # a failed write is retried later
            if isinstance(item, threading.Event):
                item.set()
            elif item is None:
                return

    def _write(self, records: list[dict]) -> list[dict]:
        """Write records as one file; an empty buffer back (records are kept if writing fails)."""
        if not records:
            return []
        self._seq += 1
        try:
            paths = write_events(records, self.directory, self._seq)
        except Exception:  # noqa: BLE001 (a full disk or a lost store must not kill the writer; retry later)
            log.exception("could not write %d event-log records to %s; keeping them", len(records), self.directory)
            return records
        self.files_written += paths
        return []
