"""MNIST-format IDX files (``*-images-idx3-ubyte`` / ``*-labels-idx1-ubyte``, plain or .gz):
MNIST and Fashion-MNIST. Images come back as float32 in [0, 1], shape (N, 1, 28, 28)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension; images: 3 dimensions (unsigned bytes)


def read_idx(path: str | Path) -> np.ndarray:
    """The uint8 array stored in one IDX file; checks its magic number and its size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic not in _MAGIC:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic number {magic})")
    ndim = _MAGIC[magic]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"{path} is truncated or corrupt: header says {shape} ({expected} bytes), file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_idx(images: str | Path, labels: str | Path | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images as float32 (N, 1, 28, 28) in [0, 1] and, if a label file is given, {"label": (N,)}."""
    x = read_idx(images)
    if x.ndim != 3:
        raise ValueError(f"{images} holds labels, not images")
    out = {}
    if labels is not None:
        y = read_idx(labels)
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{labels} does not hold one label per image of {images}")
        out["label"] = y.astype(np.int64)
    return (x.astype(np.float32) / 255.0)[:, None], out
