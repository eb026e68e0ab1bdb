"""Training on feature vectors larger than memory: peak resident memory and rows per second of
``mfcvae fit --preset embeddings`` on a float16 ``.npy`` read a chunk at a time, against the
in-memory path on a smaller array.

    python benchmarks/out_of_core.py                        # 10 million x 256 (5.1 GB), one epoch
    python benchmarks/out_of_core.py --rows 200000 --compare-rows 100000   # a quick check

Three fits, one epoch each, one process each: the large array read lazily (``lazy=true``: chunks
of 16 MiB, a 256 MiB shuffle buffer), then a smaller array (``--compare-rows``, float32) read
lazily and in memory (``lazy=false``: a memory map of a file the page cache holds), interleaved.
The arrays are generated once into ``--dir`` in chunks: ten clusters of one factor and five of
another added in 256 dimensions, plus noise. Each fit's peak resident memory is its VmHWM
(``ru_maxrss`` of the finished process, read by a wrapper that waits for it); its rows per second are the epoch's rows over the
epoch's seconds in metrics.csv (the training loop alone, not the mixture fits before and after).
One row per fit goes to results/out_of_core.jsonl with the commit, the parameters and the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import ROOT, machine, source  # benchmarks/bench.py: what a row records of its machine and code

RESULTS = ROOT / "benchmarks" / "results" / "out_of_core.jsonl"
FEATURES = 256
WRITE_ROWS = 250_000  # rows generated and written at a time (128 MB as float16)


def ensure_array(path: Path, rows: int, dtype: str) -> None:
    """Write the (rows, FEATURES) array to ``path`` unless it is there with that shape and dtype."""
    if path.is_file():
        existing = np.load(path, mmap_mode="r")
        if existing.shape == (rows, FEATURES) and existing.dtype == np.dtype(dtype):
            return
    rng = np.random.default_rng(0)
    centres_a, centres_b = rng.normal(0, 2, (10, FEATURES)), rng.normal(0, 2, (5, FEATURES))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, FEATURES))
    for start in range(0, rows, WRITE_ROWS):
        n = min(WRITE_ROWS, rows - start)
        a, b = rng.integers(0, 10, n), rng.integers(0, 5, n)
        out[start:start + n] = centres_a[a] + centres_b[b] + rng.normal(0, 1, (n, FEATURES))
    out.flush()
    del out


# runs a command and prints, last on stderr, the peak resident memory (KB) of the processes it waited for
PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def fit(data: Path, lazy: bool, out: Path, extra: list[str]) -> dict:
    """One ``mfcvae fit`` of one epoch; its peak memory, wall time and training rate."""
    command = [sys.executable, "-m", "mfcvae", "fit", "--preset", "embeddings", "--data", str(data),
               "--data-option", f"lazy={str(lazy).lower()}", "--out", str(out), "--overwrite", "--quiet",
               "--epochs", "1", "--device", "cpu", *extra]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    with (out / "metrics.csv").open() as f:
        epoch = list(csv.DictReader(f))[-1]
    rows = int(np.load(data, mmap_mode="r").shape[0])
    return {"command": shlex.join(command), "rows": rows, "lazy": lazy, "file_mb": round(data.stat().st_size / 2**20),
            "peak_rss_mb": round(int(done.stderr.split()[-1]) / 1024), "wall_s": round(wall, 1),
            "epoch_s": round(float(epoch["seconds"]), 1), "rows_per_s": round(rows / float(epoch["seconds"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the large float16 array")
    parser.add_argument("--compare-rows", type=int, default=500_000, help="rows of the smaller float32 array")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mfcvae-out-of-core")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter for every fit, as `mfcvae fit --set` (repeatable)")
    parser.add_argument("--only", choices=("large", "compare"), help="run only the large fit or only the comparison")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    extra = [a for s in args.set for a in ("--set", s)]
    described = {**source(), "machine": machine(), "argv": sys.argv[1:]}
    plan = []
    if args.only != "compare":
        plan.append(("large", args.dir / f"x{args.rows}_f16.npy", args.rows, "float16", [True]))
    if args.only != "large":
        plan.append(("compare", args.dir / f"x{args.compare_rows}_f32.npy", args.compare_rows, "float32",
                     [True, False]))
    for name, path, rows, dtype, modes in plan:
        print(f"writing {path} ({rows} x {FEATURES} {dtype}) unless it is there", flush=True)
        ensure_array(path, rows, dtype)
        for lazy in modes:
            row = {"array": name, "dtype": dtype, **fit(path, lazy, args.dir / f"run_{name}_{lazy}", extra),
                   **described}
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} {rows} x {FEATURES} {dtype}, lazy={lazy}: peak RSS {row['peak_rss_mb']} MB, "
                  f"epoch {row['epoch_s']} s ({row['rows_per_s']} rows/s), whole fit {row['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
