"""Data-parallel scaling: training throughput and accuracy of one process against N, through the CLI.

    python benchmarks/scaling.py run --seeds 0 1 2                      # CPU: 1 process, torchrun x1, x2
    python benchmarks/scaling.py run --device cuda --layouts plain 1    # one GPU: the cost of DDP itself
    python benchmarks/scaling.py allreduce --preset mnist               # one gradient all-reduce, timed
    python benchmarks/scaling.py table

``run`` trains ``mfcvae fit --preset PRESET`` once per layout x seed, the layouts interleaved
within each seed so that a slow spell of a shared machine falls on all of them alike:
``plain`` is one process without torch.distributed; ``N`` is ``--nproc N`` (torchrun, DDP, Gloo
on CPUs, NCCL on GPUs). Every process of a run shares the machine's cores: torchrun gives each
of N > 1 processes one thread, a single process keeps torch's default. Throughput is examples
per second in the training loop: the data set's size over the median epoch's seconds, from the
run's metrics.csv (the first epoch left out: it warms up). ``allreduce`` times what DDP adds to
every step: the all-reduce of a gradient the size of the preset's network, between N processes
(Gloo on CPUs). Rows go to results/scaling.jsonl with the commit, the parameters and the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench import ROOT, machine, source  # benchmarks/bench.py: what a row records of its machine and code
from mfcvae import MFCVAE
from mfcvae.config import load_preset
from mfcvae.model import MultiFacetVAE, count_parameters

RESULTS = ROOT / "benchmarks" / "results" / "scaling.jsonl"


def fit(layout: str, seed: int, preset: str, device: str, sets: list[str], out: Path) -> dict:
    """One ``mfcvae fit`` in ``layout`` ("plain" or a process count); the row's measured part."""
    command = [sys.executable, "-m", "mfcvae", "fit", "--preset", preset, "--seed", str(seed), "--device", device,
               "--out", str(out), "--quiet", *(f"--set={s}" for s in sets)]
    if layout != "plain":
        command += ["--nproc", layout]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    epochs = list(csv.DictReader((out / "metrics.csv").open()))
    config = json.loads((out / "config.json").read_text())
    evaluation = json.loads((out / "evaluation.json").read_text())["train"]
    n = _examples(done.stdout)
    epoch_seconds = [float(e["seconds"]) for e in epochs]
    steady = epoch_seconds[1:] or epoch_seconds
    best = {label: max(r["accuracy"] for r in evaluation if r["label"] == label)
            for label in dict.fromkeys(r["label"] for r in evaluation)}
    return {"examples": n, "epochs": len(epochs), "steps": int(epochs[-1]["step"]),
            "median_epoch_s": round(float(np.median(steady)), 3),
            "examples_per_s": round(n / float(np.median(steady)), 1), "fit_wall_s": round(seconds, 1),
            "elbo": round(float(epochs[-1]["elbo"]), 2), "accuracy": best, "params": config["params"]}


def _examples(stdout: str) -> int:
    """The training set's size, from the CLI's "data: Dataset(..., N examples ...)" line."""
    line = next(line for line in stdout.splitlines() if line.startswith("data: "))
    return int(line.split(", ")[1].split()[0])


def run(args: argparse.Namespace) -> None:
    where, code = machine(), source()
    command = shlex.join(["python", "benchmarks/scaling.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for layout in args.layouts:
                measured = fit(layout, seed, args.preset, args.device, args.set, Path(tmp) / f"{layout}_{seed}")
                row = {"preset": args.preset, "layout": layout, "processes": 1 if layout == "plain" else int(layout),
                       "device": args.device, "seed": seed, "sets": args.set, **measured, **code,
                       "command": command, "machine": where}
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{layout:>5} seed {seed}: {row['examples_per_s']:.0f} examples/s, "
                      f"accuracy {row['accuracy']}, fit {row['fit_wall_s']} s", flush=True)


def network_size(preset: str, input_shape: tuple[int, ...]) -> int:
    """The number of parameters of the preset's network for inputs of ``input_shape``."""
    params = load_preset(preset)
    params = params[0] if isinstance(params, tuple) else params
    cfg = MFCVAE(**params)._model_config(input_shape, "float32", "bernoulli")
    return count_parameters(MultiFacetVAE(cfg))


def _time_allreduce(rank: int, world: int, numbers: int, repeats: int, port: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    gradient = torch.randn(numbers)
    for _ in range(3):  # warm-up: the first collectives set up the connections
        dist.all_reduce(gradient)
    seconds = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(gradient)
        seconds.append(time.perf_counter() - start)
    if rank == 0:
        out.write_text(json.dumps(seconds))
    dist.destroy_process_group()


def allreduce(args: argparse.Namespace) -> None:
    shapes = {"mnist": (1, 28, 28), "demo": (3, 16, 16), "svhn": (3, 32, 32), "3dshapes_1": (3, 32, 32),
              "3dshapes_2": (3, 32, 32)}
    numbers = network_size(args.preset, shapes[args.preset])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds.json"
        mp.spawn(_time_allreduce, args=(args.nproc, numbers, args.repeats, 29517, out), nprocs=args.nproc)
        seconds = json.loads(out.read_text())
    row = {"kind": "allreduce", "preset": args.preset, "processes": args.nproc, "backend": "gloo",
           "parameters": numbers, "megabytes": round(numbers * 4 / 2**20, 2), "repeats": args.repeats,
           "median_ms": round(1000 * float(np.median(seconds)), 3), "min_ms": round(1000 * min(seconds), 3),
           **source(), "command": shlex.join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
           "machine": machine()}
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"all-reduce of {numbers:,} float32 ({row['megabytes']} MB) between {args.nproc} processes (Gloo): "
          f"median {row['median_ms']} ms, min {row['min_ms']} ms over {args.repeats}")


def table(args: argparse.Namespace) -> None:
    """Print the all-reduce timings, then per machine x commit x preset x device x layout x --set
    the mean throughput, its ratio to one plain process and the best-facet accuracy per label."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()] if RESULTS.is_file() else []
    for r in (r for r in rows if r.get("kind") == "allreduce"):
        print(f"all-reduce, {r['preset']} ({r['parameters']:,} parameters), {r['processes']} processes, "
              f"{r['backend']}, {r['machine']['cpu']}: median {r['median_ms']} ms ({r['commit'][:7]})")
    rows = [r for r in rows if r.get("kind") != "allreduce"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        m = r["machine"]
        where = ", ".join([m["cpu"], m["isa"], *([m["gpu"]] if m["gpu"] else [])])
        code = r["commit"][:7] + ("*" if r["dirty"] else "")
        groups.setdefault((where, code, r["preset"], r["device"], r["layout"], " ".join(r["sets"])), []).append(r)
    print("| machine | commit | preset | device | layout | --set | seeds | examples/s | vs plain | fit s | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (where, code, preset, device, layout, sets), runs in groups.items():
        plain = groups.get((where, code.rstrip("*"), preset, device, "plain", ""))
        speed = np.mean([r["examples_per_s"] for r in runs])
        ratio = f"{speed / np.mean([r['examples_per_s'] for r in plain]):.2f}x" if plain else "-"
        labels = dict.fromkeys(k for r in runs for k in r["accuracy"])
        accuracy = ", ".join(f"{k} {np.mean([r['accuracy'][k] for r in runs]):.3f}+-"
                             f"{np.std([r['accuracy'][k] for r in runs]):.3f}" for k in labels)
        print(f"| {where} | {code} | {preset} | {device} | {layout} | {sets or '-'} | {len(runs)} | {speed:.0f} | "
              f"{ratio} | {np.mean([r['fit_wall_s'] for r in runs]):.0f} | {accuracy} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="train and record")
    go.add_argument("--preset", default="demo")
    go.add_argument("--device", default="cpu")
    go.add_argument("--layouts", nargs="+", default=["plain", "1", "2"], help="plain and/or process counts")
    go.add_argument("--seeds", nargs="+", type=int, default=[0])
    go.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to mfcvae fit --set")
    go.set_defaults(func=run)
    comm = sub.add_parser("allreduce", help="time one gradient all-reduce between processes")
    comm.add_argument("--preset", default="mnist")
    comm.add_argument("--nproc", type=int, default=2)
    comm.add_argument("--repeats", type=int, default=50)
    comm.set_defaults(func=allreduce)
    sub.add_parser("table", help="the recorded rows, averaged over seeds").set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
