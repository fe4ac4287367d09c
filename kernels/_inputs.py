"""Input conversion and validation shared by the estimators.

Arrays arrive as NumPy, pandas, torch or CuPy and become float64 NumPy arrays on the host,
where binning happens (CuPy through DLPack); results go back in the caller's kind, to torch
and CuPy zero-copy through DLPack. Every check names the argument and the problem, because a
causal fit that silently drops rows or broadcasts a column is worse than one that stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ArrayKind:
    """What the caller passed, so outputs can be returned in the same kind."""

    kind: str  # "numpy" | "torch" | "cupy"
    device: torch.device


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def array_kind(a: Any) -> ArrayKind:
    if isinstance(a, torch.Tensor):
        return ArrayKind("torch", a.device)
    if _is_cupy(a):
        return ArrayKind("cupy", torch.device("cuda", a.device.id))
    return ArrayKind("numpy", torch.device("cpu"))


def to_numpy(a: Any, name: str, ndim: int) -> np.ndarray:
    """A float64 host copy (or view) of `a`, with `ndim` dimensions (1 or 2)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    elif _is_cupy(a):
        a = torch.from_dlpack(a).detach().to("cpu", torch.float64).numpy()
    elif hasattr(a, "to_numpy"):  # pandas DataFrame / Series
        a = a.to_numpy()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric; converting it to float64 failed: {exc}") from None
    return _check_shape(arr, name, ndim)


def _check_shape(arr: np.ndarray, name: str, ndim: int) -> np.ndarray:
    if arr.ndim == 2 and ndim == 1 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 1 and ndim == 2:
        arr = arr[:, None]
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    return arr


def check_finite(arr: np.ndarray | torch.Tensor, name: str) -> None:
    """Raise naming the first non-finite entry (row, and column for 2-D inputs)."""
    bad = ~torch.isfinite(torch.as_tensor(arr))
    if bool(bad.any()):
        first = torch.nonzero(bad)[0].tolist()
        where = f"row {first[0]}" + (f", column {first[1]}" if len(first) > 1 else "")
        kind = "NaN" if bool(torch.isnan(torch.as_tensor(arr)).any()) else "infinite values"
        raise ValueError(f"{name} contains {kind} (first at {where}); impute or drop those rows first")


def check_same_length(**arrays: Any) -> int:
    """All given arrays (None skipped) have the same number of rows; returns it."""
    lengths = {k: int(v.shape[0]) for k, v in arrays.items() if v is not None}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ValueError(f"inputs must have the same number of rows: {desc}")
    return next(iter(lengths.values()))


def check_sample_weight(sample_weight: Any, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = to_numpy(sample_weight, "sample_weight", 1)
    check_finite(w, "sample_weight")
    if w.shape[0] != n:
        raise ValueError(f"sample_weight has {w.shape[0]} rows, expected {n}")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    if w.sum() <= 0:
        raise ValueError("sample_weight sums to zero")
    return w


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error, not a silent fallback."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif isinstance(device, str) and (device == "cpu" or device.startswith("cuda")):
        dev = torch.device(device)
    else:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch sees no CUDA device; use device='cpu' or 'auto'")
    return dev


def as_output(values: np.ndarray, like: ArrayKind) -> Any:
    """Return `values` in the kind of array the caller passed (NumPy, torch or CuPy)."""
    if like.kind == "numpy":
        return values
    t = torch.from_numpy(np.ascontiguousarray(values)).to(like.device)
    if like.kind == "torch":
        return t
    import cupy  # only reached when the caller passed CuPy, so CuPy is installed

    return cupy.from_dlpack(t)
