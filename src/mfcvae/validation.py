"""Input checks at the public boundary: every user array passes through ``check_inputs``.

Errors name the problem (type, rank, emptiness, NaN/inf, value range, shape mismatch) so
a mistake is caught before any training time is spent.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.utils import check_array

from .batches import LazyRows
from .datasets.base import Dataset, check_channels_first, is_lazy


def check_inputs(
    X: object,
    *,
    name: str = "X",
    input_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Return X as a float32 array of shape (N, D), (N, H, W) or (N, C, H, W), or as the uint8
    array it is (images, read as value / 255 batch by batch).

    Array-likes pass scikit-learn's ``check_array`` (so sparse, complex, non-numeric, empty and
    non-finite inputs get its messages). ``input_shape``: the per-example shape X must have (a
    fitted model's); (H, W) and (1, H, W) count as the same shape, and X is reshaped to the
    model's. Which value range a likelihood needs is the estimator's check.
    """
    if torch.is_tensor(X):
        X = X.detach().cpu()
        X = (X.float() if X.is_floating_point() else X).numpy()  # numpy has no bfloat16
    X = check_array(X, accept_sparse=False, dtype="numeric", allow_nd=True, input_name=name)
    if X.ndim > 4:
        raise ValueError(f"{name} must have shape (N, D), (N, H, W) or (N, C, H, W); got {X.ndim} dimension(s) "
                         f"{X.shape}")
    check_channels_first(X.shape, name)
    if input_shape is not None:
        X = X.reshape(len(X), *match_shape(tuple(X.shape[1:]), tuple(input_shape), name))
    return X if X.dtype == np.uint8 else X.astype(np.float32, copy=False)


def check_dataset(ds: Dataset, *, input_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The stored inputs of a Dataset (uint8 or float32, not converted, not copied: a memory map
    stays one, a lazy array stays unread), after the checks ``check_inputs`` makes; uint8 images
    are in [0, 1] by construction."""
    raw = ds.x.raw
    name = f"data set {ds.name!r}" if ds.name else "the data set"
    if input_shape is not None:
        shape = match_shape(tuple(raw.shape[1:]), tuple(input_shape), name)
        if shape != tuple(raw.shape[1:]):
            raw = raw.reshape(len(raw), *shape)
    if raw.dtype == np.float32 and not is_lazy(raw):
        check_inputs(raw, name=name)
    return raw


def as_tensor(X: object, *, name: str = "X", input_shape: tuple[int, ...] | None = None) -> torch.Tensor | LazyRows:
    """X (array-like or Dataset) as a CPU tensor for the model: float32, or uint8 for a
    Dataset's images (divided by 255 batch by batch, on the device). A Dataset's memory-mapped
    inputs give a tensor over the same memory; its lazy inputs a ``LazyRows``, which reads the
    rows indexed."""
    if isinstance(X, Dataset):
        raw = check_dataset(X, input_shape=input_shape)
        if is_lazy(raw):
            return LazyRows(raw)
        with warnings.catch_warnings():  # a read-only memory map: nothing writes to the inputs
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            return torch.from_numpy(raw)
    return torch.from_numpy(check_inputs(X, name=name, input_shape=input_shape))


def match_shape(shape: tuple[int, ...], expected: tuple[int, ...], name: str) -> tuple[int, ...]:
    """``expected`` if ``shape`` is it, or differs from it only by a leading channel axis of 1."""
    if shape == expected or (1, *shape) == expected or shape == (1, *expected):
        return expected
    raise ValueError(f"{name} has {math.prod(shape)} features, but MFCVAE is expecting {math.prod(expected)} features "
                     f"as input: its examples have shape {shape}, the model was fitted on {expected}")
