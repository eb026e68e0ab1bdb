"""The built-in demo data: small colour images with two independent ground-truth factors.

Each image is a light shape (square, ring, triangle or plus) on a background of one of
four colours, with nuisance variation the clustering should ignore: position jitter, size,
the shape's brightness, the background's shade and pixel noise. Generated in code, so
nothing is downloaded and every call with the same seed gives the same images.

Why the colour is the background's: it makes the two factors ones an MLP ladder can pull
apart (the colour is a global tint, the shape a colour-free mask). With the colour on the
shape itself the two interact pixel by pixel and an MLP facet tends to mix them; a
convolutional ladder is the tool for that harder case.
"""

from __future__ import annotations

import numpy as np

from .base import Dataset

DEMO_SIZE = 12_000  # the number of images `make demo`, the CLI's "demo" data and the benchmark use
SHAPES = ("square", "ring", "triangle", "plus")
COLOURS = {  # RGB in [0, 1]
    "red": (0.9, 0.15, 0.1),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.2, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}


def _masks(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean (n, H, W) masks of each example's shape; dx, dy are pixel offsets from its centre."""
    square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    ring = (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= (0.55 * r) ** 2)
    triangle = (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.55)
    arm = r / 3
    plus = ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    choice = shape[:, None, None]
    return np.where(choice == 0, square, np.where(choice == 1, ring, np.where(choice == 2, triangle, plus)))


def make_shapes(n: int = DEMO_SIZE, size: int = 16, seed: int = 0) -> Dataset:
    """``n`` images (n, 3, size, size), float32 in [0, 1], and their labels {"shape", "colour"}."""
    if n <= 0 or size < 8:
        raise ValueError(f"need n > 0 and size >= 8, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    shape = rng.integers(len(SHAPES), size=n)
    colour = rng.integers(len(COLOURS), size=n)
    centre = (size - 1) / 2 + rng.uniform(-0.5, 0.5, size=(n, 2))
    radius = size * rng.uniform(0.30, 0.35, size=n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = xx[None] - centre[:, 0, None, None]
    dy = yy[None] - centre[:, 1, None, None]
    mask = _masks(shape, dx, dy, radius[:, None, None])[:, None]  # (n, 1, H, W)

    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    foreground = rng.uniform(0.75, 0.95, size=(n, 1, 1, 1)).astype(np.float32)
    shade = rng.uniform(0.49, 0.7, size=(n, 1, 1, 1)).astype(np.float32)
    background = palette[colour][:, :, None, None] * shade  # (n, 3, 1, 1)
    images = np.where(mask, foreground, background)
    images = images + rng.normal(0, 0.03, size=images.shape)
    images = np.clip(images, 0, 1).astype(np.float32)
    return Dataset(images, {"shape": shape, "colour": colour}, name="demo shapes")
