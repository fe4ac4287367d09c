"""The model store: immutable numbered versions of each model, aliases, and the model card.

Layout under the store's root (a local folder, or any fsspec URI):

    <root>/<model>/<version>/forest/arrays.npz      the forest as plain arrays (no pickle)
    <root>/<model>/<version>/forest/model.json      its parameters, bin edges, checksums
    <root>/<model>/<version>/evaluation.json        the checks behind the publishing gate
    <root>/<model>/<version>/report.html            the same, for people
    <root>/<model>/<version>/reference.parquet      training rows' covariates, treatment and CATE
                                                    (a sample), what monitoring compares live traffic with
    <root>/<model>/<version>/model_card.json        what the causal claim depends on, and the
                                                    sha256 of every other file
    <root>/<model>/aliases.json                     {"champion": {"version": 2, "history": [1]}}
    <root>/<model>/.claims/<version>                the number taken: on an object store who took
                                                    it (writer, host, pid), on a local folder an
                                                    empty file made just before the rename that
                                                    publishes; a removed version's number is never
                                                    taken again

Publishing makes a version visible in one step, complete and verified, and two publishers never
get one number:

- On a local filesystem the version is written under a private staging name, verified, synced
  to disk, then renamed to the next free number: a rename is atomic and fails when the number is
  taken (the loser takes the next), and a crash (or a power loss) never leaves half a version.
- On object stores, which cannot rename, the publisher first claims the number by creating
  `.claims/<version>` with a conditional write (S3's `If-None-Match: *`, fsspec's
  `mode="create"`): the store creates it for exactly one writer and refuses the others, who take
  the next number. The owner then uploads the files and writes the card last, again only if
  absent. A version without a card is invisible, so a crashed publisher leaves its number unused
  for good (burned, never reused) and nothing readable.
- Aliases are read, changed and written back under a file lock on a local filesystem; on S3 the
  write is conditional on the ETag read (`If-Match`), so of two promotions at the same instant
  one is refused and retried on the new file: none is lost.
- On object stores other than S3 (gs://, ...) the claim is as atomic as the fsspec backend's
  exclusive write, and an alias write is unconditional: promote from one place at a time there.

Published folders are 0755 and files 0644 on a local filesystem, whatever the umask, so a server
running as another user can read them; a permission error is reported as one, naming the path.
Versions loaded from an object store are cached in a folder only this user may write, verified
before they are kept and at every load.
"""

import contextlib
import datetime as _dt
import errno
import functools
import json
import os
import re
import reprlib
import shutil
import socket
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec

from tauforge.kernels.private_dirs import private_directory
from tauforge.kernels.serialization import finite_json, replaced_whole, sha256_file, sha256_json, sha256_text

from .constants import DEFAULT_STORE

# A version's files: what `tauforge.components.publish` assembles and every reader finds there.
FOREST_DIR = "forest"
EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.html"
REFERENCE_FILE = "reference.parquet"
CARD_FILE = "model_card.json"
MAX_CARD_BYTES = 16 * 2**20  # cards are tens of KB: far above any real one
ALIASES_FILE = "aliases.json"
CARD_FORMAT = "tauforge.model_card"
_STAGING = ".staging"
_CLAIMS = ".claims"
# Published versions are readable by every user (a server may run as another user than the
# pipeline that published), writable by their owner only.
DIR_MODE = 0o755
FILE_MODE = 0o644
# Object stores whose conditional writes (If-None-Match on create, If-Match on replace) tauforge uses.
_CONDITIONAL_PROTOCOLS = ("s3", "s3a")
_ATTEMPTS = 1000


class StoreError(ValueError):
    """A store operation that cannot be done as asked (unknown model, version or alias, bad card,
    a file the user may not read or write)."""


class DamagedStoreError(StoreError):
    """What the store holds fails its checks (a card or file modified, missing or extra files, an
    alias at a version that is gone): the store's fault, not the request's. The CLI exits 1 on it,
    as on any failure, where a request it cannot do exits 2."""

    exit_code = 1


def card_digest(card: dict) -> str:
    """The card's own checksum (of everything in it but this digest)."""
    return sha256_json(card, "card_sha256")


# A new model's name is a folder of the store and part of an InferenceService's name and host:
# ASCII, and no longer than a Kubernetes DNS label. Names published before that rule are still
# read: a name only has to be one folder (no separator, not hidden).
MAX_MODEL_NAME = 63


def _is_version(name) -> bool:
    """A version folder's name as the store writes it: 1, 2, ... (not 01, not ², which isdigit takes)."""
    return isinstance(name, str) and re.fullmatch(r"[1-9][0-9]*", name) is not None


def _is_alias(name) -> bool:
    """An alias: champion, challenger, canary-2 (never a number, -1 or 'latest', which mean versions)."""
    return isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_.-]*", name) is not None and name != "latest"


def _is_model_name(name: str, new: bool = False) -> bool:
    if not (isinstance(name, str) and name and not name.startswith(".")
            and all(ch.isalnum() or ch in "-_." for ch in name)):
        return False
    return not new or (len(name) <= MAX_MODEL_NAME and name.isascii())


def check_model_name(name: str, new: bool = False) -> str:
    """`name` if it can name a model in the store (`new`: a model about to be published or
    deployed); else a StoreError saying what a name may hold."""
    if not _is_model_name(name, new):
        rule = f"1 to {MAX_MODEL_NAME} ASCII letters, digits," if new else "letters, digits,"
        raise StoreError(f"model name {reprlib.repr(name)} must be {rule} '-', '_' or '.' (not leading)")
    return name


def check_store_location(uri: str) -> None:
    """In a Kubernetes pod, refuse a store that is a folder of the pod itself: whatever is published
    there vanishes with the pod. A local path must lie on a mounted volume (an ancestor folder,
    other than /, that is a mount point); object stores (s3://, gs://) are fine anywhere."""
    if "://" in uri and not uri.startswith("file://"):
        return
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):  # not in a pod: a local store is what is meant
        return
    path = os.path.abspath(uri.removeprefix("file://"))
    folder = path
    while folder != os.path.dirname(folder):  # up to /
        if os.path.ismount(folder):
            return
        folder = os.path.dirname(folder)
    raise StoreError(f"store {uri!r} is a folder inside this pod and would vanish with it: publish to s3:// or "
                     "gs://, or to a path on a volume mounted in the pipeline's pods")

# ---------------------------------------------------------------------- errors a user can act on
@contextlib.contextmanager
def _reported(doing: str) -> Iterator[None]:
    """Report a PermissionError as one, naming the path: never as a file that is missing; and a
    full disk (or quota) as what the store was doing, and where."""
    try:
        yield
    except PermissionError as exc:
        # A rename names its source and its target: both (a rename into a read-only model folder
        # named only the staging folder it came from, which was fine).
        path = f"{exc.filename} -> {exc.filename2} " if exc.filename2 else f"{exc.filename} " if exc.filename else ""
        raise StoreError(f"permission denied on {path}while {doing}: tauforge runs as uid {os.geteuid()}, "
                         f"which may not access it (tauforge publishes folders 0755 and files 0644; check the "
                         f"owner, mode and attributes (lsattr) of the folders above it)") from exc
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A copy's full disk is its target's (shutil names the source first): say the target.
        raise OSError(exc.errno, f"{exc.strerror} while {doing}", exc.filename2 or exc.filename) from exc


def _store_operation(doing: str) -> Callable:
    """Decorate a ModelStore method so a permission error inside it is reported as one, with
    what it was doing ("reading", "publishing to", ...) to which store; and an object store it
    cannot reach or sign in to (botocore's errors: no endpoint, no credentials) as a StoreError."""
    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self: "ModelStore", *args, **kwargs):
            with _reported(f"{doing} the model store {self.uri}"):
                try:
                    return method(self, *args, **kwargs)
                except Exception as exc:
                    if not _botocore_error(exc):
                        raise
                    raise StoreError(f"cannot use the model store {self.uri} ({doing}): {exc} {_S3_HINT}") from exc
        return wrapper
    return decorate


_S3_HINT = ("(an S3-compatible store's endpoint is set with $AWS_ENDPOINT_URL; credentials are found as botocore "
            "finds them)")


def check_store(uri: str, here: bool = True, model: str | None = None) -> None:
    """Refuse, before a run starts, a store its publish step could not use (a StoreError whose
    message starts with the URI): a protocol fsspec does not know or lacks the package for,
    opened as `ModelStore` opens it; and with `here` (the store is used from this machine, not
    from a cluster's pods), a local store that is a file, lies under one or is not writable (nor
    `model`'s folder in it, where publish writes), and an object store whose bucket does not
    answer (no credentials, no endpoint, no such bucket)."""
    store = ModelStore(uri)
    if not here:
        return
    if store.local:
        with _reported(f"checking the model store {uri}"):
            folder = store._model_dir(model) if model else store.root
            while not _local_exists(folder):  # the store and its model folders are created at publish
                folder = os.path.dirname(folder)
        if not os.path.isdir(folder):
            where = "" if folder == store.root else f": {folder} is a file"
            raise StoreError(f"{uri} is not a folder{where}; give a folder (it is created if missing)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StoreError(f"{uri} cannot be published to: {folder} is not writable by uid {os.geteuid()}")
        return
    bucket = store.root.split("/")[0]
    if not bucket:
        return
    try:
        with _reported(f"checking the model store {uri}"):
            store.fs.info(bucket)  # one request (S3: HeadBucket); s3fs's exists() says False for no credentials
    except FileNotFoundError:
        raise StoreError(f"{uri} cannot be used: its bucket {bucket!r} does not exist") from None
    except Exception as exc:
        if not _botocore_error(exc):
            raise
        raise StoreError(f"{uri} cannot be reached: {exc} {_S3_HINT}") from None


def _botocore_error(exc: Exception) -> bool:
    """Whether botocore raised `exc` (s3fs passes its connection and credential errors on as they
    are). Without botocore loaded, nothing it raised can be here: no import needed."""
    botocore = sys.modules.get("botocore.exceptions")
    return botocore is not None and isinstance(exc, botocore.BotoCoreError)


def _local_exists(path: str) -> bool:
    """Whether `path` exists; a PermissionError propagates (os.path.exists would say False, and a
    folder a server may not read would look like a store without the model)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


@dataclass
class ModelVersion:
    model: str
    version: int
    card: dict
    path: str  # where the version's files are (a local path once loaded)

    def load_forest(self, device: str | None = None):
        """The version's `tauforge.kernels.CausalForest`, its checksums verified again."""
        from tauforge.kernels import CausalForest

        return CausalForest.load(os.path.join(self.path, FOREST_DIR), device=device)

    @property
    def reference_path(self) -> str:
        """The reference profile monitoring compares live traffic with (`components.events`)."""
        return os.path.join(self.path, REFERENCE_FILE)


class ModelStore:
    """Versions and aliases of causal models under one fsspec URI (default: ./tauforge-store).

    An s3:// store reaches the endpoint botocore is configured with: AWS's by default, or
    `$AWS_ENDPOINT_URL` (MinIO and other S3-compatible stores); credentials as botocore finds them."""

    def __init__(self, uri: str = DEFAULT_STORE):
        self.uri = uri
        protocol = fsspec.utils.get_protocol(uri)
        self.local = protocol in ("file", "local")
        # Other writers publish while this process runs: list what is there now, not what a
        # listing cache saw (s3fs caches listings per process by default).
        options = {} if self.local else {"use_listings_cache": False}
        try:
            self.fs, root = fsspec.core.url_to_fs(uri, **options)
        except (ValueError, ImportError) as exc:  # fsspec: "Protocol not known: foo", "Install s3fs to access S3"
            raise StoreError(f"{uri} cannot be opened: {exc}; give a local folder or an fsspec URI such as "
                             "s3://bucket/path") from None
        self.conditional = protocol in _CONDITIONAL_PROTOCOLS
        self.root = os.path.abspath(root) if self.local else root.rstrip("/")

    # ------------------------------------------------------------------ storage primitives
    def _model_dir(self, model: str) -> str:
        return f"{self.root}/{check_model_name(model)}"

    def _exists(self, path: str) -> bool:
        return _local_exists(path) if self.local else self.fs.exists(path)

    def _entries(self, path: str) -> list[tuple[str, bool]]:
        """(name, is a folder) of what is under `path`; none when nothing is (an object store
        has no folders until something is written under them)."""
        if self.local:
            try:
                with os.scandir(path) as it:
                    return [(e.name, e.is_dir()) for e in it]
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            listed = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return [(os.path.basename(e["name"].rstrip("/")), e["type"] == "directory") for e in listed]

    def _create(self, path: str, data: bytes) -> bool:
        """Write `path` only if nothing is there, as one atomic step on the store's side; False
        when something is (another writer created it first)."""
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            if _lost_race(exc):
                return False
            raise
        return True

    def _replace(self, path: str, data: bytes, etag: str) -> bool:
        """Overwrite `path` only if it is still the version read (its ETag); False when another
        writer changed it since. Conditional on S3; a plain overwrite on other object stores."""
        try:
            if self.conditional:
                self.fs.pipe_file(path, data, IfMatch=etag)
            else:
                self.fs.pipe_file(path, data)
        except OSError as exc:
            if _lost_race(exc):
                return False
            raise
        return True

    # ------------------------------------------------------------------ listing and cards
    @_store_operation("reading")
    def models(self) -> list[str]:
        names = [name for name, is_dir in self._entries(self.root) if is_dir]
        return sorted(n for n in names if _is_model_name(n) and self.versions(n))  # skips lost+found and the like

    @_store_operation("reading")
    def versions(self, model: str) -> list[int]:
        """Published versions (those whose card exists), ascending."""
        d = self._model_dir(model)
        return sorted(int(name) for name, is_dir in self._entries(d)
                      if is_dir and _is_version(name) and self._exists(f"{d}/{name}/{CARD_FILE}"))

    @_store_operation("reading")
    def card(self, model: str, version: int) -> dict:
        """The card of a version, its own checksum verified."""
        path = f"{self._model_dir(model)}/{int(version)}/{CARD_FILE}"
        if not self._exists(path):
            raise StoreError(f"model {model!r} has no version {version} in {self.uri} "
                             f"(versions: {self.versions(model) or 'none'})")
        if self.local:
            _check_regular(path)
        card = _parse_card(self.fs.cat_file(path, start=0, end=MAX_CARD_BYTES + 1), f"{path} in {self.uri}")
        if card.get("card_sha256") != card_digest(card):
            raise DamagedStoreError(f"the card of {model} version {version} fails its checksum: it was modified")
        if (card.get("model"), card.get("version")) != (model, int(version)):
            raise DamagedStoreError(f"{path} in {self.uri} is the card of {card.get('model')} version "
                                    f"{card.get('version')}, not of {model} version {version}: a version folder was "
                                    "copied or moved by hand")
        return card

    def resolve(self, model: str, ref: str | int | None = None) -> int:
        """A version number from a number, 'latest' (None) or an alias ('champion')."""
        versions = self.versions(model)
        if not versions:
            raise StoreError(f"model {model!r} has no published version in {self.uri}")
        if ref is None or ref == "latest":
            return versions[-1]
        if isinstance(ref, int) or _is_version(ref):
            if int(ref) not in versions:
                raise StoreError(f"model {model!r} has no version {ref} (versions: {versions})")
            return int(ref)
        aliases = self.aliases(model)
        if ref not in aliases and not _is_alias(ref):  # 01, ², -1 (an alias made before the rule still resolves)
            raise StoreError(f"{ref!r} is neither a version number (1, 2, ...) nor an alias such as 'champion'")
        if ref not in aliases:
            raise StoreError(f"model {model!r} has no alias {ref!r} (aliases: {sorted(aliases) or 'none'})")
        version = int(aliases[ref]["version"])
        if version not in versions:
            raise DamagedStoreError(f"alias {ref!r} of model {model!r} points at version {version}, which is not "
                                    f"published (versions: {versions}): promote another version")
        return version

    # ------------------------------------------------------------------ load
    @_store_operation("reading")
    def load(self, model: str, ref: str | int | None = None, cache_dir: str | None = None) -> ModelVersion:
        """Fetch and verify a version: every file's sha256 must match its card."""
        version = self.resolve(model, ref)
        card = self.card(model, version)
        src = f"{self._model_dir(model)}/{version}"
        if self.local:
            verify_files(src, card)
            return ModelVersion(model, version, card, src)
        # One cached copy per store (its endpoint too: two stores may share a bucket's name),
        # model and version (versions are immutable), in a folder only this uid can write.
        where = f"{self.uri} {os.environ.get('AWS_ENDPOINT_URL', '')}"
        root = cache_dir or os.path.join(_cache_root(), sha256_text(where)[:16])
        path = os.path.join(root, model, str(version))
        if os.path.exists(os.path.join(path, CARD_FILE)):
            try:
                verify_files(path, card)
                return ModelVersion(model, version, card, path)
            except StoreError:  # a copy of an earlier store under the same name, or damaged since
                shutil.rmtree(path, ignore_errors=True)
        self._download(src, path, card, f"{model} version {version}")
        return ModelVersion(model, version, card, path)

    def _download(self, src: str, path: str, card: dict, what: str) -> None:
        """Copy a version folder from the object store to `path`, verified against `card`
        before one rename at the end: a bad download never becomes the cached copy."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staging = f"{path}.{uuid.uuid4().hex}"
        try:
            self.fs.get(f"{src}/", staging, recursive=True)
            try:
                verify_files(staging, card)
            except StoreError as exc:
                raise DamagedStoreError(f"{what} in {self.uri} fails verification: {exc}") from None
            os.rename(staging, path)
        except OSError:
            if not os.path.exists(os.path.join(path, CARD_FILE)):
                raise
            verify_files(path, card)  # another process cached the same version first: theirs is checked too
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------ publish
    @_store_operation("publishing to")
    def publish(self, model: str, source_dir: str, card: dict) -> int:
        """Publish the files of `source_dir` with `card` as the next version of `model`; return it.

        `card` holds the causal metadata; the store adds model, version, creation time, parent
        version and the sha256 of every file. Nothing is visible until everything is written."""
        check_model_name(model, new=True)
        if not (_local_exists(source_dir) and os.path.isdir(source_dir)):  # a folder it may not read raises
            raise StoreError(f"nothing to publish: {source_dir} is not a directory")
        if os.path.exists(os.path.join(source_dir, CARD_FILE)):
            raise StoreError(f"{source_dir} already holds a {CARD_FILE}; the store writes the card")
        files = {rel: sha256_file(os.path.join(source_dir, rel)) for rel in _walk(source_dir)}
        if self.local:
            return self._publish_local(model, source_dir, card, files)
        return self._publish_remote(model, source_dir, card, files)

    def _full_card(self, card: dict, model: str, version: int, files: dict) -> dict:
        """The card as published: the caller's causal metadata and the store's own fields."""
        earlier = [v for v in self.versions(model) if v < version]
        parent = earlier[-1] if earlier else None
        full = finite_json(dict(card, format=CARD_FORMAT, format_version=1, model=model, version=version,
                                created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                                parent_version=parent, files=files))
        if "lineage" in card:
            full["lineage"] = {**card["lineage"], "parent_version": parent}
        full["card_sha256"] = card_digest(full)
        return full

    def _next_number(self, model: str) -> int:
        """One above every number published or taken (a claim, a folder of a publisher in flight
        or crashed): a number is never reused, not even after its folder was removed by hand (an
        alias naming it would follow the new model)."""
        taken = [int(name) for name, _ in self._entries(self._model_dir(model)) if _is_version(name)]
        taken += [int(name) for name, _ in self._entries(f"{self._model_dir(model)}/{_CLAIMS}") if _is_version(name)]
        return max(taken, default=0) + 1

    def _publish_local(self, model: str, source_dir: str, card: dict, files: dict) -> int:
        d = self._model_dir(model)
        _makedirs_readable(d)
        os.makedirs(f"{d}/{_STAGING}", exist_ok=True)
        _remove_stale(f"{d}/{_STAGING}")
        os.makedirs(f"{d}/{_CLAIMS}", exist_ok=True)
        # The version is staged inside a fresh folder of its own: copytree gives the copy the
        # source's time, and a source older than a day made it look stale to another publisher's
        # sweep (`_remove_stale`) the moment it was copied (a review lost a version's files so).
        holder = f"{d}/{_STAGING}/{uuid.uuid4().hex}"
        os.mkdir(holder)
        staging = f"{holder}/version"
        try:
            _copy_files(source_dir, staging, files)
            _make_readable(staging)  # copies keep the source's modes: a temporary folder's 0700
            for _ in range(_ATTEMPTS):
                version = self._next_number(model)
                full = self._full_card(card, model, version, files)
                _write_card(staging, full)
                verify_files(staging, full)
                _sync_tree(staging)  # on disk before the rename publishes it: a power loss cannot publish holes
                # The number claimed just before the rename publishes it: nothing can fail once the
                # version is visible (a full disk once failed the claim of a published version), and
                # a publisher killed earlier claimed nothing. The claim keeps the number taken if the
                # folder goes.
                try:
                    open(f"{d}/{_CLAIMS}/{version}", "x").close()
                except FileExistsError:  # another writer's
                    continue
                try:
                    os.rename(staging, f"{d}/{version}")  # atomic
                except OSError:
                    if os.path.exists(f"{d}/{version}"):  # a folder without a claim (an older store's)
                        continue
                    raise
                # The rename itself, to disk; the version is published whatever this says.
                with contextlib.suppress(OSError):
                    _sync_path(d)
                return version
            raise StoreError(f"could not allocate a version of {model!r} in {self.uri} after {_ATTEMPTS} attempts")
        finally:
            shutil.rmtree(holder, ignore_errors=True)

    def _publish_remote(self, model: str, source_dir: str, card: dict, files: dict) -> int:
        d = self._model_dir(model)
        claim = json.dumps({"writer": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                            "claimed": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}).encode()
        for _ in range(_ATTEMPTS):
            version = self._next_number(model)
            if self._create(f"{d}/{_CLAIMS}/{version}", claim):  # the number is ours alone
                self._upload(source_dir, f"{d}/{version}", self._full_card(card, model, version, files))
                return version
        raise StoreError(f"could not claim a version of {model!r} in {self.uri} after {_ATTEMPTS} attempts")

    def _upload(self, source_dir: str, final: str, card: dict) -> None:
        """Upload a claimed version: its files, checked against the card, then the card."""
        staging = tempfile.mkdtemp(prefix="tauforge-publish-")
        try:
            _copy_files(source_dir, staging, card["files"])
            _write_card(staging, card)
            verify_files(staging, card)
            for rel in card["files"]:
                self.fs.put_file(os.path.join(staging, rel), f"{final}/{rel}")
            uploaded = {os.path.relpath(p, final).replace(os.sep, "/") for p in self.fs.find(final)}
            if uploaded != set(card["files"]):
                raise StoreError(f"{final} in {self.uri} holds {sorted(uploaded)} after the upload, "
                                 f"not the card's files {sorted(card['files'])}")
            # Last, and only if absent: the version becomes visible.
            created = self._create(f"{final}/{CARD_FILE}", json.dumps(card, indent=2, sort_keys=True).encode())
        except BaseException as exc:
            # The card may have landed with its answer lost (a reset connection): the version is
            # then complete and readers may have seen it, so it stays.
            if not self._card_is(f"{final}/{CARD_FILE}", card):
                with contextlib.suppress(OSError):
                    self.fs.rm(final, recursive=True)  # nothing half written stays; the claim keeps the number used
                raise
            if not isinstance(exc, Exception):  # interrupted once published: the version stays, the interrupt goes on
                raise
            created = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not created and self._card_is(f"{final}/{CARD_FILE}", card):
            return  # our own card: a retried PUT whose first attempt landed, its answer lost
        if not created:  # left as it is: whoever wrote that card owns those files now
            raise StoreError(f"{final} already has a {CARD_FILE} although this publisher claimed the number: "
                             f"something that does not claim versions writes to {self.uri}")

    def _card_is(self, path: str, card: dict) -> bool:
        """Whether the card at `path` is `card` (its checksum covers the creation time and files)."""
        try:
            return _parse_card(self.fs.cat_file(path, start=0, end=MAX_CARD_BYTES + 1), path).get(
                "card_sha256") == card["card_sha256"]
        except (OSError, StoreError):
            return False

    # ------------------------------------------------------------------ aliases
    @_store_operation("reading")
    def aliases(self, model: str) -> dict[str, dict]:
        return self._read_aliases(model)[0]

    def _read_aliases(self, model: str) -> tuple[dict[str, dict], str | None]:
        """The aliases and the ETag of the file they were read from (None when there is none
        yet, or on a local filesystem, where a lock serializes writers instead)."""
        path = f"{self._model_dir(model)}/{ALIASES_FILE}"
        where = f"{path} in {self.uri}"
        if self.local:
            if not _local_exists(path):
                return {}, None
            try:
                data = self.fs.cat_file(path)
            except IsADirectoryError:  # a walkthrough: "failed: Is a directory", and no model was listed
                raise DamagedStoreError(f"{where} is damaged (a folder, not a file): restore it, or remove it and "
                                        "promote a version again") from None
            return _parse_aliases(data, where), None
        try:
            # The ETag first: if the file changes before it is read, the conditional write that
            # follows fails and the update is retried, never applied to a file it did not read.
            etag = self.fs.info(path).get("ETag")
        except FileNotFoundError:
            return {}, None
        return _parse_aliases(self.fs.cat_file(path), where), etag

    @_store_operation("changing an alias in")
    def set_alias(self, model: str, alias: str, version: int) -> dict:
        """Point `alias` at `version`, keeping the previous target for `rollback`."""
        # A new alias follows the rule; one made before it (Champion, 2024-q1) can still be moved.
        if not _is_alias(alias) and not (_is_model_name(alias) and alias in self.aliases(model)):
            raise StoreError(f"alias {alias!r} must be a name such as 'champion': a lowercase letter, then lowercase "
                             "letters, digits, '-', '_' or '.'; not 'latest'")
        version = self.load(model, int(version)).version  # only a version that verifies: serving would refuse it

        def point(aliases: dict) -> dict:
            entry = aliases.get(alias, {"version": None, "history": []})
            # A version no longer published is no rollback target (a walkthrough: promoting over an
            # alias left at a removed version 7 recorded it, and the rollback then failed on it).
            before = entry["version"]
            if before is not None and before != version and before in self.versions(model):
                entry["history"].append(before)
            entry["version"] = version
            aliases[alias] = entry
            return entry

        return self._update_aliases(model, point)

    @_store_operation("changing an alias in")
    def rollback(self, model: str, alias: str = "champion") -> dict:
        """Point `alias` back at the version it named before the last change, if that version
        still verifies (as `set_alias` requires: serving would refuse it)."""
        self.resolve(model)  # a model that is not there: say so, and create nothing (not even its lock)

        def back(aliases: dict) -> dict:
            entry = aliases.get(alias)
            if not entry:  # a typo (--alias champoin) is named as one, not as a history too short
                raise StoreError(f"model {model!r} has no alias {alias!r} to roll back (aliases: "
                                 f"{sorted(aliases) or 'none'})")
            if not entry["history"]:
                raise StoreError(f"alias {alias!r} of model {model!r} has no earlier version to roll back to")
            try:
                self.load(model, int(entry["history"][-1]))
            except StoreError as exc:
                raise DamagedStoreError(f"alias {alias!r} of model {model!r} cannot roll back to version "
                                        f"{entry['history'][-1]}: {exc}; promote a version that verifies "
                                        "instead") from None
            entry["version"] = entry["history"].pop()
            return entry

        return self._update_aliases(model, back)

    def _update_aliases(self, model: str, change: Callable[[dict], dict]) -> dict:
        """Read the aliases, `change` them, write them back, without losing a concurrent update."""
        if self.local:
            with self._lock(model):
                aliases, _ = self._read_aliases(model)
                entry = change(aliases)
                self._write_local_aliases(model, aliases)
            return entry
        path = f"{self._model_dir(model)}/{ALIASES_FILE}"
        for _ in range(_ATTEMPTS):
            aliases, etag = self._read_aliases(model)
            entry = change(aliases)
            data = json.dumps(aliases, indent=2, sort_keys=True).encode()
            if self._create(path, data) if etag is None else self._replace(path, data, etag):
                return entry
        raise StoreError(f"could not update {path} in {self.uri} after {_ATTEMPTS} attempts: "
                         f"other writers kept changing it")

    def _write_local_aliases(self, model: str, aliases: dict) -> None:
        with replaced_whole(f"{self._model_dir(model)}/{ALIASES_FILE}", sync=True) as f:
            json.dump(aliases, f, indent=2, sort_keys=True)
            os.fchmod(f.fileno(), FILE_MODE)  # whatever the umask: servers may run as another user
        _sync_path(self._model_dir(model))

    @contextlib.contextmanager
    def _lock(self, model: str) -> Iterator[None]:
        import fcntl

        os.makedirs(self._model_dir(model), exist_ok=True)
        with open(os.path.join(self._model_dir(model), ".lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


# A staging folder untouched this long belongs to a publisher that was killed (a publish copies and
# verifies for minutes at most): the next publisher removes it.
STALE_STAGING_S = 24 * 3600


def _remove_stale(staging_root: str) -> None:
    for entry in os.scandir(staging_root):
        with contextlib.suppress(OSError):  # another publisher may remove it first
            if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_STAGING_S:
                shutil.rmtree(entry.path)


def _cache_root() -> str:
    """Where versions downloaded from an object store are kept: a folder of this uid's only, for
    the files are trusted once verified there (`kernels.private_dirs`)."""
    root = private_directory("tauforge-cache-")
    if root is None:
        raise StoreError("no writable temporary folder to download model versions to: set TMPDIR")
    return root


def _parse_aliases(data: bytes, where: str) -> dict[str, dict]:
    """An aliases file's {alias: {"version": N, "history": [...]}}, or a StoreError naming it."""
    try:
        aliases = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        aliases, problem = None, str(exc)
    else:
        problem = 'not {"alias": {"version": N, "history": [...]}}'

    def entry(e) -> bool:
        return (isinstance(e, dict) and type(e.get("version")) is int and isinstance(e.get("history"), list)
                and all(type(v) is int for v in e["history"]))

    if not (isinstance(aliases, dict) and all(entry(e) for e in aliases.values())):
        raise DamagedStoreError(f"{where} is damaged ({problem}): restore it, or remove it and promote a version again")
    return aliases


def _lost_race(exc: OSError) -> bool:
    """Whether an object store refused a conditional write because of another writer: 412
    Precondition Failed (the object exists, or changed since read) or 409 Conditional Request
    Conflict (a concurrent conditional write to the key, which S3 asks to retry). s3fs reports
    both as an OSError caused by botocore's ClientError; its response says which."""
    response = getattr(exc.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _sync_path(path: str) -> None:
    """fsync a file or a folder (a folder's entries: a rename in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(folder: str) -> None:
    """fsync every file of `folder`, then its folders, deepest first."""
    for root, _dirs, names in os.walk(folder, topdown=False):
        for name in names:
            _sync_path(os.path.join(root, name))
        _sync_path(root)


def _write_card(folder: str, card: dict) -> None:
    path = os.path.join(folder, CARD_FILE)
    with open(path, "w") as f:
        json.dump(card, f, indent=2, sort_keys=True)
    os.chmod(path, FILE_MODE)


def _makedirs_readable(path: str) -> None:
    """`os.makedirs`, the folders it creates 0755 whatever the umask (the store's root and a
    model's folder lead to every version: a server running as another user must pass them).
    Folders that exist keep the mode their owner gave them."""
    missing = []
    while path and not _local_exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another publisher made it first
            os.mkdir(folder)
            os.chmod(folder, DIR_MODE)


def _make_readable(root: str) -> None:
    """Folders 0755 and files 0644 under `root` (and `root` itself), whatever they were."""
    os.chmod(root, DIR_MODE)
    for dirpath, dirs, files in os.walk(root, onerror=_raise):
        for name in dirs:
            os.chmod(os.path.join(dirpath, name), DIR_MODE)
        for name in files:
            os.chmod(os.path.join(dirpath, name), FILE_MODE)


def read_card(path: str) -> dict:
    """The card of the version folder `path` (as KServe's storage initializer leaves it, e.g.
    /mnt/models), not yet verified: `verify_files` does that."""
    card_path = os.path.join(path, CARD_FILE)
    with _reported(f"reading the version folder {path}"):
        if not _local_exists(card_path):
            raise StoreError(f"{path} holds no {CARD_FILE}: not a published tauforge version")
        _check_regular(card_path)
        with open(card_path, "rb") as f:
            return _parse_card(f.read(MAX_CARD_BYTES + 1), card_path)


def _check_regular(path: str) -> None:
    """A FIFO or a device (a link to /dev/zero) where a store's file belongs: reading it blocks or
    never ends, and a predictor would hang at load without saying why (a serving review)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise DamagedStoreError(f"{path} is not a regular file")


def _parse_card(data: bytes, where: str) -> dict:
    """A card's JSON, or a StoreError naming the file: a damaged card is the version's fault,
    not the reader's. `data` is read up to one byte past MAX_CARD_BYTES."""
    if len(data) > MAX_CARD_BYTES:  # read whole, a crafted card would take a predictor's memory first
        raise DamagedStoreError(f"{where} is over {MAX_CARD_BYTES:,} bytes, far more than any model card: the "
                                "version is damaged")
    try:
        card = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedStoreError(f"{where} is not a readable model card ({exc}): the version is damaged") from None
    if not isinstance(card, dict):
        raise DamagedStoreError(f"{where} is not a readable model card (a JSON {type(card).__name__}): the "
                                "version is damaged")
    # What readers build paths and labels from (the event log's folders, metrics): checked here,
    # not trusted because the card's own digest matches (anyone who can edit it can recompute that).
    version, files = card.get("version"), card.get("files")
    if not _is_model_name(card.get("model")) or not (isinstance(version, int) and version > 0):
        raise DamagedStoreError(f"{where} names model {reprlib.repr(card.get('model'))} version "
                                f"{reprlib.repr(version)}: not a model name and a version number; the version is "
                                "damaged")
    if not isinstance(files, dict) or not all(map(_is_inside, files)):
        bad = next((f for f in files if not _is_inside(f)), None) if isinstance(files, dict) else files
        raise DamagedStoreError(f"{where} lists the file {reprlib.repr(bad)}, which is not a path inside the "
                                "version folder; the version is damaged")
    return card


def _is_inside(rel) -> bool:
    """A relative, '/'-separated path without '.' or '..' parts: it cannot leave its folder."""
    return (isinstance(rel, str) and bool(rel) and not rel.startswith("/") and "\\" not in rel
            and all(part not in ("", ".", "..") for part in rel.split("/")))


def verify_files(path: str, card: dict) -> None:
    """Every file the card lists exists under `path` with its sha256; no other file is there."""
    if card.get("card_sha256") != card_digest(card):
        raise DamagedStoreError(f"the card in {path} fails its checksum: it was modified")
    with _reported(f"verifying the version folder {path}"):
        try:
            present = set(_walk(path)) - {CARD_FILE}
        except StoreError as exc:  # a link to a folder planted in the version
            raise DamagedStoreError(str(exc)) from None
        listed = set(card.get("files", {}))
        if present - listed:
            raise DamagedStoreError(f"{path} holds files its card does not list: {', '.join(sorted(present - listed))}")
        for rel, digest in card["files"].items():
            full = os.path.join(path, rel)
            if not _local_exists(full):
                raise DamagedStoreError(f"{full} is missing")
            _check_regular(full)
            if sha256_file(full) != digest:
                raise DamagedStoreError(f"checksum mismatch for {full}: the file was modified or corrupted")


def _raise(exc: OSError) -> None:
    raise exc


def _walk(root: str) -> list[str]:
    """Every file under `root`, relative, '/'-separated. A folder it may not read raises (os.walk
    would skip it silently, and its files would look missing), and so does a link to a folder
    (os.walk does not enter it, and what it holds would go unchecked)."""
    out = []
    for dirpath, dirs, files in os.walk(root, onerror=_raise):
        linked = [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]
        if linked:
            raise StoreError(f"{os.path.join(dirpath, linked[0])} is a link to a folder, which a model version "
                             "cannot hold: copy the files in instead")
        for name in files:
            out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)


def _copy_files(source_dir: str, dest: str, files) -> None:
    """Copy the listed files (relative paths) of `source_dir` into a new folder `dest`, one by
    one, so that a full disk raises its own OSError (copytree gathers errors into one
    shutil.Error, without the errno that names a full disk)."""
    os.makedirs(dest, exist_ok=True)
    for rel in files:
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(source_dir, rel), target)


def environment() -> dict[str, Any]:
    """Code and package versions for the card."""
    import platform
    import subprocess
    from importlib import metadata

    packages = {}
    for name in ("tauforge", "torch", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "numba", "kfp", "econml"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # components/ lies in the project's root
    # An image has no .git; the Dockerfiles bake the commit they were built from into this variable.
    commit, dirty = os.environ.get("TAUFORGE_GIT_COMMIT") or None, None
    if commit is None:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", project, *args], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        try:
            # Only this project's own repository: an install inside another one would name its commit.
            if os.path.realpath(git("rev-parse", "--show-toplevel") or "/nonexistent") == os.path.realpath(project):
                commit = git("rev-parse", "HEAD") or None
                dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"python": platform.python_version(), "platform": platform.platform(), "git_commit": commit,
            "git_dirty": dirty, "packages": packages}


ASSUMPTIONS = {
    "observational": ["unconfoundedness: no unmeasured confounder of treatment and outcome given the covariates "
                      "and controls", "overlap: every unit could have received either treatment",
                      "SUTVA: no interference between units and one version of the treatment"],
    "randomized": ["randomization: treatment assigned independently of potential outcomes with the stated "
                   "propensity", "SUTVA: no interference between units and one version of the treatment"],
}


# A continuous treatment's overlap (a review: its card said "either treatment"), as evaluate checks it.
CONTINUOUS_OVERLAP = ("overlap: the treatment varies given the covariates and controls (Var(T | X, W) > 0 "
                      "for every unit)")


def assumptions(assignment: str, graph: dict, binary: bool = True) -> list[str]:
    """The identification assumptions of a model: its assignment's, with a declared graph's in place of
    the bare unconfoundedness sentence (the graph says which variables suffice, and that was checked);
    for a continuous treatment, its overlap."""
    from .graph import assumption

    stated = [s if binary or not s.startswith("overlap") else CONTINUOUS_OVERLAP for s in ASSUMPTIONS[assignment]]
    by_graph = assumption(graph)
    if by_graph is None:
        return stated
    if assignment == "observational":
        return [by_graph if s.startswith("unconfoundedness") else s for s in stated]
    return [*stated, by_graph]


def build_card(*, spec: dict, data: dict, estimate: dict, evaluation: dict, estimator: dict, run: dict,
               graph: dict | None = None) -> dict:
    """The causal part of a model card; the store adds version, checksums and parent version.
    `graph` is the card's graph section (`graph.card_section`; None: no graph was given). The
    lineage says what the version was made from: graph, data, code and run."""
    from .graph import card_section

    binary = spec["treatment_type"] == "binary"
    graph = graph or card_section(None)
    env = environment()
    return {
        "estimand": {"cate": f"E[{spec['outcome']}(1) - {spec['outcome']}(0) | X]" if binary else
                     f"d E[{spec['outcome']} | do({spec['treatment']} = t), X] / dt (locally linear)",
                     "ate": estimate["estimand"], "ate_method": estimate["method"]},
        "assumptions": assumptions(spec["assignment"], graph, binary) + (
            [f"independent groups: rows of different {spec['group']!r} are independent; rows of one may depend on "
             "each other (its standard errors count groups)"] if spec.get("group") else []),
        "graph": graph,
        "lineage": {"graph_sha256": graph.get("sha256"), "data_fingerprint": data.get("fingerprint"),
                    "git_commit": env["git_commit"], "run_id": run.get("run_id")},
        "spec": spec, "data": data, "effect": {
            k: estimate[k] for k in ("ate", "ate_stderr", "ate_lower", "ate_upper", "ate_interval", "alpha",
                                     "variance_weighted_effect", "variance_weighted_stderr", "n_groups", "bootstrap")
            if k in estimate},
        "evaluation": {k: evaluation[k] for k in ("verdict", "nuisance", "refuters", "balance", "sensitivity")}
        | {"heterogeneity": {k: v for k, v in evaluation["heterogeneity"].items()}}
        | {key: {k: v for k, v in evaluation[key].items() if k != "histogram"}
           for key in ("overlap", "treatment_variance") if key in evaluation}
        | ({"uplift": {k: v for k, v in evaluation["uplift"].items() if k != "curve"}}
           if "uplift" in evaluation else {})
        | ({"graph_checks": evaluation["graph_checks"]} if "graph_checks" in evaluation else {})
        | ({"gate_config": evaluation["gate_config"]} if "gate_config" in evaluation else {}),  # what "passed" meant
        "estimator": {**estimator, "n_trees": estimate["n_trees"], "device": estimate["device"]},
        "environment": env, "run": run,
    }


# The gate's checks whose values a diff shows: (name, path in the card's evaluation).
_GATE_CHECKS = (("placebo p-value", ("refuters", "placebo", "p_value")),
                ("random common cause p-value", ("refuters", "random_common_cause", "p_value")),
                ("data subset p-value", ("refuters", "data_subset", "p_value")),
                ("robustness value", ("sensitivity", "robustness_value")),
                ("share outside overlap", ("overlap", "share_outside")),
                ("share under the treatment variance bound", ("treatment_variance", "share_outside")),
                ("graph checks' smallest adjusted p-value", ("graph_checks", "min_adjusted_p_value")))


def card_part(card: dict, *keys: str) -> dict:
    """The card's part at `keys` (`card_part(card, "estimator", "nuisance")`): a part a card lacks,
    or holds as null or another type (one published through the Python API), reads as empty."""
    node = card
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def card_covariates(card: dict) -> list[str]:
    """The covariates the card's spec names, in the model's column order: what serving scores and
    monitoring compares. A version published through the Python API without a spec is refused,
    named, with what to do."""
    covariates = card_part(card, "spec").get("covariates")
    if not isinstance(covariates, list) or not all(isinstance(c, str) for c in covariates):
        raise ValueError(f"version {card.get('version')} of model {card.get('model')!r} has no spec with its "
                         "covariates in its card (a version published through the Python API without one): "
                         "serving and monitoring need the columns the spec names; publish the version with "
                         "its DataSpec in the card")
    return covariates


def diff_cards(old: dict, new: dict) -> dict:
    """What changed from one version's card to another's: the causal graph (edges, nodes and latent
    nodes added or removed), the assumptions, the data (fingerprint, rows, source), the columns'
    roles (covariates and controls added or removed, other spec fields), the estimator (seed,
    trees, forest parameters), the nuisance learners and their out-of-fold scores, the gate
    (verdict, reasons, warnings, the checks' values, its thresholds) and the effect. Each part
    has `changed`; values that differ are [old, new] pairs."""
    from .graph import diff as graph_diff

    def listed(a: list, b: list) -> dict:
        a, b = a or [], b or []  # a list a card holds as null (a verdict's reasons) reads as empty
        added, removed = [x for x in b if x not in a], [x for x in a if x not in b]
        return {"changed": bool(added or removed), "added": added, "removed": removed}

    def pairs(a: dict, b: dict) -> dict:
        return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}

    def at(card: dict, path: tuple):
        node = card.get("evaluation", {})
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def flat(d: dict, prefix: str = "") -> dict:  # nested settings as dotted keys: forest_params.mtry
        out = {}
        for k, v in (d or {}).items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    # A card published through the Python API may lack any part: it is compared as empty.
    data = {k: [card_part(c, "data").get(k) for c in (old, new)] for k in ("fingerprint", "rows", "source")}
    spec_old, spec_new = card_part(old, "spec"), card_part(new, "spec")
    roles = {k: listed(spec_old.get(k) or [], spec_new.get(k) or []) for k in ("covariates", "controls")}
    spec_fields = pairs({k: v for k, v in spec_old.items() if k not in roles},
                        {k: v for k, v in spec_new.items() if k not in roles})
    estimator = pairs(*(flat({k: v for k, v in card_part(c, "estimator").items() if k != "nuisance"})
                        for c in (old, new)))
    thresholds = [card_part(c, "evaluation").get("gate_config") for c in (old, new)]
    learners = pairs(card_part(old, "estimator", "nuisance"), card_part(new, "estimator", "nuisance"))
    scores = pairs(card_part(old, "evaluation", "nuisance"), card_part(new, "evaluation", "nuisance"))
    v_old, v_new = ({"passed": None, "reasons": [], "warnings": [], **card_part(c, "evaluation", "verdict")}
                    for c in (old, new))
    effect = {k: [card_part(c, "effect").get(k) for c in (old, new)] for k in ("ate", "ate_lower", "ate_upper")}
    return {
        "from": {"model": old.get("model"), "version": old.get("version")},
        "to": {"model": new.get("model"), "version": new.get("version")},
        "graph": graph_diff(old.get("graph"), new.get("graph")),
        "assumptions": listed(old.get("assumptions") or [], new.get("assumptions") or []),
        "data": {"changed": data["fingerprint"][0] != data["fingerprint"][1], **data},
        "spec": {"changed": bool(spec_fields) or any(r["changed"] for r in roles.values()), **roles,
                 "fields": spec_fields},
        "estimator": {"changed": bool(estimator), "settings": estimator},
        "nuisance": {"changed": bool(learners), "learners": learners, "scores": scores},
        "gate": {"changed": v_old["passed"] != v_new["passed"] or v_old["reasons"] != v_new["reasons"]
                 or thresholds[0] != thresholds[1],
                 # None where a card predates recording them (published before 2026-12-05)
                 "thresholds": pairs(*(t or {} for t in thresholds)) if None not in thresholds else None,
                 "passed": [v_old["passed"], v_new["passed"]],
                 "reasons": listed(v_old["reasons"], v_new["reasons"]),
                 "warnings": listed(v_old["warnings"], v_new["warnings"]),
                 "checks": {name: [at(old, path), at(new, path)] for name, path in _GATE_CHECKS
                            if at(old, path) is not None or at(new, path) is not None}},
        "effect": effect,
    }
