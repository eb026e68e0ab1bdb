"""Arrays in files: ``.npz`` (inputs under ``x``, every other integer array of length N a
label named by its key) and ``.npy`` (inputs only, ``load_npy``); a ``.csv`` goes to ``tables.load_csv``.

uint8 inputs are read as images (value / 255); other numbers are kept as they are (real-valued
feature vectors are standardised by the estimator under ``likelihood="gaussian"``).

A ``.npy`` of uint8 or float32 is memory-mapped, not read: the processes of a data-parallel run
share the file's pages, and each reads only the rows it indexes. A larger one, or one of another
dtype (float16 embeddings), can stay in the file and be read a chunk at a time (``lazy.NpyRows``).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from .base import Dataset
from .lazy import NpyRows, wants_lazy
from .tables import load_csv


def load_arrays(path: str | Path) -> Dataset:
    """Inputs and named labels from a ``.npz``, ``.npy`` or ``.csv`` file (a CSV's numeric columns,
    read by ``load_csv``: call it to keep label columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy", ".csv"):
        raise ValueError(f"{path}: expected a .npz, .npy or .csv file")
    if suffix == ".npz" and not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read {path}: not a .npz archive (a zip of .npy arrays, as numpy.savez writes)")
    if suffix == ".csv":
        return load_csv(path)
    try:
        if suffix == ".npy":
            return load_npy(path)
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


def load_npy(path: str | Path, lazy: bool | None = None, buffer_mb: float = 256) -> Dataset:
    """Inputs from a ``.npy`` file, not read now: ``lazy`` True, or None and more than
    ``lazy.LAZY_ABOVE_BYTES`` as float32, leaves an (N, D) array in the file as an ``NpyRows``
    (chunks read as needed, ``buffer_mb`` MiB of them kept); otherwise a uint8 or float32 array is
    memory-mapped read-only and one of another dtype read and converted to float32."""
    path = Path(path)
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if wants_lazy(lazy, 4 * mapped.size):
            if mapped.ndim != 2:
                raise ValueError(f"{path}: lazy reading takes an (N, D) array, this one is {mapped.shape} "
                                 "(a uint8 or float32 array of images is memory-mapped: lazy=False)")
            return Dataset(NpyRows(path, buffer_mb=buffer_mb), name=path.name)
        x = mapped if mapped.dtype in (np.uint8, np.float32) else np.load(path, allow_pickle=False)
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    return Dataset(x, name=path.name)
