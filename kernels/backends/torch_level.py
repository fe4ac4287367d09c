"""Torch backend: a batch of trees grown together, level by level, on any device.

Every sample of every tree in the batch carries the index of its node in the current level.
Large nodes split on coarse bins: while the level's histograms fit the memory budget they are
dense, (nodes, features, bins, 6 channels), built with index_add and, below the root, only for
the smaller child of each split: the larger is its parent's histogram minus the smaller
(histogram subtraction). The rule's two row-count channels (rows below and at or above each
node's mean treatment residual) depend on the node, so they are histogrammed afresh. Deeper
levels have more nodes than dense histograms afford; there, and for small nodes on fine codes,
each feature's (node, code) keys are sorted and summed by
segment, as GPU boosting libraries do, so work and memory follow the samples, not nodes x
bins. Every regime scores exactly the candidates the numba backend scores, with the same rule
(kernels.splitting) and the same tie-breaking.
"""

from __future__ import annotations

import numpy as np
import torch

from ..binning import FINE_BINS, BinnedCovariates
from ..forest_arrays import TreeArrays
from ..sampling import TreeSample
from ..splitting import HI, LO, SMALL_NODE_ROWS, TIE_RTOL, E, N, SplitRule, parent_stats_torch, split_scores_torch
from .numba_cpu import children_keys, draw_feature_masks  # per-node randomness, computed on the host

DEFAULT_HIST_BUDGET = 256 * 2**20  # bytes of dense histogram per level


def _first_within_tolerance(scores: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Index of the first entry of each row of `scores` within TIE_RTOL of the row's best."""
    bar = (best - TIE_RTOL * best)[:, None]
    return (scores >= bar).to(torch.uint8).argmax(dim=1)


def _cum_best(hist, counts, tot, fmask, n_bins, rule: SplitRule):
    """Best (feature, bin, score, left sums) per node from dense histograms (F, p, B, 6) and the
    level's row-count histograms (F, p, B, 2)."""
    F, p, B, _ = hist.shape
    cum = torch.cat([hist, counts], dim=3).cumsum(dim=2)
    a, b, tau, _ = parent_stats_torch(tot)
    ex = (slice(None), None, None)
    scores = split_scores_torch(cum, tot[:, None, None, :], a[ex], b[ex], tau[ex],
                                rule.min_samples_leaf, rule.alpha, rule.imbalance_penalty)
    no_structure = hist[..., N] == 0  # candidates sit after bins holding structure rows
    bins = torch.arange(B, device=hist.device)
    last = bins[None, :] >= (n_bins[:, None] - 1)  # (p, B): no right child
    scores = scores.masked_fill(no_structure | last[None] | ~fmask[:, :, None], -torch.inf).reshape(F, p * B)
    best = scores.max(dim=1).values
    idx = _first_within_tolerance(scores, best)
    best_f, best_b = idx // B, idx % B
    left = cum[torch.arange(F, device=hist.device), best_f, best_b]
    return best_f, best_b, best, left


def _segmented_cumsum(values: torch.Tensor, seg: torch.Tensor, max_len: int) -> torch.Tensor:
    """Inclusive cumulative sums within runs of equal `seg` (runs no longer than max_len), by doubling.

    Unlike a global cumsum minus each run's offset, it never subtracts large numbers from each
    other, so a small node's sums keep full precision at any level size."""
    x = values.clone()
    d = 1
    while d < max_len:
        same = torch.zeros(len(seg), dtype=torch.bool, device=seg.device)
        same[d:] = seg[d:] == seg[:-d]
        shifted = torch.zeros_like(x)
        shifted[d:] = x[:-d]
        x = x + shifted * same[:, None]
        d *= 2
    return x


def _sparse_best(codes, rows, node, vals, F, tot, fmask, rule: SplitRule, B: int):
    """Best split per node from per-feature sorted (node, code) keys and segmented sums.

    `codes` holds codes below B (coarse codes and B = max_bins, or fine codes and B = 65536);
    `vals` the samples' 8 channels."""
    dev = vals.device
    a, b, tau, _ = parent_stats_torch(tot)
    allowed_sample = fmask[node]  # (samples, p)
    per_feature = []
    best = torch.full((F,), -torch.inf, dtype=torch.float64, device=dev)
    for j in range(codes.shape[1]):
        keep = allowed_sample[:, j]
        keys = node[keep] * B + codes[rows[keep], j].long()
        if keys.numel() == 0:
            continue
        uk, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        sums = torch.zeros(len(uk), vals.shape[1], dtype=torch.float64, device=dev).index_add_(0, inverse, vals[keep])
        seg = uk // B
        left = _segmented_cumsum(sums, seg, max_len=int(torch.bincount(seg).max()))
        scores = split_scores_torch(left, tot[seg], a[seg], b[seg], tau[seg],
                                    rule.min_samples_leaf, rule.alpha, rule.imbalance_penalty)
        scores = scores.masked_fill(sums[:, N] == 0, -torch.inf)
        best = best.scatter_reduce(0, seg, scores, reduce="amax")
        per_feature.append((j, uk, seg, left, scores))
    # The first candidate within tolerance of each node's best, in (feature, code) order.
    bar = best - TIE_RTOL * best
    best_f = torch.full((F,), -1, dtype=torch.long, device=dev)
    best_b = torch.zeros(F, dtype=torch.long, device=dev)
    best_left = torch.zeros(F, vals.shape[1], dtype=torch.float64, device=dev)
    for j, uk, seg, left, scores in per_feature:
        hit = (scores >= bar[seg]) & torch.isfinite(scores)
        first = torch.full((F,), len(uk), dtype=torch.long, device=dev)
        first = first.scatter_reduce(0, seg[hit], torch.arange(len(uk), device=dev)[hit], reduce="amin")
        take = (first < len(uk)) & (best_f < 0)
        idx = first[take]
        best_f[take] = j
        best_b[take] = uk[idx] % B
        best_left[take] = left[idx]
    return best_f, best_b, best, best_left


class TorchLevelGrower:
    """Grows a batch of trees level by level with torch (see the module docstring)."""

    def __init__(self, device: torch.device, hist_budget: int = DEFAULT_HIST_BUDGET):
        self.device = device
        self.hist_budget = hist_budget

    def grow(self, data: BinnedCovariates, mom: torch.Tensor, trees: list[TreeSample],
             rule: SplitRule) -> list[TreeArrays]:
        dev = self.device
        K = len(trees)
        coarse = torch.as_tensor(data.coarse, device=dev)
        fine = torch.as_tensor(data.fine.astype(np.int32), device=dev)
        coarse_thr = torch.as_tensor(data.coarse_thr, device=dev)
        p, B = coarse.shape[1], data.max_bins
        n_bins = torch.as_tensor(data.n_bins, dtype=torch.long, device=dev)
        s_sizes = [len(t.structure) for t in trees]
        e_sizes = [len(t.estimation) for t in trees]
        rows = torch.as_tensor(np.concatenate([t.structure for t in trees] + [t.estimation for t in trees]),
                               dtype=torch.long, device=dev)
        node = torch.cat([torch.repeat_interleave(torch.arange(K, device=dev), torch.as_tensor(s_sizes, device=dev)),
                          torch.repeat_interleave(torch.arange(K, device=dev), torch.as_tensor(e_sizes, device=dev))])
        is_est = torch.zeros(len(rows), dtype=torch.bool, device=dev)
        is_est[sum(s_sizes):] = True
        # Histogram channels: structure samples carry the five moments, estimation samples count
        # themselves if their weight is positive (min_samples_leaf counts rows, not weight).
        vals = torch.zeros(len(rows), 6, dtype=torch.float64, device=dev)
        m = mom[rows]
        vals[~is_est, :5] = m[~is_est]
        vals[is_est, E] = (m[is_est, 0] > 0).to(torch.float64)
        # Each structure row's t (the row counts compare it with its node's mean); NaN elsewhere.
        positive = ~is_est & (m[:, 0] > 0)
        t_row = torch.where(positive, m[:, 1] / torch.where(positive, m[:, 0], 1.0), torch.nan)

        tot = torch.zeros(K, 6, dtype=torch.float64, device=dev).index_add_(0, node, vals)
        keys = np.array([t.key for t in trees], dtype=np.uint64)
        tree_of = np.arange(K)
        hist = None
        levels = []  # per level: (tree_of, feature, threshold, child_rank, split, leaf_values)
        depth = 0
        while True:
            F = tot.shape[0]
            a, _, _, var = parent_stats_torch(tot)
            below = t_row < a[node]
            counts = torch.stack([below, positive & ~below], dim=1).to(torch.float64)  # channels LO, HI
            tot = torch.cat([tot, torch.zeros(F, 2, dtype=torch.float64, device=dev).index_add_(0, node, counts)], 1)
            least = 2 * rule.min_samples_leaf
            can = (var > 0) & (tot[:, E] >= least) & (tot[:, LO] >= least) & (tot[:, HI] >= least)
            if depth >= rule.max_depth:
                can[:] = False
            small = torch.bincount(node, minlength=F) < SMALL_NODE_ROWS  # split on fine codes
            draws = draw_feature_masks(keys, p, rule.mtry, rule.poisson_mtry, rule.cumulative_weights())
            fmask = torch.as_tensor(draws, device=dev)
            vals8 = torch.cat([vals, counts], dim=1)
            best_f = torch.full((F,), -1, dtype=torch.long, device=dev)
            best_thr = torch.zeros(F, dtype=torch.long, device=dev)
            best_score = torch.full((F,), -torch.inf, dtype=torch.float64, device=dev)
            left = torch.zeros(F, 8, dtype=torch.float64, device=dev)
            if bool((can & ~small).any()):
                if hist is None and self._dense_fits(F, p, B):
                    hist = self._dense_hist(coarse, rows, node, vals, F, p, B)
                in_large = ~small[node]
                if hist is not None:
                    count_hist = self._dense_hist(coarse, rows[in_large], node[in_large], counts[in_large], F, p, B)
                    f, bb, score, lft = _cum_best(hist, count_hist, tot, fmask, n_bins, rule)
                else:
                    f, bb, score, lft = _sparse_best(coarse, rows[in_large], node[in_large], vals8[in_large], F, tot,
                                                     fmask, rule, B)
                take = can & ~small & (f >= 0)
                best_f = torch.where(take, f, best_f)
                best_thr = torch.where(take, coarse_thr[f.clamp(min=0), bb], best_thr)
                best_score = torch.where(take, score, best_score)
                left = torch.where(take[:, None], lft, left)
            if bool((can & small).any()):
                in_small = small[node]
                f, thr, score, lft = _sparse_best(fine, rows[in_small], node[in_small], vals8[in_small], F, tot,
                                                  fmask, rule, FINE_BINS)
                take = can & small & (f >= 0)
                best_f = torch.where(take, f, best_f)
                best_thr = torch.where(take, thr, best_thr)
                best_score = torch.where(take, score, best_score)
                left = torch.where(take[:, None], lft, left)
            best_f = torch.where(best_score > 0, best_f, torch.full_like(best_f, -1))
            split = best_f >= 0
            rank = torch.cumsum(split.long(), 0) - 1

            # Leaves take the estimation half's means of (t, y, ty, tt).
            est = ~split[node] & is_est
            esum = torch.zeros(F, 5, dtype=torch.float64, device=dev).index_add_(0, node[est], mom[rows[est]])
            leaf_values = esum[:, 1:] / esum[:, :1]
            split_np = split.cpu().numpy()
            levels.append((tree_of, best_f.cpu().numpy(), best_thr.cpu().numpy(), rank.cpu().numpy(), split_np,
                           leaf_values.cpu().numpy()))
            n_split = int(split_np.sum())
            if n_split == 0:
                break

            # Route the samples of split nodes to their children; samples in leaves retire.
            alive = split[node]
            rows, node, vals, is_est = rows[alive], node[alive], vals[alive], is_est[alive]
            positive, t_row = positive[alive], t_row[alive]
            go_right = fine[rows, best_f[node]].long() > best_thr[node]
            node = 2 * rank[node] + go_right.long()
            parent_tot = tot[split, :6]
            child_left = left[split, :6]
            tot = torch.stack([child_left, parent_tot - child_left], dim=1).reshape(-1, 6)
            lk, rk = children_keys(keys[split_np])
            keys = np.stack([lk, rk], axis=1).reshape(-1)
            tree_of = np.repeat(tree_of[split_np], 2)
            hist = self._children_hist(hist, split, tot, coarse, rows, node, vals, p, B) if hist is not None else None
            depth += 1
        return _assemble(levels, K)

    def _dense_fits(self, F: int, p: int, B: int) -> bool:
        # Parent and child levels' six channels side by side, and the level's two row counts.
        return F * p * B * (6 * 2 + 2) * 8 <= self.hist_budget

    def _dense_hist(self, codes, rows, node, vals, F, p, B):
        channels = vals.shape[1]
        hist = torch.zeros(F * p * B, channels, dtype=torch.float64, device=self.device)
        for j in range(p):
            hist.index_add_(0, (node * p + j) * B + codes[rows, j].long(), vals)
        return hist.view(F, p, B, channels)

    def _children_hist(self, parent_hist, split, tot, codes, rows, node, vals, p, B):
        """Children histograms by subtraction: build the smaller child of each split, derive the other."""
        n_split = tot.shape[0] // 2
        if not self._dense_fits(2 * n_split, p, B):
            return None
        size = (tot[:, N] + tot[:, E]).view(n_split, 2)
        small_side = (size[:, 1] < size[:, 0]).long()  # 0: left child is smaller (ties: left)
        in_small = (node % 2) == small_side[node // 2]
        small = self._dense_hist(codes, rows[in_small], node[in_small] // 2, vals[in_small], n_split, p, B)
        large = parent_hist[split] - small
        hist = torch.empty(n_split, 2, p, B, 6, dtype=torch.float64, device=self.device)
        ar = torch.arange(n_split, device=self.device)
        hist[ar, small_side] = small
        hist[ar, 1 - small_side] = large
        return hist.view(2 * n_split, p, B, 6)


def _assemble(levels, K: int) -> list[TreeArrays]:
    """Per-tree breadth-first arrays from the per-level records."""
    tree_of = np.concatenate([lv[0] for lv in levels])
    feature = np.concatenate([lv[1] for lv in levels])
    threshold = np.concatenate([lv[2] for lv in levels])
    split = np.concatenate([lv[4] for lv in levels])
    leaf_values = np.concatenate([lv[5] for lv in levels])
    # Global id of each split node's left child: the next level's base + 2 * rank.
    bases = np.concatenate([[0], np.cumsum([len(lv[0]) for lv in levels])])
    child_global = np.concatenate([
        np.where(lv[4], bases[d + 1] + 2 * lv[3], -1) for d, lv in enumerate(levels)
    ])
    order = np.argsort(tree_of, kind="stable")  # per tree, level order = breadth-first order
    local = np.empty(len(order), dtype=np.int64)
    counts = np.bincount(tree_of, minlength=K)
    starts = np.concatenate([[0], np.cumsum(counts)])
    local[order] = np.arange(len(order)) - np.repeat(starts[:-1], counts)
    out = []
    for k in range(K):
        ids = order[starts[k]:starts[k + 1]]
        is_split = split[ids]
        leaf_rank = np.cumsum(~is_split) - 1
        child = np.where(is_split, local[np.maximum(child_global[ids], 0)], leaf_rank)
        out.append(TreeArrays(
            feature=np.where(is_split, feature[ids], -1).astype(np.int32),
            threshold=np.where(is_split, threshold[ids], 0).astype(np.int32),
            child=child.astype(np.int64),
            leaf_values=leaf_values[ids][~is_split],
        ))
    return out


def leaf_ids_torch(codes: torch.Tensor, feature: torch.Tensor, threshold: torch.Tensor, child: torch.Tensor,
                   roots: torch.Tensor, max_depth: int) -> torch.Tensor:
    """(rows, trees) leaf indices by walking all trees one level at a time."""
    m, T = codes.shape[0], roots.shape[0]
    codes_l = codes.long()
    node = roots.expand(m, T).clone()
    for _ in range(max_depth + 1):
        f = feature[node]
        is_leaf = f < 0
        if bool(is_leaf.all()):
            break
        code = torch.gather(codes_l, 1, f.clamp(min=0))
        node = torch.where(is_leaf, node, child[node] + (code > threshold[node]).long())
    if not bool((feature[node] < 0).all()):  # a max_depth below the trees' (a damaged model) ends on splits
        raise ValueError(f"the forest's trees are deeper than its max_depth ({max_depth})")
    return child[node]
