"""Device and arithmetic policy: which device trains, in which precision, compiled or not.

Everything here is decided once, before a model is built, from the estimator's ``device``,
``precision`` and ``compile`` parameters and what the machine offers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator

import torch

PRECISIONS = ("float32", "bfloat16")
# compile="auto" compiles only runs that can repay the first compile (several seconds)
AUTO_COMPILE_MIN_STEPS = 5_000
AUTO_COMPILE_MIN_SECONDS = 60.0


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else must name a usable device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}") from err
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
    return resolved


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX). torch.cpu's feature
    probes are private; a torch without them answers no, so "auto" falls back to float32."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bfloat16' on a CPU that computes it natively, else 'float32' (GPUs included:
    the networks are too small for bfloat16 to pay there)."""
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"precision must be one of {('auto', *PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cpu" and cpu_has_native_bfloat16() else "float32"


def warn_if_emulated(precision: str, device: torch.device) -> None:
    """Warn before training in bfloat16 on a CPU that emulates it (many times slower than float32)."""
    if precision == "bfloat16" and device.type == "cpu" and not cpu_has_native_bfloat16():
        warnings.warn("precision='bfloat16' on a CPU without native bfloat16 (no AVX-512 BF16, no AMX): "
                      "it is emulated and many times slower than float32; precision='auto' picks "
                      "float32 here", stacklevel=3)


def compile_mode(compile: bool | str, device: torch.device, total_steps: int,
                 max_seconds: float | None, data_parallel: bool = False) -> str | None:
    """The torch.compile mode training uses, or None for eager training.

    True: "reduce-overhead" (CUDA graphs) on a GPU, "default" on a CPU or in data-parallel
    training (DistributedDataParallel's gradient hooks run outside CUDA graphs). "auto": only
    on a GPU that Triton serves (compute capability 7.0 or later), only for a run of at least
    AUTO_COMPILE_MIN_STEPS mini-batches and AUTO_COMPILE_MIN_SECONDS of budget, and not
    data-parallel; never on a CPU, where a step is bound by its matrix products.
    """
    if compile == "auto":
        long_enough = total_steps >= AUTO_COMPILE_MIN_STEPS and (
            max_seconds is None or max_seconds >= AUTO_COMPILE_MIN_SECONDS)
        served = (device.type == "cuda" and importlib.util.find_spec("triton") is not None
                  and torch.cuda.get_device_capability(device) >= (7, 0))
        if not (long_enough and served) or data_parallel:
            return None
    elif not compile:
        return None
    return "reduce-overhead" if device.type == "cuda" and not data_parallel else "default"


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block under torch's global RNG seeded with ``seed``, restoring the caller's RNG after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
