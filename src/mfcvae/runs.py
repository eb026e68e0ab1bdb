"""A run folder: what ``fit(run_dir=...)`` and ``mfcvae fit --out`` write, and who may write it.

    run/
      checkpoint.safetensors   weights, optimiser, RNG, schedule, budget, history (resume from it)
      metrics.csv              one row per epoch
      tensorboard/             the same, for TensorBoard (when it is installed)
      model.safetensors        the trained model, with config.json
      config.json
      data.json                (CLI) the data the run was fitted on, and how it was read
      evaluation.json, report.html, report_*.png   (CLI) what was computed from the model

A fresh run leaves an older run's files alone until it first writes its own (``claim``);
then it removes them all, so that no file in the folder describes another run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import torch

from . import distributed
from .serialization import CONFIG_FILE, MODEL_FILE, read_safetensors, write_safetensors

CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
DATA_FILE = "data.json"
# an older run's files, which a fresh run removes when it claims the folder
RUN_OUTPUTS = (CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, CONFIG_FILE, DATA_FILE, "evaluation.json", "report.html",
               "report_*.png")


class RunFolder:
    """The folder at ``path``. ``data_record`` (the CLI's): what the run is fitted on, written to
    data.json when the run claims the folder."""

    def __init__(self, path: str | Path, data_record: dict | None = None):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"run folder {self.path} exists and is not a folder")
        self.data_record = data_record
        self.claimed = False

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    def holds_run(self) -> bool:
        """Whether the folder holds a checkpoint or a model."""
        return self.checkpoint.exists() or (self.path / MODEL_FILE).exists()

    def clear(self) -> None:
        """Remove an older run's outputs (RUN_OUTPUTS and the TensorBoard logs)."""
        for pattern in RUN_OUTPUTS:
            for stale in self.path.glob(pattern):
                stale.unlink()
        shutil.rmtree(self.path / TENSORBOARD_DIR, ignore_errors=True)

    def claim(self) -> None:
        """Before this run's first write: create the folder and clear an older run's outputs."""
        if not self.claimed:
            self.path.mkdir(parents=True, exist_ok=True)
            self.clear()
            if self.data_record is not None:
                (self.path / DATA_FILE).write_text(json.dumps(self.data_record, indent=2))
            self.claimed = True

    def adopt(self) -> None:
        """The folder's files are this run's (it resumes): go on writing beside them."""
        self.claimed = True

    def read_data_record(self) -> dict | None:
        """What data.json says the run was fitted on, or None."""
        path = self.path / DATA_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def write_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.claim()
        write_safetensors(self.checkpoint, tensors, meta)

    def read_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"nothing to resume: {self.checkpoint} does not exist")
        return read_safetensors(self.checkpoint)

    def written_by_this_launch(self) -> bool:
        """Whether torchrun has restarted this process and the checkpoint is its launch's own (to
        resume), not an older run's."""
        if distributed.restart_count() == 0 or not self.checkpoint.is_file():
            return False
        return self.read_checkpoint()[1].get("launch") == distributed.launch_id()

    def checkpoint_params(self) -> dict:
        """The estimator parameters a checkpoint was trained with."""
        return self.read_checkpoint()[1]["estimator"]

    def append_metrics(self, row: dict) -> None:
        self.claim()
        path = self.path / METRICS_FILE
        new = not path.exists()
        with path.open("a", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(row))
            if new:
                out.writeheader()
            out.writerow(row)

    def tensorboard_writer(self):
        """A TensorBoard SummaryWriter on the folder, or None when tensorboard is not installed."""
        if importlib.util.find_spec("tensorboard") is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        self.claim()
        return SummaryWriter(str(self.path / TENSORBOARD_DIR))
