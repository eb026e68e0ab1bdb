"""AnnData ``.h5ad`` files (single-cell data), read with h5py: one matrix's rows (cells) as the
inputs, ``obs`` columns as labels.

The matrix is ``X``, a layer (``layer=``) or an ``obsm`` entry such as ``X_pca`` (``obsm=``), in
the encoding anndata >= 0.8 writes: a dense dataset, or a group holding a CSR or CSC matrix
(``data``, ``indices``, ``indptr``, attribute ``shape``). A sparse matrix is densified a batch at
a time, never whole. Inputs that would take more than ``lazy.LAZY_ABOVE_BYTES`` in memory (as
float32 when dense, as stored when sparse) stay in the file: ``H5Rows`` reads row blocks of a
dense matrix, ``CsrRows`` the rows of a CSR one. A CSC matrix is read into memory and converted
to CSR (its rows cannot be read apart). ``obs`` columns follow ``tables.label_codes``; a
categorical column gives its codes.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from scipy import sparse

from .base import Dataset
from .lazy import ChunkedRows, wants_lazy
from .tables import column_names, label_codes

SPARSE = {"csr_matrix": sparse.csr_matrix, "csc_matrix": sparse.csc_matrix}


def load_h5ad(path: str | Path, labels: str | list[str] | None = None, layer: str | None = None,
              obsm: str | None = None, lazy: bool | None = None, buffer_mb: float = 256) -> Dataset:
    """Cells of an ``.h5ad`` file: the rows of ``X`` (or of ``layers[layer]``, or of ``obsm[obsm]``)
    as (N, D) float32 inputs, the ``obs`` columns ``labels`` (a name or a list of names) as labels.

    ``lazy``: True leaves the inputs in the file (``H5Rows`` or ``CsrRows``, keeping at most
    ``buffer_mb`` MiB of row blocks read); False reads them into memory (a sparse matrix stays
    sparse there: ``SparseRows``); None (default) is lazy when they would take more than
    ``LAZY_ABOVE_BYTES`` in memory. A CSC matrix is always read into memory.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    for option, value in (("layer", layer), ("obsm", obsm)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{option} must be a name, got {value!r}")
    if layer is not None and obsm is not None:
        raise ValueError(f"give layer= or obsm=, not both (got layer={layer!r}, obsm={obsm!r})")
    names = column_names(labels, "labels") or []
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"cannot read {path} as an HDF5 file: {err}") from err
    with f:
        key = _matrix_key(f, path, layer, obsm)
        matrix = f[key]
        if isinstance(matrix, h5py.Dataset):
            if matrix.ndim != 2 or matrix.dtype.kind not in "biuf":
                raise ValueError(f"{path}: {key} must be a 2-d array of real numbers, got {matrix.dtype} "
                                 f"{matrix.shape}")
            in_file = wants_lazy(lazy, 4 * matrix.shape[0] * matrix.shape[1])
            x = H5Rows(path, key, buffer_mb=buffer_mb) if in_file else matrix[()].astype(np.float32, copy=False)
        else:
            encoding = matrix.attrs.get("encoding-type")
            if encoding not in SPARSE:
                raise ValueError(f"{path}: {key} is encoded as {encoding!r}; expected a dense array, a csr_matrix "
                                 "or a csc_matrix")
            in_file = wants_lazy(lazy, matrix["data"].nbytes + matrix["indices"].nbytes)
            if encoding == "csc_matrix" and lazy:
                raise ValueError(f"{path}: {key} is a CSC matrix, whose rows cannot be read apart; read it with "
                                 "lazy=False, or write it as CSR for lazy reading (adata.X = adata.X.tocsr())")
            if encoding == "csr_matrix" and in_file:
                x = CsrRows(path, key, buffer_mb=buffer_mb)
            else:
                parts = (matrix["data"][()], matrix["indices"][()], matrix["indptr"][()])
                x = SparseRows(SPARSE[encoding](parts, shape=tuple(matrix.attrs["shape"])).tocsr(), path)
        y = {name: _obs_label(f, path, name) for name in names}
    return Dataset(x, y, name=path.name)


class SparseRows(ChunkedRows):
    """Rows of a scipy.sparse matrix held in memory as an (n, D) float32 array: one chunk, the
    CSR matrix, of which indexing densifies only the rows asked for."""

    def __init__(self, matrix: sparse.spmatrix, path: str | Path = "", rows: np.ndarray | None = None):
        self.path, self.matrix = str(path), sparse.csr_matrix(matrix)
        self.starts = np.array([0, self.matrix.shape[0]], dtype=np.int64)
        self.row_shape = (self.matrix.shape[1],)
        super().__init__(rows)

    def _read_chunk(self, chunk: int) -> sparse.csr_matrix:
        return self.matrix


class H5Chunks(ChunkedRows):
    """Rows of the HDF5 element ``name`` in the file ``path``, each process reading through its
    own open file."""

    _open_handles = ("_file",)

    def __init__(self, path: str | Path, name: str, rows: np.ndarray | None, buffer_mb: float):
        self.path, self.name, self._file = str(path), name, None
        super().__init__(rows, buffer_mb)

    def _open(self) -> None:
        self._file = h5py.File(self.path, "r")


class H5Rows(H5Chunks):
    """Rows of a 2-d HDF5 dataset of real numbers as an (n, D) float32 array, read in blocks of
    about ``chunk_mb`` MiB of rows (whole HDF5 chunks, when the dataset is chunked)."""

    def __init__(self, path: str | Path, name: str, rows: np.ndarray | None = None, buffer_mb: float = 256,
                 chunk_mb: float = 16):
        with h5py.File(path, "r") as f:
            (n, d), itemsize, chunks = f[name].shape, f[name].dtype.itemsize, f[name].chunks
        per_chunk = max(1, int(chunk_mb * 2**20 // max(itemsize * d, 1)))
        if chunks:
            per_chunk = max(chunks[0], per_chunk // chunks[0] * chunks[0])
        self.starts = np.append(np.arange(0, n, per_chunk, dtype=np.int64), n)
        self.row_shape = (d,)
        super().__init__(path, name, rows, buffer_mb)

    def _read_chunk(self, chunk: int) -> np.ndarray:
        return self._file[self.name][self.starts[chunk]:self.starts[chunk + 1]]


class CsrRows(H5Chunks):
    """Rows of a CSR matrix stored in an HDF5 group (``data``, ``indices``, ``indptr``, attribute
    ``shape``) as an (n, D) float32 array: ``indptr`` is read once, then a chunk of rows (about
    ``chunk_mb`` MiB of stored entries) at a time as a scipy.sparse matrix, densified only for the
    rows asked for. ``buffer_mb`` counts chunks as stored."""

    def __init__(self, path: str | Path, name: str, rows: np.ndarray | None = None, buffer_mb: float = 256,
                 chunk_mb: float = 16):
        with h5py.File(path, "r") as f:
            group = f[name]
            self.indptr = group["indptr"][()].astype(np.int64)
            self.row_shape = (int(group.attrs["shape"][1]),)
            self._entry_bytes = group["data"].dtype.itemsize + group["indices"].dtype.itemsize
        n = len(self.indptr) - 1
        per_chunk = max(1, int(chunk_mb * 2**20 // self._entry_bytes))
        firsts = np.searchsorted(self.indptr, np.arange(0, self.indptr[-1], per_chunk))
        self.starts = np.unique(np.concatenate([[0], firsts, [n]])).astype(np.int64)
        super().__init__(path, name, rows, buffer_mb)

    @property
    def window(self) -> int:
        """Chunks kept in memory at once: as many as ``buffer_mb`` holds as stored, at least one."""
        largest = int(np.diff(self.indptr[self.starts]).max()) * self._entry_bytes
        return max(1, int(self.buffer_mb * 2**20 // max(largest, 1)))

    def _read_chunk(self, chunk: int) -> sparse.csr_matrix:
        lo, hi = self.starts[chunk], self.starts[chunk + 1]
        first, last = self.indptr[lo], self.indptr[hi]
        group = self._file[self.name]
        return sparse.csr_matrix((group["data"][first:last], group["indices"][first:last],
                                  self.indptr[lo:hi + 1] - first), shape=(hi - lo, self.row_shape[0]))


def _matrix_key(f: h5py.File, path: Path, layer: str | None, obsm: str | None) -> str:
    """Where the matrix asked for lies in the file."""
    if layer is None and obsm is None:
        if "X" not in f:
            raise ValueError(f"{path} has no X; read a layer (layer=) or an obsm entry (obsm=) instead")
        return "X"
    group, name = ("layers", layer) if layer is not None else ("obsm", obsm)
    available = sorted(f[group]) if group in f else []
    if name not in available:
        raise ValueError(f"{path} has no {group} entry {name!r}; its {group}: {available or 'none'}")
    return f"{group}/{name}"


def _obs_label(f: h5py.File, path: Path, name: str) -> np.ndarray:
    """The ``obs`` column ``name`` as (N,) int64 codes: a categorical's codes, else ``label_codes``."""
    obs = f.get("obs")
    if not isinstance(obs, h5py.Group):
        raise ValueError(f"{path}: obs is not stored as anndata >= 0.8 writes it (a group of columns)")
    available = [k for k in obs if k != obs.attrs.get("_index")]
    if name not in available:
        raise ValueError(f"{path}: obs has no column {name!r}; its columns: {available or 'none'}")
    column = obs[name]
    encoding = column.attrs.get("encoding-type")
    if encoding == "categorical":
        codes = column["codes"][()]
        return label_codes(name, codes, int((codes < 0).sum()))
    if encoding in ("nullable-integer", "nullable-boolean", "nullable-string-array"):
        return label_codes(name, _values(column["values"]), int(column["mask"][()].sum()))
    if isinstance(column, h5py.Dataset):
        return label_codes(name, _values(column))
    raise ValueError(f"{path}: obs column {name!r} is encoded as {encoding!r}, not as a label column")


def _values(dataset: h5py.Dataset) -> np.ndarray:
    """A 1-d dataset's values, strings as str."""
    return dataset.asstr()[()] if h5py.check_string_dtype(dataset.dtype) else dataset[()]
