"""Memory of data-parallel training on the full 3DShapes: each process's resident memory while
``mfcvae fit --nproc N`` trains on a file of the real format and size, read lazily (or eagerly).

    python benchmarks/memory.py                                  # 480,000 images, lazy, 2 processes
    python benchmarks/memory.py --eager                          # ... and the eager load to compare
    python benchmarks/memory.py --n 20000 --max-seconds 30       # a smaller file, a quick check

The synthetic file (written once to ``--file``, in chunks) has the real file's layout: ``images``
N x 64 x 64 x 3 uint8, contiguous and uncompressed, and ``labels`` N x 6 float64 holding every
combination of the factor values of ``mfcvae.datasets.shapes3d.FACTORS`` once, in the real
order (orientation varying fastest); with ``--n`` below 480,000, the first N of them. Images are
simple renders of those factors (wall, floor and object colours, object shape, size and place).

While the command runs, every process it starts (the launcher and its workers, told apart by the
RANK torchrun gives them) is sampled every ``--interval`` seconds: VmRSS and VmHWM from
/proc/PID/status, Pss (resident memory with shared pages divided among their sharers) from
/proc/PID/smaps_rollup. One row per mode goes to results/memory.jsonl with the peaks in MB, the
command, the parameters, the commit and the machine. The run lasts longer than ``--max-seconds``:
after training, the fit predicts every image (its labels_) and the CLI evaluates on all of them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bench import ROOT, machine, source  # benchmarks/bench.py: what a row records of its machine and code
from mfcvae.datasets.shapes3d import FACTORS

RESULTS = ROOT / "benchmarks" / "results" / "memory.jsonl"
FULL = int(np.prod([len(v) for v in FACTORS.values()]))  # 480,000
WRITE_CHUNK = 4800  # images rendered and written at a time (56 MB)
# on top of the demo preset (an MLP ladder, no end refit): a small conv ladder, as the paper's 3DShapes runs use
SETS = ["architecture=conv", "hidden_dims=[32, 64]", "n_clusters=[10, 4]", "latent_dims=[4, 2]", "batch_size=128",
        "progressive=false"]


# --- the synthetic file --------------------------------------------------------------------------
def hue_colours(hues: np.ndarray, saturation: float = 0.8, value: float = 0.9) -> np.ndarray:
    """(n,) hues in [0, 1) -> (n, 3) uint8 RGB (HSV with the given saturation and value)."""
    k = (np.array([5.0, 3.0, 1.0]) + hues[:, None] * 6) % 6
    rgb = value - value * saturation * np.clip(np.minimum(k, 4 - k), 0, 1)
    return np.round(rgb * 255).astype(np.uint8)


def object_masks() -> np.ndarray:
    """(8 scales, 4 shapes, 15 orientations, 64, 64) bool: where the object is, in each pose."""
    rows, cols = np.mgrid[:64, :64].astype(np.float64)
    masks = np.zeros((len(FACTORS["scale"]), 4, len(FACTORS["orientation"]), 64, 64), dtype=bool)
    for i, scale in enumerate(FACTORS["scale"]):
        for k, angle in enumerate(FACTORS["orientation"]):
            dy, dx = rows - 40, cols - 32 - angle / 5  # the object stands on the floor, turned aside
            r = 9 * scale
            masks[i, 0, k] = (np.abs(dx) <= r) & (np.abs(dy) <= r)  # cube
            masks[i, 1, k] = (np.abs(dx) <= 0.7 * r) & (np.abs(dy) <= 1.3 * r)  # cylinder
            masks[i, 2, k] = dx ** 2 + dy ** 2 <= r ** 2  # sphere
            masks[i, 3, k] = (np.abs(dx) <= 0.6 * r) & (np.abs(dy) <= 1.4 * r) & \
                ((np.abs(dy) <= 0.8 * r) | (dx ** 2 + (np.abs(dy) - 0.8 * r) ** 2 <= (0.6 * r) ** 2))  # capsule
    return masks


def write_file(path: Path, n: int) -> None:
    """The first n rows of a 3DShapes-format file (see the module's docstring), written chunk by
    chunk to ``path`` (through a temporary name, so that an interrupted write is not taken for a file)."""
    grid = [len(v) for v in FACTORS.values()]
    masks = object_masks()
    floor_rows = (np.arange(64) >= 40)[None, :, None, None]
    part = path.with_name(path.name + ".part")
    with h5py.File(part, "w") as f:
        images = f.create_dataset("images", (n, 64, 64, 3), dtype=np.uint8)  # contiguous, as the real file
        labels = f.create_dataset("labels", (n, len(FACTORS)), dtype=np.float64)
        for start in range(0, n, WRITE_CHUNK):
            index = np.stack(np.unravel_index(np.arange(start, min(start + WRITE_CHUNK, n)), grid), axis=1)
            values = np.stack([grid_values[index[:, col]] for col, grid_values in enumerate(FACTORS.values())], 1)
            floor, wall, colour = (hue_colours(values[:, col])[:, None, None] for col in range(3))
            background = np.where(floor_rows, floor, wall)
            on_object = masks[index[:, 3], index[:, 4], index[:, 5]][..., None]
            images[start:start + len(index)] = np.where(on_object, colour, background)
            labels[start:start + len(index)] = values
    part.rename(path)


def ensure_file(path: Path, n: int) -> None:
    """Write the file unless ``path`` holds one of n images already."""
    if path.is_file():
        with h5py.File(path, "r") as f:
            found = f["images"].shape[0]
        if found != n:
            raise SystemExit(f"{path} holds {found} images, not {n}: remove it or pass another --file")
        return
    print(f"writing {path} ({n} images, {n * 64 * 64 * 3 / 1e9:.2f} GB)", flush=True)
    start = time.perf_counter()
    write_file(path, n)
    print(f"written in {time.perf_counter() - start:.0f} s", flush=True)


# --- sampling the processes ----------------------------------------------------------------------
def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def memory_kb(pid: int) -> dict[str, int] | None:
    """{"rss", "hwm", "pss"} of a process in kB, or None if it has gone."""
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
        rollup = (Path("/proc") / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    fields = {line.split(":")[0]: line.split()[1] for line in (*status.splitlines(), *rollup.splitlines())
              if line.split(":")[0] in ("VmRSS", "VmHWM", "Pss")}
    if len(fields) < 3:  # a process that is exiting has no memory left to report
        return None
    return {"rss": int(fields["VmRSS"]), "hwm": int(fields["VmHWM"]), "pss": int(fields["Pss"])}


def role(pid: int, root: int) -> tuple[str, int | None]:
    """("launcher" | "worker" | "helper", the worker's rank)."""
    if pid == root:
        return "launcher", None
    try:
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return "helper", None
    rank = next((int(v[5:]) for v in environ if v.startswith(b"RANK=")), None)
    return ("worker", rank) if rank is not None else ("helper", None)


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return ""


def run_sampled(command: list[str], interval: float, log: Path) -> dict:
    """Run ``command``, sampling its processes' memory; returns the peaks and how the run went."""
    peaks: dict[int, dict] = {}
    total_pss = total_rss = 0
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ})
        while proc.poll() is None:
            sample = {}
            for pid in descendants(proc.pid):
                kb = memory_kb(pid)
                if kb is None:
                    continue
                sample[pid] = kb
                peak = peaks.setdefault(pid, {"pid": pid, "role": "helper", "rank": None, "rss": 0, "hwm": 0, "pss": 0})
                if peak["role"] == "helper":  # until it is seen after its exec, a worker looks like one
                    peak["role"], peak["rank"] = role(pid, proc.pid)
                    peak["cmdline"] = command_line(pid)
                for key in ("rss", "hwm", "pss"):
                    peak[key] = max(peak[key], kb[key])
            workers = [kb for pid, kb in sample.items() if peaks[pid]["role"] == "worker"]
            total_pss = max(total_pss, sum(kb["pss"] for kb in workers))
            total_rss = max(total_rss, sum(kb["rss"] for kb in workers))
            time.sleep(interval)
    processes = [{**{k: v for k, v in p.items() if k not in ("rss", "hwm", "pss")},
                  "peak_rss_mb": round(p["rss"] / 1024, 1), "peak_hwm_mb": round(p["hwm"] / 1024, 1),
                  "peak_pss_mb": round(p["pss"] / 1024, 1)} for p in peaks.values()]
    processes.sort(key=lambda p: (p["role"] != "launcher", p["role"] != "worker", p["rank"] or 0, p["pid"]))
    workers = [p for p in processes if p["role"] == "worker"]
    return {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - start, 1), "processes": processes,
            "worker_peak_rss_mb": max((p["peak_rss_mb"] for p in workers), default=None),
            "worker_peak_hwm_mb": max((p["peak_hwm_mb"] for p in workers), default=None),
            "worker_peak_pss_mb": max((p["peak_pss_mb"] for p in workers), default=None),
            "workers_total_peak_pss_mb": round(total_pss / 1024, 1),
            "workers_total_peak_rss_mb": round(total_rss / 1024, 1)}


def trained(out: Path) -> dict:
    """Epochs and steps the run's metrics.csv records (none if it wrote none)."""
    path = out / "metrics.csv"
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    return {"epochs": len(rows), "steps": int(rows[-1]["step"]) if rows else 0}


# --- the benchmark -------------------------------------------------------------------------------
def measure(args: argparse.Namespace, lazy: bool, tmp: Path) -> dict:
    """One ``mfcvae fit`` on the file, lazily or eagerly read; its row."""
    out = tmp / ("lazy" if lazy else "eager")
    command = [sys.executable, "-m", "mfcvae", "fit", "--data", str(args.file), "--data-option",
               f"lazy={str(lazy).lower()}", "--data-option", f"size={args.size}", "--nproc", str(args.nproc),
               "--max-seconds", str(args.max_seconds), "--device", args.device, "--seed", str(args.seed), "--out",
               str(out), "--quiet", *(f"--set={s}" for s in [*SETS, *args.set])]
    print(f"{'lazy' if lazy else 'eager'}: {shlex.join(command)}", flush=True)
    log = tmp / f"{out.name}.log"
    measured = run_sampled(command, args.interval, log)
    if measured["returncode"] != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
    return {"benchmark": "memory", "mode": "lazy" if lazy else "eager", "n": args.n, "size": args.size,
            "nproc": args.nproc, "device": args.device, "max_seconds": args.max_seconds, "seed": args.seed,
            "sets": [*SETS, *args.set], "file": str(args.file),
            "data_mb": round(args.n * 3 * args.size ** 2 / 2 ** 20, 1),  # the images as one eager process holds them
            "interval_s": args.interval, **measured, **trained(out), "fit_command": shlex.join(command)}


def report(row: dict) -> None:
    print(f"\n{row['mode']}: exit {row['returncode']}, {row['wall_s']} s, {row['epochs']} epoch(s), "
          f"{row['steps']} steps; the images take {row['data_mb']} MB as uint8")
    print(f"{'process':<12} {'pid':>8} {'peak RSS MB':>12} {'VmHWM MB':>10} {'peak PSS MB':>12}")
    for p in row["processes"]:
        name = f"worker {p['rank']}" if p["role"] == "worker" else p["role"]
        print(f"{name:<12} {p['pid']:>8} {p['peak_rss_mb']:>12} {p['peak_hwm_mb']:>10} {p['peak_pss_mb']:>12}")
    print(f"workers together: peak PSS {row['workers_total_peak_pss_mb']} MB, peak RSS "
          f"{row['workers_total_peak_rss_mb']} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=FULL, help=f"images in the file (default: all {FULL})")
    parser.add_argument("--file", type=Path, help="the synthetic file (default: /tmp/3dshapes_full.h5, or "
                                                  "/tmp/3dshapes_N.h5 for another --n); written if missing")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="the fit's time budget")
    parser.add_argument("--size", type=int, default=32, help="images resized to size x size (the paper: 32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eager", action="store_true", help="also measure the eager load (lazy=false)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"passed to mfcvae fit --set, after the defaults {SETS}")
    args = parser.parse_args()
    if not 2 <= args.n <= FULL:
        raise SystemExit(f"--n must be in [2, {FULL}]")
    if args.file is None:
        args.file = Path("/tmp/3dshapes_full.h5" if args.n == FULL else f"/tmp/3dshapes_{args.n}.h5")
    ensure_file(args.file, args.n)
    where, code = machine(), source()
    command = shlex.join(["python", "benchmarks/memory.py", *sys.argv[1:]])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for lazy in (True, False) if args.eager else (True,):
            row = {**measure(args, lazy, Path(tmp)), **code, "command": command, "machine": where}
            report(row)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
