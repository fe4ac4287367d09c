"""Normal inference on per-row effects, what `CausalForestDML.effect_inference` returns: the part
of EconML's `NormalInferenceResults` that a per-row CATE needs (no population summary)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from . import _inputs


@dataclass(frozen=True)
class EffectInference:
    """Point estimates and standard errors of effects, one per row, with the normal
    approximation's z-statistics, p-values and intervals (the names EconML's users call)."""

    point_estimate: np.ndarray
    stderr: np.ndarray

    @property
    def var(self) -> np.ndarray:
        return self.stderr**2

    def zstat(self, value: float = 0.0) -> np.ndarray:
        """(estimate - value) / stderr."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.point_estimate - value) / self.stderr

    def pvalue(self, value: float = 0.0) -> np.ndarray:
        """Two-sided p-value of the hypothesis that the effect equals `value`."""
        return 2 * norm.sf(np.abs(self.zstat(value)))

    def conf_int(self, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise (1 - alpha) normal interval (lower, upper)."""
        _inputs.check_alpha(alpha)
        half = norm.ppf(1 - alpha / 2) * self.stderr
        return self.point_estimate - half, self.point_estimate + half

    def summary_frame(self, alpha: float = 0.05, value: float = 0.0, decimals: int | None = 3):
        """One row per row of X: point_estimate, stderr, zstat, pvalue, ci_lower, ci_upper (EconML's
        columns and index name), rounded to `decimals` (None: not rounded)."""
        import pandas as pd

        lower, upper = self.conf_int(alpha)
        frame = pd.DataFrame({"point_estimate": self.point_estimate, "stderr": self.stderr,
                              "zstat": self.zstat(value), "pvalue": self.pvalue(value),
                              "ci_lower": lower, "ci_upper": upper}).rename_axis("X")  # rows of X
        return frame if decimals is None else frame.round(decimals)
