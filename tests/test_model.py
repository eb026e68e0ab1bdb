"""MultiFacetVAE and its ELBO terms: closed forms against independent computations, gradient
flow, the ladder decoder's fade-in weights, output shapes and the paper's parameter count."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from mfcvae.config import ModelConfig
from mfcvae.ladder import PAPER_MERGE_SCALE
from mfcvae.model import LOG_VAR_RANGE, MultiFacetVAE, count_parameters, input_moments, soft_clamp

POSTERIORS = ("exact", "mc")
COVARIANCES = ("diag", "full")


def inputs(shape=(3, 4, 4), n=6, seed=0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("posterior", POSTERIORS)
def test_log_q_z_is_minus_the_gaussian_entropy(make_model, posterior):
    """E_q[log q(z|x)] is the negative entropy of N(m, diag v), summed over latent dims."""
    model = make_model(posterior=posterior)
    x = inputs()
    terms = model.elbo_terms(x)
    for j, (mean, log_var) in enumerate(model.encode(x)):
        entropy = Normal(mean, (0.5 * log_var).exp()).entropy().sum(-1)
        torch.testing.assert_close(terms.log_q_z[:, j], -entropy)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_log_q_c_and_log_p_c_use_the_exact_posterior(make_model, covariance):
    """With posterior="exact": E[log q(c|x)] = sum_k q log q and E[log p(c)] = sum_k q log pi."""
    model = make_model(covariance=covariance)
    x = inputs()
    terms = model.elbo_terms(x)
    for j, (prior, (mean, log_var)) in enumerate(zip(model.priors, model.encode(x))):
        log_q = prior.cluster_log_posterior(mean, log_var)
        torch.testing.assert_close(terms.log_q_c[:, j], (log_q.exp() * log_q).sum(-1))
        torch.testing.assert_close(terms.log_p_c[:, j], (log_q.exp() * prior.log_weights).sum(-1))
    assert torch.all(terms.log_q_c <= 0)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_log_p_z_matches_monte_carlo_over_q_z(make_model, covariance):
    """E_{q(z,c|x)}[log p(z|c)] in closed form equals the average of sum_k q(c=k|x) log N(z; mu_k, Sigma_k)
    over many samples z ~ q(z|x)."""
    model = make_model(covariance=covariance).double()
    x = inputs(n=3).double()
    terms = model.elbo_terms(x)
    n_samples = 20_000
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for j, (prior, (mean, log_var)) in enumerate(zip(model.priors, model.encode(x))):
            q = prior.cluster_log_posterior(mean, log_var).exp()
            z = mean + (0.5 * log_var).exp() * torch.randn(n_samples, *mean.shape, generator=g, dtype=torch.float64)
            per_sample = (q * prior.log_prob(z.reshape(-1, prior.dim)).reshape(n_samples, len(x), -1)).sum(-1)
            se = per_sample.std(0) / math.sqrt(n_samples)
            err = (per_sample.mean(0) - terms.log_p_z[:, j].detach()).abs()
            assert torch.all(err <= 5 * se + 1e-9), err / se


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_kl_equals_mixture_of_gaussian_kls_plus_categorical_kl(make_model, posterior, covariance):
    """Per facet, KL(q(z,c|x) || p(z,c)) = sum_k q_k KL(N(m, diag v) || N(mu_k, Sigma_k)) + KL(q(c|x) || pi),
    checked with torch.distributions; in particular it is non-negative for every example."""
    model = make_model(covariance=covariance, posterior=posterior).double()
    x = inputs().double()
    torch.manual_seed(1)
    terms = model.elbo_terms(x)
    kl = terms.kl().detach()
    assert kl.shape == (len(x), model.n_facets)
    assert torch.all(kl >= -1e-9)
    # q(c|x) as the model used it: recover it from log_q_c's ingredients (exact posterior only).
    if posterior == "exact":
        for j, (prior, (mean, log_var)) in enumerate(zip(model.priors, model.encode(x))):
            q_c = prior.cluster_log_posterior(mean, log_var).exp().detach()
            q_z = MultivariateNormal(mean.unsqueeze(1), torch.diag_embed(log_var.exp()).unsqueeze(1))
            p_z = MultivariateNormal(prior.means, scale_tril=prior.scale_tril())
            gauss_kl = kl_divergence(q_z, p_z)  # (N, K)
            cat_kl = (q_c * (q_c.log() - prior.log_weights)).sum(-1)
            torch.testing.assert_close(kl[:, j], ((q_c * gauss_kl).sum(-1) + cat_kl).detach())


def test_mc_posterior_depends_on_the_sample(make_model):
    """posterior="mc" uses one sample of z for q(c|x): different noise, different log_q_c."""
    model = make_model(posterior="mc")
    x = inputs()
    torch.manual_seed(0)
    a = model.elbo_terms(x).log_q_c
    torch.manual_seed(1)
    b = model.elbo_terms(x).log_q_c
    assert not torch.allclose(a, b)
    exact = make_model(posterior="exact")
    torch.manual_seed(0)
    c = exact.elbo_terms(x).log_q_c
    torch.manual_seed(1)
    torch.testing.assert_close(exact.elbo_terms(x).log_q_c, c)


def test_elbo_with_zero_kl_weights_is_the_reconstruction(make_model):
    model = make_model()
    terms = model.elbo_terms(inputs())
    torch.testing.assert_close(terms.elbo(gammas=torch.zeros(2)), terms.reconstruction)
    torch.testing.assert_close(terms.elbo(gammas=torch.ones(2)), terms.elbo())
    torch.testing.assert_close(terms.elbo(gammas=torch.tensor([1.0, 0.0])), terms.reconstruction - terms.kl()[:, 0])
    assert torch.all(terms.elbo() < terms.reconstruction), "the KL must lower the ELBO"


def test_reconstruction_is_the_likelihood_at_the_sampled_latents(make_model):
    """The reconstruction term is log p(x | z) at one reparameterised sample: with the same RNG seed
    it can be rebuilt from encode + decode."""
    model = make_model()
    x = inputs()
    torch.manual_seed(3)
    terms = model.elbo_terms(x)
    torch.manual_seed(3)
    zs = [m + (0.5 * log_var).exp() * torch.randn_like(m) for m, log_var in model.encode(x)]
    torch.testing.assert_close(terms.reconstruction, model.likelihood.log_prob(model.decode(zs), x))


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_gradients_reach_every_parameter(make_model, posterior, covariance):
    """One backward pass of the loss gives every trainable parameter a finite, non-None gradient
    that is non-zero somewhere (nothing is accidentally detached)."""
    model = make_model(covariance=covariance, posterior=posterior)
    loss = -model.elbo_terms(inputs()).elbo().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} receives an all-zero gradient"


def test_reconstruction_gradient_flows_through_mean_and_variance_heads(make_model):
    """The reparameterised sample z = m + s * eps must carry the reconstruction's gradient into both
    the mean and the log-variance heads of every facet."""
    model = make_model()
    model.elbo_terms(inputs()).reconstruction.sum().backward()
    for j in range(model.n_facets):
        for head in (model.mean_heads[j], model.logvar_heads[j]):
            assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, (j, head)


def test_free_bits_floor_each_facets_batch_mean_kl_in_the_training_objective(make_model):
    """mean_n elbo(free_bits=b) = mean reconstruction - sum_j gamma_j max(mean_n KL_nj, b); a facet
    below the floor gets no KL gradient, one above it its full gradient; free_bits=0 is the ELBO."""
    model = make_model()
    terms = model.elbo_terms(inputs())
    kl = terms.kl()
    b = float((kl.mean(0).min() + kl.mean(0).max()).detach()) / 2  # one facet below the floor, one above
    gammas = torch.tensor([0.5, 1.0])
    expected = terms.reconstruction.mean() - (torch.maximum(kl.mean(0), torch.tensor(b)) * gammas).sum()
    torch.testing.assert_close(terms.elbo(gammas=gammas, free_bits=b).mean(), expected)
    torch.testing.assert_close(terms.elbo(free_bits=0.0), terms.elbo())
    low = int(kl.mean(0).argmin())
    floored = terms.elbo(free_bits=b) - terms.reconstruction
    grads = torch.autograd.grad(floored.sum(), [model.mean_heads[low].weight, model.mean_heads[1 - low].weight])
    assert grads[0].abs().sum() == 0 and grads[1].abs().sum() > 0


@pytest.mark.parametrize("network", [{}, {"architecture": "conv"}], ids=["mlp", "conv"])
def test_bfloat16_networks_keep_the_elbo_float32_and_within_rounding(make_model, network):
    """precision="bfloat16" runs the ladder in bfloat16: with the same weights and latent draw every
    ELBO term is float32 and within bfloat16 rounding of the float32 model's, but not equal to it
    (the networks really ran in bfloat16), and every parameter gets a finite float32 gradient."""
    shape = (3, 16, 16)
    full = make_model(input_shape=shape, **network)
    low = make_model(input_shape=shape, precision="bfloat16", **network)
    low.load_state_dict(full.state_dict())
    x = inputs(shape)
    terms = []
    for model in (full, low):
        torch.manual_seed(1)
        terms.append(model.elbo_terms(x))
    for name in ("reconstruction", "log_p_z", "log_p_c", "log_q_z", "log_q_c"):
        exact, rounded = getattr(terms[0], name), getattr(terms[1], name)
        assert rounded.dtype == torch.float32, name
        torch.testing.assert_close(rounded, exact, rtol=0.03, atol=0.05, msg=name)
    assert not torch.equal(terms[0].reconstruction, terms[1].reconstruction)
    (-terms[1].elbo().mean()).backward()
    for name, p in low.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name


def test_decoder_ignores_lower_facet_when_its_alpha_is_zero(make_model):
    """alpha_0 = 0 switches facet 0's rung off (progressive training); alpha_0 = 1 switches it on."""
    model = make_model()
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(5, 3, generator=g)
    z0_a, z0_b = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g) * 3
    off = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(model.decode([z0_a, z1], off), model.decode([z0_b, z1], off))
    on = torch.ones(2)
    assert not torch.allclose(model.decode([z0_a, z1], on), model.decode([z0_b, z1], on))
    # The default alphas are all ones.
    torch.testing.assert_close(model.decode([z0_a, z1]), model.decode([z0_a, z1], on))


def test_decoder_depends_on_top_facet(make_model):
    model = make_model()
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(5, 2, generator=g)
    a, b = model.decode([z0, torch.randn(5, 3, generator=g)]), model.decode([z0, torch.randn(5, 3, generator=g)])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("shape", [(12,), (4, 5), (2, 4, 5)], ids=["N,D", "N,H,W", "N,C,H,W"])
def test_decoder_output_has_the_input_shape(make_model, shape):
    model = make_model(input_shape=shape)
    x = inputs(shape, n=3)
    out = model.decode([m for m, _ in model.encode(x)])
    assert out.shape == x.shape
    assert model.elbo_terms(x).reconstruction.shape == (3,)


@pytest.mark.parametrize("n_facets", [1, 3])
def test_other_numbers_of_facets(make_model, n_facets):
    """J = 1 and J = 3 build and give one ELBO column per facet; with J=3 the middle facet's alpha matters."""
    model = make_model(n_clusters=(3,) * n_facets, latent_dims=(2,) * n_facets, hidden_dims=(16, 12, 8)[:n_facets])
    x = inputs()
    terms = model.elbo_terms(x)
    assert terms.kl().shape == (6, n_facets)
    assert terms.elbo().shape == (6,)
    if n_facets == 3:
        zs = [torch.randn(6, 2) for _ in range(3)]
        other = [zs[0], torch.randn(6, 2) * 3, zs[2]]
        w = torch.tensor([1.0, 0.0, 1.0])
        torch.testing.assert_close(model.decode(zs, w), model.decode(other, w))
        assert not torch.allclose(model.decode(zs), model.decode(other))


def test_mnist_configuration_has_about_3_1_million_parameters():
    """SPEC 4: the paper's MLP ladder (784 -> 500 -> 2000, z (5, 5), K (25, 25)) has about 3.1 M parameters."""
    cfg = ModelConfig(input_shape=(784,), n_clusters=(25, 25), latent_dims=(5, 5), hidden_dims=(500, 2000),
                      architecture="mlp", covariance="diag", learn_weights=True, weight_floor=0.0,
                      likelihood="bernoulli", likelihood_scale=0.3, posterior="exact",
                      merge_scale=PAPER_MERGE_SCALE["mlp"], precision="float32")
    n = count_parameters(MultiFacetVAE(cfg))
    assert 3_000_000 <= n <= 3_200_000, n


def test_sample_latents_fixes_one_facets_cluster(make_model):
    """Controlled generation: facet j drawn from cluster k lands near mu_jk; shapes per facet."""
    model = make_model()
    with torch.no_grad():
        model.priors[1].log_var.fill_(math.log(1e-6))
    zs = model.sample_latents(8, facet=1, cluster=2, generator=torch.Generator().manual_seed(0))
    assert [z.shape for z in zs] == [(8, 2), (8, 3)]
    torch.testing.assert_close(zs[1], model.priors[1].means[2].detach().expand(8, 3), atol=1e-2, rtol=0)


# --- the posterior's log-variance ------------------------------------------------------------

@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("log_var", [-200.0, 200.0])
def test_extreme_log_variance_heads_give_finite_elbo_terms(make_model, covariance, posterior, log_var):
    """A log-variance head pushed to -200 or +200 (exp under- or overflows in float32) gives finite
    ELBO terms, a finite non-negative KL and finite gradients: the log-variance is carried as it is
    and bounded softly, never exponentiated and logged again."""
    model = make_model(covariance=covariance, posterior=posterior)
    with torch.no_grad():
        for head in model.logvar_heads:
            head.weight.zero_()
            head.bias.fill_(log_var)
    terms = model.elbo_terms(inputs())
    for name in ("reconstruction", "log_p_z", "log_p_c", "log_q_z", "log_q_c"):
        assert torch.isfinite(getattr(terms, name)).all(), name
    assert torch.all(terms.kl() >= 0)
    (-terms.elbo().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    for _, lv in model.encode(inputs()):
        torch.testing.assert_close(lv, torch.full_like(lv, LOG_VAR_RANGE[log_var > 0]))


def test_soft_clamp_is_the_identity_inside_and_bounded_outside():
    low, high = LOG_VAR_RANGE
    inside = torch.linspace(low + 10, high - 10, 101)
    assert torch.equal(soft_clamp(inside, low, high), inside)  # not even rounded
    x = torch.tensor([-1e30, -1e4, -200.0, 200.0, 1e4, 1e30], requires_grad=True)
    y = soft_clamp(x, low, high)
    torch.testing.assert_close(y.detach(), torch.tensor([low] * 3 + [high] * 3))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    dense = soft_clamp(torch.linspace(-100, 100, 20001), low, high)
    assert torch.all(dense[1:] >= dense[:-1]) and low <= dense.min() and dense.max() <= high


def test_encode_returns_the_log_variance_heads_output():
    """Within the range (the usual case) encode's log-variance is the head's output itself."""
    model = MultiFacetVAE(ModelConfig(input_shape=(6,), n_clusters=(2, 2), latent_dims=(2, 3), hidden_dims=(8, 4),
                                      architecture="mlp", covariance="diag", learn_weights=True, weight_floor=0.0,
                                      likelihood="bernoulli", likelihood_scale=0.3, posterior="exact",
                                      merge_scale=PAPER_MERGE_SCALE["mlp"], precision="float32"))
    x = inputs((6,))
    features = model.encoder(x)
    for (mean, log_var), h, mean_head, logvar_head in zip(model.encode(x), features, model.mean_heads,
                                                          model.logvar_heads):
        torch.testing.assert_close(mean, mean_head(h))
        torch.testing.assert_close(log_var, logvar_head(h), rtol=0, atol=1e-6)


# --- input scaling ("gaussian" likelihood) -----------------------------------------------------

def real_inputs(shape=(3, 4, 4), n=40, seed=0) -> torch.Tensor:
    """Real-valued features far from [0, 1]: per-feature offsets and spreads."""
    g = torch.Generator().manual_seed(seed)
    return 50 + 20 * torch.randn(*shape, generator=g) + torch.randn(n, *shape, generator=g) * 5


def scaled_model(make_model, x: torch.Tensor) -> MultiFacetVAE:
    model = make_model(input_shape=tuple(x.shape[1:]), likelihood="gaussian")
    model.set_input_scaling(*input_moments(x))
    return model


def test_input_moments_are_the_per_feature_mean_and_std_batch_by_batch():
    x = real_inputs(n=37).double()
    shift, scale = input_moments(x, batch_size=5)
    assert shift.shape == scale.shape == x.shape[1:] and shift.dtype == scale.dtype == torch.float32
    torch.testing.assert_close(shift, x.mean(0).float())
    torch.testing.assert_close(scale, x.std(0, unbiased=False).float())


def test_input_moments_read_uint8_as_the_model_does_and_give_a_constant_feature_scale_1():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 2, 3), generator=g, dtype=torch.uint8)
    x[:, 1, 2] = 200  # a constant feature
    shift, scale = input_moments(x, batch_size=7)
    as_seen = x.double() / 255
    torch.testing.assert_close(shift, as_seen.mean(0).float())
    assert scale[1, 2] == 1 and shift[1, 2] == pytest.approx(200 / 255)
    expected = as_seen.std(0, unbiased=False).float()
    expected[1, 2] = 1
    torch.testing.assert_close(scale, expected)
    _, zero_scale = input_moments(torch.zeros(4, 3))
    torch.testing.assert_close(zero_scale, torch.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        input_moments(torch.tensor([[0.0], [float("nan")]]))


def test_standardisation_round_trip(make_model):
    """The model standardises x to mean 0 and std 1 per feature; scale and shift undo it."""
    x = real_inputs()
    model = scaled_model(make_model, x)
    xs = model.standardise(x)
    torch.testing.assert_close(xs.mean(0), torch.zeros(x.shape[1:]), rtol=0, atol=1e-4)
    torch.testing.assert_close(xs.std(0, unbiased=False), torch.ones(x.shape[1:]), rtol=0, atol=1e-4)
    torch.testing.assert_close(xs * model.input_scale + model.input_shift, x)


def test_gaussian_model_encodes_and_scores_standardised_inputs_and_decodes_in_their_units(make_model):
    """Scaled: encode(x) and the reconstruction are an unscaled twin's on (x - shift) / scale;
    decode_mean is the twin's output mean times scale plus shift."""
    x = real_inputs(n=6)
    model = scaled_model(make_model, x)
    twin = make_model(input_shape=tuple(x.shape[1:]), likelihood="gaussian")  # same weights, identity scaling
    xs = (x - model.input_shift) / model.input_scale
    for (m, lv), (m2, lv2) in zip(model.encode(x), twin.encode(xs)):
        torch.testing.assert_close(m, m2)
        torch.testing.assert_close(lv, lv2)
    torch.manual_seed(0)
    a = model.elbo_terms(x)
    torch.manual_seed(0)
    b = twin.elbo_terms(xs)
    torch.testing.assert_close(a.reconstruction, b.reconstruction)
    zs = [m for m, _ in model.encode(x)]
    torch.testing.assert_close(model.decode_mean(zs), model.decode(zs) * model.input_scale + model.input_shift)


def test_decode_mean_of_bounded_likelihoods_is_the_likelihoods_mean(make_model):
    for likelihood in ("bernoulli", "sigmoid_gaussian"):
        model = make_model(likelihood=likelihood)
        zs = [m for m, _ in model.encode(inputs())]
        torch.testing.assert_close(model.decode_mean(zs), torch.sigmoid(model.decode(zs)))


def test_state_dict_carries_the_input_scaling(make_model):
    x = real_inputs()
    model = scaled_model(make_model, x)
    state = model.state_dict()
    torch.testing.assert_close(state["input_shift"], input_moments(x)[0])
    torch.testing.assert_close(state["input_scale"], input_moments(x)[1])
    fresh = make_model(input_shape=tuple(x.shape[1:]), likelihood="gaussian", seed=1)
    torch.testing.assert_close(fresh.input_scale, torch.ones(x.shape[1:]))  # identity by default
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.standardise(x), model.standardise(x))
    assert "input_shift" in make_model().state_dict()  # every model has them, unused unless gaussian


def test_set_input_scaling_refuses_bad_values(make_model):
    shape = (3, 4, 4)
    with pytest.raises(ValueError, match="likelihood='gaussian'"):
        make_model(likelihood="bernoulli").set_input_scaling(torch.zeros(shape), torch.ones(shape))
    model = make_model(likelihood="gaussian")
    with pytest.raises(ValueError, match="input shape"):
        model.set_input_scaling(torch.zeros(48), torch.ones(48))
    with pytest.raises(ValueError, match="positive"):
        model.set_input_scaling(torch.zeros(shape), torch.zeros(shape))
    with pytest.raises(ValueError, match="non-finite"):
        model.set_input_scaling(torch.full(shape, float("nan")), torch.ones(shape))
