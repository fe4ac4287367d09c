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

Publishing writes a version completely under a private staging name, verifies it, then makes it
visible in one step: on a local filesystem an atomic rename to the next free number, which two
writers can never both win (the loser takes the next number) and which a crash never leaves half
done. On object stores (s3://, gs://), which have no rename, the files are copied and the card
goes last: a version without a verified card is invisible, but two writers racing for one number
are not prevented there; publish from one pipeline at a time per model. Aliases are swapped
atomically under a file lock on a local filesystem; on object stores two promotions at the same
instant can lose one (and its history entry): promote from one place.
"""

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec

from tauforge.kernels.serialization import sha256_file, sha256_json, sha256_text

from .constants import DEFAULT_STORE

# A version's files: what `tauforge.components.publish` assembles and every reader finds there.
FOREST_DIR = "forest"
EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.html"
REFERENCE_FILE = "reference.parquet"
CARD_FILE = "model_card.json"
ALIASES_FILE = "aliases.json"
CARD_FORMAT = "tauforge.model_card"
_STAGING = ".staging"


class StoreError(ValueError):
    """A store operation that cannot be done as asked (unknown model, version or alias, bad card)."""


def card_digest(card: dict) -> str:
    """The card's own checksum (of everything in it but this digest)."""
    return sha256_json(card, "card_sha256")


def _is_model_name(name: str) -> bool:
    return bool(name) and all(ch.isalnum() or ch in "-_." for ch in name) and not name.startswith(".")


def check_model_name(name: str) -> str:
    """`name` if it can name a model in the store; else a StoreError saying what a name may hold."""
    if not _is_model_name(name):
        raise StoreError(f"model name {name!r} must be letters, digits, '-', '_' or '.' (not leading)")
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
    """Versions and aliases of causal models under one fsspec URI (default: ./tauforge-store)."""

    def __init__(self, uri: str = DEFAULT_STORE):
        self.uri = uri
        self.fs, root = fsspec.core.url_to_fs(uri)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.root = os.path.abspath(root) if self.local else root.rstrip("/")

    # ------------------------------------------------------------------ paths and listing
    def _model_dir(self, model: str) -> str:
        return f"{self.root}/{check_model_name(model)}"

    def models(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        names = [os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False) if self.fs.isdir(p)]
        return sorted(n for n in names if _is_model_name(n) and self.versions(n))  # skips lost+found and the like

    def versions(self, model: str) -> list[int]:
        """Published versions (those whose card exists), ascending."""
        d = self._model_dir(model)
        if not self.fs.exists(d):
            return []
        out = []
        for p in self.fs.ls(d, detail=False):
            name = os.path.basename(p.rstrip("/"))
            if name.isdigit() and self.fs.exists(f"{d}/{name}/{CARD_FILE}"):
                out.append(int(name))
        return sorted(out)

    def card(self, model: str, version: int) -> dict:
        """The card of a version, its own checksum verified."""
        path = f"{self._model_dir(model)}/{int(version)}/{CARD_FILE}"
        if not self.fs.exists(path):
            raise StoreError(f"model {model!r} has no version {version} in {self.uri} "
                             f"(versions: {self.versions(model) or 'none'})")
        card = json.loads(self.fs.cat_file(path))
        if card.get("card_sha256") != card_digest(card):
            raise StoreError(f"the card of {model} version {version} fails its checksum: it was modified")
        return card

    def resolve(self, model: str, ref: str | int | None = None) -> int:
        """A version number from a number, 'latest' (None) or an alias ('champion')."""
        versions = self.versions(model)
        if not versions:
            raise StoreError(f"model {model!r} has no published version in {self.uri}")
        if ref is None or ref == "latest":
            return versions[-1]
        if isinstance(ref, int) or str(ref).isdigit():
            if int(ref) not in versions:
                raise StoreError(f"model {model!r} has no version {ref} (versions: {versions})")
            return int(ref)
        aliases = self.aliases(model)
        if ref not in aliases:
            raise StoreError(f"model {model!r} has no alias {ref!r} (aliases: {sorted(aliases) or 'none'})")
        return int(aliases[ref]["version"])

    # ------------------------------------------------------------------ load
    def load(self, model: str, ref: str | int | None = None, cache_dir: str | None = None) -> ModelVersion:
        """Fetch and verify a version: every file's sha256 must match its card."""
        version = self.resolve(model, ref)
        card = self.card(model, version)
        src = f"{self._model_dir(model)}/{version}"
        if self.local:
            path = src
        else:  # one cached copy per store, model and version (versions are immutable), verified below
            root = cache_dir or os.path.join(tempfile.gettempdir(), "tauforge-cache",
                                             sha256_text(self.uri)[:16])
            path = os.path.join(root, model, str(version))
            if not os.path.exists(os.path.join(path, CARD_FILE)):
                staging = f"{path}.{uuid.uuid4().hex}"
                self.fs.get(src, staging, recursive=True)
                try:
                    os.rename(staging, path)
                except OSError:  # another process cached it first
                    shutil.rmtree(staging, ignore_errors=True)
        verify_files(path, card)
        return ModelVersion(model, version, card, path)

    # ------------------------------------------------------------------ publish
    def publish(self, model: str, source_dir: str, card: dict) -> int:
        """Publish the files of `source_dir` with `card` as the next version of `model`; return it.

        `card` holds the causal metadata; the store adds model, version, creation time, parent
        version and the sha256 of every file. Nothing is visible until everything is written."""
        check_model_name(model)
        if not os.path.isdir(source_dir):
            raise StoreError(f"nothing to publish: {source_dir} is not a directory")
        if os.path.exists(os.path.join(source_dir, CARD_FILE)):
            raise StoreError(f"{source_dir} already holds a {CARD_FILE}; the store writes the card")
        d = self._model_dir(model)
        self.fs.makedirs(d, exist_ok=True)
        files = {rel: sha256_file(os.path.join(source_dir, rel)) for rel in _walk(source_dir)}
        if self.local:
            staging = f"{d}/{_STAGING}/{uuid.uuid4().hex}"
            shutil.copytree(source_dir, staging)
        else:
            staging = tempfile.mkdtemp(prefix="tauforge-publish-")
            shutil.copytree(source_dir, staging, dirs_exist_ok=True)
        try:
            for _ in range(1000):
                existing = self.versions(model)
                version = max([*existing, *self._claimed_numbers(model)], default=0) + 1
                full = dict(card, format=CARD_FORMAT, format_version=1, model=model, version=version,
                            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                            parent_version=existing[-1] if existing else None, files=files)
                full["card_sha256"] = card_digest(full)
                with open(os.path.join(staging, CARD_FILE), "w") as f:
                    json.dump(full, f, indent=2, sort_keys=True)
                verify_files(staging, full)
                if self._commit(staging, f"{d}/{version}"):
                    return version
            raise StoreError(f"could not allocate a version of {model!r} after 1000 attempts")
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging, ignore_errors=True)

    def _claimed_numbers(self, model: str) -> list[int]:
        """Numbered directories without a card yet (another writer's copy in flight on an object
        store, or a crashed one): never reused."""
        d = self._model_dir(model)
        return [int(os.path.basename(p.rstrip("/"))) for p in self.fs.ls(d, detail=False)
                if os.path.basename(p.rstrip("/")).isdigit()]

    def _commit(self, staging: str, final: str) -> bool:
        if self.local:
            try:
                os.rename(staging, final)  # atomic; fails when another writer took the number
                return True
            except OSError:
                return False
        if self.fs.exists(final):
            return False
        card = os.path.join(staging, CARD_FILE)
        for rel in _walk(staging):
            if rel != CARD_FILE:
                self.fs.put_file(os.path.join(staging, rel), f"{final}/{rel}")
        self.fs.put_file(card, f"{final}/{CARD_FILE}")  # last: the version becomes visible
        return True

    # ------------------------------------------------------------------ aliases
    def aliases(self, model: str) -> dict[str, dict]:
        path = f"{self._model_dir(model)}/{ALIASES_FILE}"
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else {}

    def set_alias(self, model: str, alias: str, version: int) -> dict:
        """Point `alias` at `version`, keeping the previous target for `rollback`."""
        if not alias or alias.isdigit() or alias == "latest":
            raise StoreError(f"alias {alias!r} must be a name such as 'champion' (not a number or 'latest')")
        version = self.resolve(model, int(version))
        with self._lock(model):
            aliases = self.aliases(model)
            entry = aliases.get(alias, {"version": None, "history": []})
            if entry["version"] is not None and entry["version"] != version:
                entry["history"].append(entry["version"])
            entry["version"] = version
            aliases[alias] = entry
            self._write_aliases(model, aliases)
        return entry

    def rollback(self, model: str, alias: str = "champion") -> dict:
        """Point `alias` back at the version it named before the last change."""
        with self._lock(model):
            aliases = self.aliases(model)
            entry = aliases.get(alias)
            if not entry or not entry["history"]:
                raise StoreError(f"alias {alias!r} of model {model!r} has no earlier version to roll back to")
            entry["version"] = entry["history"].pop()
            self._write_aliases(model, aliases)
        return entry

    def _write_aliases(self, model: str, aliases: dict) -> None:
        path = f"{self._model_dir(model)}/{ALIASES_FILE}"
        data = json.dumps(aliases, indent=2, sort_keys=True)
        if self.local:
            fd, tmp = tempfile.mkstemp(dir=self._model_dir(model), suffix=".json.tmp")
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; servers may run as another user
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        else:
            self.fs.pipe_file(path, data.encode())

    @contextlib.contextmanager
    def _lock(self, model: str) -> Iterator[None]:
        if not self.local:
            yield
            return
        import fcntl

        os.makedirs(self._model_dir(model), exist_ok=True)
        with open(os.path.join(self._model_dir(model), ".lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def verify_files(path: str, card: dict) -> None:
    """Every file the card lists exists under `path` with its sha256; no other file is there."""
    if card.get("card_sha256") != card_digest(card):
        raise StoreError(f"the card in {path} fails its checksum: it was modified")
    present = set(_walk(path)) - {CARD_FILE}
    listed = set(card.get("files", {}))
    if present - listed:
        raise StoreError(f"{path} holds files its card does not list: {', '.join(sorted(present - listed))}")
    for rel, digest in card["files"].items():
        full = os.path.join(path, rel)
        if not os.path.exists(full):
            raise StoreError(f"{full} is missing")
        if sha256_file(full) != digest:
            raise StoreError(f"checksum mismatch for {full}: the file was modified or corrupted")


def _walk(root: str) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)


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
    here = os.path.dirname(os.path.abspath(__file__))
    # An image has no .git; the Dockerfiles bake the commit they were built from into this variable.
    commit = os.environ.get("TAUFORGE_GIT_COMMIT") or None
    try:
        commit = commit or subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                          timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "platform": platform.platform(), "git_commit": commit,
            "packages": packages}


ASSUMPTIONS = {
    "observational": ["unconfoundedness: no unmeasured confounder of treatment and outcome given the covariates "
                      "and controls", "overlap: every unit could have received either treatment",
                      "SUTVA: no interference between units and one version of the treatment"],
    "randomized": ["randomization: treatment assigned independently of potential outcomes with the stated "
                   "propensity", "SUTVA: no interference between units and one version of the treatment"],
}


def build_card(*, spec: dict, data: dict, estimate: dict, evaluation: dict, estimator: dict, run: dict) -> dict:
    """The causal part of a model card; the store adds version, checksums and lineage."""
    binary = spec["treatment_type"] == "binary"
    return {
        "estimand": {"cate": f"E[{spec['outcome']}(1) - {spec['outcome']}(0) | X]" if binary else
                     f"d E[{spec['outcome']} | do({spec['treatment']} = t), X] / dt (locally linear)",
                     "ate": estimate["estimand"], "ate_method": estimate["method"]},
        "assumptions": ASSUMPTIONS[spec["assignment"]],
        "spec": spec, "data": data, "effect": {
            k: estimate[k] for k in ("ate", "ate_stderr", "ate_lower", "ate_upper", "ate_interval", "alpha",
                                     "bootstrap") if k in estimate},
        "evaluation": {k: evaluation[k] for k in ("verdict", "nuisance", "refuters", "balance", "sensitivity")}
        | {"heterogeneity": {k: v for k, v in evaluation["heterogeneity"].items()}}
        | ({"overlap": {k: v for k, v in evaluation["overlap"].items() if k != "histogram"}}
           if "overlap" in evaluation else {}),
        "estimator": {**estimator, "n_trees": estimate["n_trees"], "device": estimate["device"]},
        "environment": environment(), "run": run,
    }
