"""Built-in shapes data, the Dataset type and every file reader (IDX, SVHN .mat, 3DShapes .h5,
image folders, .npz / .npy / .csv), with fixtures written here in the real formats."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

import h5py
import scipy.io
from PIL import Image

from mfcvae.config import preset_path, read_config
from mfcvae.datasets import (Dataset, load, load_3dshapes, load_arrays, load_idx, load_image_folder, load_mnist,
                             load_svhn, make_shapes, read_idx)
from mfcvae.datasets.shapes import COLOURS, SHAPES
from mfcvae.datasets.shapes3d import FACTORS


# --- built-in shapes ----------------------------------------------------------------------------

def test_make_shapes_is_seeded_and_in_the_unit_interval():
    ds = make_shapes(200, size=16, seed=3)
    x, labels = ds.x[:], ds.labels
    again, other = make_shapes(200, size=16, seed=3).x[:], make_shapes(200, size=16, seed=4).x[:]
    assert x.shape == (200, 3, 16, 16) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(x, other)
    assert set(labels) == {"shape", "colour"}
    assert set(labels["shape"]) == set(range(len(SHAPES))) and set(labels["colour"]) == set(range(len(COLOURS)))


def test_background_colour_is_the_colour_factor_and_the_shape_is_colour_free():
    """The corner pixel's hue names the colour label; the (light) shape mask does not depend on it."""
    ds = make_shapes(400, size=16, seed=0)
    x, labels = ds.x[:], ds.labels
    corner = x[:, :, 0, 0]  # (N, 3): always background
    palette = np.array(list(COLOURS.values()))
    cos = (corner @ palette.T) / (np.linalg.norm(corner, axis=1, keepdims=True) * np.linalg.norm(palette, axis=1))
    assert (cos.argmax(1) == labels["colour"]).mean() > 0.95
    light = x.min(1) > 0.6  # shape pixels are light in every channel
    mean_area = {c: light[labels["colour"] == c].sum((1, 2)).mean() for c in range(len(COLOURS))}
    assert max(mean_area.values()) - min(mean_area.values()) < 0.15 * np.mean(list(mean_area.values()))


def test_make_shapes_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n > 0"):
        make_shapes(0)
    with pytest.raises(ValueError, match="size >= 8"):
        make_shapes(10, size=4)


# --- the Dataset type ----------------------------------------------------------------------------

def test_dataset_keeps_uint8_and_converts_when_indexed():
    raw = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    ds = Dataset(raw, {"y": np.array([1, 0])})
    assert ds.x.raw.dtype == np.uint8 and ds.x.raw is raw and ds.shape == (3, 4, 4) and len(ds) == 2
    np.testing.assert_allclose(ds.x[1:], raw[1:] / 255.0)
    np.testing.assert_allclose(ds.x[np.array([1, 0])], raw[[1, 0]] / 255.0)
    assert ds.x[:].dtype == np.float32 and np.asarray(ds.x).shape == (2, 3, 4, 4)


def test_dataset_normalises_other_inputs_and_checks_labels():
    assert Dataset(np.zeros((5, 6, 6), np.float64)).x.raw.shape == (5, 1, 6, 6)  # channel axis added
    assert Dataset(np.ones((5, 3), np.int64)).x.raw.dtype == np.float32  # values kept, not scaled
    with pytest.raises(ValueError, match="empty"):
        Dataset(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="label 'y' must be an integer array of length 5"):
        Dataset(np.zeros((5, 3), np.float32), {"y": np.zeros(4, np.int64)})
    with pytest.raises(ValueError, match=r"\(N, D\) vectors or"):
        Dataset(np.zeros((5,), np.float32))
    with pytest.raises(TypeError, match="numbers"):
        Dataset(np.array([["a"]]))


def test_dataset_subset_and_split_keep_labels_with_their_examples():
    ds = Dataset(np.arange(10, dtype=np.uint8)[:, None], {"y": np.arange(10)})
    train, test = ds.split(0.2, seed=1)
    assert len(train) == 8 and len(test) == 2
    assert sorted(np.concatenate([train.labels["y"], test.labels["y"]])) == list(range(10))
    for part in (train, test):
        np.testing.assert_array_equal(part.x.raw[:, 0], part.labels["y"])
    np.testing.assert_array_equal(ds.split(0.2, seed=1)[1].labels["y"], test.labels["y"])
    with pytest.raises(ValueError, match="test_fraction"):
        ds.split(1.0)


# --- IDX (MNIST format) ---------------------------------------------------------------------------

def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file as MNIST ships them: magic 0x0000080N (unsigned bytes, N dims), big-endian sizes."""
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


def write_mnist_folder(folder, n_train: int = 6, n_test: int = 4, compress: bool = True):
    """The four files of MNIST / Fashion-MNIST under their usual names; returns the arrays."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        gz = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{gz}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{gz}", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_load_idx_reads_images_and_labels(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"img{suffix}", images, compress)
    write_idx(tmp_path / f"lab{suffix}", labels, compress)
    ds = load_idx(tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}")
    assert ds.x.raw.dtype == np.uint8 and ds.x.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(ds.x[:][:, 0] * 255, images, atol=1e-4)
    np.testing.assert_array_equal(ds.labels["label"], labels)


def test_load_mnist_reads_a_folder_by_split(tmp_path):
    arrays = write_mnist_folder(tmp_path / "fashion")
    every = load_mnist(tmp_path / "fashion")
    assert len(every) == 10 and every.labels["label"].dtype == np.int64
    np.testing.assert_array_equal(every.x.raw[:6, 0], arrays["train"][0])
    np.testing.assert_array_equal(every.labels["label"][6:], arrays["t10k"][1])
    test = load_mnist(tmp_path / "fashion", split="test")
    np.testing.assert_array_equal(test.x.raw[:, 0], arrays["t10k"][0])
    assert len(load(tmp_path / "fashion", split="train")) == 6
    one = load(tmp_path / "fashion" / "t10k-images-idx3-ubyte.gz")  # its label file is found beside it
    np.testing.assert_array_equal(one.labels["label"], arrays["t10k"][1])
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist(tmp_path / "fashion", split="validation")
    (tmp_path / "fashion" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no label file"):
        load_mnist(tmp_path / "fashion")


@pytest.mark.parametrize("preset", ["mnist", "fashion_mnist"])
def test_mnist_presets_read_only_the_training_files(tmp_path, preset):
    """The paper fits on the 60,000 training images: the presets' data options read split=train
    (the CLI holds the test files out for evaluation)."""
    arrays = write_mnist_folder(tmp_path / "mnist", n_train=6, n_test=4)
    _, options = read_config(preset_path(preset))
    ds = load(tmp_path / "mnist", **options)
    np.testing.assert_array_equal(ds.x.raw[:, 0], arrays["train"][0])
    np.testing.assert_array_equal(ds.labels["label"], arrays["train"][1])


def test_read_idx_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such IDX file"):
        read_idx(tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    write_idx(tmp_path / "short", np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    write_idx(tmp_path / "img", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "lab", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="one label per image"):
        load_idx(tmp_path / "img", tmp_path / "lab")
    (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="cannot read"):
        read_idx(tmp_path / "broken.gz")


# --- SVHN -----------------------------------------------------------------------------------------

def write_svhn(path, n: int = 7):
    """A .mat file laid out as SVHN's: X 32x32x3xN uint8, y Nx1 with 10 standing for the digit 0."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


def test_load_svhn_transposes_images_and_maps_label_10_to_0(tmp_path):
    x, y = write_svhn(tmp_path / "train_32x32.mat", n=12)
    ds = load(tmp_path / "train_32x32.mat")
    assert ds.x.raw.dtype == np.uint8 and ds.x.shape == (12, 3, 32, 32)
    np.testing.assert_array_equal(ds.x.raw[4], x[..., 4].transpose(2, 0, 1))
    np.testing.assert_array_equal(ds.labels["label"], y[:, 0] % 10)
    assert ds.labels["label"][9] == 0  # stored as 10


def test_load_svhn_errors_name_the_problem(tmp_path):
    (tmp_path / "junk.mat").write_bytes(b"this is not matlab")
    with pytest.raises(ValueError, match="cannot read"):
        load_svhn(tmp_path / "junk.mat")
    scipy.io.savemat(tmp_path / "other.mat", {"A": np.zeros(3)})
    with pytest.raises(ValueError, match="needs arrays 'X' and 'y'"):
        load_svhn(tmp_path / "other.mat")
    scipy.io.savemat(tmp_path / "flat.mat", {"X": np.zeros((32, 32, 5), np.uint8), "y": np.ones((5, 1))})
    with pytest.raises(ValueError, match="HxWx3xN uint8"):
        load_svhn(tmp_path / "flat.mat")
    scipy.io.savemat(tmp_path / "count.mat", {"X": np.zeros((32, 32, 3, 5), np.uint8), "y": np.ones((4, 1))})
    with pytest.raises(ValueError, match="4 labels for 5 images"):
        load_svhn(tmp_path / "count.mat")


# --- 3DShapes -------------------------------------------------------------------------------------

def write_3dshapes(path, wall=(4, 5), object_hue=(6,), scale=(0, 7), orientation=(0, 14)):
    """A small 3dshapes.h5: a full grid over the given factor indices (all floor hues and shapes),
    in the real file's order and dtypes. Image i is filled with the value i % 251 (so that the
    rows read can be checked), with one brighter pixel block marking its shape."""
    grids = {"floor_hue": range(10), "wall_hue": wall, "object_hue": object_hue, "scale": scale,
             "shape": range(4), "orientation": orientation}
    index = np.array(np.meshgrid(*[list(g) for g in grids.values()], indexing="ij")).reshape(6, -1).T
    values = np.stack([FACTORS[name][index[:, col]] for col, name in enumerate(FACTORS)], axis=1)
    images = np.broadcast_to((np.arange(len(index)) % 251).astype(np.uint8)[:, None, None, None],
                             (len(index), 64, 64, 3)).copy()
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(16, 64, 64, 3))
        f.create_dataset("labels", data=values)
    return index, images


def test_load_3dshapes_config_selects_by_factor_and_resizes(tmp_path):
    index, images = write_3dshapes(tmp_path / "3dshapes.h5")
    ds = load(tmp_path / "3dshapes.h5", config=1)  # wall hue 5, object hue 6 fixed
    rows = np.flatnonzero((index[:, 1] == 5) & (index[:, 2] == 6))
    assert len(ds) == len(rows) == 10 * 2 * 4 * 2
    assert ds.x.raw.dtype == np.uint8 and ds.x.shape == (len(rows), 3, 32, 32)
    np.testing.assert_array_equal(ds.x.raw[:, 0, 5, 7], images[rows, 0, 0, 0])  # the right rows, in order
    assert set(ds.labels) == {"floor_hue", "scale", "shape", "orientation"}  # the fixed factors carry nothing
    np.testing.assert_array_equal(ds.labels["shape"], index[rows, 4])
    np.testing.assert_array_equal(ds.labels["scale"], index[rows, 3])  # indices into the value grid: 0 and 7
    full = load_3dshapes(tmp_path / "3dshapes.h5", size=None)
    assert full.x.shape == (len(index), 3, 64, 64) and "wall_hue" in full.labels
    narrower = load_3dshapes(tmp_path / "3dshapes.h5", config=1, fixed={"shape": 0})  # on top of the config's
    assert len(narrower) == len(rows) // 4 and "shape" not in narrower.labels
    mine = load_3dshapes(tmp_path / "3dshapes.h5", fixed={"shape": 2, "wall_hue": 4}, size=16)
    assert mine.x.shape[1:] == (3, 16, 16) and (mine.labels["floor_hue"] >= 0).all()
    assert len(mine) == np.sum((index[:, 4] == 2) & (index[:, 1] == 4))


def test_load_3dshapes_resizes_bilinearly():
    """64 -> 32 bilinear without antialiasing averages each 2x2 block exactly."""
    import torch
    from mfcvae.datasets.shapes3d import _read_rows

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 64, 64, 3)).astype(np.uint8)
    got = _read_rows(images, np.array([0, 2]), size=32)
    blocks = images[[0, 2]].reshape(2, 32, 2, 32, 2, 3).astype(np.float64).mean((2, 4)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, np.round(blocks), atol=1)
    assert torch.from_numpy(got).dtype == torch.uint8


def test_load_3dshapes_errors_name_the_problem(tmp_path):
    write_3dshapes(tmp_path / "3dshapes.h5")
    with pytest.raises(ValueError, match="config must be one of"):
        load_3dshapes(tmp_path / "3dshapes.h5", config=3)
    with pytest.raises(ValueError, match="unknown 3DShapes factor 'colour'"):
        load_3dshapes(tmp_path / "3dshapes.h5", fixed={"colour": 1})
    with pytest.raises(ValueError, match="scale takes value indices 0..7"):
        load_3dshapes(tmp_path / "3dshapes.h5", fixed={"scale": 8})
    with pytest.raises(ValueError, match="no image has"):
        load_3dshapes(tmp_path / "3dshapes.h5", fixed={"object_hue": 0})
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot read"):
        load_3dshapes(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("pictures", data=np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="needs datasets 'images' and 'labels'"):
        load_3dshapes(tmp_path / "other.h5")
    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((2, 64, 64, 3), np.uint8))
        f.create_dataset("labels", data=np.full((2, 6), 0.55))
    with pytest.raises(ValueError, match="not one of its known values"):
        load_3dshapes(tmp_path / "odd.h5")


# --- image folders --------------------------------------------------------------------------------

def write_png_classes(folder, sizes=((12, 10),) * 2, mode="RGB"):
    """folder/<class>/<i>.png, class names deliberately unsorted on disk; pixel value = 40 * class + i."""
    for c, name in enumerate(["cat", "dog"]):
        (folder / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.new(mode, (w, h), color=(40 * c + i,) * len(mode)).save(folder / name / f"{i}.png")


def test_load_image_folder_one_subfolder_per_class(tmp_path):
    write_png_classes(tmp_path / "pets")
    ds = load(tmp_path / "pets")
    assert ds.x.raw.dtype == np.uint8 and ds.x.shape == (4, 3, 10, 12)  # (N, C, H, W)
    np.testing.assert_array_equal(ds.labels["label"], [0, 0, 1, 1])  # sorted folder names: cat, dog
    np.testing.assert_array_equal(ds.x.raw[:, 0, 0, 0], [0, 1, 40, 41])
    small = load_image_folder(tmp_path / "pets", size=4)
    assert small.x.shape == (4, 3, 4, 4)


def test_load_image_folder_greyscale_without_labels(tmp_path):
    (tmp_path / "flat").mkdir()
    for i in range(3):
        Image.new("L", (8, 8), color=10 * i).save(tmp_path / "flat" / f"{i}.png")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    ds = load(tmp_path / "flat")
    assert ds.x.shape == (3, 1, 8, 8) and ds.labels == {}
    np.testing.assert_array_equal(ds.x.raw[:, 0, 0, 0], [0, 10, 20])


def test_load_image_folder_errors_name_the_problem(tmp_path):
    write_png_classes(tmp_path / "mixed", sizes=((8, 8), (9, 8)))
    with pytest.raises(ValueError, match="pass size=... to resize"):
        load_image_folder(tmp_path / "mixed")
    assert load_image_folder(tmp_path / "mixed", size=(6, 5)).x.shape == (4, 3, 6, 5)
    assert load_image_folder(tmp_path / "mixed", size=np.int64(6)).x.shape == (4, 3, 6, 6)
    for size in ("32", 0, (6, -5), (6,), True):
        with pytest.raises(ValueError, match="size must be a positive integer"):
            load_image_folder(tmp_path / "mixed", size=size)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_folder(tmp_path / "bad")
    with pytest.raises(ValueError, match="one image"):
        load(tmp_path / "mixed" / "cat" / "0.png")


# --- .npz / .npy / .csv ---------------------------------------------------------------------------

def test_load_arrays_takes_integer_arrays_of_length_n_as_labels(tmp_path):
    x = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, digit=np.arange(6), weights=np.ones(6), other=np.arange(3))
    with pytest.warns(UserWarning, match=r"\['weights'\] have one entry per example but are not integers"):
        ds = load(tmp_path / "d.npz")
    np.testing.assert_array_equal(ds.x[:], x)
    assert list(ds.labels) == ["digit"]
    np.save(tmp_path / "d.npy", x)
    ds = load_arrays(tmp_path / "d.npy")
    np.testing.assert_array_equal(ds.x[:], x)
    assert ds.labels == {}


def test_load_arrays_reads_uint8_as_images_and_csv_as_vectors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", x=images)
    ds = load(tmp_path / "img.npz")
    assert ds.x.raw.dtype == np.uint8 and ds.x.shape == (3, 1, 5, 5)
    np.testing.assert_allclose(ds.x[:][:, 0], images / 255.0, atol=1e-6)
    (tmp_path / "table.csv").write_text("a,b,c\n1,2,3\n4.5,-1,0\n")
    np.testing.assert_array_equal(load(tmp_path / "table.csv").x[:], [[1, 2, 3], [4.5, -1, 0]])
    (tmp_path / "bare.csv").write_text("1,2\n")
    assert load(tmp_path / "bare.csv").x.shape == (1, 2)


def test_load_arrays_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_arrays(tmp_path / "missing.npz")
    np.savez(tmp_path / "nox.npz", y=np.arange(3))
    with pytest.raises(ValueError, match="no array named 'x'"):
        load_arrays(tmp_path / "nox.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read .*not a .npz archive"):
        load_arrays(tmp_path / "bad.npz")
    np.savez(tmp_path / "cut.npz", x=np.zeros((50, 4)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:-40])
    with pytest.raises(ValueError, match="cannot read"):
        load_arrays(tmp_path / "cut.npz")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="cannot read"):
        load_arrays(tmp_path / "ragged.csv")
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=".npz, .npy or .csv"):
        load_arrays(tmp_path / "d.txt")


# --- load(): the reader by what the path holds -----------------------------------------------------

def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load(tmp_path / "nowhere")
    (tmp_path / "data.xyz").write_bytes(b"")
    with pytest.raises(ValueError, match="don't know how to read"):
        load(tmp_path / "data.xyz")
    np.save(tmp_path / "d.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"read by load_npy, which takes no option \['config'\]"):
        load(tmp_path / "d.npy", config=1)


# --- tinted two-facet data ------------------------------------------------------------------------

def test_make_tinted_colours_grey_images_and_adds_a_colour_label():
    from mfcvae.datasets import make_tinted
    from mfcvae.datasets.tinted import TINTS

    grey = Dataset(np.full((40, 1, 4, 4), 200, np.uint8), {"label": np.arange(40) % 5}, name="g")
    tinted = make_tinted(grey, n_colours=3, seed=1)
    assert tinted.x.raw.dtype == np.uint8 and tinted.shape == (3, 4, 4)
    assert set(tinted.labels) == {"label", "colour"} and set(tinted.labels["colour"]) == {0, 1, 2}
    np.testing.assert_array_equal(tinted.labels["label"], grey.labels["label"])
    palette = np.array(list(TINTS.values()))
    expected = np.round(200 / 255 * palette[tinted.labels["colour"]] * 255)
    np.testing.assert_allclose(tinted.x.raw[:, :, 0, 0], expected, atol=1)
    with pytest.raises(ValueError, match="greyscale"):
        make_tinted(tinted)
    with pytest.raises(ValueError, match="n_colours"):
        make_tinted(grey, n_colours=9)


# --- edge cases: layouts, dispatch, chunked reads -------------------------------------------------

def test_channel_last_images_are_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"channel-last.*transpose\(0, 3, 1, 2\)"):
        Dataset(np.zeros((3, 32, 32, 3), np.uint8))
    Dataset(np.zeros((3, 3, 32, 32), np.uint8))  # channels first is fine


def test_labels_may_be_lists_and_idx_arrays_are_writable(tmp_path):
    assert Dataset(np.zeros((3, 2), np.float32), {"y": [0, 1, 1]}).labels["y"].dtype == np.int64
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    assert load(tmp_path / "t10k-images-idx3-ubyte").x.raw.flags.writeable


def test_load_picks_the_reader_by_what_the_path_holds(tmp_path):
    from mfcvae.datasets import reader_for

    write_mnist_folder(tmp_path / "mnist")
    (tmp_path / "only_test").mkdir()
    write_idx(tmp_path / "only_test" / "t10k-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    write_idx(tmp_path / "only_test" / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    write_png_classes(tmp_path / "pets")
    (tmp_path / "pets" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (12, 10)).save(tmp_path / "pets" / ".ipynb_checkpoints" / "x.png")
    assert reader_for(tmp_path / "mnist") is load_mnist
    assert reader_for(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") is load_idx
    assert reader_for(tmp_path / "pets") is load_image_folder
    assert set(load(tmp_path / "pets").labels["label"]) == {0, 1}  # the hidden folder is no class
    assert len(load(tmp_path / "only_test", split="test")) == 2
    with pytest.raises(FileNotFoundError, match="no train-images"):
        load(tmp_path / "only_test")


def test_3dshapes_reads_runs_longer_than_a_chunk(tmp_path, monkeypatch):
    from mfcvae.datasets import shapes3d

    index, images = write_3dshapes(tmp_path / "3dshapes.h5")
    monkeypatch.setattr(shapes3d, "READ_CHUNK", 7)  # runs of 2 x 4 x 2 = 16 rows cross chunk borders
    ds = load_3dshapes(tmp_path / "3dshapes.h5", config=1, size=None)
    rows = np.flatnonzero((index[:, 1] == 5) & (index[:, 2] == 6))
    np.testing.assert_array_equal(ds.x.raw[:, 0, 0, 0], images[rows, 0, 0, 0])
    assert list(ds.labels)[:2] == ["shape", "floor_hue"]  # the paper's evaluation labels first


def test_image_folder_scales_16_bit_greyscale(tmp_path):
    (tmp_path / "deep").mkdir()
    Image.fromarray(np.full((5, 5), 65535, np.uint16)).save(tmp_path / "deep" / "a.png")
    Image.fromarray(np.full((5, 5), 257 * 100, np.uint16)).save(tmp_path / "deep" / "b.png")
    ds = load_image_folder(tmp_path / "deep")
    assert ds.x.shape == (2, 1, 5, 5)
    np.testing.assert_array_equal(ds.x.raw[:, 0, 0, 0], [255, 100])
