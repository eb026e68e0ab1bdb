"""Files on disk: safetensors for tensors (never pickle), JSON for everything else.

Every write goes to a temporary name first and is then renamed into place, so an
interrupted write never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Atomically write tensors, with ``metadata`` stored as one JSON string in the header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"json": json.dumps(metadata or {})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the JSON metadata written by ``write_safetensors``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get("json", "{}"))
        return load_file(str(path)), metadata
    except Exception as err:  # safetensors raises several types for a corrupt header
        raise ValueError(f"cannot read {path}: not a valid mfcvae safetensors file ({err})") from err


def write_model_dir(path: Path, state_dict: dict[str, torch.Tensor], config: dict) -> None:
    """Write ``path/model.safetensors`` and ``path/config.json``.

    Both files are written completely into a fresh sibling folder first and only then renamed
    into ``path``, so a failed write (a full disk, an unserialisable value, Ctrl-C) leaves an
    existing model as it was; only a crash between the two renames could pair a new file with
    an old one. Other files in an existing ``path`` (a run's logs, checkpoints) are kept.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot save to {path}: it exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(staging / MODEL_FILE))
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        path.mkdir(exist_ok=True)
        for name in (MODEL_FILE, CONFIG_FILE):
            os.replace(staging / name, path / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_model_dir(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not (path / MODEL_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} holds no saved model (expected {MODEL_FILE} and {CONFIG_FILE})")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        return load_file(str(path / MODEL_FILE)), config
    except Exception as err:
        raise ValueError(f"cannot read the model saved in {path}: {err}") from err


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state into tensors (for safetensors) and JSON-able values."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, param_state in state["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    # The update's implementation is today's (an older checkpoint's groups say fused: None), the
    # hyper-parameters and the state are the checkpoint's.
    groups = [{**saved, **{key: mine[key] for key in ("fused", "foreach") if key in mine}}
              for saved, mine in zip(meta["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # the state takes its parameter's memory layout (channels-last convolutions): the fused update
    # walks a parameter and its moments element by element in memory order
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for param in params:
        for key, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and value.shape == param.shape:
                optimizer.state[param][key] = torch.empty_like(param).copy_(value)
