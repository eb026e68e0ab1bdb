"""The ``mfcvae`` command line: a thin shell over the MFCVAE estimator.

    mfcvae fit --preset demo --out runs/demo                 # built-in data
    mfcvae fit --preset mnist --data mnist.npz --out runs/m --set epochs=50
    mfcvae fit --out runs/m --resume                          # continue a run
    mfcvae evaluate runs/m --data test.npz
    mfcvae predict runs/m --data test.npz --out clusters.csv
    mfcvae sample runs/m --facet 1 --cluster 3 --out grid.png
    mfcvae presets
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from .config import list_presets, load_config, load_preset
from .datasets import load_arrays, make_shapes
from .estimator import MFCVAE
from .metrics import format_table
from .train import CHECKPOINT_FILE, read_checkpoint_metadata

DEMO_DATA = "demo"


def load_data(spec: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``demo`` (the built-in shapes set) or a .npz / .npy file."""
    if spec == DEMO_DATA:
        return make_shapes(seed=0)
    return load_arrays(spec)


def parse_assignment(text: str) -> tuple[str, object]:
    """``field=value`` with value read as YAML (so 5, 0.1, true, [4, 4] mean what they say)."""
    if "=" not in text:
        raise ValueError(f"--set expects field=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def build_params(args: argparse.Namespace) -> dict:
    """Estimator parameters from --preset/--config, then --epochs/--seed/--device/--set."""
    if args.resume:
        checkpoint = Path(args.out) / CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint} does not exist")
        params = read_checkpoint_metadata(checkpoint)
    elif args.config:
        params = load_config(args.config)
    else:
        params = load_preset(args.preset)
    overrides = dict(parse_assignment(s) for s in args.set)
    for name in ("epochs", "seed", "device"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    params.update(overrides)
    known = MFCVAE().get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known: {', '.join(sorted(known))}")
    if args.quiet:
        params["verbose"] = False
    return params


def cmd_fit(args: argparse.Namespace) -> int:
    params = build_params(args)
    if not args.resume and not args.overwrite and (Path(args.out) / CHECKPOINT_FILE).exists():
        raise ValueError(f"{args.out} already holds a run: pass --resume to continue it or --overwrite to start over")
    x, labels = load_data(args.data)
    model = MFCVAE(**params)
    try:
        model.fit(x, run_dir=args.out, resume=args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: mfcvae fit --out {args.out} --data {args.data} --resume", file=sys.stderr)
        return 130
    print(f"model written to {args.out}")
    if labels:
        rows = model.evaluate(x, labels)
        print(format_table(rows))
        (Path(args.out) / "evaluation.json").write_text(json.dumps(rows, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = MFCVAE.load(args.model, device=args.device)
    x, labels = load_data(args.data)
    if not labels:
        raise ValueError(f"{args.data} holds no labels to evaluate against (integer arrays of length N beside 'x')")
    rows = model.evaluate(x, labels)
    print(format_table(rows))
    print(f"ELBO per example: {model.score(x):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = MFCVAE.load(args.model, device=args.device)
    x, _ = load_data(args.data)
    clusters = model.predict(x)
    header = ",".join(f"facet_{j}" for j in range(clusters.shape[1]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(args.out, clusters, fmt="%d", delimiter=",", header=header, comments="")
    print(f"{len(clusters)} rows written to {args.out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .images import save_grid

    model = MFCVAE.load(args.model, device=args.device)
    samples = model.sample(args.n, facet=args.facet, cluster=args.cluster, temperature=args.temperature, seed=args.seed)
    path = save_grid(samples, args.out, ncol=min(args.n, 8))
    print(f"{args.n} samples written to {path}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, description in list_presets().items():
        print(f"{name:<16}{description}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfcvae", description="Multi-Facet Clustering VAE: several clusterings at once.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model", description="Train a model and write it to --out.")
    source = fit.add_mutually_exclusive_group()
    source.add_argument("--preset", default="demo", help="named configuration (see `mfcvae presets`; default demo)")
    source.add_argument("--config", help="YAML file of estimator parameters")
    fit.add_argument("--data", default=DEMO_DATA, help="'demo' (built-in) or a .npz (x + labels) / .npy file")
    fit.add_argument("--out", required=True, help="run folder: model, metrics.csv, checkpoint")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    fit.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run")
    fit.add_argument("--epochs", type=int, help="override the number of epochs")
    fit.add_argument("--seed", type=int, help="override the seed")
    fit.add_argument("--device", help="auto, cpu or cuda[:i]")
    fit.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override any parameter")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(func=cmd_fit)

    def model_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("model", help="a `mfcvae fit --out` folder or a folder written by save()")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
        return p

    evaluate = model_command("evaluate", "accuracy / NMI / ARI of every facet against every label")
    evaluate.add_argument("--data", required=True, help="'demo' or a .npz with x and integer labels")
    evaluate.add_argument("--json", help="also write the table as JSON here")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = model_command("predict", "cluster ids per facet as CSV")
    predict.add_argument("--data", required=True, help="'demo' or a .npz / .npy file")
    predict.add_argument("--out", required=True, help="CSV file to write")
    predict.set_defaults(func=cmd_predict)

    sample = model_command("sample", "a PNG grid of generated inputs (controlled generation)")
    sample.add_argument("--facet", type=int, help="facet whose cluster is fixed")
    sample.add_argument("--cluster", type=int, help="cluster of --facet to draw from")
    sample.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    sample.add_argument("--temperature", type=float, default=1.0, help="prior temperature (default 1)")
    sample.add_argument("--seed", type=int, help="random seed")
    sample.add_argument("--out", required=True, help="PNG file to write")
    sample.set_defaults(func=cmd_sample)

    presets = sub.add_parser("presets", help="list the named configurations")
    presets.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"mfcvae {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
