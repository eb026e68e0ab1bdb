"""Mini-batches: how stored inputs (uint8 images or float32 arrays) reach the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32}


class LazyRows:
    """Stored inputs read when indexed, for the model: ``rows[index]`` (an index tensor, an int, a
    slice, an integer array or a boolean mask) reads those rows of ``raw`` (an array-like of uint8
    or float32 indexed like numpy, e.g. ``datasets.lazy.H5Images``) as a CPU tensor. Training
    takes it where it takes a tensor of stored inputs: it has ``len``, ``shape`` and ``dtype``."""

    def __init__(self, raw):
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.raw.shape)

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[np.dtype(self.raw.dtype)]

    def __getitem__(self, index) -> torch.Tensor:
        if torch.is_tensor(index):
            index = index.cpu().numpy()
        return torch.from_numpy(np.ascontiguousarray(self.raw[index]))

    def __repr__(self) -> str:
        return f"LazyRows({self.raw!r})"


def epoch_order(x: torch.Tensor | LazyRows, generator: torch.Generator) -> torch.Tensor:
    """An epoch's order of the examples of ``x``, (N,) int64, every example once: a uniform random
    permutation, or for inputs read a chunk at a time (``LazyRows`` over a ``ChunkedRows``) a
    shuffle by chunks: the chunks in a random order, taken ``window`` at a time (as many as the
    reader buffers), the examples of each such group shuffled among themselves. Each chunk is
    then read once an epoch, and memory holds ``window`` chunks, not the data set."""
    chunk_ids = getattr(getattr(x, "raw", None), "chunk_ids", None)
    if chunk_ids is None:
        return torch.randperm(len(x), generator=generator)
    chunks = torch.from_numpy(np.unique(chunk_ids(), return_inverse=True)[1].reshape(-1))
    n_chunks = int(chunks.max()) + 1
    rank = torch.empty(n_chunks, dtype=torch.int64)
    rank[torch.randperm(n_chunks, generator=generator)] = torch.arange(n_chunks)
    group = rank[chunks] // x.raw.window
    return torch.argsort(group * len(x) + torch.randperm(len(x), generator=generator))


def value_range(x: torch.Tensor | LazyRows, batch_size: int = 65536) -> tuple[float, float]:
    """(min, max) of stored inputs ``x``, read ``batch_size`` rows at a time."""
    if torch.is_tensor(x):
        low, high = torch.aminmax(x)
        return float(low), float(high)
    ranges = [torch.aminmax(x[start:stop]) for start, stop in batch_bounds(len(x), batch_size)]
    return min(float(low) for low, _ in ranges), max(float(high) for _, high in ranges)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive mini-batches over n examples; a last batch of a single
    example joins the one before it (batch-norm cannot normalise one example while training)."""
    return step_bounds(n, batch_size, 1)


def step_bounds(n: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of the global mini-batches of one optimiser step each: ``batch_size``
    examples for each of ``world_size`` processes (``batch_bounds`` in a single process). A last
    one that cannot give every process two examples joins the one before it."""
    bounds = [(start, min(start + batch_size * world_size, n)) for start in range(0, n, batch_size * world_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2 * world_size:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def part(n: int, parts: int, index: int) -> slice:
    """The ``index``-th of ``parts`` contiguous parts of n rows, whose lengths differ by at most one."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def to_model_input(xb: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` as float32; uint8 images become value / 255 after the move (a
    quarter of the bytes to copy, and the data set itself never exists as float32)."""
    xb = xb.to(device, non_blocking=True)
    return xb.float().div_(255) if xb.dtype == torch.uint8 else xb


def iterate_batches(x: torch.Tensor | LazyRows, batch_size: int, device: torch.device,
                    rows: range | None = None) -> Iterator[torch.Tensor]:
    """Consecutive mini-batches of ``x``, ready for the model on ``device``: of its ``rows`` (a
    range of step 1; default all), sliced batch by batch, so that x[rows] is never read at once."""
    rows = range(len(x)) if rows is None else rows
    if rows.step != 1:
        raise ValueError(f"rows must be a range of step 1, got {rows!r}")
    for start, stop in batch_bounds(len(rows), batch_size):
        yield to_model_input(x[rows.start + start:rows.start + stop], device)


@torch.no_grad()
def map_batches(fn: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor | LazyRows, batch_size: int,
                device: torch.device, rows: range | None = None) -> list[torch.Tensor]:
    """Apply ``fn`` (returning a list of tensors) batch-wise over ``x`` (its ``rows``: see
    ``iterate_batches``) and concatenate each output on the CPU."""
    outputs = [[t.cpu() for t in fn(xb)] for xb in iterate_batches(x, batch_size, device, rows)]
    return [torch.cat(parts) for parts in zip(*outputs)]
