"""Import a fitted `econml.grf.CausalForest` as a `kernels.CausalForest`: the same trees as
plain arrays, so EconML's forest is saved, served and checksummed like ours, never pickled.

EconML's causal forest (with its default fit_intercept=True) keeps in every node the means of
the moment terms alpha = (t y, y) and J = ((t t, t), (t, 1)) over the node's estimation
samples: exactly our leaf values (t, y, t y, t t). Its real-valued thresholds become fine bin
codes of a binner whose edges are the thresholds themselves, so "x <= threshold" and
"code <= threshold code" agree for every x. Trees are renumbered breadth-first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .binning import QuantileBinner
from .forest import CausalForest
from .forest_arrays import ForestArrays, TreeArrays

SOURCE = "econml.grf.CausalForest"


def import_econml_forest(ecf: Any, device: str = "cpu") -> CausalForest:
    """A CausalForest predicting what `ecf` predicts: its point estimate exactly, its variance
    with our bootstrap-of-little-bags over EconML's subforests (groups of trees sharing a
    half-sample). Out-of-bag prediction is not available on an imported forest."""
    ecf = _causal_forest(ecf)
    if not getattr(ecf, "fit_intercept", False) or ecf.n_outputs_ != 2:
        raise ValueError("only econml.grf.CausalForest with fit_intercept=True and a single treatment "
                         "can be imported")
    trees = [est.tree_ for est in ecf.estimators_]
    p = int(ecf.n_features_)
    edges = []
    for j in range(p):
        thr = np.concatenate([t.threshold[(t.children_left != -1) & (t.feature == j)] for t in trees])
        edges.append(np.unique(thr).astype(np.float64))
    if max(len(e) for e in edges) >= 65536:
        raise ValueError("the EconML forest uses over 65,535 distinct thresholds on one feature; "
                         "it cannot be stored with uint16 codes")

    forest = CausalForest(n_estimators=len(trees), min_samples_leaf=ecf.min_samples_leaf,
                          max_depth=ecf.max_depth, max_samples=ecf.max_samples,
                          ci_group_size=ecf.subforest_size if ecf.inference else 1, honest=ecf.honest,
                          linear_correction_variables=None, variance_smoothing=False, candidate_weights=None,
                          device=device,
                          random_state=ecf.random_state if isinstance(ecf.random_state, int) else None)
    forest.binner_ = QuantileBinner.from_edges(edges)
    forest.forest_ = ForestArrays.from_trees([_tree_arrays(t, edges) for t in trees])
    forest.n_features_in_ = p
    forest.n_train_ = int(np.max(ecf.n_samples_))
    forest.seed_ = forest.random_state if forest.random_state is not None else 0
    forest.shard_ = (0, 1)
    forest.source_ = SOURCE
    forest.linear_correction_ = None  # EconML's forests have none
    forest.candidate_weights_ = None  # EconML draws its candidates uniformly
    from ._inputs import resolve_device

    forest.device_ = resolve_device(device)
    return forest


def _causal_forest(ecf: Any) -> Any:
    """The econml.grf.CausalForest to import: `ecf` itself, or a fitted CausalForestDML's final
    forest when its CATE is that forest's prediction on X (no featurizer, one outcome)."""
    from econml.dml import CausalForestDML
    from econml.grf import CausalForest as EconMLCausalForest

    if isinstance(ecf, CausalForestDML):
        if not hasattr(ecf, "models_y"):
            raise ValueError("the CausalForestDML is not fitted; call its fit(Y, T, X=X) first")
        if ecf.featurizer is not None or getattr(ecf, "treatment_featurizer", None) is not None:
            raise ValueError("a CausalForestDML with a featurizer or treatment_featurizer cannot be imported: its "
                             "forest is grown on featurized covariates or treatments")
        forests = ecf.model_cate.estimators_
        if len(forests) != 1:
            raise ValueError(f"a CausalForestDML of {len(forests)} outcomes cannot be imported; fit one per outcome")
        ecf = forests[0]
    if not isinstance(ecf, EconMLCausalForest):  # CausalIVForest (no subclass) has the same arrays, other moments
        raise ValueError(f"only econml.grf.CausalForest (or a CausalForestDML) can be imported, got "
                         f"{type(ecf).__module__}.{type(ecf).__name__}")
    if not hasattr(ecf, "estimators_"):
        raise ValueError("the EconML forest is not fitted; call its fit(X, T, y) first")
    return ecf


def _tree_arrays(tree: Any, edges: list[np.ndarray]) -> TreeArrays:
    """One EconML tree, breadth-first, children adjacent, thresholds as fine codes."""
    left, right = tree.children_left, tree.children_right
    order, child_of = [0], {}
    k = 0
    while k < len(order):  # breadth-first: each split's children get consecutive new indices
        node = order[k]
        if left[node] != -1:
            child_of[node] = len(order)
            order += [int(left[node]), int(right[node])]
        k += 1
    n = len(order)
    feature = np.full(n, -1, dtype=np.int64)
    threshold = np.zeros(n, dtype=np.int64)
    child = np.zeros(n, dtype=np.int64)
    leaves = []
    for new, node in enumerate(order):
        if left[node] == -1:
            child[new] = len(leaves)
            jac, alpha = tree.jac[node], tree.precond[node]
            leaves.append((jac[1], alpha[1], alpha[0], jac[0]))  # (t, y, t y, t t)
        else:
            j = int(tree.feature[node])
            feature[new] = j
            threshold[new] = np.searchsorted(edges[j], tree.threshold[node])
            child[new] = child_of[node]
    return TreeArrays(feature, threshold, child, np.asarray(leaves, dtype=np.float64))
