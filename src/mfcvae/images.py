"""Image grids as PNG files (Pillow), for samples, reconstructions and compositions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def can_draw(example_shape: tuple[int, ...]) -> bool:
    """Whether inputs of this per-example shape can be shown as images (see ``to_images``)."""
    if len(example_shape) == 1:
        return math.isqrt(example_shape[0]) ** 2 == example_shape[0]
    return len(example_shape) == 2 or (len(example_shape) == 3 and example_shape[0] in (1, 3))


def to_images(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W), (N, H, W) or (N, D) with square D -> (N, H, W, C) uint8, C in {1, 3}."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"cannot draw {x.shape[1]}-dimensional vectors as images (not a square number)")
        x = x.reshape(len(x), 1, side, side)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"cannot draw inputs of shape {x.shape[1:]} as images (need 1 or 3 channels)")
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def grid(x: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
    """Tile images into one (rows*H, ncol*W, C) uint8 array, row-major, white padding."""
    imgs = to_images(x)
    n, h, w, c = imgs.shape
    nrow = math.ceil(n / ncol)
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, col = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return out


def save_grid(x: np.ndarray, path: str | Path, ncol: int, scale: int = 4) -> Path:
    """Write a PNG grid of ``x``, each pixel enlarged ``scale`` times."""
    path = Path(path)
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"cannot write an image to {path}: give a file name ending in .png")
    g = grid(x, ncol)
    image = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
