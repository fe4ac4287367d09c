"""What the steps' settings share (`DataSpec`, `NuisanceConfig`, `GateConfig`, `BootstrapConfig`):
the error that names the setting at fault, and reading settings from a dict or JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot be used as given. `field` names the setting and `problem` says what is
    wrong with it, so a caller can name the setting its own way (the CLI names its flag)."""

    def __init__(self, field: str, problem: str, message: str | None = None):
        super().__init__(message or f"{field} {problem}")
        self.field = field
        self.problem = problem


# Set, the number of processes evaluate's refits use, whatever the data (1: evaluate's own).
REFIT_WORKERS_VARIABLE = "TAUFORGE_REFIT_WORKERS"


def refit_workers_from_environment() -> int | None:
    """$TAUFORGE_REFIT_WORKERS as a number of processes, None when unset; a ValueError when it is
    not a whole number of at least 1. `tauforge run` checks it before any task (a review: a bad
    value failed the evaluate task after every fit, with exit 1)."""
    given = os.environ.get(REFIT_WORKERS_VARIABLE, "")
    if not given:
        return None
    if not given.isdigit() or int(given) < 1:
        raise ValueError(f"${REFIT_WORKERS_VARIABLE} must be a whole number of processes, 1 or more; got {given!r}")
    return int(given)


def check_no_credentials(uri: str, field: str) -> str:
    """`uri`, unless it carries a user name or password (scheme://user:secret@host/...): a URI is
    recorded in the run's parameters, its logs and the model card, where a secret must not go."""
    if "://" in uri and _userinfo_length(*uri.split("://", 1)):
        raise ConfigError(field, "carries a user name or password: it would be recorded in the run's parameters, "
                                 "logs and model card; give credentials the filesystem's own way (for s3://, "
                                 "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, from a Secret on a cluster)")
    return uri


# Schemes whose '//' names a host that may take a port (host:8080/path@...). An object store's
# names a bucket, which takes none: there a ':' then digits and '/' is a secret's start (AWS
# secret keys hold '/'), which the port rule let through, printed whole in the error after it.
HOST_SCHEMES = frozenset({"http", "https", "ftp", "sftp", "ssh", "smb", "hdfs", "webhdfs", "webdav", "dav"})


def _userinfo_length(scheme: str, rest: str) -> int:
    """The length of the user[:password]@ that the text after a URI's '://' starts with (0 for
    none). A secret may hold '/' (AWS secret keys do), which ends urlsplit's netloc early, so the
    password is read up to the '@' unless, for a scheme with hosts, what follows the ':' is a port
    (digits, then the path)."""
    user = re.match(r"([^/@?#\[\]]+)(?::([^@]*))?@", rest)  # no '[' in a user: [::1] is an IPv6 host
    if user is None:
        return 0
    password = user.group(2)
    if (scheme.lower() in HOST_SCHEMES and password is not None
            and re.fullmatch(r"\d+[/?#].*", password)):  # host:port/path@... is no user
        return 0
    # A raw '@' in the user or password (a review: me@corp.com:TOKEN@host): the host follows the last.
    authority = re.split(r"[/?#]", rest[user.end():], maxsplit=1)[0]
    return user.end() + (authority.rindex("@") + 1 if "@" in authority else 0)


def redacted_uri(uri: str) -> str:
    """`uri` as it is recorded and shown: without a query string, which may hold a token (a
    presigned URL's signature), or a user name and password before the host."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    credentials = _userinfo_length(scheme, rest)
    if credentials:  # before urlsplit, which ends the host at a '/' inside a password
        uri = f"{scheme}://<redacted>@{rest[credentials:]}"
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(query="<redacted>" if parts.query else ""))


def check_keys(cls: type, raw: dict[str, Any], what: str) -> dict[str, Any]:
    """`raw` if every key is a field of the dataclass `cls`; else a ConfigError listing the
    unknown ones (`what` names the kind of setting: 'gate', 'bootstrap')."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        listed = f"{', '.join(unknown)}; known: {', '.join(names)}"
        raise ConfigError(what, f"has unknown setting(s) {listed}", f"unknown {what} setting(s) {listed}")
    return raw


def parse_json(text: str | None, what: str) -> dict[str, Any]:
    """A JSON object of settings (an empty string is no settings: the defaults)."""
    try:
        raw = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(what, f"is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(what, f"must be a JSON object, got {text!r}")
    return raw


def from_json(cls: type[T], text: str | None, what: str) -> T:
    """The dataclass of settings `cls` from a JSON object, refusing keys it does not have and
    naming those it needs (a spec without "treatment" was Python's TypeError)."""
    values = check_keys(cls, parse_json(text, what), what)
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(what, f"needs {', '.join(map(repr, missing))}, got {sorted(values)}")
    return cls(**values)


def to_json(settings: Any) -> str:
    """A dataclass of settings as JSON (keys sorted), the form pipeline parameters carry."""
    return json.dumps(dataclasses.asdict(settings), sort_keys=True)


# What a Kubernetes CPU or memory quantity looks like ('2', '500m', '1.5'; '8Gi', '512Mi', '1G'):
# the pipeline's tasks and the deployed predictors take them.
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
# kfp takes whole numbers only (a review: `compile --memory 1.5Gi` failed in kfp, naming no flag).
_WHOLE_MEMORY = re.compile(r"^\d+(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")  # DNS-1123 subdomain


def check_quantities(settings: Any, cpu: tuple[str, ...], memory: tuple[str, ...], whole_memory: bool = False) -> None:
    """The named fields of `settings` are Kubernetes CPU and memory quantities, else a ConfigError;
    `whole_memory`: memory in whole numbers, as kfp's tasks take it."""
    memory_form = ((memory, _WHOLE_MEMORY, "8Gi or 1536Mi (whole numbers)") if whole_memory
                   else (memory, _MEMORY, "8Gi or 512Mi"))
    for names, pattern, example in ((cpu, _CPU, "2 or 500m"), memory_form):
        kind = "CPU" if pattern is _CPU else "memory"
        for name in names:
            value = str(getattr(settings, name))
            if not pattern.match(value):
                raise ConfigError(name, f"must be a {kind} quantity such as {example}, got {value!r}")
            if float(re.sub(r"[A-Za-z]+$", "", value)) == 0:  # Kubernetes drops a zero request and limit
                raise ConfigError(name, f"must be more than 0, got {value!r}")


def check_secret_name(name: str, field: str) -> None:
    """`name` is a Kubernetes Secret's name (a DNS-1123 subdomain), else a ConfigError for `field`."""
    if len(name) > 253 or not _SECRET_NAME.match(name):
        raise ConfigError(field, f"must be a Kubernetes Secret's name (lower-case letters, digits, '-' and '.'), "
                                 f"got {name!r}")
