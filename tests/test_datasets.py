"""Built-in shapes data and the file readers: IDX (MNIST format), .npz / .npy, with fixtures
written here in the real formats."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from mfcvae.datasets import load_arrays, load_idx, make_shapes, read_idx
from mfcvae.datasets.shapes import COLOURS, SHAPES


# --- built-in shapes ----------------------------------------------------------------------------

def test_make_shapes_is_seeded_and_in_the_unit_interval():
    x, labels = make_shapes(200, size=16, seed=3)
    again, _ = make_shapes(200, size=16, seed=3)
    other, _ = make_shapes(200, size=16, seed=4)
    assert x.shape == (200, 3, 16, 16) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(x, other)
    assert set(labels) == {"shape", "colour"}
    assert set(labels["shape"]) == set(range(len(SHAPES))) and set(labels["colour"]) == set(range(len(COLOURS)))


def test_background_colour_is_the_colour_factor_and_the_shape_is_colour_free():
    """The corner pixel's hue names the colour label; the (light) shape mask does not depend on it."""
    x, labels = make_shapes(400, size=16, seed=0)
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


# --- IDX ------------------------------------------------------------------------------------------

def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file as MNIST ships them: magic 0x0000080N (unsigned bytes, N dims), big-endian sizes."""
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_load_idx_reads_images_and_labels(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"img{suffix}", images, compress)
    write_idx(tmp_path / f"lab{suffix}", labels, compress)
    x, y = load_idx(tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}")
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0] * 255, images)
    np.testing.assert_array_equal(y["label"], labels)


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


# --- .npz / .npy ----------------------------------------------------------------------------------

def test_load_arrays_takes_integer_arrays_of_length_n_as_labels(tmp_path):
    x = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, digit=np.arange(6), weights=np.ones(6), other=np.arange(3))
    got, labels = load_arrays(tmp_path / "d.npz")
    np.testing.assert_array_equal(got, x)
    assert list(labels) == ["digit"]
    np.save(tmp_path / "d.npy", x)
    got, labels = load_arrays(tmp_path / "d.npy")
    np.testing.assert_array_equal(got, x) and labels == {}


def test_load_arrays_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_arrays(tmp_path / "missing.npz")
    np.savez(tmp_path / "nox.npz", y=np.arange(3))
    with pytest.raises(ValueError, match="no array named 'x'"):
        load_arrays(tmp_path / "nox.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_arrays(tmp_path / "bad.npz")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=".npz or .npy"):
        load_arrays(tmp_path / "d.csv")
