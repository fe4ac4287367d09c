"""Publishing: the version folder assembled from the training run's artifacts (the forest, the
evaluation and its report, the reference profile), described by its model card, published to the
store as the next version. The store and the card are `tauforge.components.registry`'s."""

import os
import shutil
import tempfile

from ._kfp import HTML, Artifact, Dataset, Input, Model, Output, component
from .registry import EVALUATION_FILE, FOREST_DIR, REFERENCE_FILE, REPORT_FILE, ModelStore


def publish(store: str, model: str, card: dict, *, forest_dir: str, evaluation_path: str, report_path: str,
            reference_path: str) -> int:
    """Publish the forest (a saved `CausalForest` folder) with its evaluation, report and reference
    profile and the causal part of its card (`registry.build_card`) as the next version of
    `model` in `store`; return the version."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(forest_dir, os.path.join(tmp, FOREST_DIR))
        shutil.copy(evaluation_path, os.path.join(tmp, EVALUATION_FILE))
        shutil.copy(report_path, os.path.join(tmp, REPORT_FILE))
        shutil.copy(reference_path, os.path.join(tmp, REFERENCE_FILE))
        return ModelStore(store).publish(model, tmp, card)


def estimator_description(estimator: str, summary: dict, nuisance: dict) -> dict:
    """The card's account of how the effect was estimated, from the estimate's summary."""
    name = {"tauforge": "tauforge.CausalForestDML",
            "econml": "econml.grf.CausalForest on tauforge's cross-fitted residuals (EconML's CausalForestDML "
                      "final stage)"}[estimator]
    described = {"name": name, "estimator": estimator, "forest_params": summary["forest_params"],
                 "nuisance": nuisance, "n_shards": summary["n_shards"], "seed": summary["seed"]}
    # What the fit chose where its parameters say 'auto' or 'importance': the correction's
    # covariates and penalty and the candidate weights (older estimates lack the weights or the
    # penalty).
    for chosen in ("linear_correction_variables", "linear_correction_ridge", "candidate_weights"):
        if chosen in summary:
            described[chosen] = summary[chosen]
    if "bootstrap" in summary:
        described["bootstrap"] = {k: v for k, v in summary["bootstrap"].items()
                                  if k in ("n_bootstrap", "trees", "interval", "nuisance", "n_shards")}
    return described


# ----------------------------------------------------------------------------- KFP component
@component
def publish_model(dataset: Input[Dataset], forest: Input[Model], estimate: Input[Artifact],
                  reference: Input[Dataset], evaluation: Input[Artifact], report: Input[HTML], store: str,
                  model_name: str, source: str, run_id: str, run_name: str, estimator: str, n_folds: int,
                  model_y: str, model_t: str, published: Output[Model], graph: str = "",
                  reweight_nuisance: bool = True) -> int:
    """Publish the trained forest and everything its card records as the next version of
    `model_name` in `store`; return the version. `published` points at it (the KFP UI's lineage
    from the run to the model: store, model, version and the card's ATE). `graph`: the run's causal
    graph (DOT or GML text, empty for none), which the validate step checked the spec against."""
    import json

    from tauforge.components.config import redacted_uri
    from tauforge.components.data import load_profile, load_spec
    from tauforge.components.estimate import Estimate
    from tauforge.components.graph import CausalGraph, card_section
    from tauforge.components.nuisance import NuisanceConfig
    from tauforge.components.publish import estimator_description, publish
    from tauforge.components.registry import build_card

    spec = load_spec(dataset.path)
    summary = Estimate.load(estimate.path).summary
    with open(evaluation.path) as f:
        result = json.load(f)
    nuisance = NuisanceConfig(model_y, model_t, int(n_folds), reweight_nuisance).card(spec.binary)
    data = {"source": redacted_uri(source), **load_profile(dataset.path)}  # a presigned URL's token: not kept
    card = build_card(spec=json.loads(spec.to_json()), data=data,
                      estimate=summary, evaluation=result,
                      estimator=estimator_description(estimator, summary, nuisance),
                      run={"run_id": run_id, "run_name": run_name, "pipeline": "tauforge-training"},
                      graph=card_section(CausalGraph.parse(graph) if graph else None, spec))
    version = publish(store, model_name, card, forest_dir=forest.path, evaluation_path=evaluation.path,
                      report_path=report.path, reference_path=reference.path)
    pointer = {"store": redacted_uri(store), "model": model_name, "version": int(version),
               "ate": summary.get("ate"), "ate_lower": summary.get("ate_lower"), "ate_upper": summary.get("ate_upper")}
    with open(published.path, "w") as f:
        json.dump(pointer, f)
    published.metadata.update(pointer)
    print(f"tauforge: published {model_name} version {version} to {store}", flush=True)
    return version
