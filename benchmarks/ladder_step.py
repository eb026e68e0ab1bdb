"""The cost of MFCVAE's training step against a bare autoencoder of the same layers, in one process.

    python benchmarks/ladder_step.py                          # conv ladder on 3x28x28 (tinted Fashion-MNIST)
    python benchmarks/ladder_step.py --architecture mlp --shape 1 28 28
    python benchmarks/ladder_step.py --memory-format contiguous   # the conv ladder in the default layout

Both steps take the same mini-batch of random images: forward, backward and an Adam update.
The MFCVAE step is the training loop's own (``train.batch_loss`` of a ``MultiFacetVAE`` built by
the estimator's defaults: ladder, heads, mixture priors, q(c|x), the reparameterised ELBO with free
bits). The bare autoencoder is the same encoder and decoder with the mean heads only: z = the
posterior mean of each facet, a squared-error loss, no priors and no KL. The two are timed
interleaved, ``--repeats`` rounds of ``--steps`` steps each after a warm-up, and each round's ratio
(bare seconds / MFCVAE seconds: the share of a bare step's speed the full step keeps) is kept.
One row per run goes to results/ladder_step.jsonl with the median ratio and step times, the
parameters, the commit and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from bench import ROOT, machine, source  # benchmarks/bench.py: what a row records of its machine and code
from mfcvae import MFCVAE
from mfcvae.model import MultiFacetVAE
from mfcvae.train import adam, batch_loss

RESULTS = ROOT / "benchmarks" / "results" / "ladder_step.jsonl"


class BareAutoencoder(nn.Module):
    """The model's encoder, mean heads and decoder, trained as a plain autoencoder."""

    def __init__(self, model: MultiFacetVAE):
        super().__init__()
        self.encoder, self.mean_heads, self.decoder = model.encoder, model.mean_heads, model.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zs = [head(h) for head, h in zip(self.mean_heads, self.encoder(x))]
        out = self.decoder(zs, torch.ones(len(zs)))
        return (out - x).pow(2).mean()


def timed(step, steps: int) -> float:
    """Seconds per step over ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="conv", choices=("conv", "mlp"))
    parser.add_argument("--shape", type=int, nargs="+", default=[3, 28, 28], help="one input's shape")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last",
                        help="the weights' layout in both models (the conv ladder's own: channels_last)")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()

    estimator = MFCVAE(n_clusters=(10, 10), architecture=args.architecture, precision=args.precision, device="cpu")
    cfg = estimator._model_config(tuple(args.shape), args.precision, "bernoulli")
    torch.manual_seed(0)
    model, bare = MultiFacetVAE(cfg), BareAutoencoder(MultiFacetVAE(cfg))
    x = torch.rand(args.batch_size, *args.shape)
    if args.memory_format == "contiguous":
        model, bare = model.to(memory_format=torch.contiguous_format), bare.to(memory_format=torch.contiguous_format)
    weights = torch.ones(cfg.n_facets)
    optimisers = adam(model, 5e-4), adam(bare, 5e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bfloat16")

    def mfcvae_step() -> None:
        loss, _ = batch_loss(model, x, weights, free_bits=2.0)
        optimisers[0].zero_grad(set_to_none=True)
        loss.backward()
        optimisers[0].step()

    def bare_step() -> None:
        with autocast:
            loss = bare(x)
        optimisers[1].zero_grad(set_to_none=True)
        loss.backward()
        optimisers[1].step()

    for step in (mfcvae_step, bare_step):  # warm-up: allocator, oneDNN primitives
        timed(step, 3)
    rounds = []
    for _ in range(args.repeats):
        full, plain = timed(mfcvae_step, args.steps), timed(bare_step, args.steps)
        rounds.append({"mfcvae_s": full, "bare_s": plain, "ratio": plain / full})
    row = {"architecture": cfg.architecture, "shape": list(args.shape), "hidden_dims": list(cfg.hidden_dims),
           "n_clusters": list(cfg.n_clusters), "latent_dims": list(cfg.latent_dims), "batch_size": args.batch_size,
           "precision": args.precision, "memory_format": args.memory_format, "steps": args.steps,
           "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
           "median_mfcvae_ms": round(1000 * statistics.median(r["mfcvae_s"] for r in rounds), 2),
           "median_bare_ms": round(1000 * statistics.median(r["bare_s"] for r in rounds), 2),
           "rounds": [{k: round(v, 5) for k, v in r.items()} for r in rounds],
           "command": " ".join(["python", "benchmarks/ladder_step.py", *sys.argv[1:]]), **source(),
           "machine": machine()}
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{cfg.architecture} ladder {tuple(args.shape)}, batch {args.batch_size}, {args.precision}"
          f", {args.memory_format}: MFCVAE step {row['median_mfcvae_ms']} ms, bare "
          f"autoencoder {row['median_bare_ms']} ms, ratio {row['median_ratio']} (median of {args.repeats} rounds)")


if __name__ == "__main__":
    main()
