"""Fitting the mixture priors: the initial fit (SPEC section 6), the end refit, its spectral
start, and the re-seeding of dead clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from mfcvae import mixtures
from mfcvae.mixtures import initialise_priors, refit_priors, reseed_dead_clusters, spectral_start

CPU = torch.device("cpu")


def encoded_means(model, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [m.double().numpy() for m, _ in model.encode(x)]


def record_fits(monkeypatch) -> list[tuple[GaussianMixture, np.ndarray]]:
    """Make mixtures.py's GaussianMixture record every fit: (the mixture, the points it was fitted to)."""
    fits = []

    class Recording(GaussianMixture):
        def fit(self, z, y=None):
            fits.append((self, z))
            return super().fit(z)

    monkeypatch.setattr(mixtures, "GaussianMixture", Recording)
    return fits


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_the_initial_fit_copies_a_diagonal_mixtures_means_only(make_model, covariance):
    """Means come from a diagonal GaussianMixture on the encoded posterior means; covariances
    and weights keep their initial values."""
    model = make_model(covariance=covariance).eval()
    x = torch.rand(200, 3, 4, 4)
    before = [(p.scale_tril().detach().clone(), p.log_weights.detach().clone()) for p in model.priors]
    initialise_priors(model, x, batch_size=64, seed=3, device=CPU)
    for prior, z, (scale_before, weights_before) in zip(model.priors, encoded_means(model, x), before):
        gmm = GaussianMixture(prior.n_clusters, covariance_type="diag", random_state=3).fit(z)
        np.testing.assert_allclose(prior.means.detach().numpy(), gmm.means_, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(prior.scale_tril().detach(), scale_before)
        torch.testing.assert_close(prior.log_weights, weights_before)


def test_the_initial_fit_does_not_depend_on_the_order_the_data_is_stored_in(make_model, monkeypatch):
    """With batch-norm (the conv ladder) the encodings the first fit sees are eval-mode ones with
    statistics estimated over the data, not per-chunk training statistics: data stored sorted by
    group gives each input the same encoding as the same data shuffled."""
    fits = record_fits(monkeypatch)
    rng = np.random.default_rng(0)
    # two colour groups of 1536 images, stored one after the other (more than one encoding chunk each)
    x = torch.from_numpy(np.concatenate([np.full((1536, 3, 8, 8), 0.2), np.full((1536, 3, 8, 8), 0.8)])
                         + rng.uniform(-0.05, 0.05, (3072, 3, 8, 8))).float()
    model = make_model(input_shape=(3, 8, 8), n_clusters=(2,), latent_dims=(2,), hidden_dims=(8,),
                       architecture="conv")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    initialise_priors(model, x, batch_size=3072, seed=0, device=CPU)
    shuffle = torch.from_numpy(rng.permutation(len(x)))
    model.load_state_dict(state)
    initialise_priors(model, x[shuffle], batch_size=3072, seed=0, device=CPU)
    (_, sorted_z), (_, shuffled_z) = fits
    np.testing.assert_allclose(shuffled_z, sorted_z[shuffle.numpy()], rtol=1e-4, atol=1e-4)  # float rounding of another batch order


def test_a_refit_matches_the_aggregate_posterior(make_model):
    """The refit fits one draw z ~ q(z|x) per input: one cluster's fitted mixture is the aggregate
    posterior's moments, mean E[m(x)] and, by the law of total variance, variance
    Var[m(x)] + E[v(x)] (the means alone would give Var[m(x)])."""
    model = make_model(n_clusters=(1, 1)).eval()
    x = torch.rand(8000, 3, 4, 4)
    with torch.no_grad():
        posteriors = model.encode(x)
    refit_priors(model, x, batch_size=64, seed=0, device=CPU)
    for prior, (m, log_var) in zip(model.priors, posteriors):
        v = log_var.exp()
        torch.testing.assert_close(prior.means[0].detach(), m.mean(0), atol=0.05 * v.mean().sqrt().item(), rtol=0)
        torch.testing.assert_close(prior.log_var[0].exp().detach(), m.var(0) + v.mean(0), rtol=0.08, atol=0)
        assert torch.all(v.mean(0) > 0.5 * m.var(0))  # so the test tells the two fits apart


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_a_refit_copies_the_fitted_mixture_started_from_the_spectral_cut(make_model, covariance, monkeypatch):
    """Each facet's EM starts from the spectral start; the prior takes the fitted means,
    covariances and (learned) weights."""
    fits = record_fits(monkeypatch)
    model, x = make_model(covariance=covariance).eval(), torch.rand(200, 3, 4, 4)
    refit_priors(model, x, batch_size=64, seed=0, device=CPU)
    assert [len(gmm.means_init) for gmm, _ in fits] == [4, 3]
    for prior, (gmm, _) in zip(model.priors, fits):
        assert gmm.covariance_type == covariance
        L = prior.scale_tril().detach()
        expected = gmm.covariances_ if covariance == "full" else np.stack([np.diag(v) for v in gmm.covariances_])
        np.testing.assert_allclose((L @ L.transpose(-1, -2)).numpy(), expected, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(prior.means.detach().numpy(), gmm.means_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(prior.log_weights.exp().detach().numpy(), gmm.weights_, rtol=1e-5)


def test_a_refit_with_fixed_weights_holds_them_through_every_em_step(make_model, monkeypatch):
    """learn_weights=False: every E-step of the refit's EM weighs the components by the prior's
    uniform weights, so the means and covariances it ends with were fitted under the weights the
    prior has (not under learned weights that are then thrown away)."""
    steps = []
    e_step = GaussianMixture._e_step

    def recording(self, X, **kwargs):
        steps.append(np.array(self.weights_, dtype=float))
        return e_step(self, X, **kwargs)

    monkeypatch.setattr(GaussianMixture, "_e_step", recording)
    model = make_model(learn_weights=False).eval()
    rng = np.random.default_rng(0)  # inputs in two unequal groups, so learned weights would move
    x = torch.from_numpy(np.concatenate([rng.uniform(0, 0.3, (270, 3, 4, 4)), rng.uniform(0.7, 1, (30, 3, 4, 4))]))
    refit_priors(model, x.float(), batch_size=64, seed=0, device=CPU)
    assert len(steps) > 2
    uniform = {4: np.full(4, 0.25), 3: np.full(3, 1 / 3)}
    for weights in steps:
        np.testing.assert_allclose(weights, uniform[len(weights)], rtol=1e-12)
    for prior in model.priors:
        np.testing.assert_allclose(prior.log_weights.exp().detach().numpy(), uniform[prior.n_clusters], rtol=1e-6)


def test_the_first_fit_and_the_refit_each_take_their_own_number_of_inputs(make_model, monkeypatch):
    """The first fit (an untrained encoder) takes at most GMM_MAX_POINTS random inputs, the refit
    of a trained one at most REFIT_MAX_POINTS."""
    fits = record_fits(monkeypatch)
    monkeypatch.setattr(mixtures, "GMM_MAX_POINTS", 60)
    monkeypatch.setattr(mixtures, "REFIT_MAX_POINTS", 150)
    model, x = make_model().eval(), torch.rand(200, 3, 4, 4)
    initialise_priors(model, x, batch_size=64, seed=0, device=CPU)
    refit_priors(model, x, batch_size=64, seed=0, device=CPU)
    assert [len(z) for _, z in fits] == [60, 60, 150, 150]  # one fit per facet


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
    monkeypatch.setattr(mixtures, "_cluster_qr", lambda vectors: np.r_[0, np.ones(len(vectors) - 1, dtype=int)])
    z = np.random.default_rng(0).normal(size=(40, 2))
    assert spectral_start(z, z, 2, "full", seed=0) == {}


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
    [n_reseeded] = reseed_dead_clusters(model, x, [0], 64, rng, CPU)
    assert n_reseeded >= 1
    assert model.priors[0].means[2].abs().max() < 100
    assert assigned()[2] > 0
    assert torch.equal(model.priors[1].means, untouched)


def test_reseed_leaves_a_facet_whose_clusters_are_all_used(make_model):
    model = make_model(n_clusters=(1, 3)).eval()  # a single cluster is always used
    before = model.priors[0].means.clone()
    assert reseed_dead_clusters(model, torch.rand(50, 3, 4, 4), [0], 64, np.random.default_rng(0), CPU) == [0]
    assert torch.equal(model.priors[0].means, before)
