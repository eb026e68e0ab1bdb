"""NumPy files: ``.npz`` (inputs under ``x``, every other integer array of length N a label)
and ``.npy`` (inputs only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_arrays(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Inputs and named labels from a ``.npz`` or ``.npy`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), {}
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        else:
            raise ValueError(f"{path}: expected a .npz or .npy file")
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if "x" not in arrays:
        raise ValueError(f"{path} has no array named 'x' (found: {sorted(arrays)})")
    x = arrays.pop("x")
    labels = {k: v for k, v in arrays.items()
              if v.ndim == 1 and len(v) == len(x) and np.issubdtype(v.dtype, np.integer)}
    return x, labels
