"""SVHN cropped digits: ``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat``.

Each file (MATLAB v5, read with scipy) holds ``X``, 32x32x3xN uint8, and ``y``, Nx1 with
the digits 1..10, where 10 stands for the digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from .base import Dataset


def load_svhn(path: str | Path) -> Dataset:
    """An SVHN .mat file as a Dataset of (N, 3, 32, 32) uint8 images with labels {"label": digit 0..9}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such SVHN file: {path}")
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except (OSError, ValueError, TypeError, NotImplementedError, scipy.io.matlab.MatReadError) as err:
        raise ValueError(f"cannot read {path} as a MATLAB .mat file: {err}") from err
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path} is not an SVHN file: it needs arrays 'X' and 'y'")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise ValueError(f"{path}: 'X' must be HxWx3xN uint8, got {x.dtype} of shape {x.shape}")
    y = y.reshape(-1)
    if len(y) != x.shape[3]:
        raise ValueError(f"{path}: 'y' has {len(y)} labels for {x.shape[3]} images")
    if len(y) and not ((y >= 1) & (y <= 10)).all():
        raise ValueError(f"{path}: labels must be 1..10 (10 = digit 0), found {np.unique(y)[:10]}")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # N, C, H, W
    return Dataset(images, {"label": (y % 10).astype(np.int64)}, name=path.name)
