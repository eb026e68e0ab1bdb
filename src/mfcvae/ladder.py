"""Ladder (VLAE-layout) encoders and decoders: an MLP ladder and a convolutional one.

Rung j of the encoder yields a feature h_j for facet j: facet 0 is the bottom rung
(nearest the pixels), facet J-1 the top. The decoder runs top-down: z_{J-1} starts the
generative backbone and each lower z_j is merged in, scaled by its fade-in weight alpha_j
and by ``merge_scale``, before backbone level j.

Both architectures keep one interface:
``Encoder(x) -> [h_0, ..., h_{J-1}]`` with ``feature_dims`` giving each h_j's size (flat), and
``Decoder([z_0, ..., z_{J-1}], alphas) -> raw output shaped like x``.
``hidden_dims`` is the width of each rung (MLP) or the channels of each block (conv).

The conv ladder keeps its images in channels-last memory (N, H, W, C order; the model converts
its weights likewise), the layout in which oneDNN's CPU convolutions run fastest; shapes and
values are the same as in the default layout.

``merge_scale`` multiplies every lower rung's contribution to the decoder. The paper's code
uses 0.1 in the MLP ladder (a newly faded-in facet perturbs the decoder gently) and 1 in the
conv ladder; with 0.1 the lower facet's signal starts ten times weaker than the top facet's,
and a lower facet that has to carry a strong factor (colour, say) struggles to take it over.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU}
PAPER_MERGE_SCALE = {"mlp": 0.1, "conv": 1.0}


def _dense(n_in: int, n_out: int, activation: str, batch_norm: bool) -> nn.Sequential:
    norm = [nn.BatchNorm1d(n_out)] if batch_norm else []
    return nn.Sequential(nn.Linear(n_in, n_out), *norm, ACTIVATIONS[activation]())


def _conv(c_in: int, c_out: int, kernel: int, stride: int, padding: int, activation: str, batch_norm: bool,
          transpose: bool = False) -> nn.Sequential:
    layer = (nn.ConvTranspose2d if transpose else nn.Conv2d)(c_in, c_out, kernel, stride, padding)
    norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
    return nn.Sequential(layer, *norm, ACTIVATIONS[activation]())


# --- MLP ladder ------------------------------------------------------------------------------

class MLPLadderEncoder(nn.Module):
    """x (flattened) -> h_0 = act(W_0 x), h_j = act(W_j h_{j-1})."""

    def __init__(self, input_shape: tuple[int, ...], hidden_dims: tuple[int, ...], activation: str = "relu",
                 batch_norm: bool = False):
        super().__init__()
        widths = (math.prod(input_shape), *hidden_dims)
        self.blocks = nn.ModuleList(_dense(w_in, w_out, activation, batch_norm)
                                    for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.feature_dims = tuple(hidden_dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, features = x.flatten(1), []
        for block in self.blocks:
            h = block(h)
            features.append(h)
        return features


class MLPLadderDecoder(nn.Module):
    """Top-down: z_{J-1} -> w_{J-1} -> ... ; at level j add merge_scale alpha_j rung_j(z_j).

    With the MNIST widths (500, 2000) and z dims (5, 5) this is the paper's decoder:
    z_1 -> 2000 -> 500, + 0.1 alpha_0 (z_0 -> 500), then 500 -> 500 -> 784.
    """

    def __init__(self, input_shape: tuple[int, ...], hidden_dims: tuple[int, ...], latent_dims: tuple[int, ...],
                 activation: str = "relu", batch_norm: bool = False, merge_scale: float = PAPER_MERGE_SCALE["mlp"]):
        super().__init__()
        self.input_shape, self.merge_scale = tuple(input_shape), merge_scale
        n_facets = len(hidden_dims)
        self.top = _dense(latent_dims[-1], hidden_dims[-1], activation, batch_norm)
        # Rungs for facets 0..J-2 (the top facet enters through self.top).
        self.rungs = nn.ModuleList(_dense(latent_dims[j], hidden_dims[j], activation, batch_norm)
                                   for j in range(n_facets - 1))
        # levels[j] maps width w_{j+1} down to w_j; self.output maps w_0 to the input size.
        self.levels = nn.ModuleList(_dense(hidden_dims[j], hidden_dims[j - 1], activation, batch_norm)
                                    for j in range(1, n_facets))
        self.output = nn.Sequential(_dense(hidden_dims[0], hidden_dims[0], activation, batch_norm),
                                    nn.Linear(hidden_dims[0], math.prod(input_shape)))

    def forward(self, zs: list[torch.Tensor], alphas: torch.Tensor) -> torch.Tensor:
        t = self.top(zs[-1])
        for j in reversed(range(len(zs) - 1)):
            t = self.levels[j](t)
            t = t + self.merge_scale * alphas[j] * self.rungs[j](zs[j])
        out = self.output(t)
        return out.view(-1, *self.input_shape)


# --- convolutional ladder --------------------------------------------------------------------

def conv_ladder_fits(input_shape: tuple[int, ...], n_facets: int) -> bool:
    """Whether a conv ladder of J levels can take images of this shape: (C, H, W) with H and W
    divisible by 2^J and at least 4 pixels per side left at the top level."""
    if len(input_shape) != 3:
        return False
    scale = 2 ** n_facets
    return all(s % scale == 0 and s // scale >= 4 for s in input_shape[1:])


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ConvLadderEncoder(nn.Module):
    """Block j: conv k4 s2 (halves the image, c_j channels). Rung j on block j's output:
    conv k4 s2, then conv k4 (stride 1 at level 0, 2 above), flattened; padding 1 throughout.

    With channels (64, 128) on 32x32 inputs this is the paper's encoder: h_0 has
    64 x 7 x 7 = 3136 features, h_1 256 x 2 x 2 = 1024.
    """

    def __init__(self, input_shape: tuple[int, ...], hidden_dims: tuple[int, ...], activation: str = "elu",
                 batch_norm: bool = True):
        super().__init__()
        if not conv_ladder_fits(input_shape, len(hidden_dims)):
            raise ValueError(f"the conv ladder needs (C, H, W) images with H, W divisible by 2^{len(hidden_dims)} "
                             f"and at least 4 x 2^{len(hidden_dims)} pixels; got {input_shape}")
        channels = (input_shape[0], *hidden_dims)
        self.blocks = nn.ModuleList(_conv(channels[j], channels[j + 1], 4, 2, 1, activation, batch_norm)
                                    for j in range(len(hidden_dims)))
        self.rungs, dims = nn.ModuleList(), []
        height, width = input_shape[1:]
        for j, c in enumerate(hidden_dims):
            height, width = height // 2, width // 2  # after block j
            c_out, stride = (c, 1) if j == 0 else (2 * c, 2)
            self.rungs.append(nn.Sequential(_conv(c, c, 4, 2, 1, activation, batch_norm),
                                            _conv(c, c_out, 4, stride, 1, activation, batch_norm),
                                            nn.Flatten()))
            h, w = (_conv_out(_conv_out(s, 4, 2, 1), 4, stride, 1) for s in (height, width))
            dims.append(c_out * h * w)
        self.feature_dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, features = x.contiguous(memory_format=torch.channels_last), []
        for block, rung in zip(self.blocks, self.rungs):
            h = block(h)
            features.append(rung(h))
        return features


class ConvLadderDecoder(nn.Module):
    """Top-down, mirroring the encoder: z_{J-1} -> linear -> 2c_{J-1} x (H/2^J) x (W/2^J).
    Level j (J-1 .. 1): convT k4 s2 to c_j, convT k3 s1 to c_{j-1}, then concatenate
    merge_scale alpha_{j-1} rung_{j-1}(z_{j-1}) (linear -> c_{j-1} channels); last, convT k4 s2 to the
    image's channels (raw output, no activation).

    With channels (64, 128) on 32x32 inputs this is the paper's decoder: z_1 -> 256x8x8 ->
    128x16x16 -> 64x16x16, concatenated with z_0 -> 64x16x16, -> C x 32 x 32.
    """

    def __init__(self, input_shape: tuple[int, ...], hidden_dims: tuple[int, ...], latent_dims: tuple[int, ...],
                 activation: str = "elu", batch_norm: bool = True, merge_scale: float = PAPER_MERGE_SCALE["conv"]):
        super().__init__()
        self.merge_scale = merge_scale
        n_facets = len(hidden_dims)
        channels, height, width = input_shape
        self.top_shape = (2 * hidden_dims[-1], height >> n_facets, width >> n_facets)
        self.top = _dense(latent_dims[-1], math.prod(self.top_shape), activation, batch_norm=False)
        self.levels = nn.ModuleList(
            nn.Sequential(_conv(2 * hidden_dims[j], hidden_dims[j], 4, 2, 1, activation, batch_norm, transpose=True),
                          _conv(hidden_dims[j], hidden_dims[j - 1], 3, 1, 1, activation, batch_norm, transpose=True))
            for j in range(1, n_facets)
        )
        # Rung j (facets 0..J-2) enters at the resolution of encoder block j's output.
        self.rung_shapes = [(hidden_dims[j], height >> (j + 1), width >> (j + 1)) for j in range(n_facets - 1)]
        self.rungs = nn.ModuleList(_dense(latent_dims[j], math.prod(shape), activation, batch_norm=False)
                                   for j, shape in enumerate(self.rung_shapes))
        self.output = nn.ConvTranspose2d(2 * hidden_dims[0], channels, 4, 2, 1)

    def forward(self, zs: list[torch.Tensor], alphas: torch.Tensor) -> torch.Tensor:
        t = _channels_last(self.top(zs[-1]).view(-1, *self.top_shape))
        for j in reversed(range(len(zs) - 1)):
            t = self.levels[j](t)
            rung = _channels_last(self.rungs[j](zs[j]).view(-1, *self.rung_shapes[j]))
            t = torch.cat([t, self.merge_scale * alphas[j] * rung], dim=1)
        return self.output(t)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def build_ladder(architecture: str, input_shape: tuple[int, ...], hidden_dims: tuple[int, ...],
                 latent_dims: tuple[int, ...], activation: str, batch_norm: bool,
                 merge_scale: float) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair of an architecture."""
    encoder, decoder = {"mlp": (MLPLadderEncoder, MLPLadderDecoder),
                        "conv": (ConvLadderEncoder, ConvLadderDecoder)}[architecture]
    return (encoder(input_shape, hidden_dims, activation, batch_norm),
            decoder(input_shape, hidden_dims, latent_dims, activation, batch_norm, merge_scale))
