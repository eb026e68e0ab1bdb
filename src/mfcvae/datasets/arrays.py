"""Arrays in files: ``.npz`` (inputs under ``x``, every other integer array of length N a
label named by its key), ``.npy`` (inputs only) and ``.csv`` (numeric rows: feature vectors).

uint8 inputs are read as images (value / 255); other numbers are kept as they are (real-valued
feature vectors are standardised by the estimator under ``likelihood="gaussian"``).

A ``.npy`` of uint8 or float32 is memory-mapped, not read: the processes of a data-parallel run
share the file's pages, and each reads only the rows it indexes. Other dtypes are read and
converted to float32.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from .base import Dataset


def load_arrays(path: str | Path) -> Dataset:
    """Inputs and named labels from a ``.npz``, ``.npy`` or ``.csv`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy", ".csv"):
        raise ValueError(f"{path}: expected a .npz, .npy or .csv file")
    if suffix == ".npz" and not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read {path}: not a .npz archive (a zip of .npy arrays, as numpy.savez writes)")
    try:
        if suffix == ".csv":
            return Dataset(_read_csv(path), name=path.name)
        if suffix == ".npy":
            return Dataset(_read_npy(path), name=path.name)
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if "x" not in arrays:
        raise ValueError(f"{path} has no array named 'x' (found: {sorted(arrays)})")
    x = arrays.pop("x")
    labels = {k: v for k, v in arrays.items() if v.ndim == 1 and len(v) == len(x)}
    ignored = sorted(k for k, v in labels.items() if not np.issubdtype(v.dtype, np.integer))
    if ignored:
        warnings.warn(f"{path}: arrays {ignored} have one entry per example but are not integers; "
                      "they are not used as labels (labels must be integer class ids)", stacklevel=2)
    return Dataset(x, {k: v for k, v in labels.items() if k not in ignored}, name=path.name)


def _read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array: memory-mapped read-only if uint8 or float32 (what ``Inputs`` stores), else read."""
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    return mapped if mapped.dtype in (np.uint8, np.float32) else np.load(path, allow_pickle=False)


def _read_csv(path: Path) -> np.ndarray:
    """Numeric rows of a CSV file as (N, D) float32; a first row that is not numeric is a header."""
    with path.open() as f:
        first = f.readline()
    try:
        [float(v) for v in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1
    return np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float32, ndmin=2)
