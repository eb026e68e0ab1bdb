"""MNIST-format IDX files (``*-images-idx3-ubyte`` / ``*-labels-idx1-ubyte``, plain or .gz):
MNIST and Fashion-MNIST, as their sites and the Debian package ship them."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .base import Dataset

_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension; images: 3 dimensions (unsigned bytes)
SPLITS = {"train": ("train",), "test": ("t10k",), "all": ("train", "t10k")}


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
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=header).reshape(shape)  # writable, for torch


def labels_file_for(images: Path) -> Path | None:
    """The label file MNIST ships beside an image file (``train-images-idx3-ubyte`` ->
    ``train-labels-idx1-ubyte``, same compression), if it is there."""
    candidate = images.with_name(images.name.replace("images", "labels").replace("idx3", "idx1"))
    return candidate if candidate != images and candidate.is_file() else None


def load_idx(images: str | Path, labels: str | Path | None = None) -> Dataset:
    """One image file as a Dataset of (N, 1, H, W) uint8 images, labelled from ``labels`` or,
    by default, from the label file MNIST ships beside it (if it is there)."""
    labels = labels if labels is not None else labels_file_for(Path(images))
    x = read_idx(images)
    if x.ndim != 3:
        raise ValueError(f"{images} holds labels, not images")
    out = {}
    if labels is not None:
        y = read_idx(labels)
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{labels} does not hold one label per image of {images}")
        out["label"] = y.astype(np.int64)
    return Dataset(x[:, None], out, name=Path(images).name)


def load_mnist(directory: str | Path, split: str = "all") -> Dataset:
    """MNIST or Fashion-MNIST from the folder holding its four IDX files (plain or .gz).

    ``split``: "train" (60,000), "test" (10,000) or "all" (both, train first).
    """
    directory = Path(directory)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    parts = []
    for prefix in SPLITS[split]:
        found = sorted(directory.glob(f"{prefix}-images*idx3-ubyte*"))
        if not found:
            raise FileNotFoundError(f"no {prefix}-images-idx3-ubyte[.gz] file in {directory}")
        labels = labels_file_for(found[0])
        if labels is None:
            raise FileNotFoundError(f"no label file beside {found[0]}")
        parts.append(load_idx(found[0], labels))
    x = np.concatenate([p.x.raw for p in parts])
    return Dataset(x, {"label": np.concatenate([p.labels["label"] for p in parts])}, name=directory.name)
