"""MFCVAE as a scikit-learn citizen: scikit-learn's own estimator checks, Pipeline, clone, GridSearchCV."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from mfcvae import MFCVAE

SMALL = dict(n_clusters=(2, 2), latent_dims=(2, 2), hidden_dims=(16, 16), epochs=2, batch_size=32, device="cpu",
             precision="float32", verbose=False)

# Checks that cannot apply to a multi-facet clusterer, each with the reason.
EXPECTED_FAILURES = {
    "check_clustering": "labels_ and predict give one column per facet, shape (N, J), not (N,)",
    "check_methods_sample_order_invariance": "predict_proba returns one (N, K_j) array per facet, as scikit-learn's "
                                             "multi-output estimators do; the check indexes that list as one array",
}


@parametrize_with_checks([MFCVAE(**SMALL)], expected_failed_checks=lambda estimator: EXPECTED_FAILURES)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def tables(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well separated groups of 5 real-valued features (not in [0, 1]) and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return rng.normal(size=(n, 5)) + 6.0 * y[:, None], y


def test_works_in_a_pipeline_as_transformer_and_as_final_step():
    X, _ = tables()
    pipe = Pipeline([("mfcvae", MFCVAE(**SMALL)), ("kmeans", KMeans(2, n_init=2, random_state=0))]).fit(X)
    assert pipe.predict(X).shape == (len(X),)
    clusters = Pipeline([("scale", MinMaxScaler()), ("mfcvae", MFCVAE(**SMALL))]).fit(X).predict(X)
    assert clusters.shape == (len(X), 2)


def test_transform_is_one_array_of_the_facets_blocks_side_by_side():
    X, _ = tables()
    model = MFCVAE(**{**SMALL, "latent_dims": (2, 3)}).fit(X)
    per_facet = model.transform_facets(X)
    np.testing.assert_array_equal(model.transform(X), np.concatenate(per_facet, axis=1))
    assert model.transform(X).shape == (len(X), 5)
    assert list(model.get_feature_names_out()) == ["facet0_z0", "facet0_z1", "facet1_z0", "facet1_z1", "facet1_z2"]


def test_clone_copies_parameters_not_the_fit():
    X, _ = tables()
    model = MFCVAE(**SMALL).fit(X)
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "model_")


def test_grid_search_with_the_elbo_and_with_a_scorer():
    X, y = tables()
    search = GridSearchCV(MFCVAE(**SMALL), {"free_bits": [0.0, 2.0]}, cv=2).fit(X)  # score: the mean ELBO
    assert search.best_params_["free_bits"] in (0.0, 2.0)

    def best_facet_ari(estimator, X, y):
        return max(adjusted_rand_score(y, column) for column in estimator.predict(X).T)

    search = GridSearchCV(MFCVAE(**SMALL), {"lr": [1e-3, 3e-3]}, cv=2, scoring=best_facet_ari).fit(X, y)
    assert np.isfinite(search.best_score_)


def test_fit_leaves_the_training_clusters_in_labels_():
    X, _ = tables()
    model = MFCVAE(**SMALL).fit(X)
    np.testing.assert_array_equal(model.labels_, model.predict(X))
    np.testing.assert_array_equal(MFCVAE(**SMALL).fit_predict(X), model.labels_)


def test_real_valued_features_get_a_standardised_gaussian_and_reconstruct_in_their_units():
    X, _ = tables()
    X = X * 100 + 1000  # far from [0, 1] and from unit scale
    model = MFCVAE(**{**SMALL, "epochs": 30}).fit(X)
    assert model.likelihood_ == "gaussian"
    recon = model.reconstruct(X)
    assert abs(recon.mean() - X.mean()) < 0.2 * X.std()  # in the data's units, not standardised ones
    assert model.sample(5).shape == (5, 5)


def test_inputs_in_the_unit_interval_get_a_bernoulli():
    X, _ = tables()
    X = (X - X.min()) / (X.max() - X.min())
    assert MFCVAE(**SMALL).fit(X).likelihood_ == "bernoulli"
