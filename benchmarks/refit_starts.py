"""Benchmark: how much the clusters of ``refit_at_end`` depend on where the fresh mixture fit
starts (its random seed, and ``refit_start``), and on how many inputs it is fitted to.

For each saved model (e.g. from ``budget.py --save-models``), each fit seed, each number of
inputs (``--points``: at most that many, drawn at random) and each start (``--starts``), the
mixtures are re-fitted exactly as ``refit_at_end`` does it (``refit_priors``), then scored on
the facet that clusters the label best as saved: many-to-one accuracy on the label, and the
ELBO per example (``score``), the model's own, unsupervised judgement of the fit. Rows go to
benchmarks/results/refit_starts.csv as each model is done (the model named by its folder and
the folder above); a summary per model is printed, and with two or more settings (points x
start), each against the first, model by model.

    python benchmarks/refit_starts.py runs/budget/fashion-70000-*-600.0-seed* --fits 10 \
        --machine-note "host of 2026-11-26"
    python benchmarks/refit_starts.py runs/budget/fashion-70000-*-600.0-seed* --fits 4 --points 20000 100000
    python benchmarks/refit_starts.py runs/budget/fashion-70000-*-600.0-seed* --fits 2 --starts kmeans spectral
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
from mfcvae.config import REFIT_STARTS
from mfcvae.metrics import many_to_one_accuracy
from mfcvae.train import REFIT_MAX_POINTS, refit_priors

RESULTS = Path(__file__).parent / "results" / "refit_starts.csv"
FIELDS = ["model", "facet", "fit_seed", "points", "start", "accuracy", "elbo", "machine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="folders of saved models")
    parser.add_argument("--data", default="fashion", choices=["demo", "fashion", "tinted"],
                        help="the data the models were trained on")
    parser.add_argument("--label", default="label")
    parser.add_argument("--fits", type=int, default=10, help="fit seeds 0 .. fits-1 per model")
    parser.add_argument("--points", type=int, nargs="+", default=[REFIT_MAX_POINTS],
                        help="fit to at most this many inputs (several: each is scored; default: as refit_at_end)")
    parser.add_argument("--starts", nargs="+", default=["kmeans"], choices=REFIT_STARTS,
                        help="where EM starts (refit_start; several: each is scored)")
    parser.add_argument("--machine-note", metavar="TEXT", help="appended to the machine column, as in budget.py "
                        "(models of the same name from different runs stay apart)")
    args = parser.parse_args()
    data = load_data(args.data, None)
    y = data.labels[args.label]
    where = machine() + (f", {args.machine_note}" if args.machine_note else "")
    settings = [(points, start) for points in args.points for start in args.starts]
    means = {setting: [] for setting in settings}  # per model, the mean accuracy over fit seeds
    for path in args.models:
        est = MFCVAE.load(path, device="cpu")
        saved, x = {k: v.clone() for k, v in est.model_.state_dict().items()}, est._inputs(data)
        as_saved = [many_to_one_accuracy(y, p) for p in est.predict(x).T]
        facet, rows = int(np.argmax(as_saved)), []
        for points, start in settings:
            fits = []
            for seed in range(args.fits):
                est.model_.load_state_dict(saved)
                refit_priors(est.model_, x, seed, torch.device("cpu"), max_points=points, start=start)  # every facet
                fits.append((seed, many_to_one_accuracy(y, est.predict(x)[:, facet]), est.score(x)))
            rows += [{"model": f"{path.parent.name}/{path.name}", "facet": facet, "fit_seed": s, "points": points,
                      "start": start, "accuracy": round(a, 4), "elbo": round(e, 3), "machine": where}
                     for s, a, e in fits]
            accuracies = [a for _, a, _ in fits]
            means[points, start].append(np.mean(accuracies))
            best_elbo = max(fits, key=lambda fit: fit[2])
            print(f"{path.name} facet {facet}: as saved {as_saved[facet]:.3f}; {len(fits)} fresh fits to at most "
                  f"{points} inputs from {start} {min(accuracies):.3f}-{max(accuracies):.3f}, mean "
                  f"{np.mean(accuracies):.3f}; the fit with the highest ELBO: {best_elbo[1]:.3f}", flush=True)
        append(rows)
    first = np.array(means[settings[0]])
    for points, start in settings[1:]:
        diff = np.array(means[points, start]) - first
        print(f"at most {points} inputs from {start} against {settings[0][0]} from {settings[0][1]}, mean over fit "
              f"seeds per model: {diff.mean():+.4f} +- {diff.std():.4f} over {len(diff)} models, ahead on "
              f"{int((diff > 0).sum())} ({np.mean(means[points, start]):.4f} against {first.mean():.4f})")
    print(f"appended to {RESULTS}")


def append(rows: list[dict]) -> None:
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
