"""Data sets mfcvae can make or read: images, arrays, feature tables (Parquet, CSV) and single-cell
matrices (AnnData .h5ad). Every reader returns a ``Dataset``: inputs stored compactly (``ds.x[idx]``
gives float32, images in [0, 1]) and named integer labels, used for evaluation only.

``load(path)`` picks the reader from what the path holds; each reader is public too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from .arrays import load_arrays, load_npy
from .base import Dataset, Inputs
from .folder import IMAGE_SUFFIXES, load_image_folder
from .h5ad import load_h5ad
from .idx import load_idx, load_mnist, read_idx
from .shapes import make_shapes
from .shapes3d import CONFIGS as SHAPES3D_CONFIGS
from .shapes3d import load_3dshapes
from .svhn import load_svhn
from .tables import load_csv, load_parquet
from .tinted import make_tinted

__all__ = ["Dataset", "Inputs", "SHAPES3D_CONFIGS", "load", "load_3dshapes", "load_arrays", "load_csv", "load_h5ad",
           "load_idx", "load_image_folder", "load_mnist", "load_npy", "load_parquet", "load_svhn", "make_shapes",
           "make_tinted", "read_idx", "reader_for", "reader_options"]


def reader_for(path: str | Path) -> Callable[..., Dataset]:
    """The reader ``load`` uses for ``path`` (see ``load``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        return load_mnist if any(path.glob("*-images*idx3-ubyte*")) else load_image_folder
    name, suffix = path.name.lower(), path.suffix.lower()
    if "idx3-ubyte" in name:
        return load_idx
    if suffix == ".mat":
        return load_svhn
    if suffix in (".h5", ".hdf5"):
        return load_3dshapes
    if suffix == ".npy":
        return load_npy
    if suffix == ".npz":
        return load_arrays
    if suffix == ".csv":
        return load_csv
    if suffix in (".parquet", ".pq"):
        return load_parquet
    if suffix == ".h5ad":
        return load_h5ad
    if suffix in IMAGE_SUFFIXES:
        raise ValueError(f"{path} is one image; point at the folder that holds the images")
    raise ValueError(f"don't know how to read {path}: expected an MNIST-format folder or IDX file, an SVHN .mat, "
                     "a 3DShapes .h5, a .npz/.npy file, a .csv/.parquet/.pq table, an AnnData .h5ad "
                     "or a folder of images")


def reader_options(reader: Callable[..., Dataset]) -> list[str]:
    """The keyword options a reader takes besides the path."""
    return list(inspect.signature(reader).parameters)[1:]


def load(path: str | Path, **options) -> Dataset:
    """Read any supported data set; ``options`` go to the reader chosen:

    - a folder holding ``train-images-idx3-ubyte[.gz]`` etc.: ``load_mnist`` (split=...);
    - an IDX image file ``*-images-idx3-ubyte[.gz]``: ``load_idx`` (its label file is found beside it);
    - ``*.mat``: ``load_svhn``;  ``*.h5`` / ``*.hdf5``: ``load_3dshapes`` (config=..., fixed=..., size=...,
      lazy=...);
    - ``*.npz``: ``load_arrays``; ``*.npy``: ``load_npy`` (lazy=..., buffer_mb=...; a uint8 or float32
      array is memory-mapped, a large (N, D) one read a chunk at a time);
    - ``*.parquet`` / ``*.pq``: ``load_parquet`` (labels=..., features=..., lazy=..., buffer_mb=...);
      ``*.csv``: ``load_csv`` (labels=..., features=...);
    - ``*.h5ad``: ``load_h5ad`` (labels=..., layer=..., obsm=..., lazy=..., buffer_mb=...);
    - any other folder: ``load_image_folder`` (size=...).
    """
    reader = reader_for(path)
    unknown = sorted(set(options) - set(reader_options(reader)))
    if unknown:
        raise ValueError(f"{path} is read by {reader.__name__}, which takes no option {unknown}; "
                         f"its options: {reader_options(reader) or 'none'}")
    return reader(path, **options)