"""Benchmark: the `fashion_mnist` preset (the paper's MNIST recipe) on all 70,000 Fashion-MNIST
images, on whatever device torch finds.

Per seed: train (with a run folder, so metrics.csv shows progress and an interrupted run can be
resumed with --resume), then score every facet against the class label (many-to-one and
Hungarian accuracy, NMI, ARI, active clusters) and time per epoch; k-means on raw pixels with
the same K and with K = 10 runs in the same process as the baseline. Results are appended to
benchmarks/results/fashion_mnist.jsonl and printed as a markdown table.

    python benchmarks/fashion_mnist.py                    # the preset's 402 epochs, seed 0
    python benchmarks/fashion_mnist.py --epochs 100 --seeds 0 1 2
    python benchmarks/fashion_mnist.py --table            # the table of every stored result
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import FASHION_DIR, kmeans_baseline, machine

from mfcvae import MFCVAE, load_preset
from mfcvae.datasets import load_mnist

RESULTS = Path(__file__).parent / "results" / "fashion_mnist.jsonl"


def run(epochs: int | None, seed: int, run_dir: Path, resume: bool, device: str) -> dict:
    data = load_mnist(FASHION_DIR)  # train + test, kept as uint8
    params = {**load_preset("fashion_mnist"), "seed": seed, "verbose": False, "device": device}
    if epochs is not None:
        params["epochs"] = epochs  # the preset's stage schedule and fade are stretched to fit
    start = time.perf_counter()
    model = MFCVAE(**params).fit(data, run_dir=run_dir, resume=resume)
    seconds = time.perf_counter() - start
    epoch_seconds = [row["seconds"] for row in model.history_]
    x = data.x[:]
    return {
        "dataset": "Fashion-MNIST 70k", "preset": "fashion_mnist", "seed": seed, "epochs": params["epochs"],
        "train_seconds": round(seconds, 1), "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 2),
        "median_seconds_per_epoch": round(float(np.median(epoch_seconds)), 2),
        "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in model.evaluate(data)],
        "kl_last_epoch": [round(model.history_[-1][f"kl_{j}"], 3) for j in range(len(model.n_clusters))],
        "kmeans": [kmeans_baseline(x, data.labels, k, seed) for k in sorted({10, *model.n_clusters})],
        "machine": machine(),
    }


def markdown(results: list[dict]) -> str:
    lines = ["| seed | epochs | s / epoch (median, mean) | total | facet | accuracy (m2o) | Hungarian | NMI | ARI "
             "| active | k-means on pixels (m2o accuracy) | machine |", "|" + "---|" * 12]
    for r in results:
        km = ", ".join(f"K={k['k']}: {k['label']['accuracy']:.3f}" for k in r["kmeans"])
        for row in r["rows"]:
            lines.append(f"| {r['seed']} | {r['epochs']} | {r['median_seconds_per_epoch']:.1f}, "
                         f"{r['seconds_per_epoch']:.1f} | {r['train_seconds'] / 60:.0f} min | {row['facet']} "
                         f"| {row['accuracy']:.3f} | {row['hungarian_accuracy']:.3f} | {row['nmi']:.3f} "
                         f"| {row['ari']:.3f} | {row['active_clusters']} | {km} | {r['machine']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, help="default: the preset's (402)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", default="runs/bench_fashion", help="run folders go here (one per seed)")
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs from their checkpoints")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--table", action="store_true", help="print the stored results as markdown; train nothing")
    args = parser.parse_args()
    if not args.table:
        if not FASHION_DIR.is_dir():
            raise SystemExit(f"{FASHION_DIR} missing: apt-get install -y dataset-fashion-mnist")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            result = run(args.epochs, seed, Path(args.runs) / f"seed{seed}", args.resume, args.device)
            with RESULTS.open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(markdown([result]), flush=True)
    print(markdown([json.loads(line) for line in RESULTS.read_text().splitlines()]))


if __name__ == "__main__":
    main()
