"""Mini-batches: how stored inputs (uint8 images or float32 arrays) reach the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive mini-batches over n examples; a last batch of a single
    example joins the one before it (batch-norm cannot normalise one example while training)."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def to_model_input(xb: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` as float32; uint8 images become value / 255 after the move (a
    quarter of the bytes to copy, and the data set itself never exists as float32)."""
    xb = xb.to(device, non_blocking=True)
    return xb.float().div_(255) if xb.dtype == torch.uint8 else xb


def iterate_batches(x: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Consecutive mini-batches of ``x``, ready for the model on ``device``."""
    for start, stop in batch_bounds(len(x), batch_size):
        yield to_model_input(x[start:stop], device)


@torch.no_grad()
def map_batches(fn: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, batch_size: int,
                device: torch.device) -> list[torch.Tensor]:
    """Apply ``fn`` (returning a list of tensors) batch-wise and concatenate each output on the CPU."""
    outputs = [[t.cpu() for t in fn(xb)] for xb in iterate_batches(x, batch_size, device)]
    return [torch.cat(parts) for parts in zip(*outputs)]
