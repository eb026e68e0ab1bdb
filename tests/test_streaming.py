"""Feature vectors larger than memory: ``NpyRows`` reads a ``.npy`` a chunk at a time, and training
shuffles such data by chunks (``epoch_order``) so that an epoch reads each chunk once and sees
every row once."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mfcvae.batches import LazyRows, batch_bounds, epoch_order
from mfcvae.datasets import Dataset, load, load_npy
from mfcvae.datasets.lazy import NpyRows
from mfcvae.estimator import MFCVAE

N, D = 500, 6
TINY = dict(n_clusters=(3, 2), latent_dims=(2, 1), hidden_dims=(16, 16), epochs=2, batch_size=32, device="cpu",
            precision="float32", verbose=False)


@pytest.fixture(scope="module")
def array():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(N, D)) + 4 * rng.integers(0, 3, (N, 1))).astype(np.float16)


@pytest.fixture(scope="module")
def npy_file(array, tmp_path_factory):
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    np.save(path, array)
    return path


def small_chunks(path, **kw) -> NpyRows:
    """Chunks of 40 rows (D float16 each), a buffer of three of them (as float32)."""
    return NpyRows(path, chunk_mb=40 * D * 2 / 2**20, buffer_mb=3 * 40 * D * 4 / 2**20, **kw)


@pytest.mark.parametrize("index", [np.array([3, 499, 0, 41, 3]), slice(10, 400, 7), slice(None, None, -1),
                                   np.arange(N) % 4 == 1, 7, np.random.default_rng(1).permutation(N)])
def test_npy_rows_read_as_numpy_indexes_them_as_float32(npy_file, array, index):
    rows = small_chunks(npy_file)
    assert rows.shape == (N, D) and rows.dtype == np.float32 and len(rows.starts) == 14
    np.testing.assert_array_equal(rows[index], array[index].astype(np.float32))
    np.testing.assert_array_equal(rows.subset(slice(100, 300))[[0, 5, 5]], array[[100, 105, 105]].astype(np.float32))


def test_npy_rows_keep_only_their_buffer_of_chunks(npy_file):
    rows = small_chunks(npy_file)
    assert rows.window == 3
    rows[np.arange(N)]
    assert len(rows._cache) == 3


def test_npy_rows_pickle_without_their_open_file_and_read_again(npy_file, array):
    rows = small_chunks(npy_file)
    rows[0]
    copy = pickle.loads(pickle.dumps(rows))
    assert copy._file is None and not copy._cache
    np.testing.assert_array_equal(copy[[4, 2]], array[[4, 2]].astype(np.float32))


def test_npy_rows_refuse_what_they_cannot_read(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((4, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected a C-ordered \(N, D\) array"):
        NpyRows(tmp_path / "images.npy")
    with pytest.raises(ValueError, match="lazy reading takes an \\(N, D\\) array"):
        load_npy(tmp_path / "images.npy", lazy=True)
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float16))
    with pytest.raises(ValueError, match="buffer_mb must be a positive number"):
        NpyRows(tmp_path / "x.npy", buffer_mb=0)


def test_load_npy_leaves_large_or_asked_arrays_in_the_file(npy_file, array, monkeypatch):
    assert isinstance(load(npy_file, lazy=True).x.raw, NpyRows)
    eager = load(npy_file, lazy=False).x.raw  # float16 is read and converted
    assert isinstance(eager, np.ndarray) and eager.dtype == np.float32
    monkeypatch.setattr("mfcvae.datasets.lazy.LAZY_ABOVE_BYTES", array.size)  # N x D float32 exceeds it
    assert isinstance(load(npy_file).x.raw, NpyRows)


def test_a_chunked_epoch_order_takes_every_row_once_a_window_of_chunks_at_a_time(npy_file):
    rows = small_chunks(npy_file)
    x = LazyRows(rows)
    order = epoch_order(x, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(N))
    chunks = rows.chunk_ids()[order.numpy()]
    # the order runs through groups of at most `window` chunks, each group's rows together
    seen, current = set(), set()
    for c in chunks:
        if c not in current:
            if len(current) == rows.window:
                seen |= current
                current = set()
            assert c not in seen, "a chunk came back after its group was done"
            current.add(c)
    assert len(set(chunks[:3 * 40])) > 1  # rows of a group are mixed, not chunk by chunk
    again = epoch_order(x, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)
    assert not torch.equal(order, epoch_order(x, torch.Generator().manual_seed(1)))


def test_data_in_memory_keeps_a_uniform_permutation():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(epoch_order(torch.zeros(50, 2), g1), torch.randperm(50, generator=g2))


def test_an_epoch_in_chunked_order_reads_each_chunk_once(npy_file, monkeypatch):
    rows = small_chunks(npy_file)
    reads = []
    original = NpyRows._read_chunk
    monkeypatch.setattr(NpyRows, "_read_chunk", lambda self, c: reads.append(c) or original(self, c))
    x = LazyRows(rows)
    order = epoch_order(x, torch.Generator().manual_seed(0))
    batches = [x[order[lo:hi]] for lo, hi in batch_bounds(N, 32)]
    assert sorted(reads) == list(range(len(rows.starts) - 1))
    np.testing.assert_array_equal(torch.cat(batches).numpy(), rows[order.numpy()])


def test_mfcvae_trains_on_streamed_rows_and_predicts_them_as_in_memory(npy_file, array):
    model = MFCVAE(**TINY).fit(load(npy_file, lazy=True))
    assert [h["epoch"] for h in model.history_] == [1, 2]
    streamed, in_memory = load(npy_file, lazy=True), array.astype(np.float32)
    np.testing.assert_array_equal(model.labels_, model.predict(in_memory))
    np.testing.assert_array_equal(model.predict(streamed), model.predict(in_memory))
    np.testing.assert_allclose(model.transform(streamed), model.transform(in_memory), rtol=1e-6)
