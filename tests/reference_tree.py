"""A slow, plain NumPy float64 reference for growing one honest causal tree.

It shares nothing with the backends but the definition of per-node randomness (which features
a node may use) and the output format: every candidate split is scored from direct sums over
the node's rows, with the GRF criterion written out again here. Candidates follow the rule of
kernels.splitting: nodes with fewer than SMALL_NODE_ROWS rows split at any fine code holding
structure rows, larger nodes after any coarse bin holding structure rows.
"""

from __future__ import annotations

import numpy as np

from tauforge.kernels.backends.numba_cpu import child_keys, draw_features
from tauforge.kernels.forest_arrays import TreeArrays
from tauforge.kernels.splitting import SMALL_NODE_ROWS


def _sides(rows, mom, a):
    """Structure rows (w > 0) with t below a, and at or above it."""
    rows = rows[mom[rows, 0] > 0]
    below = int(np.sum(mom[rows, 1] / mom[rows, 0] < a))
    return below, len(rows) - below


def _rows(rows, mom):
    """Rows of positive weight (min_samples_leaf counts estimation rows, not their weight)."""
    return int(np.sum(mom[rows, 0] > 0))


def _sum_of_squares(rows, mom):
    """sum of w (t - weighted mean of t)^2 over rows."""
    w, wt, wtt = mom[rows, 0].sum(), mom[rows, 1].sum(), mom[rows, 4].sum()
    return wtt - wt * wt / w


def _score(left_rows, node_rows, est_left, est_node, mom, min_leaf, alpha, penalty):
    w, wt, wy, wty, wtt = (mom[node_rows, c].sum() for c in range(5))
    a, b = wt / w, wy / w
    tau = (wty / w - a * b) / (wtt / w - a * a)
    right_rows = np.setdiff1d(node_rows, left_rows)
    le, re = _rows(est_left, mom), _rows(est_node, mom) - _rows(est_left, mom)
    if min(le, re) < min_leaf or min(*_sides(left_rows, mom, a), *_sides(right_rows, mom, a)) < min_leaf:
        return -np.inf
    size_l, size_r = _sum_of_squares(left_rows, mom), _sum_of_squares(right_rows, mom)
    if min(size_l, size_r) < alpha * _sum_of_squares(node_rows, mom) or (penalty > 0 and min(size_l, size_r) <= 0):
        return -np.inf
    # Sums over each child of rho_i = (t_i - a)(y_i - b - tau (t_i - a)), weighted.
    score = 0.0
    for rows in (left_rows, right_rows):
        t = mom[rows, 1] / mom[rows, 0]
        y = mom[rows, 2] / mom[rows, 0]
        s = np.sum(mom[rows, 0] * (t - a) * (y - b - tau * (t - a)))
        score += s * s / mom[rows, 0].sum()
    return score - (penalty * (1 / size_l + 1 / size_r) if penalty > 0 else 0.0)


def _candidates(data, s_rows, e_rows, mom, j):
    """(fine threshold, structure rows going left, estimation rows going left) per candidate of feature j."""
    structure = s_rows[mom[s_rows, 0] > 0]
    if len(s_rows) + len(e_rows) < SMALL_NODE_ROWS:
        thresholds = np.unique(data.fine[structure, j])
    else:
        bins = np.unique(data.coarse[structure, j])
        thresholds = data.coarse_thr[j, bins[bins < data.n_bins[j] - 1]]
    for f in thresholds:
        yield f, s_rows[data.fine[s_rows, j] <= f], e_rows[data.fine[e_rows, j] <= f]


def grow_reference_tree(data, mom, structure, estimation, key, min_leaf, alpha, penalty, max_depth, mtry,
                        poisson_mtry=False, cum_weights=None):
    p = data.fine.shape[1]
    queue = [(np.asarray(structure), np.asarray(estimation), 0, key)]
    feature, threshold, child, leaves = [], [], [], []
    i = 0
    while i < len(queue):
        s_rows, e_rows, depth, nkey = queue[i]
        i += 1
        w, wt, wtt = mom[s_rows, 0].sum(), mom[s_rows, 1].sum(), mom[s_rows, 4].sum()
        var = wtt / w - (wt / w) ** 2 if w > 0 else 0.0
        bf, bb = -1, -1
        if (depth < max_depth and var > 0 and _rows(e_rows, mom) >= 2 * min_leaf
                and min(_sides(s_rows, mom, wt / w)) >= 2 * min_leaf):
            mask = np.zeros(p, dtype=bool)
            draw_features(np.uint64(nkey), p, mtry, poisson_mtry, np.zeros(0) if cum_weights is None else cum_weights,
                          mask)
            scored = [(j, f, _score(sl, s_rows, el, e_rows, mom, min_leaf, alpha, penalty))
                      for j in np.flatnonzero(mask) for f, sl, el in _candidates(data, s_rows, e_rows, mom, j)]
            best = max([c[2] for c in scored], default=-np.inf)
            if best > 0:
                # The first candidate within a relative 1e-9 of the best (kernels.splitting.TIE_RTOL).
                bf, bb, _ = next(c for c in scored if c[2] >= best - 1e-9 * best)
        if bf < 0:
            feature.append(-1)
            threshold.append(0)
            child.append(len(leaves))
            ew = mom[e_rows, 0].sum()
            leaves.append([mom[e_rows, c].sum() / ew for c in range(1, 5)])
            continue
        feature.append(bf)
        threshold.append(bb)
        child.append(len(queue))
        lk, rk = child_keys(np.uint64(nkey))
        go_left_s = data.fine[s_rows, bf] <= bb
        go_left_e = data.fine[e_rows, bf] <= bb
        queue.append((s_rows[go_left_s], e_rows[go_left_e], depth + 1, lk))
        queue.append((s_rows[~go_left_s], e_rows[~go_left_e], depth + 1, rk))
    return TreeArrays(np.array(feature), np.array(threshold), np.array(child), np.array(leaves))
