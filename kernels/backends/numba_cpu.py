"""CPU backend: numba kernels, one tree per thread, grown depth-first.

Why depth-first here when the torch backend grows level-wise: on a CPU the cost is memory
traffic, not parallel width. One tree's samples stay partitioned by node (contiguous ranges
of the rows themselves while a node's rows outgrow the cache, MOVE_ROWS_BYTES, then of an
index, as scikit-learn's HistGradientBoosting keeps them), one node's histogram (features x
bins x 6 channels) stays in cache while it is built and scanned, and only the histograms of
pending larger siblings are kept: always descending into the smaller child first bounds them
by log2(n) per tree. Parallelism comes from growing many trees at once, one a thread.

Nodes of `small_node` rows or more search splits on coarse histograms; smaller ones on every
fine code, sweeping their rows in each feature's order: the first of them on a path sorts its
rows once, its descendants inherit the orders (see `_fine_root`).

The grower times its phases with the CPU's cycle counter (PHASES; tests/benchmarks/bench_profile.py).

Node numbering is normalized to breadth-first order at the end, so a tree comes out
identical (up to floating-point summation order) to the one the torch backend grows.

Every kernel is compiled on first use and cached on disk where a cache can be written; `njit`
(numba_cache.py) decides where, and turns the cache off rather than fail when nothing is writable.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ..splitting import HI, LO, ST, STT, STY, SY, TIE_RTOL, E, N
from .numba_cache import njit

_LEFT_SALT = np.uint64(0x9E3779B97F4A7C15)
_RIGHT_SALT = np.uint64(0xD1B54A32D192ED03)
_COUNT_SALT = np.uint64(0x8CB92BA72F3D8DD7)


# ---- The grower's own profile: CPU cycles per phase, per tree ----

# What growing a tree times (`grow_tree`'s `prof`, and the gather before it, in this order). The counter
# costs about 20 cycles a read, a few reads a node: under 1% of a tree's time.
PHASES = ("gather rows", "allocation, root totals", "histogram build", "sibling subtraction", "fine roots: copy, sort",
          "side counts", "coarse scan", "coarse scores", "fine scan and scores", "pick split",
          "partition: coarse nodes", "partition: fine nodes", "leaf moments", "renumber")
(_GATHER, _ROOT, _HIST, _SUBTRACT, _FINE_ROOT, _SIDES, _COARSE, _SCORE, _FINE, _PICK, _PARTITION, _FINE_PARTITION,
 _LEAF, _RENUMBER) = range(len(PHASES))


@intrinsic
def cycles(typingctx):
    """The CPU's cycle counter (rdtsc on x86): a clock cheap enough to read inside the kernels."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.uint64(), codegen


@intrinsic
def _memcpy(typingctx, dst, src, nbytes):
    """memcpy(dst, src, nbytes) on raw addresses (intp): LLVM's, a few wide moves for a row."""
    def codegen(context, builder, signature, args):
        to, start, count = args
        bytes_ptr = ir.IntType(8).as_pointer()
        cgutils.raw_memcpy(builder, builder.inttoptr(to, bytes_ptr), builder.inttoptr(start, bytes_ptr), count, 1)
        return context.get_dummy_value()
    return types.void(types.intp, types.intp, types.intp), codegen


@njit()
def _tick(prof, phase, start):
    """Add the cycles since `start` to prof[phase]; return the counter now (the next phase's start)."""
    now = cycles()
    prof[phase] += np.float64(now - start)
    return now


@njit()
def cycles_now():
    return cycles()


# ---- The splitting rule and per-node randomness (see kernels/splitting.py for the definitions) ----

@njit(inline="always", error_model="numpy")
def splitmix64(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(error_model="numpy")
def child_keys(key):
    return splitmix64(key ^ _LEFT_SALT), splitmix64(key ^ _RIGHT_SALT)


@njit(error_model="numpy")
def poisson_draw(key, lam):
    """A Poisson(lam) draw from the node key: the count of unit-rate exponential arrivals before lam."""
    state = key ^ _COUNT_SALT
    k = 0
    elapsed = 0.0
    while True:
        state = splitmix64(state)
        u = (np.float64(state >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)  # in (0, 1)
        elapsed -= math.log(u)
        if elapsed > lam:
            return k
        k += 1


@njit(error_model="numpy")
def draw_features(key, p, mtry, poisson, cum_weights, mask):
    """Set mask[j] for the features node `key` may split on: `mtry` of them (partial
    Fisher-Yates), or max(1, min(Poisson(mtry), p)) with `poisson` (grf's draw). With weights
    (`cum_weights`, their cumulative sums over the p features; empty for none) that many draws
    with replacement, each feature in proportion to its weight: a feature drawn twice is one
    candidate, so strongly weighted features take a draw in most nodes and leave fewer to the rest."""
    n_try = min(max(1, poisson_draw(key, mtry)), p) if poisson else mtry
    if cum_weights.shape[0] > 0:
        mask[:] = False
        state = key
        for _ in range(n_try):
            state = splitmix64(state)
            u = np.float64(state >> np.uint64(11)) * (1.0 / 9007199254740992.0) * cum_weights[p - 1]  # [0, total)
            mask[min(np.searchsorted(cum_weights, u, side="right"), p - 1)] = True  # a weight of 0: never
        return
    if n_try >= p:
        mask[:] = True
        return
    mask[:] = False
    perm = np.arange(p)
    state = key
    for i in range(n_try):
        state = splitmix64(state)
        j = i + np.int64(state % np.uint64(p - i))
        perm[i], perm[j] = perm[j], perm[i]
        mask[perm[i]] = True


@njit(error_model="numpy")
def draw_feature_masks(keys, p, mtry, poisson, cum_weights):
    """Feature masks (len(keys), p) for many nodes at once (used by the level-wise grower)."""
    out = np.zeros((keys.shape[0], p), dtype=np.bool_)
    for i in range(keys.shape[0]):
        draw_features(keys[i], p, mtry, poisson, cum_weights, out[i])
    return out


@njit(error_model="numpy")
def children_keys(keys):
    left = np.empty_like(keys)
    right = np.empty_like(keys)
    for i in range(keys.shape[0]):
        left[i], right[i] = child_keys(keys[i])
    return left, right


@njit(inline="always", error_model="numpy")
def parent_stats(tot):
    """(a, b, tau_P, var_P) of a node from its totals; var_P <= 0 means it cannot split."""
    n = tot[N]
    a = tot[ST] / n
    b = tot[SY] / n
    var = tot[STT] / n - a * a
    tau = (tot[STY] / n - a * b) / var if var > 0 else 0.0
    return a, b, tau, var


@njit(inline="always", error_model="numpy")
def candidate_score(lN, lSt, lSy, lSty, lStt, lE, lLo, lHi, tot, least, a, b, tau, counts_known, min_leaf,
                    min_leaf_e, penalty):
    """The score of one candidate left child from its sums and row counts, -inf if inadmissible
    (`least` = alpha times the parent's sum of squares); without `counts_known` the row counts
    are left to `_pick`; each child needs min_leaf_e estimation rows (0 where the caller has
    checked them: `_scan_fine`). Branch-free, so that the loops calling it vectorize."""
    s = lSty - b * lSt - a * lSy + a * b * lN - tau * (lStt - 2.0 * a * lSt + a * a * lN)
    return score_from_sum(s, lN, lSt, lStt, lE, lLo, lHi, tot, least, counts_known, min_leaf, min_leaf_e, penalty)


@njit(inline="always", error_model="numpy")
def score_from_sum(s, lN, lSt, lStt, lE, lLo, lHi, tot, least, counts_known, min_leaf, min_leaf_e, penalty):
    """`candidate_score` given the left child's sum of pseudo-outcomes s (its split statistic):
    s^2 (1 / N_L + 1 / N_R), since the right child's sum is -s."""
    tN, tE, tSt, tStt, tLo, tHi = tot[N], tot[E], tot[ST], tot[STT], tot[LO], tot[HI]
    rN = tN - lN
    rSt = tSt - lSt
    inv_l = 1.0 / lN  # two divisions, not four: they bound the cost of scoring
    inv_r = 1.0 / rN
    size_l = lStt - lSt * lSt * inv_l
    size_r = (tStt - lStt) - rSt * rSt * inv_r
    score = s * s * (inv_l + inv_r)
    if penalty > 0.0:
        score -= penalty * (1.0 / size_l + 1.0 / size_r)
    ok = ((lE >= min_leaf_e) & (tE - lE >= min_leaf_e) & (size_l >= least) & (size_r >= least)
          & ((penalty == 0.0) | ((size_l > 0.0) & (size_r > 0.0))))
    counts_ok = ((lLo >= min_leaf) & (lHi >= min_leaf) & (tLo - lLo >= min_leaf) & (tHi - lHi >= min_leaf))
    ok &= counts_ok | (not counts_known)
    return score if ok else -np.inf


@njit(error_model="numpy")
def score_candidates(cum, n, tot, a, b, tau, counts_known, min_leaf, min_leaf_e, alpha, penalty, out):
    """Scores of n candidate left children, cum[:, i] = their sums and row counts (8, n), into out[:n].

    This loop runs once per candidate bin of every node split on histograms."""
    least = alpha * (tot[STT] - tot[ST] * tot[ST] / tot[N])
    for i in range(n):
        out[i] = candidate_score(cum[0, i], cum[1, i], cum[2, i], cum[3, i], cum[4, i], cum[5, i], cum[6, i],
                                 cum[7, i], tot, least, a, b, tau, counts_known, min_leaf, min_leaf_e, penalty)


@njit(error_model="numpy")
def _count_sides(mom_s, s_idx, lo, hi, a, fine_s, f, thr):
    """Structure rows (w > 0) of s_idx[lo:hi] with t below `a` and at or above it; only those with
    fine code <= thr on feature f unless f < 0."""
    below = 0.0
    above = 0.0
    every = f < 0
    col = max(f, 0)
    for ii in range(np.uint64(lo), np.uint64(hi)):  # unsigned indices: see _scan_fine
        r = np.uint64(s_idx[ii])
        w = mom_s[r, 0]
        # Without branches: a row's side is a coin flip to the branch predictor. A row of zero
        # weight gives 0 / 0, which compares false, and is not counted either way.
        counted = (w > 0.0) & (every | (fine_s[r, col] <= thr))
        is_below = mom_s[r, 1] / w < a
        below += np.float64(counted & is_below)
        above += np.float64(counted & (not is_below))
    return below, above


# ---- Tree growth ----

@njit(error_model="numpy")
def _build_hist(hist, n_bins, codes_s, mom_s, s_idx, s_lo, s_hi, codes_e, mom_e, e_idx, e_lo, e_hi):
    """Histogram the node's structure rows (5 channels) and estimation rows (channel E) into hist;
    return the number of bin additions (what bench_profile.py divides by the time)."""
    p = np.uint64(codes_s.shape[1])
    adds = 0
    hist[:] = 0.0
    for ii in range(s_lo, s_hi):
        r = np.uint64(s_idx[ii])  # unsigned indices: see _scan_fine
        m0 = mom_s[r, 0]
        m1 = mom_s[r, 1]
        m2 = mom_s[r, 2]
        m3 = mom_s[r, 3]
        m4 = mom_s[r, 4]
        for j in range(p):
            h = hist[j, codes_s[r, j]]
            h[0] += m0
            h[1] += m1
            h[2] += m2
            h[3] += m3
            h[4] += m4
    for ii in range(e_lo, e_hi):
        r = e_idx[ii]
        if mom_e[r, 0] > 0.0:  # E counts estimation rows of positive weight
            adds += 1
            for j in range(p):
                hist[j, codes_e[r, j], 5] += 1.0
    return (5 * (s_hi - s_lo) + adds) * codes_s.shape[1]


@njit(error_model="numpy")
def _subtract_hist(parent, child):
    """parent -= child: the larger sibling from its parent and the smaller (one flat, vectorized loop)."""
    pf = parent.reshape(-1)
    cf = child.reshape(-1)
    for i in range(pf.shape[0]):
        pf[i] -= cf[i]


@njit(error_model="numpy")
def _scan_hist(hist, n_bins, coarse_thr, fmask, tot, min_leaf, cand_j, cand_k, cand_cum):
    """Collect a node's candidate splits from its coarse histogram: (feature, fine threshold, left sums);
    returns the count.

    Candidates sit after bins holding structure rows (grf: after a split value) and leave at
    least min_leaf estimation rows on the left; the scan of a feature stops once the right
    child's is below it. Row counts are not histogrammed (see kernels.splitting): `_pick` checks them."""
    n_cand = 0
    for j in range(hist.shape[0]):
        if not fmask[j]:
            continue
        c0 = c1 = c2 = c3 = c4 = c5 = 0.0
        for k in range(n_bins[j] - 1):
            h = hist[j, k]
            c0 += h[0]
            c1 += h[1]
            c2 += h[2]
            c3 += h[3]
            c4 += h[4]
            c5 += h[5]
            if h[0] == 0.0 or c5 < min_leaf:
                continue
            if tot[E] - c5 < min_leaf:
                break
            cand_j[n_cand], cand_k[n_cand] = j, coarse_thr[j, k]
            cand_cum[0, n_cand], cand_cum[1, n_cand], cand_cum[2, n_cand] = c0, c1, c2
            cand_cum[3, n_cand], cand_cum[4, n_cand], cand_cum[5, n_cand] = c3, c4, c5
            n_cand += 1
    return n_cand


@njit(error_model="numpy")
def _sort_codes(col, m, counts, order, scratch):
    """order[:m] = the stable ascending order of col[:m] (uint16): an LSD radix sort on the low
    byte, then on the high byte. Only fine roots sort (once per feature), so its fixed cost of
    two passes over 256 buckets is paid rarely."""
    counts[:] = 0
    for i in range(m):
        counts[(col[i] & 0xFF) + 1] += 1
    for c in range(256):
        counts[c + 1] += counts[c]
    for i in range(m):
        c = col[i] & 0xFF
        scratch[counts[c]] = i
        counts[c] += 1
    counts[:] = 0
    for i in range(m):
        counts[(col[i] >> 8) + 1] += 1
    for c in range(256):
        counts[c + 1] += counts[c]
    for k in range(m):
        i = scratch[k]
        c = col[i] >> 8
        order[counts[c]] = i
        counts[c] += 1


# A node of fewer than `small_node` rows (a fine node) chooses among splits at every fine code.
# The first fine node on a path (a fine root) copies its rows of positive weight into small local
# buffers: their channels, fine codes, and per feature the structure rows in code order (a radix
# sort); the estimation rows apart, in one list. Only structure rows are swept: an estimation row
# adds nothing to the split criterion, and the estimation half's minimum leaf size is checked
# only for the candidates that could win (`_pick_fine`), by counting the node's estimation rows
# on each side: one pass for the winner, where keeping and splitting p orders of them cost more.
# Its descendants never sort again: a split partitions every feature's order stably into the
# children's (as CART implementations with presorted features do), so a node sweeps its rows in
# code order at O(rows) per feature, in cache. The orders come in two buffers: a split reads its
# node's and writes its children's into the other one (`_partition_order_into`), each row once,
# and a node on the stack records which buffer holds its orders. Depth-first growth finishes a
# fine root's subtree before it meets another fine root, so one set of buffers (small_node rows)
# serves the tree.
# Rows of zero weight add nothing anywhere and are left out. Within a fine subtree a node's range
# (on the stack) indexes these orders, not s_idx and e_idx, which are no longer partitioned there.
# The local buffers' rows are padded by PAD entries: rows of 2,048 uint16 lie 4,096 bytes apart, so
# a row's entry q of every feature would share one set of an 8-way L1 cache, and a fine root's
# copy, writing 30 of them a row, took twice as long (docs/benchmarks.md).
PAD = 32
_NOT_LOCAL, _LEAF_ONLY, _ORDERED = 0, 1, 2  # what the local buffers hold of a node (stack flag)


@njit(error_model="numpy")
def _fine_root(fine_s, mom_s, s_idx, s_lo, s_hi, fine_e, mom_e, e_idx, e_lo, e_hi, local, local_codes, order,
               e_row, e_codes, e_list, counts, scratch):
    """Fill the local buffers from a fine root's rows; return the numbers of structure and
    estimation rows. Structure row q: local[q] = (w, wt, wy, wty, wtt, -, t = wt / w, -) (columns
    5 and 7 are each node's, `_fine_pseudo_outcomes`: 8 columns keep a row in one cache line), its
    fine codes in local_codes[:, q], order[j] = the structure rows by fine code j. Estimation row
    q: its index into mom_e in e_row[q], its codes in e_codes[:, q]; e_list = those rows, in
    no particular order."""
    p = fine_s.shape[1]
    m = 0
    for ii in range(s_lo, s_hi):
        r = s_idx[ii]
        w = mom_s[r, 0]
        if w > 0.0:
            for c in range(5):
                local[m, c] = mom_s[r, c]
            local[m, 6] = mom_s[r, 1] / w
            for j in range(p):
                local_codes[j, m] = fine_s[r, j]
            m += 1
    m_e = 0
    for ii in range(e_lo, e_hi):
        r = e_idx[ii]
        if mom_e[r, 0] > 0.0:
            e_row[m_e] = r
            e_list[m_e] = m_e
            for j in range(p):
                e_codes[j, m_e] = fine_e[r, j]
            m_e += 1
    for j in range(p):
        _sort_codes(local_codes[j], m, counts, order[j], scratch)
    return m, m_e


@njit(error_model="numpy")
def _fine_pseudo_outcomes(local, rows, lo, hi, a, b, tau):
    """For the structure rows q = rows[lo:hi] of a fine node: local[q, 5] = the pseudo-outcome
    w (t - a)((y - b) - tau (t - a)) from the row's weighted moments, whose sum over a child is
    its split statistic (grf's relabeling, kernels.splitting), and local[q, 7] = 1 where t < a,
    else 0; return the node's rows below and at or above `a` (`_count_sides` of a fine node).
    Once per node, so that the sweep of every candidate feature adds two channels where it
    would add four."""
    below = 0.0
    for k in range(lo, hi):
        q = rows[k]
        w, wt, wy, wty, wtt = local[q, 0], local[q, 1], local[q, 2], local[q, 3], local[q, 4]
        local[q, 5] = wty - b * wt - a * wy + a * b * w - tau * (wtt - 2.0 * a * wt + a * a * w)
        side = np.float64(local[q, 6] < a)
        local[q, 7] = side
        below += side
    return below, (hi - lo) - below


@njit(error_model="numpy")
def _score_fine_candidates(cum, rows, n, tot, min_leaf, alpha, penalty, out):
    """Scores of n fine candidates into out[:n] from the sweep's sums, cum[:, i] = (N, St, -, -,
    Stt, pseudo-outcome sum, rows below the parent's mean) of the left child, and its number of
    rows, rows[i]."""
    least = alpha * (tot[STT] - tot[ST] * tot[ST] / tot[N])
    for i in range(n):
        out[i] = score_from_sum(cum[5, i], cum[0, i], cum[1, i], cum[4, i], 0.0, cum[6, i],
                                np.float64(rows[i]) - cum[6, i], tot, least, True, min_leaf, 0.0, penalty)


@njit(inline="always", error_model="numpy")
def _add_swept_row(local, q, c0, c1, c4, c5, c6):
    """The fine sweep's running sums with local row q added: N, St, Stt, the pseudo-outcome and
    the row's side of the parent's mean (`_fine_pseudo_outcomes`)."""
    return c0 + local[q, 0], c1 + local[q, 1], c4 + local[q, 4], c5 + local[q, 5], c6 + local[q, 7]


@njit(error_model="numpy")
def _scan_fine(local, local_codes, order, lo, hi, fmask, tot, min_leaf, alpha, penalty, cum, cand_k, cand_s,
               block_start, block_max):
    """Score a fine node's candidate splits into cand_s (with their left children's numbers of
    rows in cand_k, whose last row in the feature's order holds the threshold): after each fine
    code holding structure rows, with the row counts on each side of the parent's mean summed
    along, so the scores are complete but for the estimation half's minimum (`_pick_fine`
    checks it). Returns the number of candidates, in (feature, code) order.

    One feature at a time: its sweep over the structure rows [lo, hi) writes the candidates' sums
    (`_score_fine_candidates`: of the rows' pseudo-outcomes and sides, which the node's
    `_fine_pseudo_outcomes` wrote when it counted them, and of what admissibility needs) into
    `cum` (8, small_node), which `_score_fine_candidates` reads
    while it is still in cache; only the scores of all features are kept (`_fine_left_sums`
    recomputes the winner's sums), with each feature's first candidate and best score in
    block_start[j] and block_max[j] (-inf for features not drawn) for `_pick_fine`. The sweep
    appends without branching: every row writes a slot, and the count only advances after the
    last row of a code. A child needs min_leaf structure rows on each side of the parent's mean,
    so candidates that leave fewer than 2 min_leaf rows on a side are not written (they would
    score -inf): the first rows are only summed and the last ones not read, which in the
    smallest nodes is half of them."""
    k_min = max(math.ceil(2.0 * min_leaf), 1)  # the fewest rows a child can hold
    n_cand = 0
    for j in range(local_codes.shape[0]):
        block_start[j] = n_cand
        block_max[j] = -np.inf
        if not fmask[j]:
            continue
        col = local_codes[j]
        rows = order[j]
        c0 = c1 = c4 = c5 = c6 = 0.0
        n = np.uint64(0)
        first = lo + k_min - 1  # the row after which the left child holds k_min rows
        for k in range(np.uint64(lo), np.uint64(min(first, hi))):  # summed, not candidates
            c0, c1, c4, c5, c6 = _add_swept_row(local, np.uint64(rows[k]), c0, c1, c4, c5, c6)
        # Unsigned indices: numba checks every signed index for wraparound (a negative index counts
        # from the end), which costs a fifth of this loop.
        for k in range(np.uint64(first), np.uint64(max(hi - k_min, first))):
            q = np.uint64(rows[k])
            c0, c1, c4, c5, c6 = _add_swept_row(local, q, c0, c1, c4, c5, c6)
            boundary = col[np.uint64(rows[k + np.uint64(1)])] != col[q]
            cand_k[n_cand + n] = k - np.uint64(lo) + np.uint64(1)  # its left child's rows: see the docstring
            cum[0, n] = c0
            cum[1, n] = c1
            cum[4, n] = c4
            cum[5, n] = c5
            cum[6, n] = c6
            n += np.uint64(boundary)
        n = np.int64(n)
        _score_fine_candidates(cum, cand_k[n_cand:], n, tot, min_leaf, alpha, penalty, cand_s[n_cand:])
        block_max[j] = _max_of(cand_s, n_cand, n_cand + n)
        n_cand += n
    return n_cand


@njit(inline="always", error_model="numpy")
def _max_of(a, lo, hi):
    """max(a[lo:hi]), -inf if empty: in four lanes, since one running max waits on the last
    comparison at every element (the fine sweep took 12.6 cycles a row and feature with one,
    11.1 with four, at 1,000 rows). Scores are never NaN, so the lanes do not change the result."""
    m0 = m1 = m2 = m3 = -np.inf
    i = lo
    while i + 4 <= hi:
        m0 = max(m0, a[i])
        m1 = max(m1, a[i + 1])
        m2 = max(m2, a[i + 2])
        m3 = max(m3, a[i + 3])
        i += 4
    while i < hi:
        m0 = max(m0, a[i])
        i += 1
    return max(max(m0, m1), max(m2, m3))


@njit(error_model="numpy")
def _estimation_left(e_codes, e_list, e_lo, e_hi, f, thr):
    """The number of a fine node's estimation rows with code <= thr on feature f."""
    col = e_codes[f]
    left = 0
    for k in range(np.uint64(e_lo), np.uint64(e_hi)):  # unsigned indices: see _scan_fine
        left += col[np.uint64(e_list[k])] <= thr
    return left


@njit(inline="always", error_model="numpy")
def _fine_threshold(local_codes, order, lo, n_left, j):
    """The threshold of a fine candidate on feature j whose left child holds n_left structure rows:
    the code of its last row in the feature's order (`_scan_fine` keeps the count, not the code)."""
    return np.int64(local_codes[j, order[j, lo + n_left - 1]])


@njit(inline="always", error_model="numpy")
def _block_end(block_start, n_cand, j):
    """Where feature j's candidates end (`_scan_fine` lists them feature after feature)."""
    return block_start[j + 1] if j + 1 < block_start.shape[0] else n_cand


@njit(error_model="numpy")
def _pick_fine(cand_s, cand_k, n_cand, block_start, block_max, local_codes, order, lo, e_codes, e_list, e_lo, e_hi,
               min_leaf):
    """`_pick` for a fine node, whose candidates' structure row counts are known: the first
    candidate within TIE_RTOL of the best score (if that is > 0) among those leaving
    ceil(min_leaf) estimation rows on each side; returns it, its feature and its left child's
    estimation rows, or (-1, -1, 0). The estimation rows are counted only for candidates that
    could win: first the best ones in turn until one leaves enough (its score is the best), then
    those at the bar in order. A feature's candidates come in code order, so one found short on
    the left rules out those before it, and one short on the right those after it: they are set
    to -inf in cand_s (and the feature's best in block_max recomputed), so that at most two
    candidates a feature are counted in vain."""
    k_e = max(math.ceil(min_leaf), 0)
    n_e = e_hi - e_lo
    while True:  # the best admissible score
        best, jb = 0.0, -1
        for j in range(block_max.shape[0]):
            if block_max[j] > best:
                best, jb = block_max[j], j
        if jb < 0:
            return -1, -1, 0
        start, end = block_start[jb], _block_end(block_start, n_cand, jb)
        i = start
        while cand_s[i] != best:
            i += 1
        thr = _fine_threshold(local_codes, order, lo, cand_k[i], jb)
        left = _estimation_left(e_codes, e_list, e_lo, e_hi, jb, thr)
        if left < k_e:
            cand_s[start:i + 1] = -np.inf
        elif n_e - left < k_e:
            cand_s[i:end] = -np.inf
        else:
            break
        block_max[jb] = _max_of(cand_s, start, end)
    bar = best - TIE_RTOL * best
    for j in range(block_max.shape[0]):
        if block_max[j] < bar:
            continue
        for i in range(block_start[j], _block_end(block_start, n_cand, j)):
            if cand_s[i] >= bar:
                thr = _fine_threshold(local_codes, order, lo, cand_k[i], j)
                left = _estimation_left(e_codes, e_list, e_lo, e_hi, j, thr)
                if left >= k_e and n_e - left >= k_e:
                    return i, j, left
                if n_e - left < k_e:
                    break  # and so is every later candidate of this feature
    return -1, -1, 0  # not reached: the best admissible candidate is at the bar


@njit(error_model="numpy")
def _fine_left_sums(local, local_codes, order, lo, hi, f, thr, out):
    """out[:5] = the channel sums of a fine node's structure rows with code <= thr on feature f,
    added in the sweep's order, so that they equal the winning candidate's sums bit for bit."""
    out[:] = 0.0
    col = local_codes[f]
    rows = order[f]
    for k in range(lo, hi):
        q = rows[k]
        if col[q] > thr:
            break
        for c in range(5):
            out[c] += local[q, c]


@njit(error_model="numpy")
def _partition_order(rows, lo, hi, side, thr, scratch):
    """Partition rows[lo:hi] stably by side[row] <= thr; return the number on the left."""
    nl = np.uint64(0)
    nr = np.uint64(0)
    start = np.uint64(lo)
    for k in range(start, np.uint64(hi)):  # unsigned indices: see _scan_fine
        q = rows[k]
        left = side[np.uint64(q)] <= thr
        rows[start + nl] = q  # written to both places, kept in one: no branch to mispredict
        scratch[nr] = q
        nl += np.uint64(left)
        nr += np.uint64(not left)
    for k in range(nr):
        rows[start + nl + k] = scratch[k]
    return np.int64(nl)


@njit(error_model="numpy")
def _partition_order_into(src, dst, lo, hi, n_left, side, thr):
    """dst[lo:hi] = src[lo:hi] partitioned stably by side[row] <= thr, n_left of them on the left
    (known from the split's sums): one store a row, without a branch, and no copy back."""
    il = np.uint64(lo)
    ir = np.uint64(lo + n_left)
    for k in range(np.uint64(lo), np.uint64(hi)):  # unsigned indices: see _scan_fine
        q = src[k]
        left = side[np.uint64(q)] <= thr
        dst[il if left else ir] = q
        il += np.uint64(left)
        ir += np.uint64(not left)


@njit(error_model="numpy")
def _split_fine(local_codes, order, to_order, lo, hi, nl, e_codes, e_list, to_e_list, e_lo, e_hi, nl_e, f, thr,
                every_feature):
    """Partition a fine node's estimation rows [e_lo, e_hi) and every feature's order of its
    structure rows [lo, hi) stably into its children's in to_e_list and to_order (rows with code
    <= thr on feature f first: nl_e and nl of them); with `every_feature` False only the
    estimation rows (enough to populate the children as leaves)."""
    _partition_order_into(e_list, to_e_list, e_lo, e_hi, nl_e, e_codes[f], thr)
    if every_feature:
        for j in range(local_codes.shape[0]):
            _partition_order_into(order[j], to_order[j], lo, hi, nl, local_codes[f], thr)


@njit(error_model="numpy")
def _counts_ok(i, cand_j, cand_k, tot, mom_s, fine_s, s_idx, s_lo, s_hi, a, min_leaf):
    """Whether candidate i leaves min_leaf structure rows on each side of the mean `a` in each child."""
    below, above = _count_sides(mom_s, s_idx, s_lo, s_hi, a, fine_s, cand_j[i], cand_k[i])
    return below >= min_leaf and above >= min_leaf and tot[LO] - below >= min_leaf and tot[HI] - above >= min_leaf


@njit(error_model="numpy")
def _pick(cand_s, n_cand, cand_j, cand_k, tot, mom_s, fine_s, s_idx, s_lo, s_hi, a, min_leaf):
    """The first admissible candidate of a node split on histograms (in feature, bin order) within
    TIE_RTOL of the best admissible score; -1 if that is not > 0. Histograms cannot count rows on
    each side of the node's mean, so candidates are checked from the best score down: a node pays
    for a count only when its best candidates fail it."""
    while True:
        top = -1
        best = 0.0
        for i in range(n_cand):
            if cand_s[i] > best:
                best = cand_s[i]
                top = i
        if top < 0:
            return -1
        if _counts_ok(top, cand_j, cand_k, tot, mom_s, fine_s, s_idx, s_lo, s_hi, a, min_leaf):
            break
        cand_s[top] = -np.inf
    bar = best - TIE_RTOL * best
    for i in range(top):  # an earlier admissible candidate within the bar; else top, already counted
        if cand_s[i] >= bar and _counts_ok(i, cand_j, cand_k, tot, mom_s, fine_s, s_idx, s_lo, s_hi, a, min_leaf):
            return i
    return top


@njit(error_model="numpy")
def _partition(idx, lo, hi, codes, f, thr, scratch):
    """Stable partition of idx[lo:hi] by codes[:, f] <= thr; returns the first right position."""
    return lo + _partition_order(idx, lo, hi, codes[:, f], thr, scratch)


# A coarse node whose rows take more bytes than this (codes, fine codes, moments) moves them when
# it splits (`_partition_rows`), so that its children's rows are contiguous; a smaller node
# partitions an index over its block of rows, which is in cache. Measured on one core (whole
# fits, docs/benchmarks.md): at 1e6 x 30 (65 MB of rows a tree) moving only nodes over 4 MB took
# 5-7% less time than moving every coarse node's rows, and 2% less than moving those over 16 MB;
# indexing every node was 10% slower. At 1e5 x 10 (6.5 MB) the root alone moves: within 1% of none.
MOVE_ROWS_BYTES = 4 << 20


@njit(inline="always", error_model="numpy")
def _copy_array_row(src, r, dst, i):
    """dst[i] = src[r] for 2-d arrays whose rows are contiguous (checked in `grow_tree`), as one
    memcpy: moving a coarse node's rows took a quarter less time than copying element by element
    (docs/benchmarks.md)."""
    _memcpy(dst.ctypes.data + np.int64(i) * dst.strides[0], src.ctypes.data + np.int64(r) * src.strides[0],
            src.shape[1] * src.itemsize)


@njit(error_model="numpy")
def _rows_contiguous(a):
    return a.shape[1] <= 1 or a.strides[1] == a.itemsize


@njit(inline="always", error_model="numpy")
def _copy_row(codes, fine, mom, r, to_codes, to_fine, to_mom, i):
    """Row r of (codes, fine, mom) into row i of (to_codes, to_fine, to_mom)."""
    _copy_array_row(codes, r, to_codes, i)
    _copy_array_row(fine, r, to_fine, i)
    _copy_array_row(mom, r, to_mom, i)


@njit(error_model="numpy")
def _partition_rows(codes, fine, mom, lo, hi, f, thr, scratch_codes, scratch_fine, scratch_mom):
    """Stable partition of the rows [lo, hi) of a tree's own arrays (codes, fine codes, moments)
    by fine[:, f] <= thr, moving the rows themselves; returns the first right position. A coarse
    node's rows then stay contiguous in memory, so its histogram and every later pass over them
    read memory in order instead of one cache miss a row (scikit-learn's HistGradientBoosting
    keeps an index; its rows are far fewer bytes)."""
    nl = np.uint64(lo)
    nr = np.uint64(0)
    for r in range(np.uint64(lo), np.uint64(hi)):  # unsigned indices: see _scan_fine
        if fine[r, f] <= thr:
            if nl != r:
                _copy_row(codes, fine, mom, r, codes, fine, mom, nl)
            nl += np.uint64(1)
        else:
            _copy_row(codes, fine, mom, r, scratch_codes, scratch_fine, scratch_mom, nr)
            nr += np.uint64(1)
    nl = np.int64(nl)
    nr = np.int64(nr)
    codes[nl:hi] = scratch_codes[:nr]
    fine[nl:hi] = scratch_fine[:nr]
    mom[nl:hi] = scratch_mom[:nr]
    return nl


@njit(nogil=True, error_model="numpy")
def gather_tree_rows(codes, fine, mom, structure, estimation, prof):
    """One tree's structure and estimation rows of the coarse codes, fine codes and moments, as
    contiguous arrays (grow_tree's first six arguments), outside the GIL; prof gains the cycles."""
    start = cycles()
    out = (codes[structure], fine[structure], mom[structure], codes[estimation], fine[estimation], mom[estimation])
    _tick(prof, _GATHER, start)
    return out


@njit(nogil=True, error_model="numpy")
def grow_tree(codes_s, fine_s, mom_s, codes_e, fine_e, mom_e, n_bins, coarse_thr, key, min_leaf, alpha, penalty,
              max_depth, mtry, poisson, cum_weights, max_bins, small_node, move_rows_bytes, out_feature, out_threshold,
              out_child, out_leaf, prof):
    """Grow one honest tree; write it in breadth-first order into out_*; return (n_nodes, n_leaves,
    histogram bin additions).

    The structure half: coarse codes (uint8 [ns, p]), fine codes (uint16 [ns, p]), moments
    (w, wt, wy, wty, wtt) [ns, 5]; *_e: the estimation half. Thresholds are fine codes;
    out_leaf rows hold the leaf means of (t, y, ty, tt). Coarse splits move the rows themselves
    where a node's rows take more than move_rows_bytes (MOVE_ROWS_BYTES). prof[phase] gains the
    cycles spent in each of PHASES.
    """
    if small_node > 1 << 16:
        raise ValueError("small_node must be at most 65536: fine nodes number their rows in uint16")
    if not (_rows_contiguous(codes_s) and _rows_contiguous(fine_s) and _rows_contiguous(mom_s)
            and _rows_contiguous(codes_e) and _rows_contiguous(fine_e) and _rows_contiguous(mom_e)):
        raise ValueError("grow_tree needs each row of its codes and moments contiguous: see _copy_array_row")
    clock = cycles()
    ns, p = codes_s.shape
    ne = codes_e.shape[0]
    cap = out_feature.shape[0]
    s_idx = np.arange(ns).astype(np.int32)
    e_idx = np.arange(ne).astype(np.int32)
    scratch = np.empty(max(ns, ne), dtype=np.int32)
    row_bytes = 3 * p + 8 * mom_s.shape[1]
    # Room for the right child's rows of a coarse split (`_partition_rows`).
    room = max(ns, ne) if (ns + ne) * row_bytes > move_rows_bytes else 0
    scratch_codes = np.empty((room, p), dtype=codes_s.dtype)
    scratch_fine = np.empty((room, p), dtype=fine_s.dtype)
    scratch_mom = np.empty((room, mom_s.shape[1]))
    # The local buffers of the current fine root's subtree (see `_fine_root`).
    local = np.empty((small_node, 8))
    local_codes = np.empty((p, small_node + PAD), dtype=np.uint16)
    # Local row numbers are below small_node (at most 2^16, checked above): uint16 halves the orders'
    # share of the cache.
    # Two of each order: a node's in one, its children's in the other (`_split_fine`).
    orders = np.empty((2, p, small_node + PAD), dtype=np.uint16)
    e_row = np.empty(small_node, dtype=np.int64)
    e_codes = np.empty((p, small_node + PAD), dtype=np.uint16)
    e_lists = np.empty((2, small_node + PAD), dtype=np.uint16)
    fine_cum = np.zeros((8, small_node + PAD // 4))  # the fine candidates' sums: see _scan_fine
    block_start = np.empty(p, dtype=np.int64)
    block_max = np.empty(p)
    counts = np.empty(257, dtype=np.int64)
    fine_scratch = np.empty(small_node, dtype=np.uint16)
    fmask = np.zeros(p, dtype=np.bool_)
    best_left = np.zeros(6)
    # Candidates per feature: fewer than max_bins (coarse) or than small_node (fine, one per row at most).
    cap_cand = p * max(max_bins, small_node)
    cand_j = np.empty(cap_cand, dtype=np.int64)
    cand_k = np.empty(cap_cand, dtype=np.int64)
    cand_s = np.empty(cap_cand)
    cand_cum = np.empty((8, p * max_bins))  # coarse candidates' sums (fine ones go through fine_cum)
    t = np.zeros(8)  # the current node's totals, with its row counts LO and HI

    # Histograms of large nodes: the current one and those of pending larger siblings. Descending
    # into the smaller child first halves the rows at every pending level: log2(rows) + 2 suffice.
    n_slots = int(np.log2(ns + ne + 1)) + 3
    hists = np.empty((n_slots, p, max_bins, 6))  # `_build_hist` zeroes a slot: untouched slots cost no pages
    free = np.arange(n_slots)[::-1].copy()
    n_free = n_slots

    # Per node, in depth-first order.
    feat = np.full(cap, -1, dtype=np.int32)
    thr = np.zeros(cap, dtype=np.int32)
    left = np.full(cap, -1, dtype=np.int32)
    # Written before they are read (a child's totals when its parent splits, a leaf's values when
    # it is populated): left unzeroed, the nodes a tree never reaches cost no pages.
    tot = np.empty((cap, 6))
    leafval = np.empty((cap, 4))
    acc = np.empty(4)  # a leaf's sums

    # The stack of nodes to process: id, ranges, depth, key, histogram slot, and what the local
    # buffers hold of it (_NOT_LOCAL: its ranges index s_idx and e_idx; else the local orders).
    st_fine = np.zeros(cap, dtype=np.int8)
    st_buf = np.zeros(cap, dtype=np.int8)  # which of the two buffers holds a local node's orders
    st_id = np.empty(cap, dtype=np.int64)
    st_rng = np.empty((cap, 4), dtype=np.int64)
    st_depth = np.empty(cap, dtype=np.int64)
    st_key = np.empty(cap, dtype=np.uint64)
    st_slot = np.empty(cap, dtype=np.int64)

    tot[0] = 0.0
    for r in range(ns):
        for c in range(5):
            tot[0, c] += mom_s[r, c]
    for r in range(ne):
        tot[0, E] += 1.0 if mom_e[r, 0] > 0.0 else 0.0
    hist_adds = 0
    n_nodes = 1
    root_slot = -1
    clock = _tick(prof, _ROOT, clock)
    if ns + ne >= small_node:
        n_free -= 1
        root_slot = free[n_free]
        hist_adds += _build_hist(hists[root_slot], n_bins, codes_s, mom_s, s_idx, 0, ns, codes_e, mom_e, e_idx, 0, ne)
        clock = _tick(prof, _HIST, clock)
    top = 0
    st_id[0], st_depth[0], st_key[0], st_slot[0] = 0, 0, key, root_slot
    st_rng[0, 0], st_rng[0, 1], st_rng[0, 2], st_rng[0, 3] = 0, ns, 0, ne
    top = 1

    while top > 0:
        top -= 1
        node = st_id[top]
        s_lo, s_hi, e_lo, e_hi = st_rng[top, 0], st_rng[top, 1], st_rng[top, 2], st_rng[top, 3]
        depth, nkey, slot, ordered, buf = st_depth[top], st_key[top], st_slot[top], st_fine[top], st_buf[top]
        t[:6] = tot[node]

        bf, bb, nl, fine_j = -1, -1, 0, -1
        order, e_list = orders[buf], e_lists[buf]  # a local node's (see st_buf)
        a, b, tau, var = parent_stats(t)
        fine = slot < 0  # no histogram: a node of fewer than small_node rows
        if depth < max_depth and var > 0 and t[E] >= 2 * min_leaf:
            if fine:
                if ordered == _NOT_LOCAL:  # a fine root: its orders go to buffer 0 (st_buf)
                    m, m_e = _fine_root(fine_s, mom_s, s_idx, s_lo, s_hi, fine_e, mom_e, e_idx, e_lo, e_hi, local,
                                        local_codes, order, e_row, e_codes, e_list, counts, fine_scratch)
                    s_lo, s_hi, e_lo, e_hi = 0, m, 0, m_e  # from here on the node's ranges in the local orders
                    ordered = _ORDERED
                    clock = _tick(prof, _FINE_ROOT, clock)
                if ordered == _LEAF_ONLY:  # too few rows to split (see children_ordered): no orders kept
                    t[LO], t[HI] = 0.0, 0.0
                else:
                    t[LO], t[HI] = _fine_pseudo_outcomes(local, order[0], s_lo, s_hi, a, b, tau)
            else:
                t[LO], t[HI] = _count_sides(mom_s, s_idx, s_lo, s_hi, a, fine_s, -1, 0)
        else:
            t[LO], t[HI] = 0.0, 0.0
        clock = _tick(prof, _SIDES, clock)
        if t[LO] >= 2 * min_leaf and t[HI] >= 2 * min_leaf:
            draw_features(nkey, p, mtry, poisson, cum_weights, fmask)
            if fine:  # scored feature by feature, row counts included
                n_cand = _scan_fine(local, local_codes, order, s_lo, s_hi, fmask, t, min_leaf, alpha, penalty,
                                    fine_cum, cand_k, cand_s, block_start, block_max)
                clock = _tick(prof, _FINE, clock)
                i, fine_j, fine_nl_e = _pick_fine(cand_s, cand_k, n_cand, block_start, block_max, local_codes, order,
                                                  s_lo, e_codes, e_list, e_lo, e_hi, min_leaf)
            else:
                n_cand = _scan_hist(hists[slot], n_bins, coarse_thr, fmask, t, min_leaf, cand_j, cand_k, cand_cum)
                clock = _tick(prof, _COARSE, clock)
                score_candidates(cand_cum, n_cand, t, a, b, tau, False, min_leaf, min_leaf, alpha, penalty, cand_s)
                clock = _tick(prof, _SCORE, clock)
                i = _pick(cand_s, n_cand, cand_j, cand_k, t, mom_s, fine_s, s_idx, s_lo, s_hi, a, min_leaf)
            if i >= 0:
                if fine:
                    bf, nl = fine_j, cand_k[i]
                    bb = _fine_threshold(local_codes, order, s_lo, nl, bf)
                    _fine_left_sums(local, local_codes, order, s_lo, s_hi, bf, bb, best_left)
                    best_left[E] = fine_nl_e
                else:
                    bf, bb = cand_j[i], cand_k[i]
                    for c in range(6):
                        best_left[c] = cand_cum[c, i]
            clock = _tick(prof, _PICK, clock)
        if bf < 0:  # a leaf: populate it with the estimation half
            w = 0.0
            acc[:] = 0.0
            if ordered == _NOT_LOCAL:
                for ii in range(e_lo, e_hi):
                    r = e_idx[ii]
                    w += mom_e[r, 0]
                    for c in range(4):
                        acc[c] += mom_e[r, c + 1]
            else:  # the node's local estimation rows
                for ii in range(e_lo, e_hi):
                    r = e_row[e_list[ii]]
                    w += mom_e[r, 0]
                    for c in range(4):
                        acc[c] += mom_e[r, c + 1]
            for c in range(4):
                leafval[node, c] = acc[c] / w
            if slot >= 0:
                free[n_free] = slot
                n_free += 1
            clock = _tick(prof, _LEAF, clock)
            continue

        if fine:
            # The children inherit the node's ordered rows; only the estimation rows (for their
            # leaves) when neither of them can split. A child splits only with 2 min_leaf
            # estimation rows and 2 min_leaf structure rows on each side of its mean (the sides
            # test above), so with fewer than 4 min_leaf structure rows it stays a leaf.
            nl_e = best_left[E]
            can_split = depth + 1 < max_depth and (
                (nl_e >= 2 * min_leaf and nl >= 4 * min_leaf)
                or (t[E] - nl_e >= 2 * min_leaf and (s_hi - s_lo) - nl >= 4 * min_leaf))
            children_ordered = _ORDERED if can_split else _LEAF_ONLY
            _split_fine(local_codes, order, orders[1 - buf], s_lo, s_hi, nl, e_codes, e_list, e_lists[1 - buf],
                        e_lo, e_hi, np.int64(nl_e), bf, bb, can_split)
            s_mid, e_mid = s_lo + nl, e_lo + np.int64(nl_e)
        else:
            children_ordered = _NOT_LOCAL
            # A large node moves its rows (s_idx and e_idx stay the identity there); below
            # move_rows_bytes its subtree's rows stay in its block, in cache, and an index moves.
            if (s_hi - s_lo + e_hi - e_lo) * row_bytes > move_rows_bytes:
                s_mid = _partition_rows(codes_s, fine_s, mom_s, s_lo, s_hi, bf, bb, scratch_codes, scratch_fine,
                                        scratch_mom)
                e_mid = _partition_rows(codes_e, fine_e, mom_e, e_lo, e_hi, bf, bb, scratch_codes, scratch_fine,
                                        scratch_mom)
            else:
                s_mid = _partition(s_idx, s_lo, s_hi, fine_s, bf, bb, scratch)
                e_mid = _partition(e_idx, e_lo, e_hi, fine_e, bf, bb, scratch)
        clock = _tick(prof, _FINE_PARTITION if fine else _PARTITION, clock)
        lid, rid = n_nodes, n_nodes + 1
        n_nodes += 2
        feat[node], thr[node], left[node] = bf, bb, lid
        for c in range(6):
            tot[lid, c] = best_left[c]
            tot[rid, c] = t[c] - best_left[c]
        lkey, rkey = child_keys(nkey)

        l_size = (s_mid - s_lo) + (e_mid - e_lo)
        r_size = (s_hi - s_mid) + (e_hi - e_mid)
        l_wants = l_size >= small_node and depth + 1 < max_depth
        r_wants = r_size >= small_node and depth + 1 < max_depth
        l_slot, r_slot = -1, -1
        if slot >= 0 and (l_wants or r_wants):
            if n_free == 0:
                raise RuntimeError("histogram pool exhausted (cannot happen: the smaller child goes first)")
            # Build the smaller child's histogram; the larger one is the parent's minus it.
            small_is_left = l_size <= r_size
            n_free -= 1
            new = free[n_free]
            if small_is_left:
                hist_adds += _build_hist(hists[new], n_bins, codes_s, mom_s, s_idx, s_lo, s_mid, codes_e, mom_e, e_idx,
                                         e_lo, e_mid)
            else:
                hist_adds += _build_hist(hists[new], n_bins, codes_s, mom_s, s_idx, s_mid, s_hi, codes_e, mom_e, e_idx,
                                         e_mid, e_hi)
            clock = _tick(prof, _HIST, clock)
            _subtract_hist(hists[slot], hists[new])
            clock = _tick(prof, _SUBTRACT, clock)
            if small_is_left:
                l_slot, r_slot = new, slot
            else:
                l_slot, r_slot = slot, new
            if not l_wants:
                free[n_free] = l_slot
                n_free += 1
                l_slot = -1
            if not r_wants:
                free[n_free] = r_slot
                n_free += 1
                r_slot = -1
        elif slot >= 0:
            free[n_free] = slot
            n_free += 1

        # Push the larger child first so the smaller one is processed next.
        order_left_last = l_size <= r_size
        for k in range(2):
            push_left = (k == 1) == order_left_last
            if push_left:
                st_id[top], st_slot[top], st_key[top] = lid, l_slot, lkey
                st_rng[top, 0], st_rng[top, 1], st_rng[top, 2], st_rng[top, 3] = s_lo, s_mid, e_lo, e_mid
            else:
                st_id[top], st_slot[top], st_key[top] = rid, r_slot, rkey
                st_rng[top, 0], st_rng[top, 1], st_rng[top, 2], st_rng[top, 3] = s_mid, s_hi, e_mid, e_hi
            st_depth[top] = depth + 1
            st_fine[top] = children_ordered
            st_buf[top] = 1 - buf if fine else 0
            top += 1

    clock = _tick(prof, _ROOT, clock)  # the stack bookkeeping of the last node: negligible
    # Renumber breadth-first: children of a node are consecutive, leaves numbered in that order.
    queue = np.empty(n_nodes, dtype=np.int64)
    queue[0] = 0
    head, tail, n_leaves = 0, 1, 0
    while head < tail:
        old = queue[head]
        if feat[old] < 0:
            out_feature[head] = -1
            out_threshold[head] = 0
            out_child[head] = n_leaves
            for c in range(4):
                out_leaf[n_leaves, c] = leafval[old, c]
            n_leaves += 1
        else:
            out_feature[head] = feat[old]
            out_threshold[head] = thr[old]
            out_child[head] = tail
            queue[tail] = left[old]
            queue[tail + 1] = left[old] + 1
            tail += 2
        head += 1
    _tick(prof, _RENUMBER, clock)
    return n_nodes, n_leaves, hist_adds


# Rows walked down a tree in lockstep (`_walk`).
WALK_GROUP = 8


@njit(inline="always", error_model="numpy")
def _walk(codes, feature, threshold, child, root, rows, k0, m, nodes):
    """nodes[:m] = the leaf nodes that rows rows[k0:k0 + m] reach from `root`. A walk is a chain
    of dependent loads (node, its feature, the row's code, the child); walking several rows in
    lockstep overlaps their latencies: the local linear correction's walk of each tree's own
    rows at 1e5 took a third less time with 8 than one at a time (docs/benchmarks.md)."""
    for g in range(m):
        nodes[g] = root
    walking = True
    while walking:
        walking = False
        for g in range(m):
            node = nodes[g]
            f = feature[node]
            if f >= 0:
                nodes[g] = child[node] + (codes[rows[k0 + g], f] > threshold[node])
                walking = True


@njit(parallel=True, nogil=True, error_model="numpy")
def leaf_ids(codes, feature, threshold, child, roots, out):
    """out[i, t] = index of the leaf that row i reaches in tree t.

    Trees are the outer (parallel) loop: one tree's nodes stay in cache while every row walks
    it, instead of each row dragging all trees through the cache."""
    rows = np.arange(codes.shape[0])
    for t in numba.prange(roots.shape[0]):
        nodes = np.empty(WALK_GROUP, dtype=np.int64)
        for k0 in range(0, rows.shape[0], WALK_GROUP):
            m = min(WALK_GROUP, rows.shape[0] - k0)
            _walk(codes, feature, threshold, child, roots[t], rows, k0, m, nodes)
            for g in range(m):
                out[k0 + g, t] = child[nodes[g]]


@njit(parallel=True, nogil=True, error_model="numpy")
def local_linear_leaf_sums(z, t, y, w, rows, leaves, n_parts, sums, totals):
    """For each k: sums[leaves[k]] += w_r (the upper triangle of u u', row-major, then u y) and
    totals[leaves[k]] += w_r, r = rows[k], u = (1, z_r, t_r, t_r z_r): the local linear
    correction's leaf moments (kernels.local_linear), without a (rows, K) matrix of row moments.

    n_parts threads (numba.get_num_threads(), passed in: called in here it would keep the
    function out of numba's cache) split the leaves into ranges, each skipping the pairs outside
    its own: no two threads add to one leaf, and each leaf's rows are added in the pairs' order
    (the same sums on any number of threads). On one thread it was a serial step of every fit with the
    correction: 2.3 ms a tree at 1e5 rows, a twentieth of growing the tree."""
    if rows.shape[0] == 0:
        return
    first, last = leaves.min(), leaves.max() + 1
    for part in numba.prange(n_parts):
        lo = first + (last - first) * part // n_parts
        hi = first + (last - first) * (part + 1) // n_parts
        u = np.empty(2 * z.shape[1] + 2)
        for k in range(rows.shape[0]):
            leaf = leaves[k]
            if leaf < lo or leaf >= hi:
                continue
            _add_row_moments(z, t, y, w, rows[k], sums, totals, leaf, u)


@njit(inline="always", error_model="numpy")
def _add_row_moments(z, t, y, w, r, sums, totals, leaf, u):
    """sums[leaf] += w_r (the upper triangle of u u', row-major, then u y) and totals[leaf] += w_r,
    u = (1, z_r, t_r, t_r z_r) (u: scratch of 2 d + 2); nothing for a row of zero weight."""
    wr = w[r]
    if wr == 0.0:
        return
    d = z.shape[1]
    D = 2 * d + 2
    u[0] = 1.0
    u[d + 1] = t[r]
    for i in range(d):
        u[1 + i] = z[r, i]
        u[d + 2 + i] = t[r] * z[r, i]
    c = 0
    for i in range(D):
        for j in range(i, D):
            sums[leaf, c] += wr * (u[i] * u[j])
            c += 1
    for i in range(D):
        sums[leaf, c] += wr * (u[i] * y[r])
        c += 1
    totals[leaf] += wr


@njit(parallel=True, nogil=True, error_model="numpy")
def local_linear_leaf_moments(codes, feature, threshold, child, roots, leaf_offsets, rows, offsets, z, t, y, w,
                              n_parts, out):
    """out[leaf] = the means of the local linear correction's row moments (`_add_row_moments`)
    over the leaf's estimation rows, in float32, for the leaves of trees roots (leaf rows
    leaf_offsets[b]:leaf_offsets[b + 1] of tree b, whose estimation rows are
    rows[offsets[b]:offsets[b + 1]]). Each tree walks its own rows and sums them into its own
    leaves, in the rows' order: `local_linear_leaf_sums` on the pairs (row, leaf) with the
    division, without the pairs or a float64 copy of every leaf's sums (1e5 rows, 500 trees:
    0.6 s against 2-3 s with those). n_parts threads (as in `local_linear_leaf_sums`) each take
    every n_parts-th tree and reuse one buffer for their sums."""
    d = z.shape[1]
    K = out.shape[1]
    n_trees = roots.shape[0]
    most = 0
    for b in range(n_trees):
        most = max(most, leaf_offsets[b + 1] - leaf_offsets[b])
    for part in numba.prange(n_parts):
        sums = np.empty((most, K))
        totals = np.empty(most)
        u = np.empty(2 * d + 2)
        nodes = np.empty(WALK_GROUP, dtype=np.int64)
        for b in range(part, n_trees, n_parts):
            first, last = leaf_offsets[b], leaf_offsets[b + 1]
            sums[:last - first] = 0.0
            totals[:last - first] = 0.0
            for k0 in range(offsets[b], offsets[b + 1], WALK_GROUP):
                m = min(WALK_GROUP, offsets[b + 1] - k0)
                _walk(codes, feature, threshold, child, roots[b], rows, k0, m, nodes)
                for g in range(m):
                    _add_row_moments(z, t, y, w, rows[k0 + g], sums, totals, child[nodes[g]] - first, u)
            for leaf in range(last - first):
                for c in range(K):
                    out[first + leaf, c] = np.float32(sums[leaf, c] / totals[leaf])


@njit(parallel=True, nogil=True, error_model="numpy")
def leaf_means(ids, table, valid, use_valid, out):
    """out[r] = the mean over trees t (those with valid[r, t] if use_valid) of table[ids[r, t]],
    in float64; NaN for a row with no such tree."""
    K = table.shape[1]
    for r in numba.prange(ids.shape[0]):
        for k in range(K):
            out[r, k] = 0.0
        count = 0
        for t in range(ids.shape[1]):
            if use_valid and not valid[r, t]:
                continue
            leaf = ids[r, t]
            for k in range(K):
                out[r, k] += table[leaf, k]
            count += 1
        for k in range(K):
            out[r, k] = out[r, k] / count if count > 0 else np.nan


@njit(parallel=True, nogil=True, error_model="numpy")
def leaf_scores(ids, table, center, coef, out):
    """out[r, t] = sum_k (table[ids[r, t], k] - center[r, k]) coef[r, k], in float64."""
    K = table.shape[1]
    for r in numba.prange(ids.shape[0]):
        for t in range(ids.shape[1]):
            leaf = ids[r, t]
            s = 0.0
            for k in range(K):
                s += (table[leaf, k] - center[r, k]) * coef[r, k]
            out[r, t] = s


_SHARED_BLOCK = 256  # rows a thread takes at once: each tree's leaves are searched for all of them in turn


@njit(parallel=True, nogil=True, error_model="numpy")
def shared_leaf_sums(ids, leaves, tree_starts, table, out):
    """out[r] = the sum over trees t of table[i] where leaves[i] == ids[r, t], in float64: the
    variance smoother's sums (kernels.variance_smoothing). leaves[tree_starts[t]:tree_starts[t
    + 1]] are tree t's, ascending (a leaf that is not among them adds nothing). A thread takes a
    block of rows and searches one tree's few hundred leaves for all of them before the next
    tree's, so that tree's leaves stay in cache (row by row over every tree: 1.7x the time)."""
    K = table.shape[1]
    n_rows, n_trees = ids.shape
    for block in numba.prange((n_rows + _SHARED_BLOCK - 1) // _SHARED_BLOCK):
        r0 = block * _SHARED_BLOCK
        r1 = min(n_rows, r0 + _SHARED_BLOCK)
        for r in range(r0, r1):
            for k in range(K):
                out[r, k] = 0.0
        for t in range(n_trees):
            lo, hi = tree_starts[t], tree_starts[t + 1]
            if lo == hi:
                continue
            keys = leaves[lo:hi]
            for r in range(r0, r1):
                leaf = ids[r, t]
                i = np.searchsorted(keys, leaf)
                if i < hi - lo and keys[i] == leaf:
                    for k in range(K):
                        out[r, k] += table[lo + i, k]


def node_capacity(n_est_rows: int, n_struct: int, n_est: int, min_leaf: float) -> int:
    """An upper bound on a tree's node count: every leaf holds a structure row and >= min_leaf
    estimation rows of positive weight (`n_est_rows` of the tree's `n_est`)."""
    leaves = min(n_struct, n_est, math.floor(n_est_rows / max(min_leaf, 1e-12)) + 1)
    return 2 * max(leaves, 1) + 1


@njit(parallel=True, nogil=True, error_model="numpy")
def forest_moments(ids, leaf_values, group_size, min_spread, out):
    """Per row, from its leaf in every tree: out[r] = (tau, between-group variance, within-group
    noise, denominator) of kernels.prediction.forest_estimate, without materializing the
    (rows, trees, 4) gather; group_size 0 computes tau and the denominator only, 1 also the
    variance between single trees. Rows are the parallel loop; leaf means (float32) sum in float64.
    `min_spread`: prediction.MIN_TREATMENT_SPREAD, an argument (a global would be frozen into the
    kernel's disk cache, which only this file's changes invalidate)."""
    n_trees = ids.shape[1]
    groups = n_trees // group_size if group_size >= 1 else 0
    for r in numba.prange(ids.shape[0]):
        at = ay = aty = att = 0.0
        for b in range(n_trees):
            leaf = ids[r, b]
            at += leaf_values[leaf, 0]
            ay += leaf_values[leaf, 1]
            aty += leaf_values[leaf, 2]
            att += leaf_values[leaf, 3]
        at /= n_trees
        ay /= n_trees
        aty /= n_trees
        att /= n_trees
        denom = att - at * at
        if not denom > min_spread * att:  # the treatment constant around the row: NaN
            denom = np.nan
        tau = (aty - at * ay) / denom
        mu = ay - tau * at
        between = 0.0
        total = 0.0
        if group_size >= 1:
            for g in range(groups):
                group_sum = 0.0
                for k in range(group_size):
                    leaf = ids[r, g * group_size + k]
                    t = leaf_values[leaf, 0]
                    psi = (leaf_values[leaf, 2] - mu * t - tau * leaf_values[leaf, 3]) - at * (
                        leaf_values[leaf, 1] - mu - tau * t)
                    group_sum += psi
                    total += psi * psi
                group_mean = group_sum / group_size
                between += group_mean * group_mean
            between /= groups
            total /= groups * group_size
        out[r, 0] = tau
        out[r, 1] = between
        out[r, 2] = (total - between) / (group_size - 1) if group_size >= 2 else 0.0
        out[r, 3] = denom
