"""Data-parallel training on torch.distributed: which process this is, and the few collectives
training needs besides DistributedDataParallel's gradient all-reduce.

torchrun (or ``mfcvae fit --nproc N``, which calls torchrun's own launcher) starts one process
per device and describes the group in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). ``join`` initialises the process group from it: NCCL between GPUs,
Gloo between CPUs. Without that environment every function here is the single-process case
and calls nothing in torch.distributed.

Every rank runs the same code on the same data. The steps that are not gradient steps (mixture
fits, re-seeding, batch-norm statistics) have each rank encode a contiguous share of the
inputs (``map_shards``); the shares are gathered in order, rank 0 fits, and ``broadcast_state``
hands its parameters to every rank.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .batches import map_batches, part

# Seconds a rank waits in a collective before the run ends with an error: longer than the
# slowest step rank 0 takes alone (the end refit's mixture fit on 100,000 inputs).
TIMEOUT_ENV = "MFCVAE_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 900.0
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets its variables)."""
    return all(name in os.environ for name in LAUNCH_ENV)


def active() -> bool:
    """Whether a process group is up: training is data-parallel (world size 1 included)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and prints progress (torchrun's
    RANK says so before the group is joined; a process on its own is its own rank 0)."""
    if active():
        return rank() == 0
    return not launched() or os.environ["RANK"] == "0"


def timeout() -> datetime.timedelta:
    """The collectives' timeout: ``MFCVAE_DIST_TIMEOUT`` seconds, or DEFAULT_TIMEOUT."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def join(device: torch.device) -> torch.device:
    """Under torchrun, join the process group (once per process) and return this rank's device:
    ``cuda`` becomes ``cuda:LOCAL_RANK``. Elsewhere ``device`` unchanged. A group the caller
    initialised itself is used as it is."""
    if not launched():
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not active():
        # torchrun keeps its store across restarts: keys under a prefix of their own keep a restarted
        # group from reading the dead processes' addresses
        store, group_rank, size = next(dist.rendezvous("env://", timeout=timeout()))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout(),
                                store=dist.PrefixStore(f"mfcvae/attempt_{restart_count()}", store),
                                rank=group_rank, world_size=size, device_id=device if device.type == "cuda" else None)
        atexit.register(_leave)
    return device


def _leave() -> None:
    if active():
        dist.destroy_process_group()


class GroupError(RuntimeError):
    """Another process of the group stalled or died: what a failed collective means for a run."""


@contextlib.contextmanager
def explain_failures() -> Iterator[None]:
    """Turn torch.distributed's low-level failures of a collective (a timeout, a closed
    connection) into a GroupError that says what happened; anything else passes unchanged."""
    try:
        yield
    except RuntimeError as err:
        if not active() or isinstance(err, GroupError):
            raise
        text = str(err).strip().lower()
        first = str(err).strip().splitlines()[0] if text else type(err).__name__
        if "timed out" in text or "timeout" in text:
            raise GroupError(f"rank {rank()}: another process did not answer within {timeout().total_seconds():g} s "
                             f"({TIMEOUT_ENV}); it stalled or died ({first})") from err
        if "connection reset" in text or "connection closed" in text:
            raise GroupError(f"rank {rank()}: another process of the group died ({first})") from err
        raise


def restart_count() -> int:
    """How often torchrun has restarted this worker group (0 on the first attempt, or without torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def launch_id() -> str | None:
    """torchrun's id of this launch (the same across its restarts), or None without torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID") if launched() else None


# --- collectives (each a no-op, or the plain computation, in a single process) -----------------
def _comm_device(t: torch.Tensor) -> torch.device:
    """Where a tensor must be for a collective: NCCL moves GPU tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device


def _in_place(collective: Callable[[torch.Tensor], object], t: torch.Tensor) -> torch.Tensor:
    """``collective`` applied to a copy of ``t`` on the communication device, brought back to t's device."""
    if not active():
        return t
    out = t.to(_comm_device(t))
    collective(out)
    return out.to(t.device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the ranks, on every rank (``t`` itself in a single process)."""
    return _in_place(dist.all_reduce, t)


def broadcast_value(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (``t`` itself in a single process)."""
    return _in_place(lambda out: dist.broadcast(out, src=0), t)


@torch.no_grad()
def broadcast_state(module: nn.Module, buffers_only: bool = False) -> None:
    """Give every rank rank 0's parameters and buffers (or its buffers alone), in place."""
    if not active():
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for t in tensors:
        staged = t.detach().to(_comm_device(t))
        dist.broadcast(staged, src=0)
        if staged is not t:
            t.copy_(staged)


def share(n: int, of_rank: int | None = None) -> slice:
    """The contiguous rows of n that a rank handles (this one's by default)."""
    return part(n, world_size(), rank() if of_rank is None else of_rank)


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """``t`` of every rank, in rank order (``t`` must have the same shape on every rank); [t] alone
    in a single process."""
    if not active():
        return [t]
    staged = t.to(_comm_device(t))
    pieces = [torch.empty_like(staged) for _ in range(world_size())]
    dist.all_gather(pieces, staged)
    return [p.to(t.device) for p in pieces]


def gather_rows(parts: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """This rank's ``share(n)`` rows of several outputs -> the whole n rows of each, in rank order,
    on every rank (shares are padded to the longest for the all_gather and trimmed after)."""
    if not active():
        return parts
    longest = share(n, 0).stop
    lengths = [len(range(n)[share(n, r)]) for r in range(world_size())]
    out = []
    for part in parts:
        padded = part.new_zeros((longest, *part.shape[1:]))
        padded[:len(part)] = part
        out.append(torch.cat([p[:length] for p, length in zip(all_gather(padded), lengths)]))
    return out


def map_shards(fn: Callable[[torch.Tensor], list[torch.Tensor]], x, batch_size: int,
               device: torch.device) -> list[torch.Tensor]:
    """``map_batches(fn, x, ...)`` with the rows of ``x`` shared among the ranks: each maps its
    ``share``, batch by batch (never reading the whole share at once), and every rank gets all
    of the outputs, in order, on the CPU."""
    if not active():
        return map_batches(fn, x, batch_size, device)
    mine = range(len(x))[share(len(x))]
    if len(mine):
        local = map_batches(fn, x, batch_size, device, rows=mine)
    else:  # more ranks than rows: no outputs here, but the all_gather needs their shapes
        local = [t[:0] for t in map_batches(fn, x, batch_size, device, rows=range(1))]
    return gather_rows(local, len(x))


def barrier() -> None:
    if active():
        dist.barrier()
