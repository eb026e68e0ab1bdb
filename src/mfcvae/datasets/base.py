"""The one type every loader returns: inputs stored compactly, labels kept for evaluation.

Images are kept as uint8 (a quarter of float32's memory: the full 3DShapes file is 5.9 GB
as uint8, 23.6 GB as float32) and converted to float32 in [0, 1] only when indexed, batch
by batch. Feature vectors are kept as float32. Stored inputs may also stay in their file: a
memory-mapped array (np.memmap), or a lazy array that reads the rows indexed (``lazy.H5Images``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def check_channels_first(shape: tuple[int, ...], name: str) -> None:
    """Images must be (N, C, H, W): catch the common channel-last layout (N, H, W, C) early."""
    if len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) and shape[2] > 4:
        raise ValueError(f"{name} of shape {shape} look channel-last (N, H, W, C); mfcvae takes images as "
                         f"(N, C, H, W): use x.transpose(0, 3, 1, 2)")


def is_lazy(raw: object) -> bool:
    """Whether stored inputs are a lazy array (one that reads the rows indexed, with a ``subset``
    that stays unread), rather than an np.ndarray."""
    return not isinstance(raw, np.ndarray) and hasattr(raw, "subset")


class Inputs:
    """Array-like view of a data set's inputs: ``inputs[idx]`` is float32, images in [0, 1].

    ``raw`` is the stored array: uint8 (read as value / 255) or float32 (read as it is).
    Other arrays are converted on the way in: (N, H, W) gains a channel axis, other
    numeric dtypes become float32 with their values unchanged. A memory map (np.memmap) of
    uint8 or float32 is kept as it is, and so is a lazy array (one with a ``subset`` method,
    such as ``lazy.H5Images``: uint8 or float32, (N, D) or (N, C, H, W), indexed by rows).
    """

    def __init__(self, raw: np.ndarray):
        if not is_lazy(raw):
            raw = raw if isinstance(raw, np.memmap) else np.asarray(raw)
            if np.issubdtype(raw.dtype, np.complexfloating):
                raise TypeError(f"inputs must be real numbers, got dtype {raw.dtype}")
            if raw.dtype == bool or (np.issubdtype(raw.dtype, np.number) and raw.dtype != np.uint8):
                raw = raw.astype(np.float32, copy=False)
            if raw.ndim == 3:
                raw = raw[:, None]
        if raw.dtype not in (np.uint8, np.float32):
            raise TypeError(f"inputs must be numbers, got dtype {raw.dtype}")
        if raw.ndim not in (2, 4):
            raise ValueError(f"inputs must be (N, D) vectors or (N, [C,] H, W) images, got shape {raw.shape}")
        check_channels_first(raw.shape, "inputs")
        self.raw = raw

    @property
    def shape(self) -> tuple[int, ...]:
        return self.raw.shape

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index) -> np.ndarray:
        part = self.raw[index]
        return part.astype(np.float32) / 255.0 if self.raw.dtype == np.uint8 else part

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``np.asarray(ds.x)``: everything as float32, like ``ds.x[:]``."""
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"Inputs(shape={self.shape}, stored as {self.raw.dtype})"


@dataclass
class Dataset:
    """Inputs (``x``) and named integer labels (``labels``: name -> (N,) int64; may be empty).

    Labels are for evaluation only: training never sees them.
    """

    x: Inputs
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.x, Inputs):
            self.x = Inputs(self.x)
        if len(self.x) == 0:
            raise ValueError(f"data set {self.name!r} is empty")
        self.labels = {k: np.asarray(v) for k, v in self.labels.items()}
        for key, y in self.labels.items():
            if y.ndim != 1 or len(y) != len(self.x) or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"label {key!r} must be an integer array of length {len(self.x)}, "
                                 f"got {y.dtype} of shape {y.shape}")
        self.labels = {k: np.asarray(v, dtype=np.int64) for k, v in self.labels.items()}

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W) or (D,)."""
        return tuple(self.x.shape[1:])

    def subset(self, index) -> "Dataset":
        """The examples at ``index`` (a slice, an index array or a boolean mask), labels included;
        a lazy data set's subset is lazy too."""
        raw = self.x.raw
        x = raw.subset(index) if is_lazy(raw) else raw[index]
        return Dataset(Inputs(x), {k: v[index] for k, v in self.labels.items()}, self.name)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """A random (train, test) split, as the paper does for 3DShapes (80/20)."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_test = int(round(test_fraction * len(self)))
        return self.subset(np.sort(order[n_test:])), self.subset(np.sort(order[:n_test]))

    def __repr__(self) -> str:
        labels = ", ".join(f"{k}: {len(np.unique(v))} values" for k, v in self.labels.items()) or "none"
        return f"Dataset({self.name!r}, {len(self)} examples of shape {self.shape}, labels: {labels})"
