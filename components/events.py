"""The monitoring data contract, owned here: the prediction event log that serving writes and
monitoring reads, and the reference profile that publishing stores with each version and
monitoring compares the log with. Both carry a row's covariates as `input.<covariate>` columns.

Event log: one record per scored row (`EVENT_FIELDS` plus the inputs), as Parquet files under one
location, a local folder or any fsspec URI (s3://, gs://), partitioned the Hive way:

    <location>/model=<model>/version=<version>/role=<role>/date=<YYYY-MM-DD>/events-<time>-<pid>-<seq>.parquet

so that the logs of every predictor of a deployment (champion, canary, shadow; pods that come
and go) gather in one place and a reader takes one model's subtree only. The partition's model,
version and role are in its folders' names only, so that any Hive-aware reader (pandas,
pyarrow.dataset, DuckDB, Spark) reads the location as one table. A file appears whole or not at
all: written under a temporary name and renamed on a local disk, one PUT on object storage.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import io
import itertools
import operator
import os
import reprlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tauforge.kernels.serialization import replaced_whole

from .constants import REFERENCE_ROWS

EVENT_FIELDS = ("time", "request_id", "row", "unit_id", "model", "version", "role", "cate", "lower", "upper",
                "recommended_action", "action", "propensity", "explore_seed", "latency_ms")
# Their types, fixed so that every file of one model reads as one table whatever its rows held
# (a file without exploration would otherwise type `action` as null, another as int64).
EVENT_SCHEMA = pa.schema([("time", pa.float64()), ("request_id", pa.string()), ("row", pa.int64()),
                          ("unit_id", pa.string()), ("model", pa.string()), ("version", pa.int64()),
                          ("role", pa.string()), ("cate", pa.float64()), ("lower", pa.float64()),
                          ("upper", pa.float64()), ("recommended_action", pa.int64()), ("action", pa.int64()),
                          ("propensity", pa.float64()), ("explore_seed", pa.int64()), ("latency_ms", pa.float64())])
# The partition's fields are its folders' names (Hive's layout, as Spark writes it), not columns of
# its files: a serving review saw pandas, pyarrow.dataset and DuckDB fail on a log whose files
# repeated them with other types than the folders'. read_events puts them back from the path.
PARTITION_FIELDS = ("model", "version", "role")
FILE_SCHEMA = pa.schema([f for f in EVENT_SCHEMA if f.name not in PARTITION_FIELDS])
INPUT_PREFIX = "input."
REFERENCE_GROUP = "group"  # the reference profile's column of training groups (codes), where the fit had them
# The longest unit or request id a server keeps: a caller's id is stored in every record of its
# rows and echoed in answers; a longer unit id is refused (a 400), a longer request id replaced.
# Readers (the monitor's joins) take ids of any length: logs written before the cap hold some.
MAX_ID_LENGTH = 256
_FILE_PREFIX, _FILE_SUFFIX = "events-", ".parquet"


def id_string(value) -> str | None:
    """A unit or request id as the log keeps it: one string per id, whether it came as "7", 7 or
    7.0 (a V2 numeric tensor, a CSV column read as numbers), so that the canary's hash and the
    outcomes' join meet the same id; None for a missing one. Other values: ValueError."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return None
        if float(value).is_integer():
            value = int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    raise ValueError(f"{reprlib.repr(value)} must be a string or an integer")


def input_columns(covariates: list[str]) -> list[str]:
    """The event-log (and reference-profile) columns that hold these covariates."""
    return [INPUT_PREFIX + c for c in covariates]


def with_shadow(live: pd.DataFrame, shadow: pd.DataFrame, columns: list[str], suffix: str = "_shadow") -> pd.DataFrame:
    """Each row of `live` beside the shadow's `columns` for the same row of the same request (the
    shadow's columns renamed with `suffix`): the same request id and row, and the same value in
    every input both logged. The inputs count because callers reuse request ids (a client's
    retries, one upstream id passed on to several calls): joined on the id alone, every row of
    such requests paired with every shadow row of the others. An input one side did not log (a
    challenger with another covariate) does not decide; a live row meets at most one answer."""
    inputs = sorted(c for c in shadow.columns if c.startswith(INPUT_PREFIX) and c in live.columns)
    # Inputs logged in every row of both join exactly, so the join stays linear however often an
    # id repeats (filtering a join on the id alone grew with its square: 7 GB at 4,000 rows under
    # one id); the others only filter, where both sides logged them.
    whole = [c for c in inputs if live[c].notna().all() and shadow[c].notna().all()]
    partial = [c for c in inputs if c not in whole]
    key = ["request_id", "row", *whole]
    answers = (shadow[[*key, *partial, *columns]].reset_index(drop=True).rename_axis("_answer").reset_index()
               .drop_duplicates([*key, *partial]).rename(columns={c: c + suffix for c in [*partial, *columns]}))
    pairs = live.reset_index(drop=True).rename_axis("_live").reset_index().merge(answers, on=key)
    same = np.ones(len(pairs), bool)
    for c in partial:
        a, b = pairs[c].to_numpy(float), pairs[c + suffix].to_numpy(float)
        same &= (a == b) | np.isnan(a) | np.isnan(b)
    # The first answer logged, where several match; the rows in the live frame's order.
    return (pairs[same].sort_values(["_live", "_answer"]).drop_duplicates("_live")
            .drop(columns=["_live", "_answer", *(c + suffix for c in partial)]).reset_index(drop=True))


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


def _filesystem(location: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(location)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return fs, (os.path.abspath(root) if local else root.rstrip("/")), local


def _batch_files(records: list[dict], root: str, seq: int, stamp: _dt.datetime):
    """(path, folder, the records it holds) of each file a batch is written as: one per
    (model, version, role) partition, named by `stamp` and `seq`."""
    key = operator.itemgetter("model", "version", "role")
    for (model, version, role), group in itertools.groupby(sorted(records, key=key), key=key):
        folder = f"{root}/model={model}/version={version}/role={role}/date={stamp:%Y-%m-%d}"
        name = f"{_FILE_PREFIX}{stamp:%Y%m%dT%H%M%S%f}-{os.getpid()}-{seq:06d}{_FILE_SUFFIX}"
        yield f"{folder}/{name}", folder, list(group)


def write_events(records: list[dict], location: str, seq: int, stamp: _dt.datetime | None = None) -> list[str]:
    """Write records to the log at `location` (a folder or fsspec URI), one new file per
    partition they fall in, each appearing whole, named by `stamp` (default now) and `seq`;
    return the files' paths. All or none: when one file cannot be written (a full disk), those
    already written are removed before the error is raised. A writer that retries a batch with
    the same `stamp` and `seq` replaces whatever an attempt left (an object stored although its
    PUT timed out, a file its cleanup could not remove), so no record is logged twice; one that
    must rename it (`remove_events` first) removes that."""
    fs, root, local = _filesystem(location)
    stamp = stamp or _dt.datetime.now(_dt.UTC)
    written = []
    try:
        for path, folder, group in _batch_files(records, root, seq, stamp):
            inputs = sorted({k for r in group for k in r if k.startswith(INPUT_PREFIX)})
            schema = pa.schema([*FILE_SCHEMA, *(pa.field(c, pa.float64()) for c in inputs)])
            table = pa.Table.from_pylist(group, schema=schema)  # the partition's fields stay in its folders
            if local:
                os.makedirs(folder, exist_ok=True)
                # Whole on disk before the rename shows it: a node crash leaves no stub, a full disk no part.
                with replaced_whole(path, binary=True, sync=True) as f:
                    pq.write_table(table, f)
            else:  # one PUT: the object exists whole or not at all
                buffer = io.BytesIO()
                pq.write_table(table, buffer)
                fs.pipe_file(path, buffer.getvalue())
            written.append(path)
    except BaseException:
        for path in written:
            with contextlib.suppress(Exception):
                fs.rm(path)
        raise
    return written if local else [f"{location.split('://')[0]}://{path}" for path in written]


# What a record the log's schema cannot hold raises when written (text that is not UTF-8, a value
# of the wrong type); a store that fails raises OSError, or a client's own error (botocore's).
RECORD_ERRORS = (pa.ArrowException, UnicodeError, TypeError, ValueError, OverflowError)


def unstorable(records: list[dict]) -> set[int]:
    """Indexes of the records no Parquet file of the log can hold (text that is not UTF-8, a
    value of the wrong type): a writer drops them rather than retrying them forever."""
    bad = set()
    for i, r in enumerate(records):
        inputs = [pa.field(k, pa.float64()) for k in r if k.startswith(INPUT_PREFIX)]
        try:
            pa.Table.from_pylist([r], schema=pa.schema([*EVENT_SCHEMA, *inputs]))
        except RECORD_ERRORS:
            bad.add(i)
    return bad


def remove_events(records: list[dict], location: str, seq: int, stamp: _dt.datetime) -> None:
    """Remove whatever files `write_events(records, location, seq, stamp)` may have left: a
    writer's failed attempts under a name it must give up. Missing files are no error; any other
    failure (the store still unreachable) is raised."""
    fs, root, _ = _filesystem(location)
    for path, _, _ in _batch_files(records, root, seq, stamp):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)


def read_events(location: str, model: str | None = None, since: float | None = None, *,
                skip: tuple[str, ...] = (), on_file=None) -> pd.DataFrame:
    """Every logged record under `location` (of `model` only, if given; logged at or after the
    Unix time `since`, if given) as one DataFrame, read file by file with pyarrow; empty, with the
    fields, if there is none. With `since`, files in date folders before its day are not read (a
    file's folder is the day it was written, which is no earlier than its records). Files that
    cannot be read (a node crash on a disk without the writer's sync) are skipped and listed in
    the frame's `attrs["unreadable_files"]`; `attrs["files"]` counts the files found, and
    `attrs["files_without"]` names, per column some files hold, the files that lack it. A local
    folder that does not exist is an error (a mistyped path should not read as a quiet log).
    `skip`: columns not kept (a reader that does not need them: each file's are dropped as it is
    read, so a week's log holds less at once); `on_file(done, total)` is called after each file
    (progress on a long read)."""
    fs, root, local = _filesystem(location)
    if local and not os.path.isdir(root):
        raise ValueError(f"the event log {location} is not a directory")
    base = f"{root}/model={model}" if model else root
    first_day = None if since is None else _day_before(since)
    files = sorted(f for f in (fs.find(base) if fs.exists(base) else [])
                   if os.path.basename(f).startswith(_FILE_PREFIX) and f.endswith(_FILE_SUFFIX)
                   and (first_day is None or (day := _written_on(f)) is None or day >= first_day))
    tables, unreadable = [], []
    for done, f in enumerate(files, 1):  # each whole: a file whose footer reads can still hold corrupt pages
        try:
            table = _with_partition_fields(pq.read_table(f, filesystem=fs), f)
            tables.append((f, table.drop_columns([c for c in skip if c in table.column_names])))
        except (OSError, pa.ArrowException, ValueError) as exc:
            unreadable.append(f"{f}: {exc}")
        if on_file is not None:
            on_file(done, len(files))
    # A column some files lack reads as nulls in their rows: a reader that needs it names the files.
    held = {c for _, table in tables for c in table.column_names}
    files_without = {c: lacking for c in sorted(held) if (lacking := [f for f, t in tables if c not in t.column_names])}
    tables, mismatched = _of_one_schema(tables)
    unreadable += mismatched
    if not tables:
        frame = pd.DataFrame(columns=[c for c in EVENT_FIELDS if c not in skip])
    else:
        table = pa.concat_tables(tables, promote_options="permissive")
        del tables  # the files' tables are the concatenation's chunks: one copy, freed as it converts
        # Filtered and sorted in Arrow, then converted once (self_destruct frees each column as it
        # goes): a pandas sort and filter each held another copy of the frame, 3 times the log's
        # Arrow size at the peak.
        if since is not None:
            table = table.filter(pc.greater_equal(table.column("time"), since))
        keys = [k for k in ("time", "request_id", "row") if k in table.column_names]
        if keys:  # stable, NaN and nulls last, as pandas' sort was
            order = pc.sort_indices(_as_pandas_sorts(table, keys), sort_keys=[(k, "ascending") for k in keys])
            table = table.take(order)
        # A 63-bit explore_seed beside nulls (shadow rows, a server without --explore) read as
        # float64 lost its low bits, and the logged draw no longer replayed: a nullable integer.
        seed = None
        if "explore_seed" in table.column_names:  # files of another writer may lack it
            where = table.column_names.index("explore_seed")
            seed = table.column("explore_seed").to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
            table = table.remove_column(where)
        # Not split_blocks: its zero-copy columns are read-only, and a caller's `frame.loc[...] = x`
        # failed with "assignment destination is read-only".
        frame = table.to_pandas(self_destruct=True)
        del table
        if seed is not None:
            frame.insert(where, "explore_seed", seed)
    frame.attrs["unreadable_files"] = unreadable
    frame.attrs["files"] = len(files)
    frame.attrs["files_without"] = files_without
    return frame


def _with_partition_fields(table: pa.Table, path: str) -> pa.Table:
    """A file's table with the partition's fields (`PARTITION_FIELDS`) from its folders' names,
    typed as EVENT_SCHEMA, where the file does not hold them (files written before 2026-12-08 do)
    and its path names them (else the field is missing, as any field a file lacks), the event
    fields first, in their order. A version folder that is no integer: ValueError."""
    folders = dict(part.split("=", 1) for part in path.split("/") if "=" in part)
    for name in PARTITION_FIELDS:
        if name not in table.column_names and name in folders:
            kind = EVENT_SCHEMA.field(name).type
            value = int(folders[name]) if pa.types.is_integer(kind) else folders[name]
            table = table.append_column(pa.field(name, kind), pa.array([value] * table.num_rows, kind))
    names = table.column_names
    return table.select([c for c in EVENT_FIELDS if c in names] + [c for c in names if c not in EVENT_FIELDS])


def _as_pandas_sorts(table: pa.Table, keys: list[str]) -> pa.Table:
    """The sort keys as pandas' sort compared them: a dictionary column (a writer's categorical)
    by its values, which Arrow cannot sort on; a float NaN as a null (both missing, tied)."""
    columns = {}
    for k in keys:
        column = table.column(k)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
        columns[k] = column
    return pa.table(columns)


def _of_one_schema(tables: list[tuple[str, pa.Table]]) -> tuple[list[pa.Table], list[str]]:
    """The tables whose columns can be read together (`concat_tables`' permissive promotion: nulls
    and wider numbers), and the files left out: each column takes the type of most rows, so a
    file written otherwise (a column of text where the others hold numbers) is named rather
    than failing the whole read."""
    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for _, table in tables:
        for field in table.schema:
            if not pa.types.is_null(field.type):
                votes[field.name][field.type] += table.num_rows + 1  # by rows: one stray file loses
    expected = pa.schema((name, counts.most_common(1)[0][0]) for name, counts in votes.items())
    kept, left_out = [], []
    for path, table in tables:
        try:
            pa.unify_schemas([table.schema, expected], promote_options="permissive")
            kept.append(table)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            left_out.append(f"{path}: its columns cannot be read with the other files': {exc}")
    return kept, left_out


def _day_before(since: float) -> str | None:
    """The YYYY-MM-DD of the day before Unix time `since` (a day's margin: pods' clocks differ);
    None before year 1 (or NaN): then every day's folder is read."""
    try:
        return f"{_dt.datetime.fromtimestamp(since, _dt.UTC) - _dt.timedelta(days=1):%Y-%m-%d}"
    except (OverflowError, ValueError, OSError):
        return None


def _written_on(path: str) -> str | None:
    """The YYYY-MM-DD of a log file's `date=` folder (None outside the layout)."""
    folder = os.path.basename(os.path.dirname(path))
    return folder.removeprefix("date=") if folder.startswith("date=") else None


def reference_profile(X: np.ndarray, covariates: list[str], T: np.ndarray, cate, seed: int = 0,
                      groups: np.ndarray | None = None) -> pd.DataFrame:
    """What monitoring compares live traffic with: a sample of the training covariates (as
    `input.<covariate>` columns), their treatment `T` and the published forest's CATE for them:
    `cate`, one per row of X, or a function of rows. The pipeline passes the out-of-bag CATE,
    which is what the server answers for rows the forest did not grow on. In-sample predictions
    spread wider (each holds its own row's outcome: 0.107 against fresh rows' 0.096 in a user's
    review), and against 20,000 quiet live rows the CATE drift check alarmed every time.
    `groups` (codes, the fit's `groups=`): each sampled row's group in a `REFERENCE_GROUP`
    column, so that monitoring counts a group's rows once where a test counts independent rows."""
    n = len(T)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, REFERENCE_ROWS), replace=False))
    frame = pd.DataFrame(X[rows], columns=input_columns(covariates))
    frame["T"] = T[rows]
    frame["cate"] = np.asarray(cate(X[rows]) if callable(cate) else np.asarray(cate)[rows], dtype=np.float64)
    if groups is not None:
        frame[REFERENCE_GROUP] = np.asarray(groups, dtype=np.int64)[rows]
    return frame


def reference_groups(reference: pd.DataFrame) -> np.ndarray:
    """The reference rows' groups as codes 0..G-1: its `REFERENCE_GROUP` column, or each row its
    own group (a model fit without groups, or published before they were kept)."""
    if REFERENCE_GROUP not in reference:
        return np.arange(len(reference))
    return np.unique(reference[REFERENCE_GROUP].to_numpy(), return_inverse=True)[1].reshape(-1)


def load_reference(path: str) -> pd.DataFrame:
    """A reference profile saved as Parquet at `path` (a version's, `ModelVersion.reference_path`)."""
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist: the version was published before monitoring existed; "
                         "publish a new version")
    return pd.read_parquet(path)
