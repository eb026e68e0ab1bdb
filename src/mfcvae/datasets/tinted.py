"""Two-facet test data made from any greyscale image set: each image tinted with one of a few
colours, so that it carries two independent factors, its own label and the colour.

Used by the benchmarks (tinted Fashion-MNIST: item x colour) to check that two facets find
two different factors at once.
"""

from __future__ import annotations

import numpy as np

from .base import Dataset

TINTS = {  # RGB in [0, 1]
    "red": (1.0, 0.25, 0.2),
    "green": (0.3, 1.0, 0.3),
    "blue": (0.3, 0.45, 1.0),
    "yellow": (1.0, 0.9, 0.2),
}


def make_tinted(data: Dataset, n_colours: int = len(TINTS), seed: int = 0) -> Dataset:
    """Each greyscale image (1 channel) multiplied by a random colour: (N, 3, H, W) uint8, with the
    original labels and a new label ``colour``."""
    if data.x.raw.ndim != 4 or data.shape[0] != 1:
        raise ValueError(f"make_tinted needs greyscale images (N, 1, H, W), got examples of shape {data.shape}")
    if not 1 <= n_colours <= len(TINTS):
        raise ValueError(f"n_colours must be in [1, {len(TINTS)}], got {n_colours}")
    colour = np.random.default_rng(seed).integers(n_colours, size=len(data))
    palette = np.array(list(TINTS.values()), dtype=np.float32)[:n_colours]
    out = np.empty((len(data), 3, *data.shape[1:]), dtype=np.uint8)
    for start in range(0, len(data), 10_000):  # in chunks: never the whole set as float32
        grey = data.x[start:start + 10_000]  # (n, 1, H, W) in [0, 1]
        tinted = grey * palette[colour[start:start + 10_000], :, None, None]
        out[start:start + 10_000] = np.round(tinted * 255).astype(np.uint8)
    return Dataset(out, {**data.labels, "colour": colour}, name=f"{data.name} tinted")
