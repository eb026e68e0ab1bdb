"""Benchmark: clustering quality and wall time on the built-in demo set and on Fashion-MNIST.

For each data set: train MFCVAE (the demo preset; the paper's MNIST architecture on
Fashion-MNIST with fewer epochs), then score every facet against every label, and run
k-means on raw pixels with the same K in the same process as the baseline. Results are
appended to benchmarks/results/demo_and_fashion.jsonl and printed as a markdown table.

    python benchmarks/demo_and_fashion.py                       # everything (~15 CPU-minutes)
    python benchmarks/demo_and_fashion.py --only demo --seeds 0 1 2
    python benchmarks/demo_and_fashion.py --only fashion --fashion-epochs 20
    python benchmarks/demo_and_fashion.py --table              # the table of the stored results

A rerun of the same data set, seed and epochs replaces the older row in ``--table``, also when
a preset changed in between (the file keeps every run), so the table shows what the presets
give today and refreshing it does not make it grow.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import FASHION_DIR, kmeans_baseline, machine

from mfcvae import MFCVAE, load_preset
from mfcvae.datasets import load_mnist, make_shapes
from mfcvae.metrics import best_facet_per_label

RESULTS = Path(__file__).parent / "results" / "demo_and_fashion.jsonl"


def run(dataset: str, x: np.ndarray, labels: dict, params: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = MFCVAE(**{**params, "seed": seed, "verbose": False}).fit(x)
    seconds = time.perf_counter() - start
    rows = model.evaluate(x, labels)
    best = best_facet_per_label(rows)
    return {
        "dataset": dataset, "seed": seed, "n": len(x), "train_seconds": round(seconds, 1),
        "epochs": params["epochs"], "params": {k: v for k, v in params.items() if k != "verbose"},
        "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
        "best": {name: {"facet": r["facet"], "accuracy": round(r["accuracy"], 4), "nmi": round(r["nmi"], 4)}
                 for name, r in best.items()},
        "kmeans": [kmeans_baseline(x, labels, k, seed) for k in sorted(set(params["n_clusters"]))],
        "machine": machine(),
    }


def latest(results: list[dict]) -> list[dict]:
    """The last stored run per data set, seed and epochs, in the order each first appeared."""
    runs = {}
    for r in results:
        runs[(r["dataset"], r["seed"], r["epochs"])] = r
    return list(runs.values())


def markdown(results: list[dict]) -> str:
    lines = ["| data | seed | epochs | train time | facet -> label: accuracy (NMI) | k-means on pixels, same K |",
             "|---|---|---|---|---|---|"]
    for r in results:
        facets = "; ".join(f"facet {b['facet']} -> {name}: {b['accuracy']:.3f} ({b['nmi']:.3f})"
                           for name, b in r["best"].items())
        km = "; ".join(f"K={k['k']}: " + ", ".join(f"{n} {v['accuracy']:.3f}" for n, v in k.items()
                                                  if isinstance(v, dict)) for k in r["kmeans"])
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['epochs']} | {r['train_seconds']:.0f} s | {facets} | {km} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("demo", "fashion"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fashion-epochs", type=int, default=20)
    parser.add_argument("--fashion-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--table", action="store_true",
                        help="print the latest stored run per data set, seed and epochs; train nothing")
    args = parser.parse_args()
    if args.table:
        print(markdown(latest([json.loads(line) for line in RESULTS.read_text().splitlines()])))
        return

    results = []
    if args.only in (None, "demo"):
        data = make_shapes(seed=0)
        x, labels = data.x[:], data.labels
        results += [run("demo shapes", x, labels, load_preset("demo"), s) for s in args.seeds]
    if args.only in (None, "fashion"):
        if not FASHION_DIR.is_dir():
            raise SystemExit(f"{FASHION_DIR} missing: apt-get install -y dataset-fashion-mnist")
        data = load_mnist(FASHION_DIR)  # all 70,000 images: train + test
        x, labels = data.x[:], data.labels
        params = {**load_preset("mnist"), "epochs": args.fashion_epochs, "stage_epochs": None, "fade_steps": None}
        results += [run("Fashion-MNIST 70k", x, labels, params, s) for s in args.fashion_seeds]

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print(markdown(results))
    print(f"\nappended to {RESULTS}")


if __name__ == "__main__":
    main()
