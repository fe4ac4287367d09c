"""Models as plain arrays plus JSON, checksummed: no pickle anywhere on the load path.

A saved model is a directory holding `arrays.npz` (numeric arrays only, loaded with
allow_pickle=False) and `model.json` (parameters and metadata, with the sha256 of every
file). Loading recomputes the checksums and refuses a file that does not match.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

ARRAYS_FILE = "arrays.npz"
META_FILE = "model.json"
MAX_META_BYTES = 16 * 2**20  # parameters and checksums: kilobytes, so far above any real one


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    with open(path, "rb") as f:
        return _sha256_stream(f)


def _sha256_stream(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def sha256_json(document: dict[str, Any], digest_key: str) -> str:
    """sha256 of a JSON document without its own digest field `digest_key` (keys sorted), so a
    document can carry its own checksum and hand edits are caught: the model metadata here, the
    model card in the store."""
    body = {k: v for k, v in document.items() if k != digest_key}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def sha256_text(text: str) -> str:
    """sha256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}  # a write's own failures


@contextlib.contextmanager
def replaced_whole(path: str | os.PathLike, binary: bool = False, sync: bool = False) -> Iterator[IO]:
    """A file to write that replaces `path` only once the block completes: readers see the old
    file or the new one, never a part. It is a hidden temporary file beside it (`.<name>.<random>.tmp`),
    removed on any failure, a full disk's included, so that none is left behind; the new file
    keeps an existing file's mode (a new one gets the mode open() gives). A symbolic link's target
    is replaced, not the link. `sync`: on disk before it replaces `path` (a crash then leaves no
    stub). Anything but a regular file or a new one, such as /dev/stdout, a pipe or a device, is
    written in place, never replaced."""
    target = os.path.realpath(path)
    if (os.path.exists(target) and not os.path.isfile(target)) or target.startswith(("/dev/", "/proc/")):
        with open(path, "wb" if binary else "w") as f:
            yield f
        return
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:  # named as the file asked for, not as the temporary one
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            if os.path.exists(target):
                shutil.copymode(target, tmp)
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        # A full disk's write or flush names no file: name the one asked for, so the user knows
        # which (the CLI says "No space left on device: <path>").
        if isinstance(exc, OSError) and exc.filename is None and exc.errno in _WRITE_ERRNOS:
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
        raise


def finite_json(value: Any) -> Any:
    """`value` (dicts, lists, numbers, text) with every NaN or infinite float as None: JSON has no
    NaN, and strict readers (JavaScript's JSON.parse, jq, Go) refuse the token Python writes (a
    review found NaN in a card and in `monitor --json`)."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def save_model(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write `arrays` and `meta` into directory `path` (created; existing files are replaced)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; only numeric arrays are saved")
    json.dumps(meta)  # fails here, before any file is replaced: a model saved before stays whole
    # Each file whole or not at all: a crash or a full disk never leaves a half-written model.
    with replaced_whole(path / ARRAYS_FILE, binary=True) as f:
        np.savez(f, **arrays)
    meta = dict(meta, files={ARRAYS_FILE: sha256_file(path / ARRAYS_FILE)})
    meta["meta_sha256"] = sha256_json(meta, "meta_sha256")
    with replaced_whole(path / META_FILE) as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return path


def load_model(path: str | os.PathLike, expected_format: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a model written by `save_model`, verifying its format and every checksum."""
    # One directory for the whole load, even if a symbolic link to it is switched meanwhile (a
    # ConfigMap volume's or git-sync's ..data link): never one version's metadata with another's arrays.
    path = Path(os.path.realpath(path))
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no {META_FILE} in {path}: not a saved tauforge model")
    if meta_path.stat().st_size > MAX_META_BYTES:  # a crafted one would take the server's memory first
        raise ValueError(f"{meta_path} is {meta_path.stat().st_size:,} bytes; a saved model's metadata is at most "
                         f"{MAX_META_BYTES:,}: the metadata is damaged")
    try:
        meta = json.loads(meta_path.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise ValueError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files", {}), dict):
        raise ValueError(f"{meta_path} is not the metadata of a saved tauforge model")
    if meta.get("meta_sha256") != sha256_json(meta, "meta_sha256"):
        raise ValueError(f"checksum mismatch for {meta_path}: the metadata was modified or corrupted")
    if meta.get("format") != expected_format:
        raise ValueError(f"{path} holds format {meta.get('format')!r}, expected {expected_format!r}")
    for name, digest in meta.get("files", {}).items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{meta_path} lists the file {name!r}, which is not a file of {path}: the metadata "
                             "is damaged")
        if name != ARRAYS_FILE:
            _check_digest(path / name, sha256_file(path / name), digest)
    if ARRAYS_FILE not in meta.get("files", {}):
        raise ValueError(f"{meta_path} lists no checksum for {ARRAYS_FILE}: the metadata is damaged")
    # The arrays are read from the handle their checksum was computed on: a file replaced meanwhile
    # (another save into the same directory) is never loaded unverified.
    with open(path / ARRAYS_FILE, "rb") as f:
        _check_digest(path / ARRAYS_FILE, _sha256_stream(f), meta["files"][ARRAYS_FILE])
        f.seek(0)
        # save_model writes np.savez (stored, uncompressed): a compressed member is no array of
        # ours, and a few MB of it inflate to GBs (a 1.9 MB file took 1.7 GB here).
        with zipfile.ZipFile(f) as z:
            if any(i.compress_type != zipfile.ZIP_STORED for i in z.infolist()):
                raise ValueError(f"{path / ARRAYS_FILE} holds compressed members: not written by save_model")
        f.seek(0)
        with np.load(f, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return arrays, meta


def _check_digest(path: Path, actual: str, digest: Any) -> None:
    if actual != digest:
        raise ValueError(f"checksum mismatch for {path}: the file was modified or corrupted "
                         f"(expected sha256 {str(digest)[:12]}..., got {actual[:12]}...)")
