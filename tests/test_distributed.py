"""Data-parallel training: the arithmetic of shares and global batches, and 2-process Gloo runs
launched by torchrun (tests/distributed_worker.py is their training script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mfcvae import MFCVAE, distributed
from mfcvae.batches import batch_bounds, map_batches, part, step_bounds
from mfcvae.budget import TimeBudget
from mfcvae.cli import main, worker_argv
from mfcvae.config import TrainConfig
from mfcvae.train import Trainer

WORKER = Path(__file__).with_name("distributed_worker.py")
REPO = Path(__file__).parents[1]


# --- without processes ---------------------------------------------------------------------
@pytest.mark.parametrize("n,batch", [(1000, 128), (129, 128), (257, 128), (5, 2), (2, 1)])
def test_one_process_steps_are_the_mini_batches(n, batch):
    assert step_bounds(n, batch, 1) == batch_bounds(n, batch)


def test_global_batches_hold_batch_size_per_process_and_never_leave_a_process_short():
    bounds = step_bounds(1000, 100, 3)
    assert bounds[:3] == [(0, 300), (300, 600), (600, 900)]
    assert bounds[-1] == (900, 1000)
    assert step_bounds(605, 100, 3)[-1] == (300, 605)  # 5 left over cannot give 3 processes 2 each
    for lo, hi in step_bounds(605, 100, 3):
        assert min(len(range(hi - lo)[part(hi - lo, 3, r)]) for r in range(3)) >= 2


def test_parts_tile_the_rows_in_order():
    for n, parts in [(10, 3), (2, 4), (0, 2), (7, 1)]:
        rows = [i for r in range(parts) for i in range(n)[part(n, parts, r)]]
        assert rows == list(range(n))
        assert max(len(range(n)[part(n, parts, r)]) for r in range(parts)) - \
            min(len(range(n)[part(n, parts, r)]) for r in range(parts)) <= 1


def test_a_process_on_its_own_is_rank_0_of_one_and_maps_everything_itself():
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.is_main()
    x = torch.arange(30.0).reshape(10, 3)
    fn = lambda xb: [xb * 2, xb.sum(1)]  # noqa: E731
    for got, want in zip(distributed.map_shards(fn, x, 4, torch.device("cpu")), map_batches(fn, x, 4, torch.device("cpu"))):
        assert torch.equal(got, want)


def test_the_collective_timeout_is_read_from_the_environment(monkeypatch):
    assert distributed.timeout().total_seconds() == distributed.DEFAULT_TIMEOUT
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "42")
    assert distributed.timeout().total_seconds() == 42
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=distributed.TIMEOUT_ENV):
            distributed.timeout()


def test_the_workers_run_the_command_without_the_launcher_flags():
    argv = ["fit", "--preset", "demo", "--nproc", "2", "--out", "r", "--max-restarts=1", "--nnodes", "1",
            "--rdzv-endpoint", "h:1", "--seed", "3"]
    assert worker_argv(argv) == ["fit", "--preset", "demo", "--out", "r", "--seed", "3"]


def test_launcher_flags_without_nproc_or_under_torchrun_are_refused(tmp_path, monkeypatch, capsys):
    assert main(["fit", "--out", str(tmp_path / "a"), "--nnodes", "2"]) == 2
    assert "go with --nproc" in capsys.readouterr().err
    assert main(["fit", "--out", str(tmp_path / "b"), "--nproc", "2", "--nnodes", "2"]) == 2
    assert "--rdzv-endpoint" in capsys.readouterr().err
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    assert main(["fit", "--out", str(tmp_path / "c"), "--nproc", "2"]) == 2
    assert "already started by it" in capsys.readouterr().err


def test_a_checkpoint_of_another_world_size_is_refused(make_model):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=5e-4, max_seconds=None, progressive=True, stage_epochs=None,
                      fade_steps=None, free_bits=0.0, reseed_dead=False, refit_at_end=False, select_clusters=(), n_init=1, seed=0, compile=False)
    trainer = Trainer(make_model(), cfg, 64, torch.device("cpu"), TimeBudget(None))
    tensors, meta = trainer.state()
    Trainer(make_model(), cfg, 64, torch.device("cpu"), TimeBudget(None)).load_state(tensors, meta)
    with pytest.raises(ValueError, match="trained by 2 process"):
        Trainer(make_model(), cfg, 64, torch.device("cpu"), TimeBudget(None)).load_state(tensors, {**meta,
                                                                                                   "world_size": 2})


# --- two processes under torchrun -------------------------------------------------------------
def torchrun(*args: str, nproc: int = 2, restarts: int = 0, env: dict | None = None,
             timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               f"--max-restarts={restarts}", str(WORKER), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=240, cwd=REPO)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_every_rank_holds_the_same_parameters_after_every_epoch(tmp_path):
    check(torchrun("states", str(tmp_path)))
    ranks = [json.loads((tmp_path / f"states_{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == 4  # three epochs and the model after the end refit
    assert ranks[0] == ranks[1]
    assert ranks[0][0]["step"] == 6  # 600 examples, 50 per process per step: 6 global batches


def test_two_processes_take_the_steps_one_process_takes_with_the_same_global_batch(tmp_path):
    one, two, half = tmp_path / "one", tmp_path / "two", tmp_path / "half"
    for folder in (one, two, half):
        folder.mkdir()
    check(worker("equal", str(one), "--batch-size", "64"))
    check(torchrun("equal", str(two), "--batch-size", "32"))
    check(worker("equal", str(half), "--batch-size", "32"))
    a, b, c = (load_file(folder / "state.safetensors") for folder in (one, two, half))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 100 * max(worst, 1e-7)  # a real difference shows


def test_a_killed_worker_is_restarted_and_the_run_ends_as_an_uninterrupted_one(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    check(torchrun("fit", str(whole)))
    # 800 examples, 40 per process per step: 10 steps per epoch; step 13 is in the middle of epoch 2
    check(torchrun("fit", str(killed), "--kill-at", "13", restarts=1))
    a, b = (json.loads((folder / "result.json").read_text()) for folder in (whole, killed))
    assert (a["restarts"], b["restarts"]) == (0, 1)
    assert [row["step"] for row in b["history"]] == [row["step"] for row in a["history"]] == [10, 20, 30, 40]
    assert b["model"] == a["model"]  # the checkpoint holds every rank's RNG: the replayed epoch is the same
    assert b["labels"] == a["labels"]
    epochs = [line.split(",")[0] for line in (killed / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert len(epochs) == 4  # each epoch written once


def test_a_stalled_rank_ends_the_run_with_a_clear_error(tmp_path):
    started = time.perf_counter()
    result = torchrun("fit", str(tmp_path), "--stall-at", "5", env={distributed.TIMEOUT_ENV: "5"})
    assert result.returncode != 0
    assert time.perf_counter() - started < 100  # the stalled rank sleeps 120 s
    assert "another process did not answer within 5 s" in result.stderr


def test_the_cli_trains_through_torchrun_with_nproc_and_reports(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mfcvae", "fit", "--preset", "demo", "--epochs", "2", "--nproc", "2",
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    check(result)
    assert result.stdout.count("model written to") == 1  # rank 0 speaks for the group
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 3
    model = MFCVAE.load(out)
    assert len(model.history_) == 2
    assert np.isfinite(model.history_[-1]["elbo"])
    report = subprocess.run([sys.executable, "-m", "mfcvae", "report", str(out)], capture_output=True, text=True,
                            timeout=240, cwd=REPO)
    check(report)
    assert (out / "report.html").is_file()
