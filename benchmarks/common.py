"""Pieces the benchmark scripts share: where Fashion-MNIST lives, the k-means baseline, and
a line describing the machine a number was measured on."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from mfcvae.estimator import cpu_has_native_bfloat16
from mfcvae.metrics import many_to_one_accuracy, nmi

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


def kmeans_baseline(x: np.ndarray, labels: dict[str, np.ndarray], k: int, seed: int) -> dict:
    """k-means with K clusters on raw pixels: many-to-one accuracy and NMI per label, and its time."""
    start = time.perf_counter()
    clusters = KMeans(k, n_init=3, random_state=seed).fit_predict(x.reshape(len(x), -1))
    out = {"k": k, "seconds": round(time.perf_counter() - start, 1)}
    for name, y in labels.items():
        out[name] = {"accuracy": round(many_to_one_accuracy(y, clusters), 4), "nmi": round(nmi(y, clusters), 4)}
    return out


def cpu_name() -> str:
    """The processor's model name (wall-clock budgets only compare on the same one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """Where a row was measured. On a CPU it says whether bfloat16 is native there: it decides the
    arithmetic precision="auto" trains in, and so how many epochs a wall-clock budget buys."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        bf16 = "native" if cpu_has_native_bfloat16() else "emulated"
        device = f"{cpu_name()}, {torch.get_num_threads()} threads, bfloat16 {bf16}"
    return f"{platform.machine()}, {device}, torch {torch.__version__}"
