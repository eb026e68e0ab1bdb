"""Benchmark: how much the clusters of ``refit_at_end`` depend on where the fresh mixture fit starts.

For each saved model (e.g. from ``budget.py --save-models``) and each fit seed, the mixtures are
re-fitted exactly as ``refit_at_end`` does it (``initialise_priors`` with ``draws=True``), then
scored on the facet that clusters the label best as saved: many-to-one accuracy on the label,
and the ELBO per example
(``score``), the model's own, unsupervised judgement of the fit. Rows go to
benchmarks/results/refit_starts.csv; a summary per model is printed.

    python benchmarks/refit_starts.py runs/budget/fashion-70000-*-600.0-seed* --fits 10 \
        --machine-note "host of 2026-11-26"
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from budget import load_data
from common import machine

from mfcvae import MFCVAE
from mfcvae.metrics import many_to_one_accuracy
from mfcvae.train import initialise_priors

RESULTS = Path(__file__).parent / "results" / "refit_starts.csv"
FIELDS = ["model", "facet", "fit_seed", "accuracy", "elbo", "machine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="folders of saved models")
    parser.add_argument("--data", default="fashion", choices=["demo", "fashion", "tinted"],
                        help="the data the models were trained on")
    parser.add_argument("--label", default="label")
    parser.add_argument("--fits", type=int, default=10, help="fit seeds 0 .. fits-1 per model")
    parser.add_argument("--machine-note", metavar="TEXT", help="appended to the machine column, as in budget.py "
                        "(models of the same name from different runs stay apart)")
    args = parser.parse_args()
    data = load_data(args.data, None)
    y = data.labels[args.label]
    rows, where = [], machine() + (f", {args.machine_note}" if args.machine_note else "")
    for path in args.models:
        est = MFCVAE.load(path, device="cpu")
        saved, x = {k: v.clone() for k, v in est.model_.state_dict().items()}, est._inputs(data)
        as_saved = [many_to_one_accuracy(y, p) for p in est.predict(x).T]
        facet = int(np.argmax(as_saved))
        fits = []
        for seed in range(args.fits):
            est.model_.load_state_dict(saved)
            initialise_priors(est.model_, x, "gmm", seed, torch.device("cpu"),
                              fit_variances=True, draws=True)  # every facet, as refit_at_end does
            fits.append((seed, many_to_one_accuracy(y, est.predict(x)[:, facet]), est.score(x)))
        rows += [{"model": path.name, "facet": facet, "fit_seed": s, "accuracy": round(a, 4), "elbo": round(e, 3),
                  "machine": where} for s, a, e in fits]
        accuracies = [a for _, a, _ in fits]
        best_elbo = max(fits, key=lambda fit: fit[2])
        print(f"{path.name} facet {facet}: as saved {as_saved[facet]:.3f}; {len(fits)} fresh fits "
              f"{min(accuracies):.3f}-{max(accuracies):.3f}, mean {np.mean(accuracies):.3f}; "
              f"the fit with the highest ELBO: {best_elbo[1]:.3f}")
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
