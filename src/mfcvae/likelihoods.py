"""Observation models p(x | z): the decoder's raw output parameterises one of these.

Each has ``log_prob(output, x)`` (summed over every non-batch dimension, shape (N,)) and
``mean(output)`` (the mean of p(x | z), what ``reconstruct`` and ``sample`` show).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Bernoulli:
    """Bernoulli on grey levels in [0, 1] (targets are not binarised, as in the paper).

    The decoder output is a logit. The cross-entropy is computed from the logit directly,
    which is finite for every logit and keeps the gradient sigmoid(logit) - x of a confidently
    wrong pixel.
    """

    def log_prob(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(output, x, reduction="none").flatten(1).sum(1)

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)


class Gaussian:
    """Gaussian with a fixed standard deviation ``scale`` and mean the decoder output itself
    (unbounded), normalising constant included: for real-valued, standardised features."""

    def __init__(self, scale: float):
        self.scale = scale

    def log_prob(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        resid = (x - self.mean(output)) / self.scale
        log_density = -0.5 * resid.pow(2) - math.log(self.scale) - HALF_LOG_2PI
        return log_density.flatten(1).sum(1)

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return output


class SigmoidGaussian(Gaussian):
    """Gaussian with a fixed standard deviation ``scale`` whose mean is the decoder output
    through a sigmoid, so the data must lie in [0, 1] (the paper's SVHN and 3DShapes model)."""

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)


def make_likelihood(name: str, scale: float) -> Bernoulli | Gaussian:
    """The observation model called ``name`` ("bernoulli", "gaussian" or "sigmoid_gaussian");
    ``scale`` is the Gaussians' standard deviation."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(scale)
    if name == "sigmoid_gaussian":
        return SigmoidGaussian(scale)
    raise ValueError(f"likelihood must be 'bernoulli', 'gaussian' or 'sigmoid_gaussian', got {name!r}")
