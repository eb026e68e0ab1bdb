"""A training script for the data-parallel tests, run by torchrun (or alone, as the
single-process reference): ``python distributed_worker.py SCENARIO OUT [options]``.

Scenarios:
  states   train() with a callback on every rank that records a digest of the model and
           optimiser state after each epoch, and of the model and its clusters per facet after
           the end refit, which chooses facet 0's (OUT/states_<rank>.json)
  equal    one epoch of an MLP, reparameterisation noise switched off; rank 0 writes the final
           state to OUT/state.safetensors
  fit      MFCVAE.fit with a run folder OUT/run; ``--kill-at STEP`` kills rank 1 (SIGKILL) at
           that step of torchrun's first attempt; ``--stall-at STEP`` makes rank 1 sleep there
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch

from mfcvae import MFCVAE, distributed
from mfcvae.callbacks import Callback
from mfcvae.datasets import make_shapes
from mfcvae.model import MultiFacetVAE
from mfcvae.serialization import write_safetensors
from mfcvae.train import Trainer, train


def digest(tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RecordStates(Callback):
    def __init__(self):
        self.epochs: list[dict] = []

    def on_epoch_end(self, trainer, row):
        optimiser = [t for state in trainer.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        self.epochs.append({"model": digest(trainer.model.state_dict().values()), "optimizer": digest(optimiser),
                            "step": trainer.step, "elbo": row["elbo"]})


def images(n: int) -> np.ndarray:
    return make_shapes(n=n, seed=0).x.raw


def configs(est: MFCVAE, x: np.ndarray):
    model_cfg = est._model_config(tuple(x.shape[1:]), "float32", "bernoulli")
    return model_cfg, est._train_config(model_cfg.n_facets)


def run_states(out: Path) -> None:
    x = torch.from_numpy(images(600))
    # the conv ladder (batch-norm); facet 0's number of clusters chosen by rank 0 in the end refit
    est = MFCVAE(n_clusters=("auto", 4), max_clusters=6, latent_dims=(2, 2), epochs=3, batch_size=50, seed=1)
    model_cfg, train_cfg = configs(est, x.numpy())
    device = distributed.join(torch.device("cpu"))
    torch.manual_seed(1)
    model = MultiFacetVAE(model_cfg)
    record = RecordStates()
    train(model, x, train_cfg, device, callbacks=[record])
    record.epochs.append({"model": digest(model.state_dict().values()), "n_clusters": model.cfg.n_clusters})
    (out / f"states_{distributed.rank()}.json").write_text(json.dumps(record.epochs))


def run_equal(out: Path, batch_size: int) -> None:
    torch.randn_like = torch.zeros_like  # no reparameterisation noise: the ranks' draws cannot match one process's
    x = torch.from_numpy(images(512).reshape(512, -1).astype(np.float32) / 255)
    est = MFCVAE(n_clusters=(4, 4), latent_dims=(2, 2), hidden_dims=(64, 128), epochs=1, batch_size=batch_size, learn_weights=False,
                 reseed_dead=False, refit_at_end=False, seed=2)
    model_cfg, train_cfg = configs(est, x.numpy())
    device = distributed.join(torch.device("cpu"))
    torch.manual_seed(2)
    model = MultiFacetVAE(model_cfg)
    train(model, x, train_cfg, device)
    if distributed.is_main():
        write_safetensors(out / "state.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})


def run_fit(out: Path, kill_at: int | None, stall_at: int | None) -> None:
    step = Trainer._train_step

    def fault(self, xb):
        if self.rank == 1 and self.step == kill_at and distributed.restart_count() == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.rank == 1 and self.step == stall_at:
            time.sleep(120)
        step(self, xb)

    Trainer._train_step = fault
    x = images(800)
    model = MFCVAE(n_clusters=(4, 4), latent_dims=(2, 2), epochs=4, batch_size=40, seed=3, verbose=False)
    model.fit(x, run_dir=out / "run")
    if distributed.is_main():
        (out / "result.json").write_text(json.dumps({
            "model": digest(model.model_.state_dict().values()), "history": model.history_,
            "labels": model.labels_.tolist(), "restarts": distributed.restart_count()}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("states", "equal", "fit"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--stall-at", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.scenario == "states":
        run_states(args.out)
    elif args.scenario == "equal":
        run_equal(args.out, args.batch_size)
    else:
        run_fit(args.out, args.kill_at, args.stall_at)
