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


def _score(left_rows, node_rows, est_left, est_node, mom, min_leaf, alpha, penalty):
    w, wt, wy, wty, wtt = (mom[node_rows, c].sum() for c in range(5))
    a, b = wt / w, wy / w
    var = wtt / w - a * a
    tau = (wty / w - a * b) / var
    lw, lwt, lwy, lwty, lwtt = (mom[left_rows, c].sum() for c in range(5))
    rw = w - lw
    le, re = mom[est_left, 0].sum(), mom[est_node, 0].sum() - mom[est_left, 0].sum()
    if min(lw, rw, le, re) < min_leaf or min(lw, rw) < alpha * w:
        return -np.inf
    var_l = lwtt / lw - (lwt / lw) ** 2
    var_r = (wtt - lwtt) / rw - ((wt - lwt) / rw) ** 2
    if var_l < alpha * var or var_r < alpha * var or var_l <= 0 or var_r <= 0:
        return -np.inf
    # Sum over the left child of rho_i = (t_i - a)(y_i - b - tau (t_i - a)), weighted.
    t = mom[left_rows, 1] / mom[left_rows, 0]
    y = mom[left_rows, 2] / mom[left_rows, 0]
    s = np.sum(mom[left_rows, 0] * (t - a) * (y - b - tau * (t - a)))
    return s * s * (1 / lw + 1 / rw) / var**2 - penalty * (1 / lw + 1 / rw)


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


def grow_reference_tree(data, mom, structure, estimation, key, min_leaf, alpha, penalty, max_depth, mtry):
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
        if depth < max_depth and w >= 2 * min_leaf and mom[e_rows, 0].sum() >= 2 * min_leaf and var > 0:
            mask = np.zeros(p, dtype=bool)
            draw_features(np.uint64(nkey), p, mtry, mask)
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
