"""MixturePrior: densities against scipy, the closed-form expectation against Monte Carlo,
the optimal cluster posterior, sampling and the covariance parameterisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch.distributions import MultivariateNormal, kl_divergence

from mfcvae.priors import MixturePrior

COVARIANCES = ("diag", "full")


def random_prior(covariance: str, n_clusters: int = 4, dim: int = 3, seed: int = 0) -> MixturePrior:
    """A float64 prior whose means, weights and covariances are all random (none at their defaults)."""
    torch.manual_seed(seed)
    prior = MixturePrior(n_clusters, dim, covariance).double()
    with torch.no_grad():
        prior.means.normal_(0, 1.5)
        prior.logits.normal_()
        if covariance == "diag":
            prior.log_var.uniform_(-1.5, 1.0)
        else:
            prior.chol_diag_raw.uniform_(-1.0, 1.0)
            prior.chol_offdiag.normal_(0, 0.5)  # upper part too: it must be ignored
    return prior


def covariances(prior: MixturePrior) -> np.ndarray:
    """Sigma_k = L_k L_k^T, shape (K, d, d)."""
    L = prior.scale_tril().detach()
    return (L @ L.transpose(-1, -2)).numpy()


def random_posterior(n: int = 5, dim: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log_var) of a random diagonal q(z|x), variances in [0.05, 0.85]."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, dim, generator=g, dtype=torch.float64) * 1.5
    var = torch.rand(n, dim, generator=g, dtype=torch.float64) * 0.8 + 0.05
    return mean, var.log()


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_log_prob_matches_scipy_multivariate_normal(covariance):
    """log N(z; mu_k, Sigma_k) for every (n, k) must equal scipy's density with Sigma = L L^T."""
    prior = random_prior(covariance)
    z = torch.randn(7, prior.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    got = prior.log_prob(z).detach().numpy()
    assert got.shape == (7, prior.n_clusters)
    means, covs = prior.means.detach().numpy(), covariances(prior)
    expected = np.stack(
        [multivariate_normal(means[k], covs[k]).logpdf(z.numpy()) for k in range(prior.n_clusters)], axis=1
    )
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_full_covariance_uses_off_diagonal_entries():
    """A full prior with non-zero off-diagonal Cholesky entries must differ from its diagonal part."""
    prior = random_prior("full")
    covs = covariances(prior)
    off = covs - np.stack([np.diag(np.diag(c)) for c in covs])
    assert np.abs(off).max() > 0.05


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_expected_log_prob_matches_monte_carlo(covariance):
    """The closed form E_{N(m, diag v)}[log N(z; mu_k, Sigma_k)] agrees with an average over samples."""
    prior = random_prior(covariance)
    mean, log_var = random_posterior()
    exact = prior.expected_log_prob(mean, log_var).detach()
    n_samples = 40_000
    g = torch.Generator().manual_seed(5)
    z = mean + (0.5 * log_var).exp() * torch.randn(n_samples, *mean.shape, generator=g, dtype=torch.float64)
    log_p = prior.log_prob(z.reshape(-1, prior.dim)).detach().reshape(n_samples, len(mean), prior.n_clusters)
    mc_mean, mc_se = log_p.mean(0), log_p.std(0) / math.sqrt(n_samples)
    assert torch.all((exact - mc_mean).abs() <= 5 * mc_se + 1e-9), (exact - mc_mean) / mc_se


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_expected_log_prob_is_minus_kl_minus_entropy(covariance):
    """Closed form: E_q[log N(z; mu_k, Sigma_k)] = -KL(q || N(mu_k, Sigma_k)) - H(q) for q = N(m, diag exp(l)),
    with KL and H from torch.distributions."""
    prior = random_prior(covariance)
    mean, log_var = random_posterior()
    q = MultivariateNormal(mean.unsqueeze(1), torch.diag_embed(log_var.exp()).unsqueeze(1))
    p = MultivariateNormal(prior.means.detach(), scale_tril=prior.scale_tril().detach())
    expected = -kl_divergence(q, p) - q.entropy()
    torch.testing.assert_close(prior.expected_log_prob(mean, log_var).detach(), expected)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_expected_log_prob_reduces_to_log_prob_for_vanishing_variance(covariance):
    """With var -> 0 the expectation is the density at the mean (the trace term vanishes)."""
    prior = random_prior(covariance)
    mean, _ = random_posterior()
    got = prior.expected_log_prob(mean, torch.full_like(mean, math.log(1e-12)))
    torch.testing.assert_close(got, prior.log_prob(mean))


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_cluster_log_posterior_is_normalised(covariance):
    """exp(log q(c|x)) sums to one over clusters, both exactly and with a sample z."""
    prior = random_prior(covariance)
    mean, log_var = random_posterior()
    exact = prior.cluster_log_posterior(mean, log_var)
    one_sample = prior.cluster_log_posterior(mean, log_var, z=mean + (0.5 * log_var).exp())
    for lq in (exact, one_sample):
        assert lq.shape == (len(mean), prior.n_clusters)
        torch.testing.assert_close(lq.exp().sum(1), torch.ones(len(mean), dtype=torch.float64))
    assert not torch.allclose(exact, one_sample), "the sample z must change the one-sample estimate"


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_exact_posterior_is_softmax_of_log_weights_plus_expected_log_prob(covariance):
    """SPEC 2: q(c=k|x) ∝ pi_k exp(E_q[log N(z; mu_k, Sigma_k)])."""
    prior = random_prior(covariance)
    mean, log_var = random_posterior()
    expected = torch.log_softmax(prior.log_weights + prior.expected_log_prob(mean, log_var), dim=-1)
    torch.testing.assert_close(prior.cluster_log_posterior(mean, log_var), expected)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_exact_posterior_maximises_the_categorical_elbo(covariance):
    """The paper's theorem: q* maximises sum_k q_k (log pi_k + E[log N_k]) - sum_k q_k log q_k."""
    prior = random_prior(covariance)
    mean, log_var = random_posterior()
    score = prior.log_weights + prior.expected_log_prob(mean, log_var)

    def objective(log_q):
        return (log_q.exp() * (score - log_q)).sum(-1)

    best = objective(prior.cluster_log_posterior(mean, log_var))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = torch.log_softmax(torch.randn(score.shape, generator=g, dtype=torch.float64) * 2, dim=-1)
        assert torch.all(objective(other) < best)
    # ... and the maximum equals log sum_k exp(score_k).
    torch.testing.assert_close(best, torch.logsumexp(score, dim=-1))


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_one_sample_log_likelihood_averages_to_the_exact_one(covariance):
    """The "mc" estimate's unnormalised log-likelihood, averaged over samples of q(z|x), converges
    to the exact one, and with var -> 0 the "mc" posterior tends to the exact posterior."""
    prior = random_prior(covariance)
    mean, log_var = random_posterior(n=3)
    n_samples = 40_000
    g = torch.Generator().manual_seed(11)
    z = mean + (0.5 * log_var).exp() * torch.randn(n_samples, *mean.shape, generator=g, dtype=torch.float64)
    unnormalised = prior.log_weights + prior.log_prob(z.reshape(-1, prior.dim)).reshape(n_samples, 3, -1)
    exact_unnormalised = prior.log_weights + prior.expected_log_prob(mean, log_var)
    se = unnormalised.std(0) / math.sqrt(n_samples)
    assert torch.all((unnormalised.mean(0) - exact_unnormalised).abs() <= 5 * se + 1e-9)

    tiny = torch.full_like(log_var, math.log(1e-12))
    torch.testing.assert_close(
        prior.cluster_log_posterior(mean, tiny, z=mean), prior.cluster_log_posterior(mean, tiny)
    )


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_sample_from_fixed_cluster_has_component_mean_and_scaled_covariance(covariance, temperature):
    """Draws from cluster k have mean mu_k and covariance T^2 Sigma_k (not Sigma, not the variance as std)."""
    prior = random_prior(covariance)
    k, n = 2, 60_000
    z = prior.sample(n, cluster=k, temperature=temperature, generator=torch.Generator().manual_seed(0)).detach()
    assert z.shape == (n, prior.dim)
    target_cov = temperature**2 * covariances(prior)[k]
    emp_cov = np.cov(z.numpy(), rowvar=False)
    scale = np.sqrt(np.diag(target_cov))
    np.testing.assert_allclose(z.mean(0).numpy(), prior.means[k].detach().numpy(), atol=float(5 * scale.max() / math.sqrt(n)))
    # Compare on the correlation scale so the tolerance does not depend on the variances' sizes.
    np.testing.assert_allclose(emp_cov / np.outer(scale, scale), target_cov / np.outer(scale, scale), atol=0.03)


def test_sample_without_cluster_follows_the_mixture_weights():
    """With no cluster given, c ~ pi: the sample mean is sum_k pi_k mu_k."""
    prior = random_prior("diag")
    with torch.no_grad():
        prior.log_var.fill_(math.log(1e-4))  # tight components: the mean is dominated by which c was drawn
    z = prior.sample(50_000, generator=torch.Generator().manual_seed(0)).detach()
    expected = (prior.log_weights.exp()[:, None] * prior.means).sum(0).detach()
    torch.testing.assert_close(z.mean(0), expected, atol=0.04, rtol=0)


def test_sample_is_reproducible_with_a_generator():
    prior = random_prior("full")
    a = prior.sample(10, generator=torch.Generator().manual_seed(4))
    b = prior.sample(10, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)


def test_sample_rejects_cluster_out_of_range():
    prior = random_prior("diag")
    for bad in (-1, prior.n_clusters):
        with pytest.raises(ValueError, match="cluster"):
            prior.sample(3, cluster=bad)


def test_full_scale_tril_is_lower_triangular_with_positive_diagonal():
    """Any raw parameters (negative diagonal, upper entries) give a valid Cholesky factor."""
    prior = random_prior("full")
    with torch.no_grad():
        prior.chol_diag_raw[0].fill_(-20.0)  # softplus keeps even this positive
    L = prior.scale_tril().detach()
    assert L.shape == (prior.n_clusters, prior.dim, prior.dim)
    assert torch.equal(torch.triu(L, diagonal=1), torch.zeros_like(L))
    assert torch.all(torch.diagonal(L, dim1=-2, dim2=-1) > 0)
    # log|Sigma| used by the densities agrees with the factor (on the well-conditioned components).
    torch.testing.assert_close(prior._log_det()[1:], torch.logdet(L @ L.transpose(-1, -2))[1:])


def test_initial_prior_matches_the_paper():
    """SPEC 6: uniform weights, zero means, variance 0.01 (diag) or Cholesky diagonal 0.1 (full)."""
    diag, full = MixturePrior(5, 3, "diag"), MixturePrior(5, 3, "full")
    torch.testing.assert_close(diag.log_weights.exp(), torch.full((5,), 0.2))
    assert torch.equal(diag.means, torch.zeros(5, 3))
    torch.testing.assert_close(diag.log_var.exp(), torch.full((5, 3), 0.01))
    torch.testing.assert_close(full.scale_tril(), 0.1 * torch.eye(3).expand(5, 3, 3))


def test_fixed_weights_are_a_buffer_not_a_parameter():
    """learn_weights=False keeps pi uniform: the logits must not be optimised."""
    prior = MixturePrior(3, 2, learn_weights=False)
    assert "logits" not in dict(prior.named_parameters())
    assert "logits" in dict(prior.named_buffers())


def test_bad_covariance_string_raises():
    with pytest.raises(ValueError, match="covariance"):
        MixturePrior(3, 2, covariance="spherical")


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_set_variances_gives_diagonal_covariances(covariance):
    """set_variances(v) makes every Sigma_k = diag(v_k), off-diagonal entries of a full factor cleared."""
    prior = random_prior(covariance)
    variances = torch.rand(4, 3, dtype=torch.float64) * 2 + 0.05
    prior.set_variances(variances)
    np.testing.assert_allclose(covariances(prior), torch.diag_embed(variances).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("floor", [0.0, 0.3, 1.0])
def test_weight_floor_mixes_uniform_mass_into_pi(floor):
    """pi = f / K + (1 - f) softmax(logits): a distribution with every weight >= f / K; f = 0 is the
    paper's softmax, f = 1 uniform whatever the logits."""
    prior = random_prior("diag")
    prior.weight_floor = floor
    softmax = torch.softmax(prior.logits, -1)
    pi = prior.log_weights.exp()
    torch.testing.assert_close(pi, floor / 4 + (1 - floor) * softmax)
    torch.testing.assert_close(pi.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (pi >= floor / 4 - 1e-12).all()


def test_weight_floor_holds_under_training():
    """A cluster the data never visits loses weight, but no further than the floor."""
    prior = MixturePrior(4, 2, weight_floor=0.2)
    optimiser = torch.optim.SGD(prior.parameters(), lr=1.0)
    for _ in range(200):
        optimiser.zero_grad()
        (-prior.log_weights[0]).backward()  # every example in cluster 0
        optimiser.step()
    pi = prior.log_weights.exp().detach()
    assert pi[1:].min() >= 0.05 - 1e-6 and pi[1:].max() < 0.06


def test_weight_floor_outside_0_1_raises():
    with pytest.raises(ValueError, match="weight_floor"):
        MixturePrior(3, 2, weight_floor=1.5)


def test_set_weights_under_a_floor():
    """set_weights gives the weights asked for where they clear the floor, and the floor elsewhere."""
    prior = MixturePrior(4, 3, weight_floor=0.4).double()
    prior.set_weights(torch.tensor([0.15, 0.2, 0.25, 0.4], dtype=torch.float64))
    torch.testing.assert_close(prior.log_weights.exp(), torch.tensor([0.15, 0.2, 0.25, 0.4], dtype=torch.float64))
    prior.set_weights(torch.tensor([0.01, 0.19, 0.3, 0.5], dtype=torch.float64))
    pi = prior.log_weights.exp().detach()
    assert pi[0].item() == pytest.approx(0.1, abs=1e-3) and pi.sum().item() == pytest.approx(1.0)
    assert (pi[1:] < torch.tensor([0.19, 0.3, 0.5], dtype=torch.float64)).all()
    assert prior.logits[0] > prior.logits.max() - 10  # not log(0): its gradient can still move it


def test_set_weights_sets_pi():
    prior = random_prior("diag")
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    prior.set_weights(weights)
    torch.testing.assert_close(prior.log_weights.exp(), weights)


def test_set_covariances_gives_a_full_prior_those_covariances():
    prior = random_prior("full")
    a = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(1))
    wanted = (a @ a.transpose(-1, -2) + 0.1 * torch.eye(3)).double()
    prior.set_covariances(wanted)
    np.testing.assert_allclose(covariances(prior), wanted.numpy(), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="set_variances"):
        random_prior("diag").set_covariances(wanted)
