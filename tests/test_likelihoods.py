"""Observation models: log densities against torch.distributions and closed forms, their means,
and the Bernoulli's gradient on a confidently wrong pixel."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from mfcvae.likelihoods import Bernoulli, Gaussian, SigmoidGaussian, make_likelihood


def outputs_and_targets(shape=(4, 2, 3), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2, torch.rand(*shape, generator=g)


def test_bernoulli_log_prob_is_continuous_cross_entropy():
    """Grey-level targets (not binarised): sum x log p + (1 - x) log(1 - p) over every non-batch dim."""
    logits, x = outputs_and_targets()
    p = torch.sigmoid(logits)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), expected)
    torch.testing.assert_close(Bernoulli().mean(logits), p)


def test_bernoulli_confidently_wrong_pixel_has_its_full_loss_and_gradient():
    """Logit -20 for target 1 costs log(1 + e^20) nats (about 20, not a clamped 13.8) and keeps the
    gradient sigmoid(logit) - x; logits of +-1e4 give a finite loss and gradient."""
    logits = torch.tensor([[-20.0, 20.0, 3.0, 1e4, -1e4]], requires_grad=True)
    x = torch.tensor([[1.0, 0.0, 0.3, 0.0, 1.0]])
    loss = -Bernoulli().log_prob(logits, x)
    expected = sum(math.log1p(math.exp(-abs(v))) + max(v, 0) - v * t
                   for v, t in zip([-20.0, 20.0, 3.0], [1.0, 0.0, 0.3])) + 2e4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.sum().backward()
    torch.testing.assert_close(logits.grad, torch.sigmoid(logits.detach()) - x)
    assert logits.grad[0, 0] == pytest.approx(-1.0, abs=1e-8) and logits.grad[0, 1] == pytest.approx(1.0, abs=1e-8)


def test_gaussian_log_prob_is_normal_with_the_output_as_mean():
    """Gaussian: unbounded mean = the output, fixed std, normalising constant included."""
    out, x = outputs_and_targets()
    x = x * 10 - 5  # real-valued, outside [0, 1]
    lik = Gaussian(0.6)
    torch.testing.assert_close(lik.mean(out), out)
    torch.testing.assert_close(lik.log_prob(out, x), Normal(out, 0.6).log_prob(x).flatten(1).sum(1))


def test_sigmoid_gaussian_log_prob_is_normal_with_a_sigmoid_mean():
    """SigmoidGaussian (the paper's SVHN / 3DShapes model): mean = sigmoid(output), fixed std."""
    out, x = outputs_and_targets()
    lik = SigmoidGaussian(0.3)
    mean = torch.sigmoid(out)
    torch.testing.assert_close(lik.mean(out), mean)
    torch.testing.assert_close(lik.log_prob(out, x), Normal(mean, 0.3).log_prob(x).flatten(1).sum(1))


def test_make_likelihood_by_name():
    assert isinstance(make_likelihood("bernoulli", 0.3), Bernoulli)
    gaussian, sigmoid = make_likelihood("gaussian", 0.5), make_likelihood("sigmoid_gaussian", 0.5)
    assert type(gaussian) is Gaussian and gaussian.scale == 0.5
    assert type(sigmoid) is SigmoidGaussian and sigmoid.scale == 0.5
    with pytest.raises(ValueError, match="likelihood must be"):
        make_likelihood("poisson", 0.3)
