"""Observation models p(x | z): the decoder's raw output parameterises one of these.

Each has ``log_prob(output, x)`` (summed over every non-batch dimension, shape (N,)) and
``mean(output)`` (what ``reconstruct`` and ``sample`` show).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Bernoulli:
    """Bernoulli on grey levels in [0, 1] (targets are not binarised, as in the paper).

    The decoder output is a logit; probabilities are clamped to [eps, 1 - eps] so one
    confident wrong pixel cannot produce an infinite loss.
    """

    def __init__(self, eps: float = 1e-6):
        self.max_logit = math.log((1 - eps) / eps)

    def log_prob(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = output.clamp(-self.max_logit, self.max_logit)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)


class Gaussian:
    """Gaussian with a fixed standard deviation ``scale``, normalising constant included.

    Its mean is the decoder output through a sigmoid (the paper's SVHN model has this output;
    every Gaussian model here does), so, as with the Bernoulli, the data must lie in [0, 1].
    """

    def __init__(self, scale: float):
        self.scale = scale

    def log_prob(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        resid = (x - self.mean(output)) / self.scale
        log_density = -0.5 * resid.pow(2) - math.log(self.scale) - 0.5 * math.log(2 * math.pi)
        return log_density.flatten(1).sum(1)

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)
