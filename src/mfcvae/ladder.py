"""Ladder (VLAE-layout) encoders and decoders.

Rung j of the encoder yields a feature h_j for facet j: facet 0 is the bottom rung
(nearest the pixels), facet J-1 the top. The decoder runs top-down: z_{J-1} starts the
generative backbone and each lower z_j is merged in, scaled by its fade-in weight alpha_j,
before backbone level j.

The interface every architecture keeps (so a convolutional ladder can slot in):
``Encoder(x) -> [h_0, ..., h_{J-1}]`` with ``feature_dims`` giving each h_j's width, and
``Decoder([z_0, ..., z_{J-1}], alphas) -> raw output shaped like x``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The MLP ladder's merge scale from the paper's code: rung outputs start small next to
# the backbone so that a newly faded-in facet perturbs the decoder gently.
MERGE_SCALE = 0.1


class MLPLadderEncoder(nn.Module):
    """x (flattened) -> h_0 = relu(W_0 x), h_j = relu(W_j h_{j-1})."""

    def __init__(self, input_shape: tuple[int, ...], hidden_dims: tuple[int, ...]):
        super().__init__()
        widths = (math.prod(input_shape), *hidden_dims)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(w_in, w_out), nn.ReLU()) for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.feature_dims = tuple(hidden_dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, features = x.flatten(1), []
        for block in self.blocks:
            h = block(h)
            features.append(h)
        return features


class MLPLadderDecoder(nn.Module):
    """Top-down: z_{J-1} -> w_{J-1} -> ... ; at level j add 0.1 alpha_j rung_j(z_j).

    With the MNIST widths (500, 2000) and z dims (5, 5) this is the paper's decoder:
    z_1 -> 2000 -> 500, + 0.1 alpha_0 (z_0 -> 500), then 500 -> 500 -> 784.
    """

    def __init__(self, input_shape: tuple[int, ...], hidden_dims: tuple[int, ...], latent_dims: tuple[int, ...]):
        super().__init__()
        self.input_shape = tuple(input_shape)
        n_facets = len(hidden_dims)
        self.top = nn.Sequential(nn.Linear(latent_dims[-1], hidden_dims[-1]), nn.ReLU())
        # Rungs for facets 0..J-2 (the top facet enters through self.top).
        self.rungs = nn.ModuleList(
            nn.Sequential(nn.Linear(latent_dims[j], hidden_dims[j]), nn.ReLU()) for j in range(n_facets - 1)
        )
        # levels[j] maps width w_{j+1} down to w_j; self.output maps w_0 to the input size.
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_dims[j], hidden_dims[j - 1]), nn.ReLU()) for j in range(1, n_facets)
        )
        self.output = nn.Sequential(
            nn.Linear(hidden_dims[0], hidden_dims[0]), nn.ReLU(), nn.Linear(hidden_dims[0], math.prod(input_shape))
        )

    def forward(self, zs: list[torch.Tensor], alphas: torch.Tensor) -> torch.Tensor:
        t = self.top(zs[-1])
        for j in reversed(range(len(zs) - 1)):
            t = self.levels[j](t)
            t = t + MERGE_SCALE * alphas[j] * self.rungs[j](zs[j])
        out = self.output(t)
        return out.view(-1, *self.input_shape)
