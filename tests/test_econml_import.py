"""An EconML causal forest imported as plain arrays predicts what EconML predicts."""

import numpy as np
import pytest
from econml.grf import CausalForest as EconMLCausalForest

from tauforge.kernels import CausalForest
from tauforge.kernels.datasets import make_causal_data
from tauforge.kernels.econml_import import import_econml_forest


@pytest.fixture(scope="module")
def econml_forest():
    d = make_causal_data("simple", n=2000, p=5, seed=4)
    return EconMLCausalForest(n_estimators=24, random_state=1).fit(d.X, d.T - d.e, d.Y - d.m), d


def test_imported_forest_predicts_econml_point_and_variance(econml_forest, tmp_path):
    ecf, d = econml_forest
    X = make_causal_data("simple", n=400, p=5, seed=5).X
    forest = import_econml_forest(ecf)
    point, var = ecf.predict_and_var(X)
    ours, our_var = forest.predict_and_var(X)
    # Leaf means are stored in float32 (kernels/forest_arrays.py), about 7 significant digits;
    # beyond that rounding, EconML's point and its BLB variance are ours.
    np.testing.assert_allclose(ours, point.ravel(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(our_var, var.ravel(), rtol=1e-4, atol=1e-10)
    forest.save(tmp_path / "imported")
    loaded = CausalForest.load(tmp_path / "imported")
    np.testing.assert_array_equal(loaded.predict(X), ours)
    assert loaded.source_ == "econml.grf.CausalForest"
    with pytest.raises(ValueError, match="not available on a forest imported from econml"):
        loaded.oob_predict(d.X)
    with pytest.raises(ValueError, match="imported from econml"):
        CausalForest.merge([loaded])


def test_unfitted_or_multi_treatment_forests_are_refused(econml_forest):
    with pytest.raises(ValueError, match="not fitted"):
        import_econml_forest(EconMLCausalForest())
    ecf, d = econml_forest
    two = EconMLCausalForest(n_estimators=4, random_state=0).fit(d.X, np.c_[d.T, d.X[:, 0]], d.Y)
    with pytest.raises(ValueError, match="single treatment"):
        import_econml_forest(two)


def test_a_fitted_causal_forest_dml_imports_its_final_forest_and_other_forests_are_refused(econml_forest):
    # A review: a CausalIVForest (instrument moments in its leaves) imported without a word and
    # predicted other values; a fitted CausalForestDML was called "not fitted".
    from econml.dml import CausalForestDML
    from econml.grf import CausalIVForest
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import PolynomialFeatures

    _, d = econml_forest
    dml = CausalForestDML(model_y=LinearRegression(), model_t=LinearRegression(), n_estimators=24, cv=2,
                          random_state=0).fit(d.Y, d.T, X=d.X)
    np.testing.assert_allclose(import_econml_forest(dml).predict(d.X[:50]), dml.effect(d.X[:50]), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="CausalForestDML is not fitted"):
        import_econml_forest(CausalForestDML())
    featurized = CausalForestDML(model_y=LinearRegression(), model_t=LinearRegression(), n_estimators=4, cv=2,
                                 featurizer=PolynomialFeatures(2), random_state=0).fit(d.Y, d.T, X=d.X)
    with pytest.raises(ValueError, match="featurizer"):
        import_econml_forest(featurized)
    iv = CausalIVForest(n_estimators=4, random_state=0).fit(d.X, d.T, d.Y, Z=d.T)
    with pytest.raises(ValueError, match="only econml.grf.CausalForest"):
        import_econml_forest(iv)
