"""Inputs left in their file and read when indexed: for data sets larger than memory, or too large
to copy into every process of a data-parallel run.

``H5Images`` stands for some rows of an (N, H, W, 3) uint8 HDF5 dataset (the 3DShapes layout)
as an (n, 3, size, size) uint8 array: indexing it reads, and resizes, only the rows asked for.
It holds the file's path, not an open file, so it pickles small and works after a fork: each
process opens the file on its first read.

``ChunkedRows`` stands for rows of an (N, D) table as float32, read a chunk at a time with the
last few chunks kept: ``NpyRows`` reads a ``.npy`` of any real dtype; the Parquet and h5ad
readers have their own.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from scipy import sparse

from .shapes3d import _read_rows

LAZY_ABOVE_BYTES = 2**30  # readers given lazy=None leave inputs in the file when they would take more in memory


def wants_lazy(lazy: bool | None, nbytes: int) -> bool:
    """Whether to leave inputs that take ``nbytes`` in memory in their file: ``lazy`` if given, else
    whether ``nbytes`` exceeds ``LAZY_ABOVE_BYTES``."""
    if lazy is not None and not isinstance(lazy, (bool, np.bool_)):
        raise ValueError(f"lazy must be true, false or None (decided by size), got {lazy!r}")
    return nbytes > LAZY_ABOVE_BYTES if lazy is None else bool(lazy)


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


class ChunkedRows:
    """Rows of an (N, D) table left in its file, read a chunk of rows at a time: the base of the
    readers of data larger than memory (``NpyRows`` here; Parquet row groups and h5ad matrices).

    Stands for the file rows ``rows`` as an (n, D) float32 array. Indexing (an int, a slice, an
    integer array or list, a boolean mask; numpy semantics) reads the chunks that hold the rows
    asked for, keeps the last ``window`` chunks read (at most ``buffer_mb`` MiB of them, at least
    one chunk), and returns the rows as float32 in the order asked; ``subset`` is the same
    indexing, left unread. Training shuffles such data by chunks (``batches.epoch_order``) so
    that an epoch reads each chunk once.

    A subclass sets ``path``, ``starts`` (the first file row of each chunk, then N: (n_chunks + 1,)
    int64) and ``row_shape`` ((D,)), and reads one chunk in ``_read_chunk``: an (m, D) array of
    any real dtype or a scipy.sparse matrix (densified here, only the rows asked for). It holds
    no open file: each process opens its own on its first read (``_open``), so it pickles small.
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, rows: np.ndarray | None = None, buffer_mb: float = 256):
        n = int(self.starts[-1])
        self.rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows.ndim != 1 or (len(self.rows) and not (0 <= self.rows.min() and self.rows.max() < n)):
            raise ValueError(f"{self.path}: rows must be a 1-d array of row indices in [0, {n})")
        if not (isinstance(buffer_mb, (int, float)) and not isinstance(buffer_mb, bool) and buffer_mb > 0):
            raise ValueError(f"buffer_mb must be a positive number of MiB, got {buffer_mb!r}")
        self.buffer_mb = buffer_mb
        self.shape = (len(self.rows), *self.row_shape)
        self._cache: OrderedDict[int, object] = OrderedDict()
        self._pid: int | None = None  # the process that opened the file

    @property
    def window(self) -> int:
        """Chunks kept in memory at once: as many as ``buffer_mb`` holds as float32, at least one."""
        largest = int(np.diff(self.starts).max()) * int(np.prod(self.row_shape)) * 4
        return max(1, int(self.buffer_mb * 2**20 // max(largest, 1)))

    def chunk_ids(self) -> np.ndarray:
        """The chunk each row lies in, (n,) int64."""
        return np.searchsorted(self.starts, self.rows, side="right") - 1

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, tuple):
            raise TypeError(f"{type(self).__name__} takes one index, over rows (index the array read for the rest)")
        picked = self.rows[index]
        if np.ndim(picked) == 0:
            return self._read(np.array([picked]))[0]
        return self._read(picked.ravel()).reshape(*picked.shape, *self.row_shape)

    def subset(self, index) -> "ChunkedRows":
        """The rows at ``index`` (a slice, an index array or a boolean mask), still unread."""
        rows = self.rows[index]
        if np.ndim(rows) != 1:
            raise ValueError(f"a subset needs a slice, a 1-d index array or a mask, got {index!r}")
        out = copy.copy(self)
        out.rows, out.shape, out._cache = rows, (len(rows), *self.row_shape), OrderedDict()
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``np.asarray(rows)``: every row, read."""
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_cache=OrderedDict(), _pid=None, **{k: None for k in self._open_handles})
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, shape={self.shape})"

    _open_handles: tuple[str, ...] = ()  # attributes holding open files, dropped when pickled

    def _open(self) -> None:
        """Open the file in this process (a subclass that reads through an open file overrides it)."""

    def _read_chunk(self, chunk: int):
        raise NotImplementedError

    def _chunk(self, chunk: int):
        """Chunk ``chunk`` as read, from the buffer if it is there."""
        if self._pid != os.getpid():  # first read in this process (or after a fork)
            self._cache.clear()
            self._open()
            self._pid = os.getpid()
        if chunk in self._cache:
            self._cache.move_to_end(chunk)
            return self._cache[chunk]
        block = self._read_chunk(chunk)
        self._cache[chunk] = block
        while len(self._cache) > self.window:
            self._cache.popitem(last=False)
        return block

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The rows at file rows ``rows`` (any order, repeats allowed), as float32."""
        out = np.empty((len(rows), *self.row_shape), dtype=np.float32)
        if len(rows) == 0:
            return out
        chunks = np.searchsorted(self.starts, rows, side="right") - 1
        # chunks in the buffer first: a batch that spans two groups of a chunked epoch order then
        # reads the new group's chunks last, so that none of them is pushed out before its turn
        for chunk in sorted(np.unique(chunks), key=lambda c: c not in self._cache):
            mine = np.flatnonzero(chunks == chunk)
            block = self._chunk(int(chunk))[rows[mine] - self.starts[chunk]]
            out[mine] = block.toarray() if sparse.issparse(block) else block
        return out


class NpyRows(ChunkedRows):
    """Rows of an (N, D) ``.npy`` array of any real dtype (float16 included), read a chunk of
    about ``chunk_mb`` MiB at a time with plain file reads, so that only the chunks in the buffer
    count towards the process's resident memory (a memory map's pages count once touched)."""

    _open_handles = ("_file",)

    def __init__(self, path: str | Path, rows: np.ndarray | None = None, buffer_mb: float = 256,
                 chunk_mb: float = 16):
        self.path = str(path)
        header = np.load(self.path, mmap_mode="r", allow_pickle=False)  # maps the file; reads only its header
        shape, dtype, fortran = header.shape, header.dtype, header.ndim > 1 and not header.flags.c_contiguous
        self._offset = header.offset
        del header
        if fortran or len(shape) != 2 or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise ValueError(f"{self.path}: expected a C-ordered (N, D) array of real numbers, got "
                             f"{dtype} {shape}{' in Fortran order' if fortran else ''}")
        self._dtype, self.row_shape = np.dtype(dtype), (int(shape[1]),)
        per_chunk = max(1, int(chunk_mb * 2**20 // max(self._dtype.itemsize * shape[1], 1)))
        self.starts = np.append(np.arange(0, shape[0], per_chunk, dtype=np.int64), shape[0])
        self._file = None
        super().__init__(rows, buffer_mb)

    def _open(self) -> None:
        self._file = open(self.path, "rb")

    def _read_chunk(self, chunk: int) -> np.ndarray:
        lo, hi = int(self.starts[chunk]), int(self.starts[chunk + 1])
        row_bytes = self._dtype.itemsize * self.row_shape[0]
        self._file.seek(self._offset + lo * row_bytes)
        return np.fromfile(self._file, dtype=self._dtype, count=(hi - lo) * self.row_shape[0]).reshape(hi - lo, -1)
