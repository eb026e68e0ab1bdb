"""Benchmarks of MFCVAE: clustering quality for a training budget, one self-describing JSON row per run.

    python benchmarks/bench.py run --data demo --preset demo --storage float uint8 --seeds 0 1 2
    python benchmarks/bench.py run --data fashion --seconds 600 --variants default kmeans --seeds 0 1 2
    python benchmarks/bench.py run --data digits --epochs 20 --variants default paper --set lr=1e-3
    python benchmarks/bench.py table --data demo --machine EPYC
    python benchmarks/bench.py pair default paper --data fashion
    python benchmarks/bench.py verdict default paper
    python benchmarks/bench.py page docs/benchmarks.md

``run`` trains MFCVAE for a budget (``--epochs``, or ``--seconds``: the estimator's max_seconds)
for every variant x seed, scores every facet against every label on every split, and appends one
row per run to the results file. A variant is a change to the estimator's defaults (or to a
preset's parameters, with ``--preset``); ``--set key=value`` adds a change to every variant and is
named in the variant's label. The variant ``kmeans`` is the baseline: k-means on the raw inputs
with each facet's K. ``table``, ``pair``, ``verdict`` and ``page`` read the rows back; for each
seed of a data set x budget x variant x machine they use its latest run. ``verdict`` applies the
protocol by which a default changes: B must gain on the mean over at least three data set x label
entries (held-out splits where there are any), each on three or more seeds, and lose on none by
more than its seed spread.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, load_wine

from mfcvae import MFCVAE
from mfcvae.config import load_preset, yaml_load
from mfcvae.datasets import Dataset, load_mnist, make_shapes, make_tinted
from mfcvae.metrics import evaluate_assignments

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "runs.jsonl"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
EPOCHS_UNDER_A_DEADLINE = 10_000  # a timed run's epochs: more than any budget buys, so the deadline ends it
METRICS = ("accuracy", "hungarian_accuracy", "nmi", "ari")

DATASETS = {
    "demo": "the built-in shapes (mfcvae.datasets.make_shapes): 12,000 16x16 colour images, labels shape "
            "and colour; stored as float32 or, with --storage uint8, as the uint8 an image file holds",
    "fashion": "Fashion-MNIST: fit on the 60,000 training images, scored on them (train) and on the 10,000 "
               "test images through predict (test); label: item",
    "tinted": "Fashion-MNIST with each image tinted one of four colours (mfcvae.datasets.make_tinted): fit on "
              "the training images, scored on train and test; labels: item and colour",
    "digits": "scikit-learn's bundled digits: 1,797 8x8 greyscale images scaled to [0, 1]; label: digit",
    "wine": "scikit-learn's bundled wine table: 178 wines x 13 chemical measurements (real-valued, as "
            "measured); label: cultivar (3)",
}
VARIANTS: dict[str, dict] = {
    "default": {},
    # the paper's training recipe (SPEC.md, MNIST), on the estimator's schedule
    "paper": {"free_bits": 0.0, "reseed_dead": False, "refit_at_end": False, "covariance": "diag",
              "batch_size": 512, "precision": "float32"},
    "diag": {"covariance": "diag"},
    "no_free_bits": {"free_bits": 0.0},
    "no_reseed": {"reseed_dead": False},
    "no_refit": {"refit_at_end": False},
    "batch_512": {"batch_size": 512},
    "float32": {"precision": "float32"},
    "joint": {"progressive": False},
    "mc_posterior": {"posterior": "mc"},
    "merge_1": {"merge_scale": 1.0},
    "lr_2e-3": {"lr": 2e-3},
    "auto": {"n_clusters": "auto"},  # every facet's number of clusters chosen by the end refit
    "n_init_3": {"n_init": 3},
    "mlp": {"architecture": "mlp"},
    "conv": {"architecture": "conv"},
}
BASELINE = "kmeans"
MIN_SEEDS, MIN_DATA_SETS = 3, 3  # what the protocol needs before a default changes (``verdict``)


# --- what a row records about where and from what it was measured ------------------------
def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The CPU model and its instruction-set level (the highest of amx, avx512_bf16, avx512, avx2, avx)."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    levels = [("amx", {"amx_bf16"}), ("avx512_bf16", {"avx512_bf16"}), ("avx512", {"avx512f"}),
              ("avx2", {"avx2"}), ("avx", {"avx"}), ("sve", {"sve"}), ("neon", {"asimd"})]
    isa = next((name for name, needs in levels if needs <= flags), platform.machine())
    return {"cpu": model, "isa": isa}


def machine() -> dict:
    """CPU model, instruction-set level, torch threads, GPU (or None), torch and Python versions."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**cpu_info(), "threads": torch.get_num_threads(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}


def source() -> dict:
    """The checked-out commit and whether the tree differs from it (results files aside)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args], capture_output=True,
                              text=True, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--", ".", ":!benchmarks/results"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def provenance(script: str, argv: list[str]) -> dict:
    """What a benchmark row records about its run: commit, dirty flag, machine and the command."""
    return {**source(), "machine": machine(), "command": shlex.join(["python", f"benchmarks/{script}", *argv])}


# --- data --------------------------------------------------------------------------------
def digits() -> Dataset:
    """scikit-learn's digits, (1797, 1, 8, 8) in [0, 1], label "digit"."""
    bunch = load_digits()
    return Dataset((bunch.images / 16.0).astype(np.float32), {"digit": bunch.target}, name="digits")


def wine() -> Dataset:
    """scikit-learn's wine table, (178, 13) float32 as measured, label "cultivar"."""
    bunch = load_wine()
    return Dataset(bunch.data.astype(np.float32), {"cultivar": bunch.target}, name="wine")


def fashion(split: str) -> Dataset:
    """One split of Fashion-MNIST, its label named "item"."""
    if not FASHION_DIR.is_dir():
        raise SystemExit(f"{FASHION_DIR} is missing: apt-get install -y dataset-fashion-mnist")
    data = load_mnist(FASHION_DIR, split=split)
    return Dataset(data.x, {"item": data.labels["label"]}, name="fashion-mnist")


def load_splits(name: str) -> dict[str, Dataset]:
    """The data set's splits: "train" (fitted and scored) and, where it has one, "test" (scored)."""
    if name == "demo":
        return {"train": make_shapes(seed=0)}
    if name == "digits":
        return {"train": digits()}
    if name == "wine":
        return {"train": wine()}
    splits = {split: fashion(split) for split in ("train", "test")}
    if name == "tinted":
        splits = {split: make_tinted(data, seed=i) for i, (split, data) in enumerate(splits.items())}
    return splits


def prepared(data: Dataset, n: int | None, storage: str | None) -> Dataset:
    """At most ``n`` examples (a seeded random subset) stored as ``storage`` ("float": float32,
    "uint8": grey levels 0-255; None: as loaded)."""
    if n is not None and n < len(data):
        data = data.subset(np.sort(np.random.default_rng(0).choice(len(data), n, replace=False)))
    if storage is None or data.x.raw.dtype == {"float": np.float32, "uint8": np.uint8}[storage]:
        return data
    x = data.x[:]
    return Dataset(x if storage == "float" else np.round(x * 255).astype(np.uint8), data.labels, data.name)


# --- one run -----------------------------------------------------------------------------
def rounded(rows: list[dict], **extra) -> list[dict]:
    return [{**extra, **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}} for r in rows]


def fit_mfcvae(params: dict, splits: dict[str, Dataset]) -> dict:
    """Train on the train split and score every split; the row's measured part."""
    model = MFCVAE(**params)
    start = time.perf_counter()
    model.fit(splits["train"])
    seconds = time.perf_counter() - start
    last = model.history_[-1]
    n_facets = len(model.cluster_weights_)
    k = [len(w) for w in model.cluster_weights_]
    scores = [r for split, data in splits.items() for r in rounded(model.evaluate(data), split=split)]
    return {
        "params": json.loads(json.dumps(model.get_params(), default=str)),
        "resolved": {"precision": model.precision_, "likelihood": model.likelihood_,
                     "architecture": model.model_.cfg.architecture, "hidden_dims": list(model.model_.cfg.hidden_dims),
                     "device": str(next(model.model_.parameters()).device), "epochs_trained": last["epoch"],
                     "steps": last["step"]},
        "train_seconds": round(seconds, 2),
        "kl": [round(last[f"kl_{j}"], 3) for j in range(n_facets)],
        "scores": [{**r, "n_clusters": k[r["facet"]]} for r in scores],
    }


def fit_kmeans(n_clusters: Iterable[int], seed: int, splits: dict[str, Dataset]) -> dict:
    """k-means on the raw inputs, once per distinct K of the facets (each K in the place of a facet)."""
    ks = sorted(set(n_clusters))
    flat = {split: data.x[:].reshape(len(data), -1) for split, data in splits.items()}
    start = time.perf_counter()
    fitted = [KMeans(k, n_init=3, random_state=seed).fit(flat["train"]) for k in ks]
    seconds = time.perf_counter() - start
    scores = []
    for split, data in splits.items():
        assignments = np.stack([km.predict(flat[split]) for km in fitted], axis=1)
        scores += [{**r, "n_clusters": ks[r["facet"]]}
                   for r in rounded(evaluate_assignments(assignments, data.labels), split=split)]
    return {"params": {"n_clusters": ks, "n_init": 3, "random_state": seed}, "resolved": None,
            "train_seconds": round(seconds, 2), "kl": None, "scores": scores}


# --- reading rows back -------------------------------------------------------------------
def data_label(row: dict) -> str:
    d = row["data"]
    return f"{d['name']} {d['n']} ({d['storage']})"


def budget_label(row: dict) -> str:
    b = row["budget"]
    return f"{b['seconds']:g} s" if b["seconds"] is not None else f"{b['epochs']} epochs"


def machine_label(row: dict) -> str:
    m = row["machine"]
    return ", ".join([m["cpu"], m["isa"], f"{m['threads']} threads", *([m["gpu"]] if m["gpu"] else [])])


def read_rows(path: Path, data: str | None = None, variants: Iterable[str] | None = None,
              commit: str | None = None, machine_text: str | None = None) -> list[dict]:
    """The stored rows that pass every filter given (machine_text: a substring of the machine label)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if (data is None or r["data"]["name"] == data)
            and (variants is None or r["variant"] in variants)
            and (commit is None or (r["commit"] or "").startswith(commit))
            and (machine_text is None or machine_text.lower() in machine_label(r).lower())]


def latest_runs(rows: list[dict]) -> dict[tuple, dict[tuple, dict[int, dict]]]:
    """(data, machine) -> (budget, variant) -> seed -> the latest row, in the order first seen."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        out[data_label(r), machine_label(r)][budget_label(r), r["variant"]][r["seed"]] = r
    return out


def best_facet(row: dict, split: str, label: str, metric: str = "accuracy") -> dict | None:
    """The score of the facet that captures ``label`` best on ``split`` (None where not scored)."""
    mine = [s for s in row["scores"] if s["split"] == split and s["label"] == label]
    return max(mine, key=lambda s: s[metric]) if mine else None


def split_labels(runs: Iterable[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((s["split"], s["label"]) for r in runs for s in r["scores"]))


def spread(values: list[float], digits: int = 3) -> str:
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def clusters(scores: Iterable[dict]) -> str:
    """The facet's number of clusters, or each seed's where they differ ("auto")."""
    ks = [s["n_clusters"] for s in scores]
    return str(ks[0]) if len(set(ks)) == 1 else "/".join(map(str, ks))


def commits(runs: Iterable[dict]) -> str:
    return ", ".join(sorted({(r["commit"] or "unknown")[:7] + ("*" if r["dirty"] else "") for r in runs}))


def table(rows: list[dict], heading: str = "###") -> str:
    """Per data set x machine: mean +- std over seeds of the best facet's scores, per budget x
    variant x split x label, with the commands that produced the rows."""
    parts = []
    for (data, where), groups in latest_runs(rows).items():
        runs = [r for seeds in groups.values() for r in seeds.values()]
        commands = "\n".join(dict.fromkeys(r["command"] for r in runs))
        lines = [f"{heading} {data} on {where}", "", f"```\n{commands}\n```", "",
                 "| budget | variant | split | label | seeds | accuracy | Hungarian | NMI | ARI | facet "
                 "| active | KL | epochs | train s | commit |", "|" + "---|" * 15]
        for (budget, variant), seeds in groups.items():
            for split, label in split_labels(seeds.values()):
                best = [(r, b) for r in seeds.values() if (b := best_facet(r, split, label)) is not None]
                facets = Counter(b["facet"] for _, b in best)
                kl = [r["kl"][b["facet"]] for r, b in best if r["kl"] is not None]
                epochs = sorted({r["resolved"]["epochs_trained"] for r, _ in best if r["resolved"]})
                lines.append(" | ".join([
                    f"| {budget}", variant, split, label, str(len(best)),
                    *(spread([b[m] for _, b in best]) for m in METRICS),
                    ", ".join(f"{f} ({c})" if len(facets) > 1 else str(f) for f, c in facets.most_common()),
                    f"{np.mean([b['active_clusters'] for _, b in best]):.1f} of {clusters(b for _, b in best)}",
                    f"{np.mean(kl):.2f}" if kl else "-",
                    "-".join(map(str, (epochs[0], epochs[-1]) if len(epochs) > 1 else epochs)) or "-",
                    f"{np.mean([r['train_seconds'] for r, _ in best]):.0f}", commits(r for r, _ in best) + " |"]))
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or "no rows"


def pair(rows: list[dict], a: str, b: str, metric: str = "accuracy") -> str:
    """Variant ``b`` against ``a`` seed by seed, on the same data, budget and machine: the best
    facet's ``metric`` per split x label, the differences' mean +- std, and on how many seeds b is ahead."""
    parts = []
    for (data, where), groups in latest_runs(rows).items():
        for budget in dict.fromkeys(budget for budget, _ in groups):
            runs_a, runs_b = groups.get((budget, a), {}), groups.get((budget, b), {})
            seeds = sorted(set(runs_a) & set(runs_b))
            for split, label in split_labels([*runs_a.values(), *runs_b.values()]):
                scored = [(s, x[metric], y[metric]) for s in seeds if (x := best_facet(runs_a[s], split, label, metric))
                          and (y := best_facet(runs_b[s], split, label, metric))]
                if not scored:
                    continue
                diff = [y - x for _, x, y in scored]
                lines = [f"{data}, {budget}, {split}, {label} ({metric}) on {where}: {b} (B) against {a} (A)",
                         "", "| seed | A | B | B - A |", "|---|---|---|---|"]
                lines += [f"| {s} | {x:.3f} | {y:.3f} | {y - x:+.3f} |" for s, x, y in scored]
                lines += ["", f"B - A = {np.mean(diff):+.3f} +- {np.std(diff):.3f}, B ahead on "
                          f"{sum(d > 0 for d in diff)} of {len(diff)}; A {spread([x for _, x, _ in scored])}, "
                          f"B {spread([y for _, _, y in scored])}"]
                parts.append("\n".join(lines))
    return "\n\n".join(parts) or f"no seed ran both {a!r} and {b!r} on the same data, budget and machine"


def counterpart(variant: str, a: str, b: str) -> str | None:
    """The variant that makes the change from ``a`` to ``b`` on top of ``variant``, or None where
    ``variant`` is not ``a``: ``a`` itself, ``a`` under a preset (``preset:a``) or ``a`` with
    ``--set`` changes (``a+key=value``). ``b`` = ``a+key=value`` adds its change after the others."""
    preset, colon, rest = variant.rpartition(":")
    if rest != a and not rest.startswith(a + "+"):
        return None
    sets = rest[len(a):]
    return preset + colon + (a + sets + b[len(a):] if b.startswith(a + "+") else b + sets)


def verdict(rows: list[dict], a: str, b: str, metric: str = "accuracy") -> str:
    """The protocol's rule for changing a default from ``a`` to ``b``: over every data set x label
    (its test split where it has one) measured with both on >= MIN_SEEDS common seeds, on the
    same budget and machine, ``b`` must gain on the mean and lose on none by more than that entry's
    seed spread (the std over seeds of ``a``'s scores). The change counts under a preset and
    beside ``--set`` changes too (``counterpart``)."""
    entries = []
    for (data, where), groups in latest_runs(rows).items():
        for budget, variant_a in dict.fromkeys(groups):
            variant_b = counterpart(variant_a, a, b)
            if variant_b is None:
                continue
            runs_a, runs_b = groups[budget, variant_a], groups.get((budget, variant_b), {})
            seeds = sorted(set(runs_a) & set(runs_b))
            labels = split_labels([*runs_a.values(), *runs_b.values()])
            held_out = [(split, label) for split, label in labels if split == "test"] or labels
            for split, label in held_out:
                x = [best_facet(runs_a[s], split, label, metric)[metric] for s in seeds]
                y = [best_facet(runs_b[s], split, label, metric)[metric] for s in seeds]
                if len(seeds) >= MIN_SEEDS:
                    within = "" if variant_a == a else f" ({variant_a})"
                    entries.append((f"{data}{within}, {budget}, {split} {label} on {where}", np.mean(x), np.mean(y),
                                    np.std(x)))
    if not entries:
        return f"no data set has {a!r} and {b!r} on {MIN_SEEDS} or more common seeds (same budget and machine)"
    lines = [f"{b} (B) against {a} (A), {metric}, mean over >= {MIN_SEEDS} seeds", "",
             "| data set | A | B | B - A | seed spread (std of A) | |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {x:.3f} | {y:.3f} | {y - x:+.3f} | {sd:.3f} | "
              f"{'loses by more than the spread' if y - x < -sd else ''} |" for name, x, y, sd in entries]
    gain = np.mean([y - x for _, x, y, _ in entries])
    losses = [name for name, x, y, sd in entries if y - x < -sd]
    passes = gain > 0 and not losses and len(entries) >= MIN_DATA_SETS
    lines += ["", f"mean gain {gain:+.3f} over {len(entries)} data set x label entries; "
              + ("B may replace A" if passes else "B does not replace A: " + "; ".join(
                  [*(["it does not gain on the mean"] if gain <= 0 else []),
                   *([f"it loses by more than the seed spread on {', '.join(losses)}"] if losses else []),
                   *([f"fewer than {MIN_DATA_SETS} entries"] if len(entries) < MIN_DATA_SETS else [])]))]
    return "\n".join(lines)


def page(rows: list[dict]) -> str:
    """The documentation page: what is measured, the variants, and every table with its commands."""
    variants = "\n".join(f"| `{name}` | {', '.join(f'{k}={v}' for k, v in delta.items()) or 'none'} |"
                         for name, delta in VARIANTS.items())
    data = "\n".join(f"- `{name}`: {text}." for name, text in DATASETS.items())
    return f"""# Benchmarks

Written by `python benchmarks/bench.py page docs/benchmarks.md` from `benchmarks/results/runs.jsonl`;
every number below comes from a row of that file, which also records the commit, the full resolved
parameters and the machine of its run.

## What is measured

Each run trains `MFCVAE` for a budget (epochs, or wall-clock seconds: the estimator's `max_seconds`,
the whole fit included) and scores every facet against every label. Each table row takes, per seed,
the facet that captures the label best (by many-to-one accuracy) and gives the mean +- std over seeds:

- **accuracy**: many-to-one, the paper's metric (each cluster takes its majority label);
- **Hungarian**: one-to-one matching of clusters to labels; **NMI**, **ARI**: scikit-learn's;
- **facet**: the facet chosen (with its count of seeds where they differ); **active**: clusters in use
  out of K; **KL**: the facet's KL term (nats per example) in the last epoch;
- **epochs**: epochs trained (under a time budget, what it bought); **train s**: wall time of `fit`;
- **commit**: the commits measured (`*`: the tree differed from the commit).

Timed rows compare only within one machine: a budget in seconds buys different epochs elsewhere.

## How a default changes

A change to the defaults is judged on several data sets, never on one, and on the held-out split
where a data set has one: `python benchmarks/bench.py verdict A B` lists, for every data set x label
measured with both variants on the same budget and machine over three or more seeds, the mean
scores and the seed spread (the std of A's), and says whether B may replace A. It may when it
gains on the mean over at least three such entries and loses on none by more than its seed spread.

## Data sets

{data}

## Variants

A variant changes the estimator's defaults (or a preset's parameters, named `preset:variant`);
`--set key=value` changes are appended to the name as `+key=value`. `kmeans` is the baseline:
scikit-learn's k-means on the raw inputs with each facet's K.

| variant | change |
|---|---|
{variants}

## Results

{table(rows) if rows else "No results yet: `python benchmarks/bench.py run ...` writes them."}
"""


# --- the command line --------------------------------------------------------------------
def parse_sets(texts: list[str], known: set[str]) -> dict:
    out = {}
    for text in texts:
        key, eq, value = text.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"--set expects key=value, got {text!r}")
        if key not in known:
            raise ValueError(f"--set {key}: MFCVAE has no parameter {key!r}; it takes {', '.join(sorted(known))}")
        if key in ("epochs", "max_seconds", "seed"):
            raise ValueError(f"--set {key}: give the budget with --epochs or --seconds and seeds with --seeds")
        out[key] = yaml_load(value)
    return out


def run(args: argparse.Namespace, command: str, fail: Callable[[str], NoReturn]) -> list[dict]:
    """Train and score every storage x variant x seed; append each row as it is done."""
    known = set(MFCVAE().get_params())
    try:
        sets = parse_sets(args.set, known)
        base = {**(load_preset(args.preset) if args.preset else {}), **sets}
    except ValueError as err:
        fail(str(err))
    unknown = [v for v in args.variants if v not in VARIANTS and v != BASELINE]
    if unknown:
        fail(f"unknown variant(s) {unknown}; known: {', '.join([*VARIANTS, BASELINE])}")
    if args.epochs is not None and args.epochs < 1:
        fail(f"--epochs must be positive, got {args.epochs}")
    if args.seconds is not None and not args.seconds > 0:
        fail(f"--seconds must be positive, got {args.seconds}")
    if args.n is not None and args.n < 2:
        fail(f"--n must be at least 2, got {args.n}")
    resolved = MFCVAE(**base).get_params()
    if BASELINE in args.variants and "auto" in str(resolved["n_clusters"]):
        fail(f"the {BASELINE} baseline needs fixed numbers of clusters, not n_clusters={resolved['n_clusters']!r}")
    budget = ({"epochs": None, "seconds": args.seconds} if args.seconds is not None
              else {"epochs": args.epochs or resolved["epochs"], "seconds": None})
    length = ({"epochs": EPOCHS_UNDER_A_DEADLINE, "max_seconds": args.seconds} if args.seconds is not None
              else {"epochs": budget["epochs"], "max_seconds": None})
    suffix = "".join(f"+{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, list) else v}"
                     for k, v in sets.items())
    described = {**source(), "command": command, "machine": machine()}
    splits = load_splits(args.data)
    rows = []
    for storage in args.storage or [None]:
        data = {split: prepared(d, args.n, storage) for split, d in splits.items()}
        record = {"name": args.data, "n": len(data["train"]), "storage": str(data["train"].x.raw.dtype),
                  "shape": list(data["train"].shape), "splits": {s: len(d) for s, d in data.items()}}
        for variant in args.variants:
            label = f"{args.preset + ':' if args.preset else ''}{variant}{suffix}"
            delta = {**VARIANTS.get(variant, {}), **sets}
            for seed in args.seeds:
                if variant == BASELINE:
                    measured = fit_kmeans(_as_list(resolved["n_clusters"]), seed, data)
                else:
                    params = {**base, **VARIANTS[variant], **length, "seed": seed, "verbose": False}
                    measured = fit_mfcvae(params, data)
                row = {"variant": label, "preset": args.preset, "delta": delta, "seed": seed, "data": record,
                       "budget": budget, **measured, **described}
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
                best = "; ".join(f"{split} {lab} {best_facet(row, split, lab)['accuracy']:.3f}"
                                 for split, lab in split_labels([row]))
                print(f"{data_label(row)} {label} seed {seed}: {row['train_seconds']:.0f} s, {best}", flush=True)
    return rows


def _as_list(value) -> list[int]:
    """n_clusters as a list (one entry per facet)."""
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="train, score and append one row per run")
    runner.add_argument("--data", required=True, choices=list(DATASETS))
    runner.add_argument("--n", type=int, help="at most this many examples per split (a seeded random subset)")
    length = runner.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="epochs per run (default: the estimator's or preset's)")
    length.add_argument("--seconds", type=float, help="wall-clock budget per fit (the estimator's max_seconds)")
    runner.add_argument("--variants", nargs="+", default=["default"], metavar="NAME",
                        help=f"of {', '.join([*VARIANTS, BASELINE])} (default: default)")
    runner.add_argument("--seeds", type=int, nargs="+", default=[0])
    runner.add_argument("--preset", help="start from this preset's parameters instead of the defaults")
    runner.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a parameter for every variant (value read as YAML); repeatable")
    runner.add_argument("--storage", nargs="+", choices=("float", "uint8"),
                        help="store the inputs as float32 or uint8, one run each (default: as loaded)")
    readers = []
    for name, text in (("table", "markdown summary of the stored rows"),
                       ("pair", "variant B against A, seed by seed"), ("page", "write the documentation page"),
                       ("verdict", "whether variant B may replace A: the protocol's rule over every data set")):
        reader = commands.add_parser(name, help=text)
        reader.add_argument("--data", choices=list(DATASETS))
        reader.add_argument("--commit", help="only rows measured at a commit starting with this")
        reader.add_argument("--machine", help="only rows whose machine (CPU model, ISA, threads, GPU) contains this")
        readers.append(reader)
    readers[0].add_argument("--variants", nargs="+", metavar="NAME", help="only these variants (as rows name them)")
    for reader in (readers[1], readers[3]):
        reader.add_argument("a", metavar="A")
        reader.add_argument("b", metavar="B")
        reader.add_argument("--metric", default="accuracy", choices=METRICS)
    readers[2].add_argument("out", type=Path, metavar="OUT.md")
    for sub in (runner, *readers):
        sub.add_argument(*(("--out", "--results") if sub is runner else ("--results",)), dest="results", type=Path,
                         default=RESULTS, help=f"the JSON-lines results file (default {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    subparser = {"run": runner, "table": readers[0], "pair": readers[1], "page": readers[2],
                 "verdict": readers[3]}[args.command]

    if args.command == "run":
        args.results.parent.mkdir(parents=True, exist_ok=True)
        rows = run(args, shlex.join(["python", "benchmarks/bench.py", *argv]), subparser.error)
        print(f"\n{table(rows)}\n\nappended to {args.results}")
        return
    if args.command != "page" and not args.results.is_file():
        subparser.error(f"no results file {args.results}: `bench.py run` writes it")
    two = args.command in ("pair", "verdict")
    # verdict reads every variant: the change also counts under presets and beside --set changes
    variants = getattr(args, "variants", None) or ([args.a, args.b] if args.command == "pair" else None)
    rows = read_rows(args.results, args.data, variants, args.commit, args.machine)
    if args.command == "table":
        print(table(rows))
    elif two:
        if args.a == args.b:
            subparser.error(f"{args.command} needs two different variants, got {args.a!r} twice")
        present = {r["variant"] for r in rows}
        partners = {counterpart(v, args.a, args.b) for v in present} - {None}
        missing = [v for v, found in ((args.a, partners), (args.b, partners & present)) if not found]
        if missing:
            names = sorted({r["variant"] for r in read_rows(args.results, args.data, None, args.commit, args.machine)})
            subparser.error(f"no rows of {' or '.join(map(repr, missing))}; variants in these rows: {names}")
        print((pair if args.command == "pair" else verdict)(rows, args.a, args.b, args.metric))
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page(rows))
        print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
