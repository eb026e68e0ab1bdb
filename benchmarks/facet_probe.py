"""What each facet of a trained model carries: its KL, the run's ELBO, and how well its latent
codes separate every label, beside the clustering's own accuracy.

    python benchmarks/facet_probe.py --data demo --preset demo --seeds 0 1 2 3 4
    python benchmarks/facet_probe.py --data demo --preset demo --set free_bits=4 --seeds 0 1 2 3 4

A clustering can miss a label in two ways: the facet's latent codes mix the label's values (the
representation is at fault), or they separate them and the mixture prior cuts them badly. The
15-nearest-neighbour accuracy of each facet's posterior means (3-fold, the labels used only
here) tells the two apart: near 1 the codes separate the label, and a low clustering accuracy
beside it is the mixture's. One row per seed goes to results/facet_probe.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from bench import DATASETS, ROOT, load_splits, parse_sets, provenance  # benchmarks/bench.py
from mfcvae import MFCVAE, load_preset

RESULTS = ROOT / "benchmarks" / "results" / "facet_probe.jsonl"
NEIGHBOURS, FOLDS = 15, 3


def neighbour_accuracy(z: np.ndarray, y: np.ndarray) -> float:
    """Cross-validated k-nearest-neighbour accuracy of predicting ``y`` from codes ``z`` (N, d)."""
    return float(cross_val_score(KNeighborsClassifier(NEIGHBOURS), z, y, cv=FOLDS).mean())


def probe(model: MFCVAE, data) -> dict:
    """Per facet: last-epoch KL, and per label the clustering's accuracy and the codes' kNN accuracy."""
    last = model.history_[-1]
    scores = model.evaluate(data)
    codes = model.transform_facets(data)
    return {
        "elbo": round(last["elbo"], 3),
        "facets": [{"kl": round(last[f"kl_{j}"], 3),
                    "accuracy": {r["label"]: round(r["accuracy"], 4) for r in scores if r["facet"] == j},
                    "knn_accuracy": {name: round(neighbour_accuracy(z, y), 4) for name, y in data.labels.items()}}
                   for j, z in enumerate(codes)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=list(DATASETS), default="demo")
    parser.add_argument("--preset", help="start from this preset's parameters instead of the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a parameter (value read as YAML); repeatable")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    sets = parse_sets(args.set, set(MFCVAE().get_params()))
    params = {**(load_preset(args.preset) if args.preset else {}), **sets}
    data = load_splits(args.data)["train"]
    described = provenance("facet_probe.py", sys.argv[1:])
    for seed in args.seeds:
        model = MFCVAE(**{**params, "seed": seed, "verbose": False}).fit(data)
        row = {"data": args.data, "n": len(data), "preset": args.preset, "sets": sets, "seed": seed,
               **probe(model, data), "params": model.get_params(), **described}
        with RESULTS.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        facets = "; ".join(f"facet {j}: KL {f['kl']}, accuracy {f['accuracy']}, kNN {f['knn_accuracy']}"
                           for j, f in enumerate(row["facets"]))
        print(f"{args.data} seed {seed} {sets or ''}: ELBO {row['elbo']}; {facets}", flush=True)


if __name__ == "__main__":
    main()
