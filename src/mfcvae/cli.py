"""The ``mfcvae`` command line: a thin shell over the MFCVAE estimator.

    mfcvae fit --preset demo --out runs/demo                 # built-in data
    mfcvae fit --preset mnist --data ~/mnist --out runs/m --set epochs=50
    mfcvae fit --preset 3dshapes_1 --data 3dshapes.h5 --out runs/s1
    mfcvae fit --out runs/m --resume                          # continue a run
    mfcvae evaluate runs/s1 --part test                       # the data the run was fitted on
    mfcvae evaluate runs/m --data test.npz
    mfcvae predict runs/m --data test.npz --out clusters.csv
    mfcvae sample runs/m --facet 1 --cluster 3 --out grid.png
    mfcvae compose runs/m --facet 0 --out swaps.png
    mfcvae report runs/m                                      # runs/m/report.html
    mfcvae presets
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import yaml

from . import distributed
from .config import list_presets, preset_path, read_config, yaml_load
from .datasets import (Dataset, load, load_3dshapes, load_arrays, load_csv, load_h5ad, load_idx, load_image_folder,
                       load_mnist, load_npy, load_parquet, load_svhn, make_shapes, reader_for, reader_options)
from .estimator import MFCVAE
from .metrics import format_table
from .runs import RunFolder

DEMO_DATA = "demo"
DATA_KINDS = ("an MNIST-format folder or IDX file, SVHN .mat, 3DShapes .h5, .npz (x + integer labels), "
              ".npy, a .csv/.parquet table, an AnnData .h5ad or a folder of images (one sub-folder per class, "
              "optionally)")
ALL_READER_OPTIONS = {o for r in (load_mnist, load_idx, load_svhn, load_3dshapes, load_arrays, load_npy, load_csv,
                                  load_parquet, load_h5ad, load_image_folder)
                      for o in reader_options(r)}


def parse_assignment(text: str, flag: str = "--set") -> tuple[str, object]:
    """``field=value`` with value read as YAML (so 5, 0.1, true, [4, 4] mean what they say)."""
    if "=" not in text:
        raise ValueError(f"{flag} expects field=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml_load(value)
    except yaml.YAMLError as err:
        raise ValueError(f"{flag} {text!r}: cannot read the value: {err}") from err


def load_data(spec: str, options: dict) -> Dataset:
    """``demo`` (the built-in shapes set) or anything ``mfcvae.datasets.load`` reads."""
    if spec == DEMO_DATA:
        if options:
            raise ValueError(f"the built-in demo data takes no options, got {sorted(options)}")
        return make_shapes(seed=0)
    return load(spec, **options)


def data_options(args: argparse.Namespace) -> dict:
    return dict(parse_assignment(s, "--data-option") for s in args.data_option)


def merge_data_options(spec: str, options: dict, preset_options: dict) -> dict:
    """--data-option values, completed by the preset's where the reader takes them (a preset's
    option that does not fit this kind of data, e.g. 3DShapes' config for a .npz, is skipped
    with a note). ``test_fraction`` applies to every kind of data."""
    accepted = {"test_fraction", *([] if spec == DEMO_DATA else reader_options(reader_for(spec)))}
    unknown = sorted(set(preset_options) - {"test_fraction", *ALL_READER_OPTIONS})
    if unknown:
        raise ValueError(f"unknown data option(s) {unknown} in the configuration; options: "
                         f"{', '.join(sorted({'test_fraction', *ALL_READER_OPTIONS}))}")
    merged = dict(options)
    for key, value in preset_options.items():
        if key in accepted:
            merged.setdefault(key, value)
        else:
            print(f"note: the preset's data option {key}={value!r} does not apply to {spec}; ignored", file=sys.stderr)
    return merged


def data_record(spec: str, options: dict) -> dict:
    """What a run folder's data.json says of the data a run is fitted on (path or ``demo``, reader
    options), for --resume and for the model commands run without --data."""
    return {"path": spec if spec == DEMO_DATA else str(Path(spec).resolve()), "options": dict(options)}


def data_source(args: argparse.Namespace, model_dir: str | Path) -> tuple[str, dict]:
    """(data path, options) for a command: --data and --data-option if given, else what the
    run in ``model_dir`` was fitted on (its data.json); the same path keeps its recorded options."""
    options = data_options(args)
    if "test_fraction" in options:
        raise ValueError("test_fraction is chosen when a run is fitted; afterwards the run keeps its own split "
                         "(see --part)")
    stored = RunFolder(model_dir).read_data_record()
    if args.data is None:
        if stored is None:
            raise ValueError(f"--data is needed: {model_dir} does not record the data it was fitted on")
        return stored["path"], {**stored["options"], **options}
    if stored is not None and _same_path(args.data, stored["path"]):
        return args.data, {**stored["options"], **options}
    return args.data, options


def _same_path(a: str, b: str) -> bool:
    return a == b or (a != DEMO_DATA and b != DEMO_DATA and Path(a).resolve() == Path(b).resolve())


def build_params(args: argparse.Namespace) -> tuple[dict, dict]:
    """(estimator parameters, preset data options) from --preset/--config, then --epochs/--max-seconds/
    --seed/--device/--set."""
    if args.resume:
        if args.preset or args.config:
            raise ValueError("--resume continues a run with its own configuration: drop --preset/--config "
                             "(change epochs with --epochs)")
        params, data_options = RunFolder(args.out).checkpoint_params(), {}
    else:
        params, data_options = read_config(args.config if args.config else preset_path(args.preset or "demo"))
    overrides = dict(parse_assignment(s) for s in args.set)
    for name in ("epochs", "max_seconds", "seed", "device"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    params.update(overrides)
    known = MFCVAE().get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known: {', '.join(sorted(known))}")
    if args.quiet:
        params["verbose"] = False
    return params, data_options


def cmd_fit(args: argparse.Namespace) -> int:
    params, preset_options = build_params(args)
    out = Path(args.out)
    restarted = RunFolder(out).written_by_this_launch()  # torchrun restarted the workers: the run resumes
    if not (args.resume or args.overwrite or restarted) and RunFolder(out).holds_run():
        raise ValueError(f"{out} already holds a run or model: pass --resume to continue it or --overwrite to "
                         "start over")
    if args.resume:
        spec, options = data_source(args, out)
    else:
        if args.data is None and (args.config or (args.preset or "demo") != "demo"):
            raise ValueError("--data is needed: only the demo preset trains on the built-in data by default "
                             "(pass --data demo to use it anyway)")
        spec = args.data or DEMO_DATA
        options = merge_data_options(spec, data_options(args), preset_options)
    if args.nproc is None and (args.nnodes != 1 or args.rdzv_endpoint or args.max_restarts):
        raise ValueError("--nnodes, --rdzv-endpoint and --max-restarts go with --nproc")
    if args.nproc is not None:
        return launch_workers(args)
    say = print if distributed.is_main() else (lambda *a, **k: None)  # one process speaks for a group
    record = data_record(spec, options)
    parts = data_parts(spec, options, seed=params.get("seed", 0))
    say(f"data: {parts['train']!r}" + (f"; {len(parts['test'])} more held out for testing" if "test" in parts else ""))

    model = MFCVAE(**params)
    # the run folder takes data.json when the run first writes: a fit that fails before that
    # leaves an older run in the folder whole
    run = RunFolder(out, data_record=None if args.resume else record)
    try:
        model.fit(parts["train"], run_dir=run, resume=args.resume)
    except KeyboardInterrupt:
        hint = f"continue with: mfcvae fit --out {out} --resume" if run.claimed and run.checkpoint.exists() else \
            "stopped before the first checkpoint: nothing to resume"
        say(f"\ninterrupted; {hint}", file=sys.stderr)
        return 130
    if not distributed.is_main():
        return 0
    from .report import clusters_text  # matplotlib's import waits until a command draws or reports

    print(f"model written to {out} (networks in {model.precision_}); clusters per facet: {clusters_text(model)}")
    if parts["train"].labels:
        results = {part: model.evaluate(ds) for part, ds in parts.items()}
        for part, rows in results.items():
            print(f"\n{part} ({len(parts[part])} examples):\n{format_table(rows)}")
        (out / "evaluation.json").write_text(json.dumps(results, indent=2))
    return 0


LAUNCH_FLAGS = ("--nproc", "--nnodes", "--rdzv-endpoint", "--max-restarts")  # the launcher's, not the workers'


def launch_workers(args: argparse.Namespace) -> int:
    """``mfcvae fit --nproc N ...``: run the same command in N processes per node through torchrun's
    launcher (torch.distributed.run), which also restarts them after a failure (--max-restarts)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    if distributed.launched():
        raise ValueError("--nproc starts torchrun, but this process was already started by it: drop --nproc")
    if args.nproc < 1 or args.nnodes < 1 or args.max_restarts < 0:
        raise ValueError(f"--nproc and --nnodes must be at least 1 and --max-restarts at least 0, got "
                         f"{args.nproc}, {args.nnodes}, {args.max_restarts}")
    if args.nnodes > 1 and args.rdzv_endpoint is None:
        raise ValueError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT, a node every node can reach")
    launcher = [f"--nproc-per-node={args.nproc}", f"--max-restarts={args.max_restarts}"]
    if args.rdzv_endpoint is None:
        launcher.append("--standalone")
    else:  # every node runs the same command, so a run id derived from it is the same on every node
        run_id = os.environ.get("SLURM_JOB_ID") or hashlib.sha1(" ".join(args.argv).encode()).hexdigest()[:16]
        launcher += [f"--nnodes={args.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}",
                     f"--rdzv-id={run_id}"]
    try:
        torchrun([*launcher, "-m", "mfcvae", *worker_argv(args.argv)])
    except ChildFailedError:
        print("mfcvae fit: error: a worker process failed; its error is printed above", file=sys.stderr)
        return 1
    return 0


def worker_argv(argv: list[str]) -> list[str]:
    """The command line without the launcher's flags (LAUNCH_FLAGS), for the workers to run."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in LAUNCH_FLAGS:
            skip = True
        elif not token.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            out.append(token)
    return out


def data_parts(spec: str, options: dict, seed: int) -> dict[str, Dataset]:
    """A run's data: {"train": ...} and, where the options hold a part out, "test": with
    ``test_fraction`` a random part of the data read (drawn with ``seed``), else with ``split=train``
    (an MNIST folder's own split) the reader's test split."""
    options = dict(options)
    test_fraction = options.pop("test_fraction", None)
    data = load_data(spec, options)
    if test_fraction:
        return dict(zip(("train", "test"), data.split(float(test_fraction), seed=seed)))
    if options.get("split") == "train":
        return {"train": data, "test": load_data(spec, {**options, "split": "test"})}
    return {"train": data}


def _model_data(args: argparse.Namespace) -> Dataset:
    """The data a model command works on: --part of the data given or recorded; "all" is the
    training and test parts together."""
    spec, options = data_source(args, args.model)
    test_fraction = options.get("test_fraction")
    if args.part == "all":
        options.pop("test_fraction", None)
        if not test_fraction and options.get("split") == "train":
            options["split"] = "all"  # the reader's test split is the run's test part
        return load_data(spec, options)
    if not (test_fraction or options.get("split") == "train"):
        raise ValueError(f"--part {args.part} needs a run fitted with test_fraction or split=train, on its own data: "
                         f"{args.model} was fitted without either, or --data names other data")
    seed = MFCVAE.load(args.model, device="cpu").seed if test_fraction else 0
    return data_parts(spec, options, seed)[args.part]


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = MFCVAE.load(args.model, device=args.device)
    data = _model_data(args)
    if not data.labels:
        raise ValueError(f"{args.data or 'the data'} holds no labels to evaluate against")
    rows = model.evaluate(data)
    print(format_table(rows))
    print(f"ELBO per example: {model.score(data):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = MFCVAE.load(args.model, device=args.device)
    clusters = model.predict(_model_data(args))
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


def cmd_compose(args: argparse.Namespace) -> int:
    from .images import save_grid
    from .plots import composition_tiles
    from .report import ReportOptions, confident_members, example_subset, swap_grid

    ReportOptions(n_compose=args.n)  # checks --n
    model = MFCVAE.load(args.model, device=args.device)
    data = example_subset(_model_data(args))
    n_facets = len(model.cluster_weights_)
    if not 0 <= args.facet < n_facets:
        raise ValueError(f"--facet must be in [0, {n_facets}), got {args.facet}")
    inputs = data.x[confident_members(model.predict_proba(data)[args.facet], args.n)]
    tiles = composition_tiles(inputs, inputs, swap_grid(model, inputs, args.facet))
    path = save_grid(tiles, args.out, ncol=len(inputs) + 1)
    print(f"compositions of facet {args.facet} written to {path}: row r, column c is input r (left column) "
          f"with facet {args.facet} taken from input c (top row)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import ReportOptions, build_report

    model = MFCVAE.load(args.model, device=args.device)
    try:
        data = _model_data(args)
    except ValueError as err:
        if args.data is not None or "--data is needed" not in str(err):
            raise
        data = None  # a saved model that does not record its data: report without examples
        print("no --data given and none recorded: the report leaves out input examples and metrics", file=sys.stderr)
    options = ReportOptions(temperature=args.temperature, max_clusters=args.max_clusters)
    out = Path(args.out) if args.out else Path(args.model) / "report.html"
    print(f"report written to {build_report(model, data, out, options)} (figures as PNG files beside it)")
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
    source.add_argument("--preset", help="named configuration (see `mfcvae presets`; default demo)")
    source.add_argument("--config", help="YAML file of estimator parameters")
    fit.add_argument("--data", help=f"'demo' (built-in, the default) or a path: {DATA_KINDS}")
    fit.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                     help="option for reading the data, e.g. config=2 (3DShapes), split=train (MNIST folder), "
                          "size=32 (image folder), labels=cell_type (a table's or h5ad's label columns), "
                          "obsm=X_pca (h5ad), lazy=true (leave the data in its file), "
                          "test_fraction=0.2 (hold out a random part)")
    fit.add_argument("--out", required=True, help="run folder: model, metrics.csv, checkpoint")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    fit.add_argument("--overwrite", action="store_true",
                     help="start over in an --out that holds a run or model (cleared once the parameters are checked)")
    fit.add_argument("--epochs", type=int, help="override the number of epochs")
    fit.add_argument("--max-seconds", type=float, help="wall-clock budget: the schedule is laid over the time, "
                                                       "training stops at the deadline (or after --epochs)")
    fit.add_argument("--seed", type=int, help="override the seed")
    fit.add_argument("--device", help="auto, cpu or cuda[:i]")
    fit.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override any parameter")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    parallel = fit.add_argument_group("data-parallel training (through torchrun; or launch with torchrun itself)")
    parallel.add_argument("--nproc", type=int, help="processes per node, one per GPU (or several CPU processes); "
                                                    "each takes batch_size examples per step")
    parallel.add_argument("--nnodes", type=int, default=1, help="nodes, each running this same command (default 1)")
    parallel.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="where the nodes meet (with --nnodes > 1)")
    parallel.add_argument("--max-restarts", type=int, default=0,
                          help="restart the processes this often after a failure; the run resumes from its "
                               "last checkpoint (default 0)")
    fit.set_defaults(func=cmd_fit)

    def model_command(name: str, help: str, data: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("model", help="a `mfcvae fit --out` folder or a folder written by save()")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
        if data:
            p.add_argument("--data", help=f"'demo' or a path ({DATA_KINDS}); default: the data the run was fitted on")
            p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                           help="option for reading the data (see `mfcvae fit --help`)")
            p.add_argument("--part", choices=("all", "train", "test"), default="all",
                           help="with a run fitted with test_fraction or split=train (an MNIST folder's own "
                                "training and test files): which part of the data (default all)")
        return p

    evaluate = model_command("evaluate", "accuracy / NMI / ARI of every facet against every label")
    evaluate.add_argument("--json", help="also write the table as JSON here")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = model_command("predict", "cluster ids per facet as CSV")
    predict.add_argument("--out", required=True, help="CSV file to write")
    predict.set_defaults(func=cmd_predict)

    sample = model_command("sample", "a PNG grid of generated inputs (controlled generation)", data=False)
    sample.add_argument("--facet", type=int, help="facet whose cluster is fixed")
    sample.add_argument("--cluster", type=int, help="cluster of --facet to draw from")
    sample.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    sample.add_argument("--temperature", type=float, default=1.0, help="prior temperature (default 1)")
    sample.add_argument("--seed", type=int, help="random seed")
    sample.add_argument("--out", required=True, help="PNG file to write")
    sample.set_defaults(func=cmd_sample)

    compose = model_command("compose", "a PNG grid of compositions: one facet's latent swapped between inputs")
    compose.add_argument("--facet", type=int, required=True, help="facet whose latent is swapped")
    compose.add_argument("--n", type=int, default=6, help="inputs per side of the grid (default 6)")
    compose.add_argument("--out", required=True, help="PNG file to write")
    compose.set_defaults(func=cmd_compose)

    report = model_command("report", "a self-contained HTML report with every figure (and the PNGs beside it)")
    report.add_argument("--out", help="HTML file to write (default MODEL/report.html)")
    report.add_argument("--temperature", type=float, default=1.0, help="prior temperature for samples (default 1)")
    report.add_argument("--max-clusters", type=int, default=30, help="clusters shown per facet, largest first")
    report.set_defaults(func=cmd_report)

    presets = sub.add_parser("presets", help="list the named configurations")
    presets.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = make_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    # OSError: unreadable or unwritable paths; GroupError: a process of a data-parallel run stalled or died
    except (ValueError, TypeError, OSError, FloatingPointError, distributed.GroupError) as err:
        print(f"mfcvae {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
