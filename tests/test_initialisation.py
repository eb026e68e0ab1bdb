"""The mixture initialisation (SPEC section 6) and its variance-fitting extension."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from mfcvae import train as train_module
from mfcvae.train import initialise_priors, refit_priors, reseed_dead_clusters, spectral_start

CPU = torch.device("cpu")


def encoded_means(model, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [m.double().numpy() for m, _ in model.encode(x)]


@pytest.mark.parametrize("covariance", ["diag", "full"])
@pytest.mark.parametrize("fit_variances", [False, True])
def test_gmm_initialisation_copies_the_fitted_mixture(make_model, covariance, fit_variances):
    """Means come from a GaussianMixture on the encoded posterior means; with fit_variances the
    covariances (and learned weights) do too, else they keep the paper's values. The mixture is
    diagonal, except that a full-covariance prior whose covariances are fitted gets a full one."""
    model = make_model(covariance=covariance).eval()
    x = torch.rand(200, 3, 4, 4)
    before = [(p.scale_tril().detach().clone(), p.log_weights.detach().clone()) for p in model.priors]
    initialise_priors(model, x, "gmm", seed=3, device=CPU, fit_variances=fit_variances)
    full = fit_variances and covariance == "full"
    for prior, z, (scale_before, weights_before) in zip(model.priors, encoded_means(model, x), before):
        gmm = GaussianMixture(prior.n_clusters, covariance_type="full" if full else "diag", random_state=3).fit(z)
        np.testing.assert_allclose(prior.means.detach().numpy(), gmm.means_, rtol=1e-5, atol=1e-6)
        L = prior.scale_tril().detach()
        if fit_variances:
            expected = gmm.covariances_ if full else np.stack([np.diag(v) for v in gmm.covariances_])
            np.testing.assert_allclose((L @ L.transpose(-1, -2)).numpy(), expected, rtol=1e-4, atol=1e-9)
            if full and prior.dim > 1:
                assert np.abs(expected[:, 1, 0]).max() > 1e-4  # the fit has correlations for the prior to keep
            np.testing.assert_allclose(prior.log_weights.exp().detach().numpy(), gmm.weights_, rtol=1e-5)
        else:
            torch.testing.assert_close(L, scale_before)
            torch.testing.assert_close(prior.log_weights, weights_before)


def test_a_fit_to_draws_matches_the_aggregate_posterior(make_model):
    """With draws=True one cluster's fitted mixture is the aggregate posterior's moments: mean
    E[m(x)] and, by the law of total variance, variance Var[m(x)] + E[v(x)] (the means alone
    would give Var[m(x)])."""
    model = make_model(n_clusters=(1, 1)).eval()
    x = torch.rand(8000, 3, 4, 4)
    with torch.no_grad():
        posteriors = model.encode(x)
    initialise_priors(model, x, "gmm", seed=0, device=CPU, fit_variances=True, draws=True)
    for prior, (m, v) in zip(model.priors, posteriors):
        torch.testing.assert_close(prior.means[0].detach(), m.mean(0), atol=0.05 * v.mean().sqrt().item(), rtol=0)
        torch.testing.assert_close(prior.log_var[0].exp().detach(), m.var(0) + v.mean(0), rtol=0.08, atol=0)
        assert torch.all(v.mean(0) > 0.5 * m.var(0))  # so the test tells the two fits apart


def test_the_first_fit_and_the_refit_each_take_their_own_number_of_inputs(make_model, monkeypatch):
    """The first fit (an untrained encoder) takes at most GMM_MAX_POINTS random inputs, the refit
    of a trained one at most REFIT_MAX_POINTS; either gives way to an explicit ``max_points``."""
    sizes = []

    class Recording(GaussianMixture):
        def fit(self, z, y=None):
            sizes.append(len(z))
            return super().fit(z)

    monkeypatch.setattr(train_module, "GaussianMixture", Recording)
    monkeypatch.setattr(train_module, "GMM_MAX_POINTS", 60)
    monkeypatch.setattr(train_module, "REFIT_MAX_POINTS", 150)
    model, x = make_model().eval(), torch.rand(200, 3, 4, 4)
    initialise_priors(model, x, "gmm", seed=0, device=CPU)
    refit_priors(model, x, seed=0, device=CPU)
    refit_priors(model, x, seed=0, device=CPU, max_points=500)  # more than there are: all of them
    initialise_priors(model, x, "gmm", seed=0, device=CPU, max_points=40)
    assert sizes == [60, 60, 150, 150, 200, 200, 40, 40]  # one fit per facet


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_the_spectral_start_takes_the_moments_of_the_graphs_groups(covariance):
    """Three separated groups of 60, 120 and 180 points: the cut finds them, and the start is
    their shares, means and precisions (1 / variance, or the inverse covariance), as EM's
    M-step would compute them from those groups (biased moments plus reg_covar)."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sizes = [60, 120, 180]
    z = np.concatenate([c + rng.normal(size=(n, 2)) * [1.0, 0.5] for c, n in zip(centres, sizes)])
    start = spectral_start(z, z, 3, covariance, seed=0)
    order = np.argsort(start["weights_init"])
    np.testing.assert_allclose(start["weights_init"][order], np.array(sizes) / 360)
    groups = np.split(z, np.cumsum(sizes)[:-1])
    np.testing.assert_allclose(start["means_init"][order], [g.mean(0) for g in groups])
    covariances = [np.cov(g.T, bias=True) + 1e-6 * np.eye(2) for g in groups]
    expected = [np.linalg.inv(c) for c in covariances] if covariance == "full" else [1 / np.diag(c) for c in covariances]
    np.testing.assert_allclose(start["precisions_init"][order], expected, rtol=1e-10)


def test_the_spectral_start_takes_its_moments_over_the_draws_it_is_given():
    """The graph is built on the posterior means, the moments are of ``z`` (the draws EM fits)."""
    rng = np.random.default_rng(1)
    means = np.concatenate([rng.normal(size=(50, 2)), 20 + rng.normal(size=(50, 2))])
    z = means + 3.0
    start = spectral_start(means, z, 2, "diag", seed=0)
    np.testing.assert_allclose(np.sort(start["means_init"][:, 0]), np.sort([means[:50, 0].mean(), means[50:, 0].mean()]) + 3)


def test_the_spectral_start_gives_way_to_kmeans_when_a_group_has_under_two_points(monkeypatch):
    class OneAlone:
        def __init__(self, n_clusters, **kwargs):
            pass

        def fit_predict(self, x):
            return np.r_[0, np.ones(len(x) - 1, dtype=int)]

    monkeypatch.setattr(train_module, "SpectralClustering", OneAlone)
    z = np.random.default_rng(0).normal(size=(40, 2))
    assert spectral_start(z, z, 2, "full", seed=0) == {}


def test_a_refit_from_the_spectral_start_runs_em_from_it(make_model, monkeypatch):
    """refit_priors(start="spectral") hands each facet's EM the spectral start; "kmeans" hands it
    nothing (scikit-learn's own k-means start)."""
    starts = []

    class Recording(GaussianMixture):
        def fit(self, z, y=None):
            starts.append(self.means_init)
            return super().fit(z)

    monkeypatch.setattr(train_module, "GaussianMixture", Recording)
    model, x = make_model().eval(), torch.rand(200, 3, 4, 4)
    refit_priors(model, x, seed=0, device=CPU, start="spectral")
    assert len(starts) == 2 and all(s is not None and len(s) == k for s, k in zip(starts, (4, 3)))
    refit_priors(model, x, seed=0, device=CPU)
    assert starts[2:] == [None, None]


def test_fitted_variances_leave_fixed_weights_alone(make_model):
    """Weights that are not learned (a buffer) are not the initialisation's to change."""
    model = make_model(learn_weights=False).eval()
    before = [p.logits.clone() for p in model.priors]
    initialise_priors(model, torch.rand(100, 3, 4, 4), "gmm", seed=0, device=CPU, fit_variances=True)
    for prior, logits in zip(model.priors, before):
        assert torch.equal(prior.logits, logits)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_split_component_copies_the_source_and_halves_its_weight(covariance, make_model):
    prior = make_model(covariance=covariance).priors[0]
    pi, scale = prior.log_weights.exp().detach().clone(), prior.scale_tril().detach().clone()
    prior.split_component(source=1, target=3, mean=torch.tensor([5.0, -5.0]))
    after = prior.log_weights.exp().detach()
    torch.testing.assert_close(prior.means[3].detach(), torch.tensor([5.0, -5.0]))
    torch.testing.assert_close(prior.scale_tril()[3].detach(), scale[1])
    torch.testing.assert_close(after[1], after[3])
    # the two share what cluster 1 had; the others keep their relative weights
    torch.testing.assert_close(after[1] + after[3], pi[1] / (1 - pi[3]))
    torch.testing.assert_close(after[[0, 2]] / after[0], pi[[0, 2]] / pi[0])


def test_reseed_revives_a_dead_cluster_by_splitting_the_biggest(make_model):
    """A cluster far from every encoded input is moved onto an input of the most used cluster
    and then takes inputs; a facet not named is left alone."""
    model = make_model(n_clusters=(4, 3)).eval()
    x = torch.rand(300, 3, 4, 4)
    with torch.no_grad():
        model.priors[0].means[2] = 100.0  # no input is nearest to it
        untouched = model.priors[1].means.clone()

    def assigned() -> torch.Tensor:
        return model.cluster_log_posteriors(x)[0].argmax(1).bincount(minlength=4)

    assert assigned()[2] == 0
    rng = np.random.default_rng(0)
    [n_reseeded] = reseed_dead_clusters(model, x, [0], rng, CPU)
    assert n_reseeded >= 1
    assert model.priors[0].means[2].abs().max() < 100
    assert assigned()[2] > 0
    assert torch.equal(model.priors[1].means, untouched)


def test_reseed_leaves_a_facet_whose_clusters_are_all_used(make_model):
    model = make_model(n_clusters=(1, 3)).eval()  # a single cluster is always used
    before = model.priors[0].means.clone()
    assert reseed_dead_clusters(model, torch.rand(50, 3, 4, 4), [0], np.random.default_rng(0), CPU) == [0]
    assert torch.equal(model.priors[0].means, before)
