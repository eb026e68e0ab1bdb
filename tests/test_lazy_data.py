"""Data left in its file: 3DShapes read lazily (``H5Images``, ``LazyRows``) and ``.npy`` arrays
memory-mapped, so that the processes of a data-parallel run share the data instead of copying it."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import tracemalloc
import warnings

import h5py
import numpy as np
import pytest
import torch
import yaml

from mfcvae import distributed
from mfcvae.batches import LazyRows, map_batches
from mfcvae.cli import main
from mfcvae.datasets import Dataset, load, load_3dshapes, load_arrays, reader_options
from mfcvae.datasets.lazy import H5Images
from mfcvae.train import data_fingerprint
from mfcvae.validation import as_tensor, check_dataset
from test_datasets import write_3dshapes

CPU = torch.device("cpu")
SMALL_CONFIG = dict(n_clusters=[4, 3], latent_dims=[2, 3], hidden_dims=[32, 64], epochs=1, batch_size=32,
                    lr=0.001, device="cpu", precision="float32")  # as tests/conftest.py's TINY


@pytest.fixture(scope="module")
def shapes_file(tmp_path_factory):
    """A small 3dshapes.h5 (320 images) whose images are random pixels (so that every resize and
    every row order shows), stored contiguously as in the real file."""
    path = tmp_path_factory.mktemp("shapes3d") / "3dshapes.h5"
    images = write_3dshapes(path)[1]
    with h5py.File(path, "r+") as f:
        del f["images"]
        f.create_dataset("images", data=np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def lazy_and_eager(shapes_file):
    return load_3dshapes(shapes_file, size=16, lazy=True), load_3dshapes(shapes_file, size=16)


# --- lazy 3DShapes: the same data as an eager load ---------------------------------------------------
@pytest.mark.parametrize("options", [dict(config=1), dict(config=2, size=None), dict(fixed={"shape": 2}),
                                     dict(config=1, fixed={"scale": 7}, size=16), dict(size=None), dict()])
def test_lazy_and_eager_loads_give_the_same_images_and_labels(shapes_file, options):
    lazy, eager = load_3dshapes(shapes_file, lazy=True, **options), load_3dshapes(shapes_file, **options)
    assert isinstance(lazy.x.raw, H5Images) and isinstance(eager.x.raw, np.ndarray)
    assert lazy.x.shape == eager.x.shape and lazy.x.raw.dtype == np.uint8 and lazy.name == eager.name
    np.testing.assert_array_equal(lazy.x.raw[:], eager.x.raw)
    np.testing.assert_array_equal(np.asarray(lazy.x), eager.x[:])
    assert list(lazy.labels) == list(eager.labels)
    for name in eager.labels:
        np.testing.assert_array_equal(lazy.labels[name], eager.labels[name])


def test_a_lazy_load_reads_no_image(shapes_file, monkeypatch):
    from mfcvae.datasets import lazy, shapes3d

    def refuse(*args):
        raise AssertionError("an image was read")

    monkeypatch.setattr(shapes3d, "_read_rows", refuse)
    monkeypatch.setattr(lazy, "_read_rows", refuse)
    ds = load_3dshapes(shapes_file, config=1, lazy=True)
    assert ds.x.shape == (160, 3, 32, 32) and len(ds.split(0.25)[0]) == 120


def test_a_chunked_file_reads_the_same_lazily(tmp_path):
    write_3dshapes(tmp_path / "chunked.h5")  # stored in chunks of 16 images
    lazy, eager = (load_3dshapes(tmp_path / "chunked.h5", config=2, lazy=lazy) for lazy in (True, False))
    np.testing.assert_array_equal(lazy.x.raw[::-1], eager.x.raw[::-1])


def test_lazy_is_a_reader_option_and_must_be_a_bool(shapes_file):
    assert "lazy" in reader_options(load_3dshapes)
    assert isinstance(load(shapes_file, config=1, lazy=True).x.raw, H5Images)
    with pytest.raises(ValueError, match="lazy must be true or false"):
        load_3dshapes(shapes_file, lazy="yes")


def test_the_cli_fits_lazy_data_and_its_commands_read_it_lazily_again(shapes_file, tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SMALL_CONFIG))
    run = tmp_path / "run"
    assert main(["fit", "--config", str(tmp_path / "tiny.yaml"), "--data", str(shapes_file), "--data-option",
                 "lazy=true", "--data-option", "config=1", "--data-option", "size=16", "--data-option",
                 "test_fraction=0.25", "--out", str(run), "--quiet"]) == 0
    assert "train (120 examples)" in capsys.readouterr().out
    assert json.loads((run / "data.json").read_text())["options"]["lazy"] is True
    assert main(["predict", str(run), "--part", "test", "--out", str(tmp_path / "test.csv")]) == 0
    assert len((tmp_path / "test.csv").read_text().splitlines()) == 1 + 40


# --- indexing ------------------------------------------------------------------------------------
def test_h5images_index_like_numpy_and_keep_the_order_asked(lazy_and_eager):
    lazy, eager = (ds.x.raw for ds in lazy_and_eager)
    assert len(lazy) == len(eager) and lazy.shape == eager.shape and lazy.ndim == 4 and lazy.dtype == np.uint8
    n = len(eager)
    indices = [0, -1, n - 1, np.int64(7), slice(None), slice(3, 9), slice(None, None, 5), slice(20, 2, -3),
               slice(n, None), [5, 2, 9, 2, 0], np.array([9, 1, 4]), np.array([[3, 1], [1, 0]]), [], [-2, 3],
               np.arange(n) % 3 == 0, [True] * n]
    for index in indices:
        got = lazy[index]
        assert isinstance(got, np.ndarray) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, eager[index], err_msg=repr(index))
    for bad in (n, -n - 1, [0, n], np.ones(n - 1, bool)):
        with pytest.raises(IndexError):
            lazy[bad]
    with pytest.raises(TypeError, match="one index"):
        lazy[0, 1]


def test_the_torch_side_reads_rows_as_uint8_tensors(lazy_and_eager):
    lazy, eager = as_tensor(lazy_and_eager[0]), as_tensor(lazy_and_eager[1])
    assert isinstance(lazy, LazyRows) and torch.is_tensor(eager)
    assert len(lazy) == len(eager) and lazy.shape == eager.shape and lazy.dtype == eager.dtype == torch.uint8
    for index in (torch.tensor([8, 3, 3, 0]), torch.randperm(len(eager))[:50], slice(10, 30), 4,
                  torch.tensor(5), np.array([1, 2])):
        got = lazy[index]
        assert torch.is_tensor(got) and got.dtype == torch.uint8 and got.is_contiguous()
        assert torch.equal(got, eager[index])
    assert data_fingerprint(lazy) == data_fingerprint(eager)


# --- subsets, pickling, forks --------------------------------------------------------------------
def test_subsets_and_splits_of_a_lazy_data_set_stay_lazy(lazy_and_eager):
    lazy, eager = lazy_and_eager
    for lazy_part, eager_part in zip(lazy.split(0.25, seed=3), eager.split(0.25, seed=3)):
        assert isinstance(lazy_part.x.raw, H5Images)
        np.testing.assert_array_equal(lazy_part.x.raw[:], eager_part.x.raw)
        np.testing.assert_array_equal(lazy_part.labels["shape"], eager_part.labels["shape"])
    for index in (slice(5, 50, 2), np.array([30, 2, 2, 7]), eager.labels["shape"] == 1):
        part = lazy.subset(index).subset(slice(1, None))
        assert isinstance(part.x.raw, H5Images) and part.x.shape == eager.subset(index).subset(slice(1, None)).x.shape
        np.testing.assert_array_equal(part.x.raw[::-1], eager.x.raw[index][1:][::-1])
    with pytest.raises(ValueError, match="1-d index array"):
        lazy.x.raw.subset(3)


def test_lazy_data_pickle_small_and_open_the_file_again(lazy_and_eager):
    lazy, eager = lazy_and_eager
    lazy.x.raw[:2]  # the file is open in this process now
    data = pickle.dumps(lazy)
    assert len(data) < 20_000  # the path and the row indices, not the images
    again = pickle.loads(data)
    assert again.x.raw._images is None
    np.testing.assert_array_equal(again.x.raw[[4, 0]], eager.x.raw[[4, 0]])


def _read_in_child(images: H5Images, queue) -> None:
    queue.put(images[[3, 1, 3]])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_lazy_data_reads_after_a_fork(lazy_and_eager):
    lazy, eager = (ds.x.raw for ds in lazy_and_eager)
    lazy[:3]  # opened before the fork: the child opens its own
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(lazy, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, eager[[3, 1, 3]])
    np.testing.assert_array_equal(lazy[[3, 1]], eager[[3, 1]])  # and the parent still reads


# --- training and inference on lazy data ---------------------------------------------------------
def test_batches_of_a_row_range_are_those_of_the_rows_sliced(lazy_and_eager):
    lazy, eager = as_tensor(lazy_and_eager[0]), as_tensor(lazy_and_eager[1])
    fn = lambda xb: [xb.mean((1, 2, 3)), xb[:, 0, 0]]  # noqa: E731
    for got, want in zip(map_batches(fn, lazy, 16, CPU, rows=range(37, 103)), map_batches(fn, eager[37:103], 16, CPU)):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="step 1"):
        map_batches(fn, lazy, 16, CPU, rows=range(0, 10, 2))


def test_a_rank_maps_its_share_batch_by_batch(lazy_and_eager, monkeypatch):
    """Rank 1 of 2 reads only the rows of its share, at most a batch at a time."""
    lazy, eager = as_tensor(lazy_and_eager[0]), as_tensor(lazy_and_eager[1])
    reads = []
    original = LazyRows.__getitem__
    monkeypatch.setattr(LazyRows, "__getitem__", lambda self, index: reads.append(index) or original(self, index))
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "gather_rows", lambda parts, n: parts)  # this rank's outputs alone
    fn = lambda xb: [xb.sum((1, 2, 3))]  # noqa: E731
    got = distributed.map_shards(fn, lazy, 32, CPU)[0]
    share = distributed.share(len(eager))
    assert torch.equal(got, map_batches(fn, eager[share], 32, CPU)[0])
    assert all(isinstance(i, slice) and i.stop - i.start <= 32 for i in reads)
    assert reads[0].start == share.start and reads[-1].stop == share.stop


def test_mfcvae_fits_and_predicts_on_lazy_data_as_on_the_same_data_in_memory(lazy_and_eager, tiny_estimator):
    lazy, eager = lazy_and_eager
    from_file = tiny_estimator(epochs=1, batch_size=32).fit(lazy)
    in_memory = tiny_estimator(epochs=1, batch_size=32).fit(eager)
    np.testing.assert_array_equal(from_file.labels_, in_memory.labels_)
    np.testing.assert_array_equal(from_file.predict(lazy), in_memory.predict(eager))
    np.testing.assert_allclose(from_file.transform(lazy), in_memory.transform(eager))
    assert from_file.score(lazy) == pytest.approx(in_memory.score(eager))
    assert from_file.reconstruct(lazy.subset(slice(0, 5))).shape == (5, 3, 16, 16)
    assert {r["label"] for r in from_file.evaluate(lazy)} == set(lazy.labels)


# --- memory-mapped .npy ----------------------------------------------------------------------------
def test_uint8_npy_is_mapped_and_the_tensor_shares_the_mapping(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(40, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    ds = load_arrays(tmp_path / "x.npy")
    assert isinstance(ds.x.raw, np.memmap) and str(ds.x.raw.filename) == str((tmp_path / "x.npy").resolve())
    assert check_dataset(ds) is ds.x.raw  # the checks copy nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns of non-writable arrays unless told not to
        x = as_tensor(ds)
    assert x.dtype == torch.uint8 and x.data_ptr() == ds.x.raw.ctypes.data
    assert np.shares_memory(x.numpy(), ds.x.raw)
    assert _mapped_file(x.data_ptr()) in (None, str((tmp_path / "x.npy").resolve()))  # None: no /proc
    np.testing.assert_array_equal(x.numpy(), images)
    half = ds.subset(slice(0, 20))
    assert isinstance(half.x.raw, np.memmap) and np.shares_memory(half.x.raw, ds.x.raw)


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (from /proc/self/maps); "" for anonymous
    memory, None where there is no /proc."""
    try:
        lines = open("/proc/self/maps").read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(maxsplit=5)
        start, stop = (int(v, 16) for v in fields[0].split("-"))
        if start <= address < stop:
            return fields[5] if len(fields) > 5 else ""
    return ""


def test_float32_npy_is_mapped_and_checked_without_a_copy(tmp_path):
    vectors = np.random.default_rng(0).random((50_000, 20), dtype=np.float32)  # 4 MB
    np.save(tmp_path / "v.npy", vectors)
    ds = load_arrays(tmp_path / "v.npy")
    assert isinstance(ds.x.raw, np.memmap)
    tracemalloc.start()
    try:
        x = as_tensor(ds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < vectors.nbytes / 10 and np.shares_memory(x.numpy(), ds.x.raw)
    vectors[7, 3] = np.inf
    np.save(tmp_path / "bad.npy", vectors)
    with pytest.raises(ValueError, match="infinity"):
        as_tensor(load_arrays(tmp_path / "bad.npy"))  # the finite check is kept


def test_other_npy_dtypes_are_read_and_converted(tmp_path):
    np.save(tmp_path / "h.npy", np.full((6, 4), 0.5, np.float16))
    np.save(tmp_path / "i.npy", np.arange(12, dtype=np.int64).reshape(3, 4))
    half, ints = load_arrays(tmp_path / "h.npy"), load_arrays(tmp_path / "i.npy")
    assert not isinstance(half.x.raw, np.memmap) and half.x.raw.dtype == np.float32
    np.testing.assert_array_equal(half.x[:], np.full((6, 4), 0.5, np.float32))
    assert ints.x.raw.dtype == np.float32 and ints.x[2, 3] == 11
    assert torch.equal(as_tensor(half), torch.full((6, 4), 0.5))


def test_mfcvae_fits_a_mapped_npy(tmp_path, X, tiny_estimator):
    np.save(tmp_path / "x.npy", np.round(X[:120] * 255).astype(np.uint8))
    ds = load_arrays(tmp_path / "x.npy")
    est = tiny_estimator(epochs=1).fit(ds)
    assert est.predict(ds).shape == (120, 2)
    assert isinstance(Dataset(ds.x.raw).x.raw, np.memmap)
