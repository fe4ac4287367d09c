"""Histogram gradient boosting on the forest's binning, in torch on any device: the nuisance
learner that runs where the forest runs (CUDA in a cluster).

Trees grow level by level to `max_depth` in heap order (node k's children are 2k+1, 2k+2). At
each level one `bincount` builds the gradient, hessian and count histograms of every (node,
feature, coarse bin) at once (the forest's equal-frequency uint8 codes, `kernels.binning`); the
best split of every node comes from cumulative sums over bins, the XGBoost gain with L2
regularization and a minimum child hessian. Leaves take -G / (H + l2) times the learning rate.
Early stopping watches the loss on a held-out validation split, as scikit-learn's
HistGradientBoosting does, whose parameter names these follow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import train_test_split

from . import _inputs
from .binning import QuantileBinner


class _Trees:
    """Fitted trees in heap layout: feature (-1 for a leaf), coarse-bin threshold, node value."""

    def __init__(self, depth: int, device: torch.device):
        self.depth = depth
        self.features: list[torch.Tensor] = []
        self.thresholds: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.device = device

    def add(self, feature: torch.Tensor, threshold: torch.Tensor, value: torch.Tensor) -> None:
        self.features.append(feature)
        self.thresholds.append(threshold)
        self.values.append(value)

    def predict_tree(self, codes: torch.Tensor, t: int) -> torch.Tensor:
        node = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
        feature, threshold, value = self.features[t], self.thresholds[t], self.values[t]
        rows = torch.arange(codes.shape[0], device=codes.device)
        for _ in range(self.depth):
            f = feature[node]
            split = f >= 0
            go_right = codes[rows, f.clamp(min=0)].to(torch.int64) > threshold[node]
            node = torch.where(split, 2 * node + 1 + go_right.to(torch.int64), node)
        return value[node]


class _HistGradientBoosting(BaseEstimator):
    _loss = "squared_error"

    def __init__(self, *, learning_rate: float = 0.1, max_iter: int = 200, max_depth: int = 6,
                 min_child_weight: float = 1.0, l2_regularization: float = 0.0, max_bins: int = 256,
                 early_stopping: bool | str = "auto", validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-7, device: str = "auto", random_state: int | None = None):
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.l2_regularization = l2_regularization
        self.max_bins = max_bins
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def _validate(self) -> None:
        checks = [(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
                  (isinstance(self.max_iter, (int, np.integer)) and self.max_iter >= 1,
                   f"max_iter must be a positive integer, got {self.max_iter!r}"),
                  # Every level holds (nodes x features x bins) histograms: 2^10 nodes is the memory cap.
                  (isinstance(self.max_depth, (int, np.integer)) and 1 <= self.max_depth <= 10,
                   f"max_depth must be an integer in [1, 10], got {self.max_depth!r}"),
                  (self.min_child_weight >= 0, f"min_child_weight must be >= 0, got {self.min_child_weight}"),
                  (self.l2_regularization >= 0, f"l2_regularization must be >= 0, got {self.l2_regularization}"),
                  (0 < self.validation_fraction < 1,
                   f"validation_fraction must be in (0, 1), got {self.validation_fraction}"),
                  (self.early_stopping in ("auto", True, False),
                   f"early_stopping must be 'auto', True or False, got {self.early_stopping!r}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def fit(self, X: Any, y: Any, sample_weight: Any = None, groups: Any = None):
        """`groups` (one label per row): early stopping holds out whole groups, so a row's
        duplicate never validates the trees fit on it."""
        X = _inputs.to_numpy(X, "X", 2)
        y = self._encode_target(_inputs.to_numpy(y, "y", 1))
        n = _inputs.check_same_length(X=X, y=y)
        _inputs.check_finite(X, "X")
        _inputs.check_finite(y, "y")
        w = _inputs.check_sample_weight(sample_weight, n)
        # Relative weights: min_child_weight is a hessian sum, so weights summing to 1 grew no splits.
        w = np.ones(n) if w is None else w / w[w > 0].mean()
        self._validate()
        self.device_ = _inputs.resolve_device(self.device)
        self.n_features_in_ = X.shape[1]
        stop_early = self.early_stopping is True or (self.early_stopping == "auto" and n > 10_000)
        seed = _inputs.seed_from(self.random_state)
        rows = np.arange(n)
        codes = _inputs.check_groups(groups, n)
        if stop_early and codes is not None:
            from .nuisance import holdout_groups

            train, val = holdout_groups(codes, self.validation_fraction, seed)
            stop_early = len(val) > 0
        elif stop_early:
            stratify = y if self._loss == "log_loss" else None
            train, val = train_test_split(rows, test_size=self.validation_fraction, stratify=stratify,
                                          random_state=seed)
        else:
            train, val = rows, rows[:0]
        self.binner_ = QuantileBinner(self.max_bins, random_state=seed).fit(X[train], sample_weight=w[train])
        dev = self.device_
        codes = torch.as_tensor(self._codes(X), device=dev)
        y_t, w_t = torch.as_tensor(y, device=dev), torch.as_tensor(w, device=dev)
        tr, va = torch.as_tensor(train, device=dev), torch.as_tensor(val, device=dev)
        self.baseline_ = self._baseline(y[train], w[train])
        raw = torch.full((n,), self.baseline_, dtype=torch.float64, device=dev)
        self.trees_ = _Trees(int(self.max_depth), dev)
        self.validation_scores_ = []
        best, since_best = np.inf, 0
        # The tolerance is relative to the baseline's validation loss: absolute, it stopped early an
        # outcome of standard deviation 1e-4, whose whole loss is 1e-8 (a numerics review).
        tol = self.tol * self._loss_value(raw[va], y_t[va], w_t[va]) if stop_early else 0.0
        n_bins = int(self.binner_.n_bins_.max())
        for it in range(int(self.max_iter)):
            g, h = self._gradients(raw[tr], y_t[tr], w_t[tr])
            feature, threshold, value = self._grow(codes[tr], g, h, n_bins)
            self.trees_.add(feature, threshold, value)
            raw += self.trees_.predict_tree(codes, it)
            if stop_early:
                score = self._loss_value(raw[va], y_t[va], w_t[va])
                self.validation_scores_.append(score)
                if score < best - tol:
                    best, since_best = score, 0
                else:
                    since_best += 1
                    if since_best >= self.n_iter_no_change:
                        break
        self.n_iter_ = len(self.trees_.values)
        return self

    def _codes(self, X: np.ndarray) -> np.ndarray:
        return self.binner_.coarse(self.binner_.transform(X))

    def _grow(self, codes: torch.Tensor, g: torch.Tensor, h: torch.Tensor, n_bins: int):
        """One tree of depth max_depth, level by level; returns heap-ordered arrays."""
        dev, (n, F), B = codes.device, codes.shape, n_bins
        D, lam, mcw = int(self.max_depth), float(self.l2_regularization), float(self.min_child_weight)
        size = 2 ** (D + 1) - 1
        feature = torch.full((size,), -1, dtype=torch.int64, device=dev)
        threshold = torch.zeros(size, dtype=torch.int64, device=dev)
        G_node = torch.zeros(size, dtype=torch.float64, device=dev)
        H_node = torch.zeros(size, dtype=torch.float64, device=dev)
        G_node[0], H_node[0] = g.sum(), h.sum()
        node = torch.zeros(n, dtype=torch.int64, device=dev)  # heap index of each row's node
        active = torch.ones(n, dtype=torch.bool, device=dev)  # rows whose node may still split
        feature_bins = codes.to(torch.int64) + (torch.arange(F, device=dev) * B).unsqueeze(0)  # (row, f) -> f*B+bin
        rows = torch.arange(n, device=dev)
        for d in range(D):
            first, width = 2**d - 1, 2**d
            idx = rows if bool(active.all()) else rows[active]
            if idx.numel() == 0:
                break
            local = node[idx] - first
            keys = (local.unsqueeze(1) * (F * B) + feature_bins[idx]).reshape(-1)
            length = width * F * B
            hist_g = torch.bincount(keys, weights=g[idx].repeat_interleave(F), minlength=length).view(width, F, B)
            hist_h = torch.bincount(keys, weights=h[idx].repeat_interleave(F), minlength=length).view(width, F, B)
            GL, HL = hist_g.cumsum(2), hist_h.cumsum(2)
            Gp, Hp = G_node[first:first + width].view(width, 1, 1), H_node[first:first + width].view(width, 1, 1)
            GR, HR = Gp - GL, Hp - HL
            gain = GL**2 / (HL + lam) + GR**2 / (HR + lam) - Gp**2 / (Hp + lam)
            ok = (HL >= mcw) & (HR >= mcw) & (HL > 0) & (HR > 0)
            gain = torch.where(ok, gain, torch.full_like(gain, -torch.inf)).view(width, F * B)
            best_gain, best = gain.max(1)
            # Relative to the node's own objective, so the outcome's scale does not decide.
            split = best_gain > 1e-10 * (best_gain.abs() + (Gp**2 / (Hp + lam)).view(width))
            f_best, b_best = best // B, best % B
            heap = torch.arange(first, first + width, device=dev)
            feature[heap] = torch.where(split, f_best, torch.full_like(f_best, -1))
            threshold[heap] = b_best
            left, right = 2 * heap + 1, 2 * heap + 2
            GLb = GL.view(width, F * B).gather(1, best.unsqueeze(1)).squeeze(1)
            HLb = HL.view(width, F * B).gather(1, best.unsqueeze(1)).squeeze(1)
            G_node[left] = torch.where(split, GLb, 0.0)
            H_node[left] = torch.where(split, HLb, 0.0)
            G_node[right] = torch.where(split, G_node[heap] - GLb, 0.0)
            H_node[right] = torch.where(split, H_node[heap] - HLb, 0.0)
            # Move the rows of split nodes to their child; rows of leaves stop.
            f_row = feature[node[idx]]
            splits_here = f_row >= 0
            go_right = codes[idx, f_row.clamp(min=0)].to(torch.int64) > threshold[node[idx]]
            node[idx] = torch.where(splits_here, 2 * node[idx] + 1 + go_right.to(torch.int64), node[idx])
            active[idx] = splits_here
        value = -self.learning_rate * G_node / (H_node + lam).clamp(min=1e-12)
        return feature, threshold, torch.where(H_node > 0, value, torch.zeros_like(value))

    # ------------------------------------------------------------------ predict
    def _raw(self, X: Any) -> torch.Tensor:
        if not hasattr(self, "trees_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")
        X = _inputs.to_numpy(X, "X", 2)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} columns, the model was fit on {self.n_features_in_}")
        _inputs.check_finite(X, "X")
        codes = torch.as_tensor(self._codes(X), device=self.device_)
        raw = torch.full((X.shape[0],), self.baseline_, dtype=torch.float64, device=self.device_)
        for t in range(self.n_iter_):
            raw += self.trees_.predict_tree(codes, t)
        return raw


class HistGradientBoostingRegressor(RegressorMixin, _HistGradientBoosting):
    """Squared-error boosting. Parameters as scikit-learn's HistGradientBoostingRegressor where
    they exist: learning_rate, max_iter, max_bins, early_stopping ('auto': on above 10,000 rows),
    validation_fraction, n_iter_no_change, tol (here relative to the constant baseline's validation
    loss, so the target's units do not matter), l2_regularization; trees grow level-wise to
    max_depth (default 6; scikit-learn grows best-first to 31 leaves); min_child_weight is the
    minimum hessian (row count for squared error) of a child."""

    _loss = "squared_error"

    def _encode_target(self, y: np.ndarray) -> np.ndarray:
        return y

    @staticmethod
    def _baseline(y, w) -> float:
        return float(np.average(y, weights=w))

    @staticmethod
    def _gradients(raw, y, w):
        return w * (raw - y), w.clone()

    @staticmethod
    def _loss_value(raw, y, w) -> float:
        return float((w * (raw - y) ** 2).sum() / w.sum())

    def predict(self, X: Any) -> np.ndarray:
        return self._raw(X).cpu().numpy()


class HistGradientBoostingClassifier(ClassifierMixin, _HistGradientBoosting):
    """Binary log-loss boosting (any two numeric labels, returned as float by `predict`);
    parameters as the regressor's."""

    _loss = "log_loss"

    def _encode_target(self, y: np.ndarray) -> np.ndarray:
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"HistGradientBoostingClassifier handles two classes; y has {len(self.classes_)}")
        return (y == self.classes_[1]).astype(np.float64)

    @staticmethod
    def _baseline(y, w) -> float:
        p = float(np.clip(np.average(y, weights=w), 1e-6, 1 - 1e-6))
        return float(np.log(p / (1 - p)))

    @staticmethod
    def _gradients(raw, y, w):
        p = torch.sigmoid(raw)
        return w * (p - y), w * (p * (1 - p)).clamp(min=1e-12)

    @staticmethod
    def _loss_value(raw, y, w) -> float:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(raw, y, weight=w, reduction="sum")
        return float(loss / w.sum())

    def predict_proba(self, X: Any) -> np.ndarray:
        p = torch.sigmoid(self._raw(X)).cpu().numpy()
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: Any) -> np.ndarray:
        positive = self.predict_proba(X)[:, 1] > 0.5  # first: unfitted raises NotFittedError
        return self.classes_[positive.astype(int)]
