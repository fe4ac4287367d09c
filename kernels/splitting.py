"""The GRF causal splitting rule on raw-moment histograms, and the per-node randomness.

A node's structure samples carry five raw moments (N, St, Sy, Sty, Stt) = sums of
(w, w t, w y, w t y, w t^2) of the residualized treatment t and outcome y; estimation
(honest) samples carry one channel E = sum of w, so that both halves are held to the
minimum leaf size. For a candidate left child L of parent P with a = St/N, b = Sy/N and
tau_P = (Sty/N - a b) / (Stt/N - a^2), the sum of grf's pseudo-outcomes over L is

    S_L = Sty_L - b St_L - a Sy_L + a b N_L - tau_P (Stt_L - 2 a St_L + a^2 N_L)

and S_R = -S_L. The split maximizes (S_L^2/N_L + S_R^2/N_R) / var_P^2 - penalty (1/N_L + 1/N_R),
subject to N and E of each child >= min_samples_leaf and each child's treatment variance
>= alpha * var_P. Candidates are the bins holding structure rows (rows of a bin and below go
left). The chosen split is the first candidate, in (feature, bin) order, whose score is
within a relative TIE_RTOL of the best: two features that cut the structure rows the same
way score equally in exact arithmetic, and summation order must not decide between them, so
every backend picks the same split.

Per-node randomness (which `mtry` features a node may split on) comes from a 64-bit key per
node: the root's key is the tree's, and children's keys are hashes of the parent's. The draw
depends only on the node's position in the tree, never on the order nodes are grown in,
which lets the level-wise (torch) and depth-first (numba) growers build the same trees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

# Channels of a histogram bin / a node's totals.
N, ST, SY, STY, STT, E = range(6)
N_CHANNELS = 6
TIE_RTOL = 1e-9

_LEFT_SALT = np.uint64(0x9E3779B97F4A7C15)
_RIGHT_SALT = np.uint64(0xD1B54A32D192ED03)


@dataclass(frozen=True)
class SplitRule:
    """Constraints of the causal splitting rule (see the module docstring)."""

    min_samples_leaf: float
    alpha: float
    imbalance_penalty: float
    max_depth: int
    mtry: int


@numba.njit(cache=True, inline="always")
def splitmix64(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True)
def child_keys(key):
    return splitmix64(key ^ _LEFT_SALT), splitmix64(key ^ _RIGHT_SALT)


@numba.njit(cache=True)
def draw_features(key, p, mtry, mask):
    """Set mask[j] for the `mtry` features node `key` may split on (partial Fisher-Yates)."""
    if mtry >= p:
        mask[:] = True
        return
    mask[:] = False
    perm = np.arange(p)
    state = key
    for i in range(mtry):
        state = splitmix64(state)
        j = i + np.int64(state % np.uint64(p - i))
        perm[i], perm[j] = perm[j], perm[i]
        mask[perm[i]] = True


@numba.njit(cache=True)
def draw_feature_masks(keys, p, mtry):
    """Feature masks (len(keys), p) for many nodes at once (used by the level-wise grower)."""
    out = np.zeros((keys.shape[0], p), dtype=np.bool_)
    for i in range(keys.shape[0]):
        draw_features(keys[i], p, mtry, out[i])
    return out


@numba.njit(cache=True)
def children_keys(keys):
    left = np.empty_like(keys)
    right = np.empty_like(keys)
    for i in range(keys.shape[0]):
        left[i], right[i] = child_keys(keys[i])
    return left, right


@numba.njit(cache=True, inline="always")
def parent_stats(tot):
    """(a, b, tau_P, var_P) of a node from its totals; var_P <= 0 means it cannot split."""
    n = tot[N]
    a = tot[ST] / n
    b = tot[SY] / n
    var = tot[STT] / n - a * a
    tau = (tot[STY] / n - a * b) / var if var > 0 else 0.0
    return a, b, tau, var


@numba.njit(cache=True, inline="always")
def split_score(lN, lSt, lSy, lSty, lStt, lE, tot, a, b, tau, var, min_leaf, alpha, penalty):
    """Score of the left child (l*) of a parent with totals `tot`; -inf if the split is invalid."""
    rN = tot[N] - lN
    rE = tot[E] - lE
    if lN < min_leaf or rN < min_leaf or lE < min_leaf or rE < min_leaf:
        return -np.inf
    var_l = lStt / lN - (lSt / lN) ** 2
    rSt = tot[ST] - lSt
    var_r = (tot[STT] - lStt) / rN - (rSt / rN) ** 2
    if var_l < alpha * var or var_r < alpha * var or var_l <= 0.0 or var_r <= 0.0:
        return -np.inf
    s = lSty - b * lSt - a * lSy + a * b * lN - tau * (lStt - 2.0 * a * lSt + a * a * lN)
    inv = 1.0 / lN + 1.0 / rN
    return s * s * inv / (var * var) - penalty * inv


def split_scores_torch(left, tot, a, b, tau, var, min_leaf: float, alpha: float, penalty: float):
    """Vectorized `split_score` for torch: `left` (..., 6) candidate left-child sums, the other
    arguments broadcast against left[..., 0]. Same formula and the same validity rules."""
    import torch

    lN, lSt, lSy, lSty, lStt, lE = left.unbind(-1)
    rN = tot[..., N] - lN
    rE = tot[..., E] - lE
    valid = (lN >= min_leaf) & (rN >= min_leaf) & (lE >= min_leaf) & (rE >= min_leaf)
    safe_lN = torch.where(valid, lN, torch.ones_like(lN))
    safe_rN = torch.where(valid, rN, torch.ones_like(rN))
    var_l = lStt / safe_lN - (lSt / safe_lN) ** 2
    rSt = tot[..., ST] - lSt
    var_r = (tot[..., STT] - lStt) / safe_rN - (rSt / safe_rN) ** 2
    valid &= (var_l >= alpha * var) & (var_r >= alpha * var) & (var_l > 0) & (var_r > 0)
    s = lSty - b * lSt - a * lSy + a * b * lN - tau * (lStt - 2.0 * a * lSt + a * a * lN)
    inv = 1.0 / safe_lN + 1.0 / safe_rN
    score = s * s * inv / (var * var) - penalty * inv
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

    Sums of such weights are exact in float64 whatever the order of addition, so the N and E
    channels (and with them min_samples_leaf, empty-bin detection and histogram subtraction)
    agree bit for bit across backends and devices. Unweighted data (all ones) is unchanged.
    """
    w = np.asarray(w, dtype=np.float64)
    return np.round(w / w.mean() / WEIGHT_QUANTUM) * WEIGHT_QUANTUM
