"""Two criteria for choosing a facet's number of clusters, on the same trained models: BIC (what
``n_clusters="auto"`` uses) and ICL (BIC plus twice the entropy of the mixture's assignments,
which penalises overlapping components).

    python benchmarks/choose_k.py --data wine digits demo fashion --seeds 0 1 2

For each data set and seed, MFCVAE is fitted with every facet "auto" (the recipe below), then for
each facet the candidates of ``mixtures.cluster_candidates`` are fitted exactly as the end refit
fits them (same draws, same spectral starts, same at most 20,000 points) and scored by both
criteria. A row per facet goes to results/choose_k.jsonl: the count each criterion picks and the
NMI of that mixture's assignments against every label, beside the NMI at the true count.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from bench import ROOT, load_splits, prepared, provenance  # benchmarks/bench.py
from mfcvae import MFCVAE, load_preset
from mfcvae.mixtures import (REFIT_MAX_POINTS, _encode, _mixture, _start_from_groups, cluster_candidates,
                             spectral_partitions)
from mfcvae.validation import as_tensor

RESULTS = ROOT / "benchmarks" / "results" / "choose_k.jsonl"
RECIPES = {  # (parameters, training examples): the runs of the embeddings guide's table
    "wine": ({**load_preset("embeddings"), "epochs": 300, "batch_size": 128}, None),
    "digits": ({"n_clusters": "auto", "epochs": 100}, None),
    "demo": ({**load_preset("demo"), "n_clusters": "auto", "refit_at_end": True}, None),
    "fashion": ({"n_clusters": "auto", "epochs": 20}, 10_000),
}


def candidates_scored(model: MFCVAE, data, seed: int) -> list[dict]:
    """Per facet: each candidate count's BIC, ICL and NMI against every label."""
    x = as_tensor(data)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), min(len(x), REFIT_MAX_POINTS), replace=False))
    encoded = _encode(model.model_, x[torch.from_numpy(rows)], torch.device("cpu"))
    facets = []
    for j, (means, log_var) in enumerate(encoded):
        means = means.double().numpy()
        z = means + np.exp(0.5 * log_var.double().numpy()) * np.random.default_rng(j).standard_normal(means.shape)
        prior = model.model_.priors[j]
        counts = cluster_candidates(model.max_clusters)
        pick, partitions = spectral_partitions(means, counts, seed)
        scored = {}
        for k in counts:
            start = _start_from_groups(partitions[k], z[pick], k, prior.covariance) if k > 1 else {}
            mixture = _mixture(prior, k, seed, start).fit(z[pick])
            bic = mixture.bic(z[pick])
            resp = mixture.predict_proba(z[pick])
            entropy = -(resp * np.log(np.clip(resp, 1e-300, None))).sum()
            assigned = mixture.predict(z[pick])
            scored[k] = {"bic": bic, "icl": bic + 2 * entropy,
                         "nmi": {name: normalized_mutual_info_score(y[rows][pick], assigned)
                                 for name, y in data.labels.items()}}
        facets.append(scored)
    return facets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    described = provenance("choose_k.py", sys.argv[1:])
    for name in args.data:
        params, n = RECIPES[name]
        data = prepared(load_splits(name)["train"], n, None)
        truth = {label: len(np.unique(y)) for label, y in data.labels.items()}
        for seed in args.seeds:
            model = MFCVAE(**{**params, "seed": seed, "verbose": False}).fit(data)
            for facet, scored in enumerate(candidates_scored(model, data, seed)):
                picks = {c: min(scored, key=lambda k: scored[k][c]) for c in ("bic", "icl")}
                row = {"data": name, "n": len(data), "seed": seed, "facet": facet, "truth": truth, "params": params,
                       **{f"k_{c}": k for c, k in picks.items()},
                       **{f"nmi_{c}": {lab: round(v, 3) for lab, v in scored[k]["nmi"].items()}
                          for c, k in picks.items()},
                       "nmi_true_k": {lab: round(scored[k]["nmi"][lab], 3) if k in scored else None
                                      for lab, k in truth.items()}, **described}
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
                print(f"{name} seed {seed} facet {facet}: BIC {picks['bic']} (NMI {row['nmi_bic']}), "
                      f"ICL {picks['icl']} (NMI {row['nmi_icl']}), truth {truth} (NMI {row['nmi_true_k']})", flush=True)


if __name__ == "__main__":
    main()
