"""Feature tables, one row per example: Parquet and CSV files, read through one Arrow-table path.

Label columns (``labels=``) are kept as evaluation labels, never as features: integer and boolean
columns as they are, string and categorical (dictionary) columns as codes of their sorted distinct
values; a missing value is an error. Feature columns (``features=``; by default every numeric or
boolean column that is neither a label nor a pandas index) become the (N, D) float32 inputs; a
list column holding one vector per row (how embeddings are stored) gives one feature per entry.
Missing, NaN and infinite feature values are errors.

A Parquet file whose features would take more than ``lazy.LAZY_ABOVE_BYTES`` as float32 stays in
the file (``ParquetRows``: read a row group at a time). The h5ad reader shares the label rules
(``label_codes``) and the options' check (``column_names``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .base import Dataset
from .lazy import ChunkedRows, wants_lazy


def load_parquet(path: str | Path, labels: str | list[str] | None = None, features: str | list[str] | None = None,
                 lazy: bool | None = None, buffer_mb: float = 256) -> Dataset:
    """Examples from a Parquet file: the feature columns as (N, D) float32 inputs, the label columns
    (a name or a list of names) as labels; see the module docstring for which columns are which.

    ``lazy``: True leaves the inputs in the file (``ParquetRows``, keeping at most ``buffer_mb`` MiB
    of row groups read, at least one: for lazy reading, write row groups of some MiB, e.g.
    ``row_group_size=10_000``); False reads them into memory; None (default) is lazy when they would
    take more than ``LAZY_ABOVE_BYTES`` as float32. Labels are read into memory, a column at a time.
    """
    path = _data_file(path)
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if file.metadata.num_rows == 0:
        raise ValueError(f"{path} has no rows")
    label_columns, feature_columns = _columns(path, file.schema_arrow, labels, features)
    rows = ParquetRows(path, feature_columns, buffer_mb=buffer_mb)
    x = rows if wants_lazy(lazy, 4 * rows.shape[0] * rows.shape[1]) else rows[:]
    y = {name: _label(name, file.read(columns=[name]).column(0)) for name in label_columns}
    return Dataset(x, y, name=path.name)


def load_csv(path: str | Path, labels: str | list[str] | None = None,
             features: str | list[str] | None = None) -> Dataset:
    """Examples from a CSV file, read into memory, with ``load_parquet``'s label and feature columns.
    A first row of numbers is data, not a header: the columns are then named f0, f1, ... in order."""
    path = _data_file(path)
    try:
        with path.open() as f:
            headless = _is_numbers(f.readline())
        table = pa_csv.read_csv(path, read_options=pa_csv.ReadOptions(autogenerate_column_names=headless))
    except (OSError, UnicodeDecodeError, pa.ArrowException) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    label_columns, feature_columns = _columns(path, table.schema, labels, features)
    x = _feature_matrix(table, feature_columns, [1] * len(feature_columns))
    return Dataset(x, {name: _label(name, table.column(name)) for name in label_columns}, name=path.name)


class ParquetRows(ChunkedRows):
    """Rows of the feature columns ``columns`` of a Parquet file as an (n, D) float32 array read a
    row group at a time (see ``lazy.ChunkedRows``); a list column counts as its vectors' length."""

    _open_handles = ("_file",)

    def __init__(self, path: str | Path, columns: list[str], rows: np.ndarray | None = None, buffer_mb: float = 256):
        self.path, self.columns = str(path), list(columns)
        file = pq.ParquetFile(self.path)
        sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
        self.starts = np.cumsum([0, *sizes], dtype=np.int64)
        self.widths = [_width(file, name) for name in self.columns]
        self.row_shape = (sum(self.widths),)
        self._file = None
        super().__init__(rows, buffer_mb)

    def _open(self) -> None:
        self._file = pq.ParquetFile(self.path)

    def _read_chunk(self, chunk: int) -> np.ndarray:
        return _feature_matrix(self._file.read_row_group(chunk, columns=self.columns), self.columns, self.widths)


def column_names(value: str | list[str] | None, option: str) -> list[str] | None:
    """The ``option`` (``labels``, ``features``) given as a column name or a list of them, as a list;
    None stays None."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{option} must be a column name or a list of column names, got {value!r}")
    if len(set(names)) < len(names):
        raise ValueError(f"{option} names a column more than once: {value!r}")
    return list(names)


def label_codes(name: str, values: np.ndarray, missing: int = 0) -> np.ndarray:
    """The label column ``name``, (N,) values with ``missing`` of them missing, as (N,) int64:
    integers as they are, booleans as 0/1, strings as codes of their sorted distinct values."""
    if missing:
        raise ValueError(f"label column {name!r} has {missing} missing value(s); drop those rows or fill them in")
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind in "OSU":
        return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)
    raise ValueError(f"label column {name!r} holds {values.dtype}; labels must be integers, booleans, strings "
                     "or categories")


def _data_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    return path


def _is_numbers(line: str) -> bool:
    """Whether a CSV line holds numbers only (data, not a header)."""
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_feature(t: pa.DataType) -> bool:
    return _is_number(t) or (_is_list(t) and _is_number(t.value_type))


def _is_label(t: pa.DataType) -> bool:
    t = t.value_type if pa.types.is_dictionary(t) else t
    return pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _columns(path: Path, schema: pa.Schema, labels: str | list[str] | None,
             features: str | list[str] | None) -> tuple[list[str], list[str]]:
    """The (label, feature) columns of a table of ``schema``, checked."""
    types = {field.name: field.type for field in schema}
    labels, features = column_names(labels, "labels") or [], column_names(features, "features")
    described = ", ".join(f"{name} ({t})" for name, t in types.items())
    for name in labels + (features or []):
        if name not in types:
            raise ValueError(f"{path} has no column {name!r}; its columns: {described}")
    for name in labels:
        if not _is_label(types[name]):
            raise ValueError(f"label column {name!r} holds {types[name]}; labels must be integers, booleans, "
                             "strings or categories")
    if features is None:
        index = [c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
        rest = [name for name in types if name not in labels and name not in index]
        features = [name for name in rest if _is_feature(types[name])]
        ignored = [name for name in rest if not _is_feature(types[name])]
        if ignored:
            warnings.warn(f"{path}: columns {ignored} are not numbers; they are left out (name them in labels= "
                          "to keep them as evaluation labels)", stacklevel=3)
    for name in features:
        if name in labels:
            raise ValueError(f"column {name!r} is named both as a label and as a feature; labels are never features")
        if not _is_feature(types[name]):
            raise ValueError(f"feature column {name!r} holds {types[name]}; features must be numbers, booleans or "
                             "lists of numbers")
    if not features:
        raise ValueError(f"{path} has no feature column (numbers, booleans or lists of numbers) besides the labels "
                         f"{labels}; its columns: {described}")
    return labels, features


def _label(name: str, column: pa.ChunkedArray) -> np.ndarray:
    """A label column (checked by ``_columns``) as (N,) int64 codes."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return label_codes(name, column.to_numpy(), column.null_count)


def _width(file: pq.ParquetFile, name: str) -> int:
    """How many features the column ``name`` gives: its vectors' length (the first row's, for a list
    column of varying length), else 1."""
    t = file.schema_arrow.field(name).type
    if pa.types.is_fixed_size_list(t):
        return t.list_size
    if not _is_list(t):
        return 1
    first = pc.list_value_length(next(file.iter_batches(batch_size=1, columns=[name])).column(0))[0].as_py()
    if first is None:
        raise ValueError(f"feature column {name!r} has a missing vector in its first row")
    return first


def _feature_matrix(table: pa.Table, columns: list[str], widths: list[int]) -> np.ndarray:
    """The feature columns of ``table`` (``widths``: features each gives) as (n, D) float32,
    checked for missing and non-finite values."""
    out = np.empty((table.num_rows, sum(widths)), dtype=np.float32)
    stops = np.cumsum(widths)
    for name, width, stop in zip(columns, widths, stops):
        column = table.column(name)
        _no_missing(name, column)
        if _is_list(column.type):
            if not pc.all(pc.equal(pc.list_value_length(column), width)).as_py():
                raise ValueError(f"feature column {name!r} holds vectors of other lengths than {width}")
            column = pc.list_flatten(column)
            _no_missing(name, column)
        out[:, stop - width:stop] = column.to_numpy().reshape(-1, width)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=0))
    if len(bad):
        names = sorted({columns[i] for i in np.searchsorted(stops, bad, side="right")})
        raise ValueError(f"feature column(s) {names} hold NaN or infinite values")
    return out


def _no_missing(name: str, column: pa.ChunkedArray) -> None:
    if column.null_count:
        raise ValueError(f"feature column {name!r} has {column.null_count} missing value(s)")
