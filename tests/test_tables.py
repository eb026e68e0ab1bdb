"""Feature tables and single-cell matrices: Parquet, CSV and AnnData .h5ad files written here in
their real formats, read in memory and lazily (``ParquetRows``, ``H5Rows``, ``CsrRows``)."""

from __future__ import annotations

import pickle
import warnings

import anndata
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import sparse

from mfcvae.datasets import lazy, load, load_csv, load_h5ad, load_parquet, reader_for
from mfcvae.datasets.h5ad import CsrRows, H5Rows, SparseRows
from mfcvae.datasets.tables import ParquetRows
from mfcvae.estimator import MFCVAE

N = 300
INDEXES = [np.array([5, 299, 0, 64, 5, 130, 63]), slice(10, 250, 7), slice(None, None, -1),
           np.arange(N) % 3 == 0, [1, 2, 200], np.random.default_rng(1).permutation(N)[:100]]


def codes(values) -> np.ndarray:
    """Codes of the sorted distinct values."""
    return np.unique(np.asarray(values), return_inverse=True)[1].reshape(-1)


@pytest.fixture(scope="module")
def table():
    """(columns, expected features): 4 numeric columns (float32, float64, int, bool), an integer,
    a string and a categorical (dictionary) label."""
    rng = np.random.default_rng(0)
    columns = {"a": rng.normal(size=N).astype(np.float32), "b": rng.normal(size=N) * 100,
               "n": rng.integers(-5, 50, N), "flag": rng.random(N) > 0.5,
               "digit": rng.integers(0, 10, N), "colour": rng.choice(["red", "green", "blue"], N),
               "shape": rng.choice(["square", "heart", "ellipse"], N)}
    x = np.stack([columns[k].astype(np.float32) for k in ("a", "b", "n", "flag")], axis=1)
    return columns, x


def write_parquet(path, columns: dict, row_group_size: int = 64):
    arrays = {k: pa.array(v).dictionary_encode() if k == "shape" else pa.array(v) for k, v in columns.items()}
    pq.write_table(pa.table(arrays), path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def parquet_file(table, tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("parquet") / "t.parquet", table[0])  # 5 row groups


LABELS = ["digit", "colour", "shape"]


# --- Parquet ---------------------------------------------------------------------------------------
def test_parquet_features_are_float32_and_labels_codes(table, parquet_file):
    columns, x = table
    assert pq.ParquetFile(parquet_file).num_row_groups == 5
    assert pa.types.is_dictionary(pq.read_schema(parquet_file).field("shape").type)
    ds = load_parquet(parquet_file, labels=LABELS, lazy=False)
    assert isinstance(ds.x.raw, np.ndarray) and ds.x.raw.dtype == np.float32 and ds.name == "t.parquet"
    np.testing.assert_array_equal(ds.x[:], x)
    assert list(ds.labels) == LABELS
    np.testing.assert_array_equal(ds.labels["digit"], columns["digit"])
    np.testing.assert_array_equal(ds.labels["colour"], codes(columns["colour"]))
    np.testing.assert_array_equal(ds.labels["shape"], codes(columns["shape"]))
    one = load_parquet(parquet_file, labels="digit", features=["n", "a"], lazy=False)
    np.testing.assert_array_equal(one.x[:], x[:, [2, 0]])
    assert list(one.labels) == ["digit"]


def test_parquet_leaves_out_columns_that_are_not_numbers_and_says_so(table, parquet_file):
    with pytest.warns(UserWarning, match=r"columns \['colour', 'shape'\] are not numbers"):
        ds = load_parquet(parquet_file, lazy=False)
    assert ds.labels == {} and ds.x.shape == (N, 5)  # digit, not a label, is a feature
    np.testing.assert_array_equal(ds.x[:, :4], table[1])


def test_lazy_parquet_reads_row_groups_and_gives_the_rows_read_in_memory(table, parquet_file):
    lazy = load_parquet(parquet_file, labels=LABELS, lazy=True)
    eager = load_parquet(parquet_file, labels=LABELS, lazy=False)
    rows = lazy.x.raw
    assert isinstance(rows, ParquetRows) and rows.shape == (N, 4) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows.starts, [0, 64, 128, 192, 256, 300])
    np.testing.assert_array_equal(rows.chunk_ids(), np.arange(N) // 64)
    for name in LABELS:
        np.testing.assert_array_equal(lazy.labels[name], eager.labels[name])
    for index in [*INDEXES, 7, -1]:
        np.testing.assert_array_equal(lazy.x[index], eager.x[index])
    part = lazy.subset(INDEXES[0])
    assert isinstance(part.x.raw, ParquetRows)
    np.testing.assert_array_equal(part.x[:], eager.x[INDEXES[0]])
    np.testing.assert_array_equal(part.labels["colour"], eager.labels["colour"][INDEXES[0]])
    np.testing.assert_array_equal(lazy.subset(INDEXES[3]).x[::-1], eager.x[INDEXES[3]][::-1])


def test_lazy_rows_pickle_small_and_read_after_unpickling(parquet_file, table):
    rows = load_parquet(parquet_file, lazy=True, features=["a", "b", "n", "flag"]).x.raw
    rows[:10]  # opens the file and fills the buffer
    again = pickle.loads(pickle.dumps(rows))
    assert again._file is None and len(again._cache) == 0
    np.testing.assert_array_equal(again[INDEXES[1]], table[1][INDEXES[1]])


def test_a_small_buffer_keeps_one_row_group_and_still_reads_right(parquet_file, table):
    rows = ParquetRows(parquet_file, ["a", "b", "n", "flag"], buffer_mb=1e-6)
    assert rows.window == 1
    np.testing.assert_array_equal(rows[INDEXES[5]], table[1][INDEXES[5]])
    assert len(rows._cache) == 1


def test_lazy_none_is_lazy_above_the_threshold(parquet_file, monkeypatch):
    assert isinstance(load_parquet(parquet_file, labels=LABELS).x.raw, np.ndarray)
    monkeypatch.setattr(lazy, "LAZY_ABOVE_BYTES", N * 4 * 4 - 1)
    assert isinstance(load_parquet(parquet_file, labels=LABELS).x.raw, ParquetRows)


def test_an_embedding_list_column_gives_one_feature_per_entry(tmp_path):
    rng = np.random.default_rng(0)
    vectors, label = rng.normal(size=(N, 8)).astype(np.float32), rng.integers(0, 3, N)
    pq.write_table(pa.table({"embedding": pa.array(list(vectors), type=pa.list_(pa.float32())),
                             "fixed": pa.FixedSizeListArray.from_arrays(pa.array(vectors[:, :3].ravel()), 3),
                             "label": label}), tmp_path / "e.parquet", row_group_size=100)
    for lazy in (False, True):
        ds = load(tmp_path / "e.parquet", labels="label", lazy=lazy)
        assert ds.x.shape == (N, 11)
        np.testing.assert_array_equal(ds.x[INDEXES[0]], np.hstack([vectors, vectors[:, :3]])[INDEXES[0]])
    ragged = [np.zeros(8), np.zeros(7), *np.zeros((N - 2, 8))]
    pq.write_table(pa.table({"embedding": pa.array(ragged, type=pa.list_(pa.float32()))}), tmp_path / "r.parquet")
    with pytest.raises(ValueError, match="'embedding' holds vectors of other lengths than 8"):
        load_parquet(tmp_path / "r.parquet")


def test_a_pandas_index_is_not_a_feature(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4, 5, 6]}, index=[10, 20, 30])
    frame.to_parquet(tmp_path / "p.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "p.parquet").names
    np.testing.assert_array_equal(load_parquet(tmp_path / "p.parquet").x[:], [[1, 4], [2, 5], [3, 6]])


def test_missing_and_non_finite_values_are_errors_that_name_the_column(table, tmp_path):
    columns = dict(table[0])
    with_null = {**columns, "colour": pa.array([None, None, *columns["colour"][2:]])}
    write_parquet(tmp_path / "null_label.parquet", with_null)
    with pytest.raises(ValueError, match="label column 'colour' has 2 missing value"):
        load_parquet(tmp_path / "null_label.parquet", labels=LABELS)
    write_parquet(tmp_path / "null_feature.parquet", {**columns, "n": pa.array([None, *columns["n"][1:]])})
    with pytest.raises(ValueError, match="feature column 'n' has 1 missing value"):
        load_parquet(tmp_path / "null_feature.parquet", labels=LABELS)
    nan = columns["b"].copy()
    nan[280] = np.nan
    write_parquet(tmp_path / "nan.parquet", {**columns, "b": nan})
    with pytest.raises(ValueError, match=r"feature column\(s\) \['b'\] hold NaN or infinite values"):
        load_parquet(tmp_path / "nan.parquet", labels=LABELS)
    lazy = load_parquet(tmp_path / "nan.parquet", labels=LABELS, lazy=True)  # found when its row group is read
    lazy.x[:200]
    with pytest.raises(ValueError, match=r"\['b'\] hold NaN"):
        lazy.x[270:290]


@pytest.mark.parametrize("options, message", [
    (dict(labels="nope"), r"has no column 'nope'; its columns: a \(float\), b \(double\), n \(int64\)"),
    (dict(labels="a"), "label column 'a' holds float; labels must be integers, booleans, strings or categories"),
    (dict(labels=3), "labels must be a column name or a list of column names, got 3"),
    (dict(labels=["digit", "digit"]), "labels names a column more than once"),
    (dict(labels="digit", features=["colour"]), "feature column 'colour' holds string; features must be numbers"),
    (dict(labels=LABELS, features=["a", "gone"]), "has no column 'gone'; its columns: a"),
    (dict(labels="digit", features="digit"), "'digit' is named both as a label and as a feature"),
    (dict(labels=LABELS, features=[]), "has no feature column"),
    (dict(lazy="yes"), "lazy must be true, false or None"),
    (dict(lazy=True, buffer_mb=0), "buffer_mb must be a positive number"),
])
def test_bad_options_are_errors_that_name_the_problem(parquet_file, options, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=message):
            load_parquet(parquet_file, **options)


def test_bad_parquet_files_are_errors(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read .*junk.parquet"):
        load(tmp_path / "junk.parquet")
    pq.write_table(pa.table({"name": ["x", "y"], "label": [0, 1]}), tmp_path / "words.parquet")
    with pytest.raises(ValueError, match=r"has no feature column .* besides the labels \['label'\]"), \
            pytest.warns(UserWarning, match=r"columns \['name'\] are not numbers"):
        load_parquet(tmp_path / "words.parquet", labels="label")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_parquet(tmp_path / "none.parquet")


# --- CSV -------------------------------------------------------------------------------------------
def test_csv_with_a_header_and_a_string_label(tmp_path):
    (tmp_path / "t.csv").write_text("a,species,b\n1.5,cat,2\n-1,dog,0\n3,cat,7\n")
    ds = load(tmp_path / "t.csv", labels="species")
    assert reader_for(tmp_path / "t.csv") is load_csv and ds.x.raw.dtype == np.float32
    np.testing.assert_array_equal(ds.x[:], [[1.5, 2], [-1, 0], [3, 7]])
    np.testing.assert_array_equal(ds.labels["species"], [0, 1, 0])
    (tmp_path / "bare.csv").write_text("1,2,0\n3,4,1\n")
    ds = load_csv(tmp_path / "bare.csv", labels="f2")  # no header: columns named by position
    np.testing.assert_array_equal(ds.x[:], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(ds.labels["f2"], [0, 1])


def test_csv_errors_name_the_problem(tmp_path):
    (tmp_path / "t.csv").write_text("a,species\n1.5,cat\n,dog\n")
    with pytest.raises(ValueError, match="feature column 'a' has 1 missing value"):
        load_csv(tmp_path / "t.csv", labels="species")
    with pytest.raises(ValueError, match="no column 'kind'; its columns: a .*, species"):
        load_csv(tmp_path / "t.csv", labels="kind")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="cannot read .*ragged.csv"):
        load_csv(tmp_path / "ragged.csv")


# --- h5ad ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cells():
    """(dense X, sparse X (CSR, 70% zeros), obs) of N cells x 40 genes."""
    rng = np.random.default_rng(0)
    dense = rng.poisson(1.0, size=(N, 40)).astype(np.float32) * (rng.random((N, 40)) > 0.7)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], N)), "batch": rng.integers(0, 4, N),
                        "treated": rng.random(N) > 0.5, "depth": rng.random(N)}, index=[f"cell{i}" for i in range(N)])
    return dense, sparse.csr_matrix(dense), obs


def write_h5ad(path, x, obs, write: dict | None = None, **parts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own notes on index types
        anndata.AnnData(x, obs=obs, **parts).write_h5ad(path, **(write or {}))
    return path


@pytest.fixture(scope="module")
def h5ad_files(cells, tmp_path_factory):
    dense, csr, obs = cells
    folder = tmp_path_factory.mktemp("h5ad")
    return {"dense": write_h5ad(folder / "dense.h5ad", dense, obs),
            "sparse": write_h5ad(folder / "sparse.h5ad", csr, obs, layers={"counts": dense * 2},
                                 obsm={"X_pca": dense[:, :5] - 1})}


def test_h5ad_reads_x_and_obs_labels(cells, h5ad_files):
    dense, _, obs = cells
    for path in h5ad_files.values():
        ds = load(path, labels=["cell_type", "batch", "treated"])
        np.testing.assert_array_equal(ds.x[:], dense)
        np.testing.assert_array_equal(ds.labels["cell_type"], obs["cell_type"].cat.codes)
        np.testing.assert_array_equal(ds.labels["batch"], obs["batch"])
        np.testing.assert_array_equal(ds.labels["treated"], obs["treated"].astype(int))
    assert reader_for(h5ad_files["dense"]) is load_h5ad
    assert isinstance(load_h5ad(h5ad_files["dense"]).x.raw, np.ndarray)
    assert isinstance(load_h5ad(h5ad_files["sparse"]).x.raw, SparseRows)  # sparse in memory, densified per batch


def test_h5ad_layer_and_obsm(cells, h5ad_files):
    dense = cells[0]
    np.testing.assert_array_equal(load_h5ad(h5ad_files["sparse"], layer="counts").x[:], dense * 2)
    np.testing.assert_array_equal(load_h5ad(h5ad_files["sparse"], obsm="X_pca", lazy=True).x[:], dense[:, :5] - 1)


@pytest.mark.parametrize("kind, lazy_type", [("dense", H5Rows), ("sparse", CsrRows)])
def test_lazy_h5ad_gives_the_rows_read_in_memory(cells, h5ad_files, kind, lazy_type):
    dense = cells[0]
    lazy, eager = load_h5ad(h5ad_files[kind], labels="cell_type", lazy=True), load_h5ad(h5ad_files[kind], lazy=False)
    assert isinstance(lazy.x.raw, lazy_type) and lazy.x.shape == (N, 40)
    for index in [*INDEXES, 3]:
        np.testing.assert_array_equal(lazy.x[index], dense[index])
        np.testing.assert_array_equal(eager.x[index], dense[index])
    part = lazy.subset(INDEXES[3])
    assert isinstance(part.x.raw, lazy_type)
    np.testing.assert_array_equal(part.x[::-1], dense[INDEXES[3]][::-1])
    again = pickle.loads(pickle.dumps(part.x.raw))
    assert again._file is None
    np.testing.assert_array_equal(again[:], dense[INDEXES[3]])


def test_csr_rows_read_chunks_of_rows_by_stored_size(cells, h5ad_files):
    dense, csr, _ = cells
    rows = CsrRows(h5ad_files["sparse"], "X", chunk_mb=400 * 8 / 2**20, buffer_mb=1200 * 8 / 2**20)
    stored = np.diff(csr.indptr[rows.starts])  # entries in each chunk; a row holds at most 40
    assert len(stored) > 5 and np.all(np.abs(stored[:-1] - 400) <= 40) and stored[-1] <= 440
    assert rows.window == 2  # chunks of about 400 entries, as stored, in a buffer of 1200
    for index in INDEXES:
        np.testing.assert_array_equal(rows[index], dense[index])
    assert len(rows._cache) == 2 and all(sparse.issparse(block) for block in rows._cache.values())


def test_chunked_dense_h5ad_is_read_in_whole_hdf5_chunks(cells, tmp_path):
    dense, _, obs = cells
    path = write_h5ad(tmp_path / "gz.h5ad", dense, obs, write=dict(compression="gzip"))
    with h5py.File(path, "r") as f:
        chunk_rows = f["X"].chunks[0]
    rows = H5Rows(path, "X", chunk_mb=chunk_rows * 1.5 * 40 * 4 / 2**20)
    assert rows.starts[1] == chunk_rows and np.all(rows.starts[:-1] % chunk_rows == 0)
    np.testing.assert_array_equal(rows[INDEXES[5]], dense[INDEXES[5]])


def test_csc_is_read_in_memory_as_csr(cells, tmp_path):
    dense, csr, obs = cells
    path = write_h5ad(tmp_path / "csc.h5ad", csr.tocsc(), obs)
    ds = load_h5ad(path)
    assert isinstance(ds.x.raw, SparseRows) and sparse.isspmatrix_csr(ds.x.raw.matrix)
    np.testing.assert_array_equal(ds.x[INDEXES[0]], dense[INDEXES[0]])
    with pytest.raises(ValueError, match="CSC matrix, whose rows cannot be read apart; .* write it as CSR"):
        load_h5ad(path, lazy=True)


def test_h5ad_lazy_none_is_lazy_above_the_threshold(h5ad_files, monkeypatch):
    monkeypatch.setattr(lazy, "LAZY_ABOVE_BYTES", 100)
    assert isinstance(load_h5ad(h5ad_files["dense"]).x.raw, H5Rows)
    assert isinstance(load_h5ad(h5ad_files["sparse"]).x.raw, CsrRows)


def test_h5ad_errors_name_the_problem(cells, h5ad_files, tmp_path):
    dense, _, obs = cells
    path = h5ad_files["sparse"]
    with pytest.raises(ValueError, match=r"obs has no column 'celltype'; its columns: \['batch', 'cell_type'"):
        load_h5ad(path, labels="celltype")
    with pytest.raises(ValueError, match="label column 'depth' holds float64"):
        load_h5ad(path, labels="depth")
    with pytest.raises(ValueError, match=r"no layers entry 'raw'; its layers: \['counts'\]"):
        load_h5ad(path, layer="raw")
    with pytest.raises(ValueError, match=r"no obsm entry 'X_umap'; its obsm: \['X_pca'\]"):
        load_h5ad(path, obsm="X_umap")
    with pytest.raises(ValueError, match="give layer= or obsm=, not both"):
        load_h5ad(path, layer="counts", obsm="X_pca")
    with pytest.raises(ValueError, match="layer must be a name, got 3"):
        load_h5ad(path, layer=3)
    with pytest.raises(ValueError, match="lazy must be true, false or None"):
        load_h5ad(path, lazy="no")
    unknown = obs.assign(cell_type=obs["cell_type"].cat.add_categories("DC"))
    unknown.loc[unknown.index[:3], "cell_type"] = np.nan
    with pytest.raises(ValueError, match="label column 'cell_type' has 3 missing value"):
        load_h5ad(write_h5ad(tmp_path / "missing.h5ad", dense, unknown), labels="cell_type")
    (tmp_path / "junk.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot read .*junk.h5ad"):
        load(tmp_path / "junk.h5ad")


# --- training on data left in the file -------------------------------------------------------------
def test_mfcvae_fits_lazy_parquet_and_lazy_sparse_h5ad(parquet_file, h5ad_files):
    for ds in (load_parquet(parquet_file, labels=LABELS, lazy=True), load_h5ad(h5ad_files["sparse"], lazy=True)):
        assert ds.x.raw.__class__ in (ParquetRows, CsrRows)
        model = MFCVAE(n_clusters=(2, 2), latent_dims=(2, 1), hidden_dims=(16, 16), epochs=1, batch_size=32,
                       verbose=False).fit(ds)
        assert model.predict(ds).shape == (N, 2)
