"""Input checks at the public boundary: every user array passes through ``check_inputs``.

Errors name the problem (type, rank, emptiness, NaN/inf, value range, shape mismatch) so
a mistake is caught before any training time is spent.
"""

from __future__ import annotations

import numpy as np
import torch

from .datasets.base import Dataset, check_channels_first


def check_inputs(
    X: object,
    *,
    name: str = "X",
    input_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Return X as a float32 array of shape (N, D), (N, H, W) or (N, C, H, W).

    uint8 inputs are images: read as value / 255, as a Dataset reads them.
    ``input_shape``: the per-example shape X must have (a fitted model's); (H, W) and
    (1, H, W) count as the same shape, and X is reshaped to the model's.
    Values must lie in [0, 1]: both likelihoods' means are sigmoids of the decoder output, so a
    model could not reconstruct values outside it.
    """
    if torch.is_tensor(X):
        X = X.detach().cpu()
        X = (X.float() if X.is_floating_point() else X).numpy()  # numpy has no bfloat16
    if not isinstance(X, np.ndarray):
        try:
            X = np.asarray(X)
        except (ValueError, TypeError) as err:
            raise TypeError(f"{name} must be an array-like of numbers: {err}") from err
    if X.dtype == bool:
        X = X.astype(np.float32)
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if X.ndim not in (2, 3, 4):
        raise ValueError(
            f"{name} must have shape (N, D), (N, H, W) or (N, C, H, W); got {X.ndim} dimension(s) {X.shape}"
        )
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 examples)")
    if 0 in X.shape[1:]:
        raise ValueError(f"{name} has an empty feature dimension: shape {X.shape}")
    check_channels_first(X.shape, name)
    if input_shape is not None:
        X = X.reshape(len(X), *match_shape(tuple(X.shape[1:]), tuple(input_shape), name))
    X = X.astype(np.float32) / np.float32(255) if X.dtype == np.uint8 else np.asarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    low, high = X.min(), X.max()
    if low < 0 or high > 1:
        hint = " (images stored as 0..255? divide by 255)" if high > 1 and low >= 0 else \
            " (feature vectors? scale each feature to [0, 1], e.g. by its minimum and maximum)"
        raise ValueError(f"{name} has values in [{low:g}, {high:g}] but the model needs [0, 1]: both "
                         f"likelihoods' means are sigmoids{hint}")
    return X


def check_dataset(ds: Dataset, *, input_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The stored inputs of a Dataset (uint8 or float32, not converted), after the checks
    ``check_inputs`` makes; uint8 images are in [0, 1] by construction."""
    raw = ds.x.raw
    name = f"data set {ds.name!r}" if ds.name else "the data set"
    if input_shape is not None:
        raw = raw.reshape(len(raw), *match_shape(tuple(raw.shape[1:]), tuple(input_shape), name))
    if raw.dtype == np.float32:
        check_inputs(raw, name=name)
    return raw


def as_tensor(X: object, *, name: str = "X", input_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """X (array-like or Dataset) as a CPU tensor for the model: float32, or uint8 for a
    Dataset's images (divided by 255 batch by batch, on the device)."""
    if isinstance(X, Dataset):
        return torch.from_numpy(check_dataset(X, input_shape=input_shape))
    return torch.from_numpy(check_inputs(X, name=name, input_shape=input_shape))


def match_shape(shape: tuple[int, ...], expected: tuple[int, ...], name: str) -> tuple[int, ...]:
    """``expected`` if ``shape`` is it, or differs from it only by a leading channel axis of 1."""
    if shape == expected or (1, *shape) == expected or shape == (1, *expected):
        return expected
    raise ValueError(f"{name} has examples of shape {shape}, but the model was fitted on {expected}")
