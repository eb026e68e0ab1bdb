"""3DShapes (``3dshapes.h5``): 480,000 renders, 64x64x3 uint8, of an object in a room, with
six ground-truth factors stored as floats in ``labels`` (480000 x 6).

The file is 5.9 GB: this loader reads the small label array first, selects rows by factor
values, then reads only the selected images, in contiguous runs, resizing as it goes.
Images stay uint8 in memory (the full set fits in 5.9 GB; float32 would take 23.6 GB), or with
``lazy=True`` stay in the file and are read when indexed (``lazy.H5Images``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Dataset

# The factors in the file's column order, and the values each takes (Burgess & Kim, 2018).
FACTORS = {
    "floor_hue": np.linspace(0.0, 0.9, 10),
    "wall_hue": np.linspace(0.0, 0.9, 10),
    "object_hue": np.linspace(0.0, 0.9, 10),
    "scale": np.linspace(0.75, 1.25, 8),
    "shape": np.arange(4.0),
    "orientation": np.linspace(-30.0, 30.0, 15),
}
READ_CHUNK = 512  # images read (and resized) at a time: 25 MB as float32 at 64 x 64


@dataclass(frozen=True)
class ShapesConfig:
    """A subset of 3DShapes: factors held fixed (name -> value index) and the labels to evaluate on."""

    fixed: dict[str, int]
    evaluation: tuple[str, ...]


# The paper's two configurations (SPEC section 7): 10 x 8 x 4 x 15 = 4,800 images each.
CONFIGS = {
    1: ShapesConfig(fixed={"wall_hue": 5, "object_hue": 6}, evaluation=("shape", "floor_hue")),
    2: ShapesConfig(fixed={"floor_hue": 0, "object_hue": 6}, evaluation=("shape", "wall_hue")),
}


def factor_indices(values: np.ndarray) -> np.ndarray:
    """(N, 6) float factor values -> (N, 6) int64 indices into FACTORS' value grids."""
    out = np.empty(values.shape, dtype=np.int64)
    for col, (name, grid) in enumerate(FACTORS.items()):
        index = np.abs(values[:, col, None] - grid[None]).argmin(1)
        off = np.abs(values[:, col] - grid[index])
        spacing = grid[1] - grid[0]
        if (off > spacing / 4).any():
            bad = values[:, col][off > spacing / 4][0]
            raise ValueError(f"3DShapes label {name} = {bad} is not one of its known values {grid.round(3).tolist()}")
        out[:, col] = index
    return out


def load_3dshapes(path: str | Path, config: int | None = None, fixed: dict[str, int] | None = None,
                  size: int | None = 32, lazy: bool = False) -> Dataset:
    """3DShapes images (N, 3, size, size) uint8 and the factors that vary as integer labels.

    ``config``: 1 or 2, the paper's configurations (CONFIGS); ``fixed``: your own selection
    (factor name -> value index, e.g. {"shape": 0}), on top of the config's if both are given;
    neither: all 480,000 images.
    ``size``: resize (bilinear) to size x size, as the paper does (32); None keeps 64.
    ``lazy``: read no image now; ``x.raw`` is an ``H5Images`` that reads (and resizes) the rows
    indexed when they are indexed, the same arrays as an eager load: for data-parallel runs, whose
    processes then share the file's pages instead of each holding a copy.
    Labels: every factor that varies in the selection, named as in FACTORS; with ``config``,
    the paper's evaluation labels come first.
    """
    import h5py

    from .lazy import H5Images  # lazy.py reads with this module's _read_rows

    path = Path(path)
    if config is not None and config not in CONFIGS:
        raise ValueError(f"config must be one of {sorted(CONFIGS)}, got {config!r}")
    if fixed is not None and not isinstance(fixed, dict):
        raise ValueError(f"fixed must map factor names to value indices, e.g. {{'shape': 0}}, got {fixed!r}")
    fixed = {**(CONFIGS[config].fixed if config is not None else {}), **(fixed or {})}
    for name, index in fixed.items():
        if name not in FACTORS:
            raise ValueError(f"unknown 3DShapes factor {name!r}; factors: {', '.join(FACTORS)}")
        if not (isinstance(index, (int, np.integer)) and 0 <= index < len(FACTORS[name])):
            raise ValueError(f"{name} takes value indices 0..{len(FACTORS[name]) - 1}, got {index!r}")
    if size is not None and not (isinstance(size, int) and 4 <= size <= 64):
        raise ValueError(f"size must be an integer in [4, 64] or None, got {size!r}")
    if not isinstance(lazy, (bool, np.bool_)):
        raise ValueError(f"lazy must be true or false, got {lazy!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no such 3DShapes file: {path}")

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"cannot read {path} as an HDF5 file: {err}") from err
    with f:
        if "images" not in f or "labels" not in f:
            raise ValueError(f"{path} is not a 3DShapes file: it needs datasets 'images' and 'labels'")
        images, values = f["images"], f["labels"]
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{path}: 'images' must be N x H x W x 3 uint8, got {images.dtype} {images.shape}")
        if values.shape != (images.shape[0], len(FACTORS)):
            raise ValueError(f"{path}: 'labels' must be {images.shape[0]} x {len(FACTORS)}, got {values.shape}")
        factors = factor_indices(values[:])
        keep = np.ones(len(factors), dtype=bool)
        for name, index in fixed.items():
            keep &= factors[:, list(FACTORS).index(name)] == index
        rows = np.flatnonzero(keep)
        if len(rows) == 0:
            raise ValueError(f"{path}: no image has {fixed}")
        x = H5Images(path, rows, size) if lazy else _read_rows(images, rows, size)

    order = [*(CONFIGS[config].evaluation if config else ()), *FACTORS]
    labels = {name: factors[rows, list(FACTORS).index(name)] for name in dict.fromkeys(order)
              if name not in fixed and len(np.unique(factors[rows, list(FACTORS).index(name)])) > 1}
    return Dataset(x, labels, name=f"3dshapes config {config}" if config else path.name)


def _read_rows(images, rows: np.ndarray, size: int | None) -> np.ndarray:
    """Images at the sorted, distinct ``rows`` of an (N, H, W, 3) h5 dataset, as (n, 3, size, size)
    uint8: READ_CHUNK rows at a time, each chunk read slice by slice over its contiguous runs (fast
    in HDF5, unlike scattered point reads) and resized at once."""
    height, width = images.shape[1:3]
    out_size = (height, width) if size is None else (size, size)
    out = np.empty((len(rows), 3, *out_size), dtype=np.uint8)
    for start in range(0, len(rows), READ_CHUNK):
        part = rows[start:start + READ_CHUNK]
        runs = [images[run[0]:run[-1] + 1] for run in np.split(part, np.flatnonzero(np.diff(part) != 1) + 1)]
        block = torch.from_numpy(runs[0] if len(runs) == 1 else np.concatenate(runs)).permute(0, 3, 1, 2)
        if out_size != (height, width):
            block = F.interpolate(block.float(), size=out_size, mode="bilinear", align_corners=False)
            block = block.round().clamp(0, 255).to(torch.uint8)
        out[start:start + len(part)] = block.numpy()
    return out
