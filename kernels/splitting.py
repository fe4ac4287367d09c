"""grf's causal splitting rule on raw-moment histograms, and the per-node randomness.

A node's structure samples carry five raw moments (N, St, Sy, Sty, Stt) = sums of
(w, w t, w y, w t y, w t^2) of the residualized treatment t and outcome y; estimation
(honest) samples carry one channel E, their number (rows of positive weight). For a
candidate left child L of parent P with a = St/N, b = Sy/N and
tau_P = (Sty/N - a b) / (Stt/N - a^2), the sum of grf's pseudo-outcomes
rho_i = (t_i - a)(y_i - b - tau_P (t_i - a)) over L is

    S_L = Sty_L - b St_L - a Sy_L + a b N_L - tau_P (Stt_L - 2 a St_L + a^2 N_L)

and S_R = -S_L. As grf's InstrumentalSplittingRule (the causal forest's, with
stabilize.splits), a split scores S_L^2/N_L + S_R^2/N_R - penalty (1/size_L + 1/size_R),
where size_c = Stt_c - St_c^2/N_c is the child's weighted sum of squares of t about its own
mean, and it is admissible when each child

  * holds at least min_samples_leaf structure rows with t below the parent's mean a, and at
    least min_samples_leaf with t at or above it (grf's min.node.size, counted in rows);
  * has size_c >= alpha * size_P (grf's alpha, min_balancedness in EconML's terms), and
    size_c > 0 when penalty > 0;
  * holds E_c >= min_samples_leaf estimation rows of positive weight (rows, not their weight,
    as the structure counts: a row of weight 3 is one row, so a leaf of a bootstrap replicate
    or of weighted data is never one row counted three times). grf instead prunes leaves left
    without estimation rows; requiring them up front keeps every leaf estimable and agrees
    with EconML's honest min_samples_leaf.

A node may split when it holds 2 min_samples_leaf structure rows on each side of its mean,
2 min_samples_leaf estimation rows, and Stt - St^2/N > 0. The chosen split is the first
admissible candidate, in (feature, threshold) order, whose score is within a relative TIE_RTOL
of the best admissible score (if that is positive): two features that cut the structure rows
the same way score equally in exact arithmetic, and summation order must not decide between
them, so every backend picks the same split. The row counts depend on the node's mean, so they
cannot be histogrammed once and subtracted: a backend either counts them per candidate or
checks candidates from the best down (kernels/backends say which).

Candidates: a node with SMALL_NODE_ROWS rows or more may split after any coarse bin holding
structure rows; a smaller node after any fine code holding structure rows (kernels.binning),
which is as fine as splitting on exact values.

Per-node randomness comes from a 64-bit key per node: the root's key is the tree's, and
children's keys are hashes of the parent's. The key decides which features a node may split
on: `mtry` of them, or, with `poisson_mtry` (grf's way), max(1, min(Poisson(mtry), p)) of
them; with candidate weights, that many draws with replacement in proportion to the weights
(a feature drawn twice is one candidate). The draw depends only on the node's position in the
tree, never on the order nodes are grown in, which lets the level-wise (torch) and depth-first
(numba) growers build the same trees.

The numba versions of all this (and every other numba kernel) live in backends/numba_cpu.py:
numba's on-disk cache is invalidated per source file, so compiled functions that call each
other must share one file. This module keeps the rule's torch form and its constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Channels of a histogram bin / a node's totals; LO and HI count structure rows below and at or
# above the parent's mean treatment residual (per node, not subtractable).
N, ST, SY, STY, STT, E, LO, HI = range(8)
TIE_RTOL = 1e-9
# Nodes with fewer rows (structure + estimation) than this choose among splits at every fine
# code; larger nodes among coarse bins. Part of the rule: every backend uses it. Measured on the
# simple design at 1e5 rows, 500 trees: CATE RMSE 0.0674 at 512, 0.0663 at 1024, 0.0654 at
# 2048 (EconML's exact splits: 0.0656), for 4% and 15% more fit time than 1024 and 512.
SMALL_NODE_ROWS = 2048
# Candidates drawn by importance (CausalForest's candidate_weights='importance'): the pilot
# forest's trees, and the weight all covariates keep together however unimportant, relative to
# the most important one's 1 (each keeps that over p): IMPORTANCE_FLOOR up to
# IMPORTANCE_FLOOR_ROWS training rows, growing as the square root of the rows beyond. Chosen on
# grf's designs (docs/benchmarks.md, "Candidates drawn by importance" and "The weights' floor
# grows with n"): at n = 2,000 the bias dominates and strong weights (0.5) cut it most; at 20,000
# the same weights added 6-9% to the CATE error (trees that split alike vary together), where
# 1.6 cut it by 2% against 1.
IMPORTANCE_PILOT_TREES = 100
IMPORTANCE_FLOOR = 0.5
IMPORTANCE_FLOOR_ROWS = 2000


def importance_floor(n_rows: int) -> float:
    """The weight all covariates keep together for a fit on `n_rows` training rows:
    IMPORTANCE_FLOOR, times sqrt(n_rows / IMPORTANCE_FLOOR_ROWS) beyond that many rows (1.6 at
    20,000, 3.5 at 1e5): the more rows, the less bias is left to remove by weighting."""
    return IMPORTANCE_FLOOR * max(1.0, float(np.sqrt(n_rows / IMPORTANCE_FLOOR_ROWS)))


def weights_from_importance(importance: np.ndarray, n_rows: int) -> np.ndarray | None:
    """Candidate weights from a pilot forest's variable importance, for a fit on `n_rows` rows:
    each covariate's over the largest, plus importance_floor(n_rows) / p; None (uniform draws)
    when the pilot split on nothing."""
    importance = np.asarray(importance, dtype=np.float64)
    top = float(importance.max(initial=0.0))
    return importance / top + importance_floor(n_rows) / len(importance) if top > 0 else None


def weighted_mtry(p: int) -> int:
    """Draws per node with candidate weights when `mtry` is not given: min(p, max(5, ceil(sqrt(p))))."""
    return int(min(p, max(5, int(np.ceil(np.sqrt(p))))))


@dataclass(frozen=True)
class SplitRule:
    """Constraints of the causal splitting rule (see the module docstring)."""

    min_samples_leaf: float
    alpha: float
    imbalance_penalty: float
    max_depth: int
    mtry: int
    poisson_mtry: bool = False
    # Per feature, the weight of its draws as a candidate; () draws uniformly without replacement.
    candidate_weights: tuple[float, ...] = ()

    def cumulative_weights(self) -> np.ndarray:
        """The candidate weights' cumulative sums, as the growers take them (empty for none)."""
        return np.cumsum(np.asarray(self.candidate_weights, dtype=np.float64))


def split_scores_torch(left, tot, a, b, tau, min_leaf: float, alpha: float, penalty: float):
    """`score_candidates` for torch: `left` (..., 8) candidate left-child sums and row counts,
    `tot` the node's (..., 8), the other arguments broadcast against left[..., 0]. Same formula
    and the same admissibility."""
    import torch

    lN, lSt, lSy, lSty, lStt, lE, lLo, lHi = left.unbind(-1)
    rN = tot[..., N] - lN
    rSt = tot[..., ST] - lSt
    rStt = tot[..., STT] - lStt
    valid = ((lLo >= min_leaf) & (lHi >= min_leaf) & (tot[..., LO] - lLo >= min_leaf)
             & (tot[..., HI] - lHi >= min_leaf) & (lE >= min_leaf) & (tot[..., E] - lE >= min_leaf))
    safe_lN = torch.where(valid, lN, torch.ones_like(lN))
    safe_rN = torch.where(valid, rN, torch.ones_like(rN))
    inv_l, inv_r = 1.0 / safe_lN, 1.0 / safe_rN  # as the numba kernel computes them, rounding included
    size_l = lStt - lSt * lSt * inv_l
    size_r = rStt - rSt * rSt * inv_r
    least = alpha * (tot[..., STT] - tot[..., ST] * tot[..., ST] / tot[..., N])
    valid &= (size_l >= least) & (size_r >= least)
    if penalty > 0:
        valid &= (size_l > 0) & (size_r > 0)
    s = lSty - b * lSt - a * lSy + a * b * lN - tau * (lStt - 2.0 * a * lSt + a * a * lN)
    score = s * s * (inv_l + inv_r)
    if penalty > 0:
        score = score - penalty * (1.0 / torch.where(valid, size_l, torch.ones_like(size_l))
                                   + 1.0 / torch.where(valid, size_r, torch.ones_like(size_r)))
    return torch.where(valid, score, torch.full_like(score, -torch.inf))


def parent_stats_torch(tot):
    """(a, b, tau, var) per node for totals (n_nodes, 6); tau is 0 where var <= 0."""
    import torch

    n = tot[:, N]
    a = tot[:, ST] / n
    b = tot[:, SY] / n
    var = tot[:, STT] / n - a * a
    safe = torch.where(var > 0, var, torch.ones_like(var))
    tau = torch.where(var > 0, (tot[:, STY] / n - a * b) / safe, torch.zeros_like(var))
    return a, b, tau, var


WEIGHT_QUANTUM = 2.0**-20


def quantize_weights(w):
    """Sample weights scaled to mean one and rounded to multiples of 2^-20.

    Sums of such weights are exact in float64 whatever the order of addition, so the N channel
    (and with it empty-bin detection and histogram subtraction)
    agree bit for bit across backends and devices. Unweighted data (all ones) is unchanged.
    """
    w = np.asarray(w, dtype=np.float64)
    return np.round(w / w.mean() / WEIGHT_QUANTUM) * WEIGHT_QUANTUM
