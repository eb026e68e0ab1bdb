"""Benchmark: clustering accuracy per unit of compute, and ablations of the training recipe.

For every data set x budget x variant x seed: train, then score every facet against every
label (many-to-one and Hungarian accuracy, NMI, ARI, active clusters) and record each facet's
KL at the end and the wall time; k-means on raw pixels with the same K runs on the same data
in the same process as the baseline. Rows are appended to benchmarks/results/budget.csv and
the runs of this call summarised as a markdown table (mean +- std over seeds).

Budgets are epochs (--epochs) or wall-clock seconds (--seconds: the estimator's
``max_seconds``, so the whole fit, warm-up and mixture initialisation included, ends at the
deadline, and the progressive schedule is laid over the time). Variants start from a recipe
(the paper's MNIST settings with K = 10 per facet) and change one thing each; see VARIANTS.

    python benchmarks/budget.py --data demo --epochs 2 --variants paper --seeds 0        # smoke run
    python benchmarks/budget.py --data fashion --seconds 600 --variants paper free_bits --seeds 0 1 2
    python benchmarks/budget.py --data tinted --n 20000 --epochs 10 --variants paper free_bits
    python benchmarks/budget.py --data fashion --seconds 60 --variants paper bf16 --seeds 0 1 2 \
        --machine-note "host of 2026-11-25"        # timed rows compare only with rows of the same host and day
    python benchmarks/budget.py --table            # summarise every stored row
    python benchmarks/budget.py --table --machine 2026-11-25 --plot docs/budget.png   # one host's rows, drawn
    python benchmarks/budget.py --pair paper free_bits --machine "8th session" "9th session"  # seed by seed
    python benchmarks/budget.py --pair A B --pair-machines "lobpcg" "18th session"   # A's rows of one note, B's of another
    python benchmarks/budget.py --data tinted --seconds 600 --variants merge_1_joint_2e-3_bf16 --seeds 3 \
        --save-models runs/budget --save-data runs/tinted70k.npz   # then: mfcvae report MODEL --data runs/tinted70k.npz
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from common import FASHION_DIR, kmeans_baseline, machine

from mfcvae import MFCVAE, load_preset
from mfcvae.cli import parse_assignment
from mfcvae.datasets import Dataset, load_mnist, make_shapes, make_tinted

RESULTS = Path(__file__).parent / "results" / "budget.csv"
FIELDS = ["dataset", "n", "variant", "seed", "epochs", "budget_seconds", "train_seconds", "facet", "label",
          "accuracy", "hungarian_accuracy", "nmi", "ari", "active_clusters", "n_clusters", "kl", "machine"]

# The paper's MNIST recipe with K = 10 per facet; the schedule (stages, fade) is stretched to the budget.
# Variants with refit_at_end keep the k-means start their rows were measured with (the default's
# spectral start since the 18th session: --set refit_start=spectral).
RECIPE = {**load_preset("mnist"), "n_clusters": [10, 10], "refit_start": "kmeans"}
VARIANTS = {
    "paper": {},
    "no_progressive": {"progressive": False},
    "mc_posterior": {"posterior": "mc"},
    "warmup": {"pretrain_epochs": 2},
    "refit": {"refit_on_stage": True},
    "free_bits": {"free_bits": 2.0},
    "free_bits_3": {"free_bits": 3.0},
    "warmup_fit": {"pretrain_epochs": 2, "init_variances": True},
    "cosine": {"lr_schedule": "cosine"},
    "lr_2e-3": {"lr": 2e-3},
    "batch_128": {"batch_size": 128},
    "merge_1": {"merge_scale": 1.0},
    "merge_1_joint": {"merge_scale": 1.0, "progressive": False},
    "merge_1_joint_2e-3": {"merge_scale": 1.0, "progressive": False, "lr": 2e-3},
    "bf16": {"precision": "bfloat16"},
    "bf16_batch_128": {"precision": "bfloat16", "batch_size": 128},
    "merge_1_joint_2e-3_bf16": {"merge_scale": 1.0, "progressive": False, "lr": 2e-3, "precision": "bfloat16"},
    # on top of bf16_batch_128: a wider item (top) latent; an AE warm-up with a fitted mixture;
    # the lower rung merged at full scale (keeps the lower facet alive on tinted)
    "bf16_batch_128_z10": {"precision": "bfloat16", "batch_size": 128, "latent_dims": [5, 10]},
    "bf16_batch_128_warmup_fit": {"precision": "bfloat16", "batch_size": 128, "pretrain_epochs": 2,
                                  "init_variances": True},
    "bf16_batch_128_merge_1": {"precision": "bfloat16", "batch_size": 128, "merge_scale": 1.0},
    # ... and mixture weights kept uniform (a cluster cannot die by its weight), with free bits or without
    "bf16_batch_128_uniform": {"precision": "bfloat16", "batch_size": 128, "learn_weights": False},
    "bf16_batch_128_uniform_free_bits": {"precision": "bfloat16", "batch_size": 128, "learn_weights": False,
                                         "free_bits": 2.0},
    # ... or learned weights with free bits, floored (pi_k >= 0.05) or not
    "bf16_batch_128_free_bits": {"precision": "bfloat16", "batch_size": 128, "free_bits": 2.0},
    "bf16_batch_128_floor_free_bits": {"precision": "bfloat16", "batch_size": 128, "weight_floor": 0.5,
                                       "free_bits": 2.0},
    "merge_1_joint_2e-3_bf16_floor_free_bits": {"merge_scale": 1.0, "progressive": False, "lr": 2e-3,
                                                "precision": "bfloat16", "weight_floor": 0.5, "free_bits": 2.0},
    # ... with dead clusters re-seeded between epochs
    "bf16_batch_128_reseed": {"precision": "bfloat16", "batch_size": 128, "reseed_dead": True},
    "bf16_batch_128_free_bits_reseed": {"precision": "bfloat16", "batch_size": 128, "free_bits": 2.0,
                                        "reseed_dead": True},
    # ... with every mixture fitted afresh to the trained encoder's output at the end
    "bf16_batch_128_free_bits_reseed_refit_end": {"precision": "bfloat16", "batch_size": 128, "free_bits": 2.0,
                                                  "reseed_dead": True, "refit_at_end": True},
    # the tinted recipe (lower rung at full scale, facets trained together) at batch 128
    "bf16_batch_128_merge_1_joint": {"precision": "bfloat16", "batch_size": 128, "merge_scale": 1.0,
                                     "progressive": False},
    "bf16_batch_128_merge_1_joint_floor_free_bits": {"precision": "bfloat16", "batch_size": 128, "merge_scale": 1.0,
                                                     "progressive": False, "weight_floor": 0.5, "free_bits": 2.0},
    "bf16_batch_128_merge_1_joint_floor_free_bits_refit_end": {
        "precision": "bfloat16", "batch_size": 128, "merge_scale": 1.0, "progressive": False, "weight_floor": 0.5,
        "free_bits": 2.0, "refit_at_end": True},
    # the candidates above, together: warm-up + fitted mixture, higher lr annealed, free bits
    "fast": {"pretrain_epochs": 3, "init_variances": True, "lr": 2e-3, "lr_schedule": "cosine", "free_bits": 2.0},
}


def load_data(name: str, n: int | None, seed: int = 0) -> Dataset:
    if name == "demo":
        data = make_shapes(seed=0)
    else:
        if not FASHION_DIR.is_dir():
            raise SystemExit(f"{FASHION_DIR} missing: apt-get install -y dataset-fashion-mnist")
        data = load_mnist(FASHION_DIR)
        if name == "tinted":
            data = make_tinted(data, seed=0)
    if n is not None and n < len(data):
        data = data.subset(np.sort(np.random.default_rng(seed).choice(len(data), n, replace=False)))
    return data


def params_for(variant: str, extra: dict) -> dict:
    return {**RECIPE, **VARIANTS[variant], **extra, "verbose": False}


# A timed run's epochs: more than any budget here buys, so that the deadline ends it.
EPOCHS_UNDER_A_DEADLINE = 10_000


def run(dataset: str, data: Dataset, variant: str, seed: int, epochs: int | None, budget: float | None,
        extra: dict, save_dir: Path | None = None) -> list[dict]:
    """Train one model for ``epochs`` or, with ``budget``, for that many seconds; score it, and save
    it under ``save_dir`` (for `mfcvae report` and the figures) if given."""
    params = {**params_for(variant, extra), "seed": seed,
              **({"epochs": epochs} if budget is None else {"epochs": EPOCHS_UNDER_A_DEADLINE, "max_seconds": budget})}
    start = time.perf_counter()
    model = MFCVAE(**params).fit(data)
    seconds = time.perf_counter() - start
    epochs_run = model.history_[-1]["epoch"]  # under a deadline the last one may be partial
    if save_dir is not None:
        model.save(save_dir / f"{dataset}-{len(data)}-{variant}-{budget or epochs_run}-seed{seed}")
    label = " ".join([variant, *(f"({k}={v})" for k, v in extra.items())])  # --set changes are named
    base = {"dataset": dataset, "n": len(data), "variant": label, "seed": seed, "epochs": epochs_run,
            "budget_seconds": budget or "", "train_seconds": round(seconds, 1), "machine": machine()}
    kl = [model.history_[-1][f"kl_{j}"] for j in range(len(model.n_clusters))]
    return [{**base, **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
             "n_clusters": model.n_clusters[row["facet"]], "kl": round(kl[row["facet"]], 3)}
            for row in model.evaluate(data)]


def kmeans_rows(dataset: str, data: Dataset, k: int, seed: int) -> list[dict]:
    result = kmeans_baseline(data.x[:], data.labels, k, seed)
    return [{"dataset": dataset, "n": len(data), "variant": f"kmeans_K{k}", "seed": seed, "epochs": "",
             "budget_seconds": "", "train_seconds": result["seconds"], "facet": "", "label": name,
             "accuracy": scores["accuracy"], "nmi": scores["nmi"], "n_clusters": k, "machine": machine()}
            for name, scores in result.items() if isinstance(scores, dict)]


def short_machine(machine: str) -> str:
    """'x86_64, AMD EPYC, 2 threads, torch 2.13.0+cpu' -> 'AMD EPYC, 2 threads'."""
    parts = [p for p in machine.split(", ") if not p.startswith("torch ")]
    return ", ".join(parts[1:] if len(parts) > 1 else parts)


def best_facets(rows: list[dict]) -> list[dict]:
    """One record per run and label: the facet that clusters the label best (its accuracy, NMI and
    facet), the smallest facet KL and active-cluster share over the run's facets, epochs and wall time."""
    by_run: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_run[(r["dataset"], r["n"], r["variant"], r["seed"], r["epochs"], r["budget_seconds"],
                r["machine"])].append(r)
    runs = []
    for (dataset, n, variant, seed, epochs, budget, where), run_rows in by_run.items():
        for label in sorted({r["label"] for r in run_rows}):
            mine = [r for r in run_rows if r["label"] == label]
            best = max(mine, key=lambda r: float(r["accuracy"]))
            has_kl = best.get("kl") not in ("", None)
            runs.append({
                "dataset": dataset, "n": n, "variant": variant, "seed": seed, "label": label, "machine": where,
                "budget": f"{budget} s" if budget else (f"{epochs} epochs" if epochs else "-"),
                "epochs": int(epochs) if epochs else None, "seconds": float(best["train_seconds"]),
                "accuracy": float(best["accuracy"]), "nmi": float(best["nmi"]), "facet": best["facet"],
                "min_kl": min(float(r["kl"]) for r in mine) if has_kl else None,
                "active": min(int(r["active_clusters"]) / int(r["n_clusters"]) for r in mine) if has_kl else None})
    return runs


def aggregate(rows: list[dict]) -> dict[tuple, dict[str, list]]:
    """(dataset, n, budget, variant, label, machine) -> per-seed lists of what best_facets records."""
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in best_facets(rows):
        g = groups[(run["dataset"], run["n"], run["budget"], run["variant"], run["label"], run["machine"])]
        for key in ("accuracy", "nmi", "facet", "seconds", "epochs", "min_kl", "active"):
            if run[key] is not None:
                g[key].append(run[key])
    return groups


def first_named(runs: list[dict], prefer: Sequence[str]) -> list[dict]:
    """The runs on the machine named first in ``prefer`` (all of them where it names none)."""
    for text in prefer:
        if hits := [r for r in runs if text in r["machine"]]:
            return hits
    return runs


def paired(rows: list[dict], a: str, b: str, prefer: Sequence[str] = ()) -> str:
    """Variant ``a`` against ``b`` seed by seed: per data set, budget and label, the best-facet
    accuracy of each seed both ran, their difference, and its mean over the pairs. A pair is one
    seed's run of each on one machine (a wall-clock budget buys other epochs on another; a seed run
    on two machines by both makes two pairs). Where the two variants ran a seed on no machine in
    common they pair across machines, marked so, if each ran it once; or, where one ran it on
    several, with its run on the machine named first in ``prefer`` (texts, as --machine gives
    them). Any other seed is left out, and named."""
    all_runs = best_facets(rows)
    missing = [v for v in (a, b) if not any(run["variant"] == v for run in all_runs)]
    if missing:
        return f"no rows of {' or '.join(map(repr, missing))} (name variants as the --table column does)"
    runs: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: {a: [], b: []})
    for run in all_runs:
        if run["variant"] in (a, b):
            runs[(run["dataset"], run["n"], run["budget"], run["label"])][run["variant"]].append(run)
    lines = []
    for (dataset, n, budget, label), by_variant in runs.items():
        seeds = sorted({r["seed"] for r in by_variant[a]} & {r["seed"] for r in by_variant[b]}, key=int)
        pairs, skipped = [], []
        for seed in seeds:
            runs_a = [r for r in by_variant[a] if r["seed"] == seed]
            runs_b = [r for r in by_variant[b] if r["seed"] == seed]
            shared = sorted({r["machine"] for r in runs_a} & {r["machine"] for r in runs_b})
            candidates = [([r for r in runs_a if r["machine"] == m], [r for r in runs_b if r["machine"] == m],
                           f" on {short_machine(m)}") for m in shared] or [
                (first_named(runs_a, prefer), first_named(runs_b, prefer), ", on different machines")]
            for on_a, on_b, where in candidates:
                if len(on_a) == len(on_b) == 1:
                    pairs.append((seed, on_a[0], on_b[0]))
                else:
                    skipped.append(f"{seed} ({len(on_a)} and {len(on_b)} runs{where})")
        if not (pairs or skipped):
            continue
        lines.append(f"\n{dataset} {n}, {budget}, {label}: {a} (A) against {b} (B)")
        if pairs:
            lines += ["| seed | A | B | A - B | epochs A / B | machine |", "|" + "---|" * 6]
            for seed, ra, rb in pairs:
                where = short_machine(ra["machine"]) + ("" if ra["machine"] == rb["machine"]
                                                        else f" / {short_machine(rb['machine'])} (across machines)")
                epochs = f"{ra['epochs'] or ''} / {rb['epochs'] or ''}"
                lines.append(f"| {seed} | {ra['accuracy']:.3f} | {rb['accuracy']:.3f} | "
                             f"{ra['accuracy'] - rb['accuracy']:+.3f} | {epochs} | {where} |")
            acc_a, acc_b = (np.array([p[i]["accuracy"] for p in pairs]) for i in (1, 2))
            diff, n_seeds = acc_a - acc_b, len({p[0] for p in pairs})
            lines.append(f"{len(pairs)} pairs over {n_seeds} seed{'s' * (n_seeds != 1)}: A - B = {diff.mean():+.3f} "
                         f"+- {diff.std():.3f}, A ahead on {int((diff > 0).sum())} of {len(pairs)}; "
                         f"A {acc_a.mean():.3f} +- {acc_a.std():.3f}, B {acc_b.mean():.3f} +- {acc_b.std():.3f}")
        if skipped:
            lines.append(f"left out, ambiguous: seed {', '.join(skipped)}")
    return "\n".join(lines).lstrip("\n") or f"no seed ran both {a!r} and {b!r} in these rows"


def summarise(rows: list[dict]) -> str:
    """Per dataset x budget x variant x label x machine: the best facet's accuracy (mean +- std over
    seeds), its NMI, the smallest facet KL and active-cluster share, the epochs run and the wall
    time. Machines are kept apart: a wall-clock budget buys a different number of epochs on each."""
    groups = aggregate(rows)
    lines = ["| data | budget | variant | label | best-facet accuracy | NMI | facet | min KL (nats) | "
             "min active share | seeds | epochs | train s | machine |", "|" + "---|" * 13]
    for (dataset, n, budget, variant, label, where), g in groups.items():
        acc = np.array(g["accuracy"])
        kl = f"{np.mean(g['min_kl']):.2f}" if g["min_kl"] else ""
        active = f"{np.mean(g['active']):.2f}" if g["active"] else ""
        lo, hi = (min(g["epochs"]), max(g["epochs"])) if g["epochs"] else ("", "")
        epochs = f"{lo}-{hi}" if lo != hi else str(lo)
        lines.append(f"| {dataset} {n} | {budget} | {variant} | {label} | {acc.mean():.3f} +- {acc.std():.3f} | "
                     f"{np.mean(g['nmi']):.3f} | {'/'.join(str(f) for f in g['facet'])} | {kl} | {active} | "
                     f"{len(acc)} | {epochs} | {np.mean(g['seconds']):.0f} | {short_machine(where)} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """One panel per data set x label: the best facet's accuracy per budget and variant (mean and
    std over seeds as bar and whisker), k-means on pixels as a dashed line."""
    from matplotlib.figure import Figure

    groups = aggregate(rows)
    several_machines = len({k[5] for k in groups}) > 1
    panels = sorted({(k[0], k[1], k[4]) for k in groups})
    tallest = max(sum(1 for k in groups if (k[0], k[1], k[4]) == p) for p in panels)
    fig = Figure(figsize=(4 * len(panels), 1.2 + 0.3 * tallest), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (dataset, n, label) in zip(axes, panels):
        mine = {k: g for k, g in groups.items() if (k[0], k[1], k[4]) == (dataset, n, label)}
        bars = [(f"{k[3]}, {k[2]}" + (f", {short_machine(k[5])}" if several_machines else ""), g)
                for k, g in mine.items() if not k[3].startswith("kmeans")]
        for k, g in mine.items():
            if k[3].startswith("kmeans"):
                ax.axvline(np.mean(g["accuracy"]), color="grey", linestyle="--",
                           label=f"k-means, K={k[3].removeprefix('kmeans_K')}")
        means, stds = [np.mean(g["accuracy"]) for _, g in bars], [np.std(g["accuracy"]) for _, g in bars]
        ax.barh(range(len(bars)), means, xerr=stds, color="tab:blue")
        ax.set_yticks(range(len(bars)), [f"{name} ({len(g['accuracy'])} seeds)" for name, g in bars], fontsize=7)
        for i, (m, sd) in enumerate(zip(means, stds)):
            ax.text(m + sd + 0.01, i, f"{m:.3f}", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("best-facet many-to-one accuracy")
        ax.set_title(f"{dataset} {n}: {label}", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("fashion", "tinted", "demo"), default="fashion")
    parser.add_argument("--n", type=int, help="use a random subset of this many examples")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--epochs", type=int, nargs="+", default=[10])
    limit.add_argument("--seconds", type=float, nargs="+", help="wall-clock budgets instead of epochs")
    parser.add_argument("--variants", nargs="+", default=["paper"], choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change the recipe for every variant (value read as YAML)")
    parser.add_argument("--no-kmeans", action="store_true", help="skip the k-means baseline")
    parser.add_argument("--table", action="store_true", help="summarise every stored row; train nothing")
    parser.add_argument("--pair", nargs=2, metavar=("A", "B"),
                        help="compare two stored variants (as the table names them) seed by seed; train nothing")
    parser.add_argument("--machine", nargs="+", metavar="TEXT",
                        help="with --table or --pair: only the rows whose machine contains one of these texts; "
                             "with --pair, where the two ran a seed on no machine in common, a variant's run "
                             "of it on the machine named first")
    parser.add_argument("--pair-machines", nargs=2, metavar=("TEXT_A", "TEXT_B"),
                        help="with --pair: only A's rows whose machine contains TEXT_A and B's containing TEXT_B "
                             "(runs of one variant that the code changed under are told apart by --machine-note)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw the summarised rows as a bar chart")
    parser.add_argument("--save-models", type=Path, metavar="DIR", help="save every trained model in DIR")
    parser.add_argument("--save-data", type=Path, metavar="NPZ",
                        help="write the data set trained on (x and labels) as .npz, for `mfcvae report --data`")
    parser.add_argument("--machine-note", metavar="TEXT",
                        help="appended to the machine column (rows are grouped by machine), e.g. the day: "
                             "virtual hosts report the same CPU model at different speeds")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"CSV to append to (default {RESULTS})")
    args = parser.parse_args()
    results = args.results
    if args.pair and args.pair[0] == args.pair[1]:
        parser.error(f"--pair needs two different variants, got {args.pair[0]!r} twice")
    if args.pair and args.plot:
        parser.error("--plot draws the --table summary; leave it out with --pair")
    if args.pair_machines and not args.pair:
        parser.error("--pair-machines goes with --pair")
    if args.table or args.pair:
        with results.open() as f:
            stored = [r for r in csv.DictReader(f)
                      if args.machine is None or any(text in r["machine"] for text in args.machine)]
        if args.pair_machines:
            side = dict(zip(args.pair, args.pair_machines))
            stored = [r for r in stored if r["variant"] not in side or side[r["variant"]] in r["machine"]]
        print(paired(stored, *args.pair, prefer=args.machine or ()) if args.pair else summarise(stored))
        if args.plot:
            plot(stored, args.plot)
        return

    try:  # values read as the CLI's --set reads them (1e-3 is a number)
        extra = dict(parse_assignment(text) for text in args.set)
    except ValueError as err:
        parser.error(str(err))
    data = load_data(args.data, args.n)
    if args.save_data:
        np.savez(args.save_data, x=data.x.raw, **data.labels)
    rows = []
    if not args.no_kmeans:
        rows += kmeans_rows(args.data, data, max(params_for("paper", extra)["n_clusters"]), seed=0)
    for variant in args.variants:
        budgets = [(e, None) for e in args.epochs] if not args.seconds else [(None, s) for s in args.seconds]
        for epochs, seconds in budgets:
            for seed in args.seeds:
                new = run(args.data, data, variant, seed, epochs, seconds, extra, args.save_models)
                rows += new
                best = max(new, key=lambda r: r["accuracy"])
                print(f"{args.data} {variant} seed {seed} {new[0]['epochs']} epochs: {new[0]['train_seconds']} s, "
                      f"best {best['label']} accuracy {best['accuracy']:.3f} (facet {best['facet']})", flush=True)
    if args.machine_note:
        for r in rows:
            r["machine"] += f", {args.machine_note}"
    results.parent.mkdir(parents=True, exist_ok=True)
    new_file = not results.exists()
    with results.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
    rows = [{k: str(v) for k, v in r.items()} for r in rows]
    print(summarise(rows))
    if args.plot:
        plot(rows, args.plot)
    print(f"\nappended to {results}")


if __name__ == "__main__":
    main()
