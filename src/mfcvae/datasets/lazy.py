"""Images left in their file and read when indexed: for data sets too large to copy into every
process of a data-parallel run.

``H5Images`` stands for some rows of an (N, H, W, 3) uint8 HDF5 dataset (the 3DShapes layout)
as an (n, 3, size, size) uint8 array: indexing it reads, and resizes, only the rows asked for.
It holds the file's path, not an open file, so it pickles small and works after a fork: each
process opens the file on its first read.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

from .shapes3d import _read_rows


class H5Images:
    """Rows ``rows`` (file row indices, (n,) int) of the (N, H, W, 3) uint8 dataset ``name`` in the
    HDF5 file ``path``, as an (n, 3, size, size) uint8 array read on demand (``size`` None: H x W).

    Indexing (an int, a slice, an integer array or list, a boolean mask; numpy semantics) returns
    an np.ndarray of the rows in the order asked; ``subset`` is the same indexing, left unread.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path: str | Path, rows: np.ndarray, size: int | None = None, name: str = "images"):
        import h5py

        self.path, self.name, self.size = str(path), name, size
        self.rows = np.asarray(rows, dtype=np.int64)
        if self.rows.ndim != 1:
            raise ValueError(f"rows must be a 1-d array of row indices, got shape {self.rows.shape}")
        with h5py.File(self.path, "r") as f:
            images = f[name]
            if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
                raise ValueError(f"{self.path}: {name!r} must be N x H x W x 3 uint8, got {images.dtype} "
                                 f"{images.shape}")
            n, height, width = images.shape[:3]
        if len(self.rows) and not (0 <= self.rows.min() and self.rows.max() < n):
            raise ValueError(f"{self.path}: row indices must be in [0, {n}), got {self.rows.min()}..{self.rows.max()}")
        self.shape = (len(self.rows), 3, *((height, width) if size is None else (size, size)))
        self._file = self._images = self._pid = None  # the open file and dataset, and the process that opened them

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, tuple):
            raise TypeError("H5Images takes one index, over rows (index the array read for the rest)")
        picked = self.rows[index]
        if np.ndim(picked) == 0:
            return self._read(np.array([picked]))[0]
        return self._read(picked.ravel()).reshape(*picked.shape, *self.shape[1:])

    def subset(self, index) -> "H5Images":
        """The rows at ``index`` (a slice, an index array or a boolean mask), still unread."""
        rows = self.rows[index]
        if np.ndim(rows) != 1:
            raise ValueError(f"a subset needs a slice, a 1-d index array or a mask, got {index!r}")
        out = copy.copy(self)
        out.rows, out.shape = rows, (len(rows), *self.shape[1:])
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``np.asarray(images)``: every row, read."""
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_images": None, "_pid": None}  # never an open file

    def __repr__(self) -> str:
        return f"H5Images({self.path!r}, {self.name!r}, shape={self.shape})"

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The images at file rows ``rows`` (any order, repeats allowed): the distinct rows are read
        in file order, in contiguous runs, then put in the order asked."""
        if len(rows) == 0:
            return np.empty((0, *self.shape[1:]), dtype=np.uint8)
        distinct, inverse = np.unique(rows, return_inverse=True)
        out = _read_rows(self._dataset(), distinct, self.size)
        return out if np.array_equal(distinct, rows) else out[inverse]

    def _dataset(self):
        """The h5py dataset, opened by this process on its first read."""
        if self._images is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r")
            self._images, self._pid = self._file[self.name], os.getpid()
        return self._images
