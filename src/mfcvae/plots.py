"""Figures of what a fitted model learned, as matplotlib Figures (no pyplot state, so they
work headless and in notebooks alike: ``fig.savefig(...)`` or display them).

Image figures need inputs that can be drawn: (C, H, W) with 1 or 3 channels, (H, W), or
vectors of a square length. ``report.py`` puts them all in one HTML file.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .images import grid

CELL_INCHES = 0.6  # size of one image in a grid figure


def _image_figure(images: np.ndarray, ncol: int, title: str, row_labels: list[str] | None = None,
                  col_labels: list[str] | None = None) -> Figure:
    """A figure showing ``images`` as a grid of ``ncol`` columns, optionally labelled per row / column."""
    tiles = grid(images, ncol)
    nrow = int(np.ceil(len(images) / ncol))
    margin = 1.2 if row_labels else 0.2
    fig = Figure(figsize=(max(4.0, margin + CELL_INCHES * ncol), 0.6 + CELL_INCHES * nrow))
    ax = fig.add_axes((margin / fig.get_figwidth(), 0.02, 1 - margin / fig.get_figwidth() - 0.01,
                       1 - 0.6 / fig.get_figheight()))
    ax.imshow(tiles[..., 0] if tiles.shape[-1] == 1 else tiles, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    cell_h, cell_w = (tiles.shape[0] - 1) / nrow, (tiles.shape[1] - 1) / ncol
    ax.set_yticks([cell_h * (r + 0.5) for r in range(nrow)] if row_labels else [])
    ax.set_yticklabels(row_labels or [], fontsize=8)
    ax.set_xticks([cell_w * (c + 0.5) for c in range(ncol)] if col_labels else [])
    ax.set_xticklabels(col_labels or [], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=10)
    return fig


def training_curves(history: list[dict]) -> Figure:
    """Per epoch: the ELBO and reconstruction term, each facet's KL, and the progressive
    schedule's weight of each facet (alpha_j = gamma_j) at the epoch's end."""
    if not history:
        raise ValueError("no training history to plot")
    epochs = [row["epoch"] for row in history]
    n_facets = sum(key.startswith("kl_") for key in history[0])
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    for key in ("elbo", "reconstruction"):
        axes[0].plot(epochs, [row[key] for row in history], label=key)
    axes[0].set_title("ELBO and reconstruction (nats per example)", fontsize=10)
    for j in range(n_facets):
        axes[1].plot(epochs, [row[f"kl_{j}"] for row in history], label=f"facet {j}")
        axes[2].plot(epochs, [row[f"weight_{j}"] for row in history], label=f"facet {j}")
    axes[1].set_title("KL(q(z, c | x) || p(z, c)) per facet", fontsize=10)
    axes[2].set_title("progressive schedule: fade-in / KL weight", fontsize=10)
    axes[2].set_ylim(-0.05, 1.05)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def mixture_weights(weights: list[np.ndarray], assignments: np.ndarray | None = None) -> Figure:
    """Bar chart of pi_j per facet; with ``assignments`` (N, J), the share of inputs each
    cluster receives beside it, and the number of active clusters in the title."""
    fig = Figure(figsize=(5 * len(weights), 2.8))
    axes = np.atleast_1d(fig.subplots(1, len(weights)))
    for j, (ax, pi) in enumerate(zip(axes, weights)):
        k = np.arange(len(pi))
        title = f"facet {j}: pi over {len(pi)} clusters"
        if assignments is not None:
            share = np.bincount(assignments[:, j], minlength=len(pi)) / len(assignments)
            ax.bar(k - 0.2, pi, width=0.4, label="pi_j")
            ax.bar(k + 0.2, share, width=0.4, label="share of inputs")
            ax.legend(fontsize=8)
            title += f"; {int((share > 0).sum())} active"
        else:
            ax.bar(k, pi)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("cluster")
    fig.tight_layout()
    return fig


def cluster_order(proba: np.ndarray) -> list[int]:
    """Clusters of one facet, largest (by argmax assignments) first."""
    sizes = np.bincount(proba.argmax(1), minlength=proba.shape[1])
    return [int(k) for k in np.argsort(-sizes, kind="stable")]


def cluster_examples(x, proba: np.ndarray, facet: int, per_cluster: int = 8,
                     clusters: list[int] | None = None) -> Figure:
    """One row per cluster of a facet (``clusters``, default all, largest first): its members,
    most confident first; ``x``: the inputs (an array or a Dataset's ``x``), ``proba``: that
    facet's q(c|x), shape (N, K). Empty rows stay blank."""
    assigned = proba.argmax(1)
    clusters = cluster_order(proba) if clusters is None else clusters
    blank = np.ones((1, *x.shape[1:]), dtype=np.float32)
    rows, labels = [], []
    for k in clusters:
        members = np.flatnonzero(assigned == k)
        members = members[np.argsort(-proba[members, k], kind="stable")][:per_cluster]
        rows.append(np.concatenate([x[members], np.repeat(blank, per_cluster - len(members), axis=0)]))
        labels.append(f"cluster {k} ({int((assigned == k).sum())})")
    return _image_figure(np.concatenate(rows), per_cluster, f"facet {facet}: inputs per cluster", row_labels=labels)


def controlled_generation(samples: list[np.ndarray], clusters: list[int], facet: int, temperature: float) -> Figure:
    """One row per cluster of a facet: ``samples[i]`` drawn from cluster ``clusters[i]``, the other
    facets' latents the same in every row of a column."""
    return _image_figure(np.concatenate(samples), len(samples[0]), f"facet {facet}: samples (T = {temperature:g})",
                         row_labels=[f"cluster {k}" for k in clusters])


def composition_tiles(rows: np.ndarray, columns: np.ndarray, swapped: np.ndarray) -> np.ndarray:
    """Images for an (R + 1) x (C + 1) grid: top row the ``columns`` inputs; then per row input,
    the input itself and that input with one facet taken from each column (``swapped``: (R, C, ...))."""
    blank = np.ones((1, *rows.shape[1:]), dtype=np.float32)
    tiles = [blank, columns]
    for r in range(len(rows)):
        tiles += [rows[r:r + 1], swapped[r]]
    return np.concatenate(tiles)


def compositions(rows: np.ndarray, columns: np.ndarray, swapped: np.ndarray, facet: int) -> Figure:
    """The compositionality grid of ``composition_tiles`` as a figure."""
    return _image_figure(composition_tiles(rows, columns, swapped), len(columns) + 1, f"facet {facet}: compositions")


def reconstructions(x: np.ndarray, reconstructed: np.ndarray, ncol: int = 8) -> Figure:
    """Rows of inputs, each followed by a row of their reconstructions."""
    tiles = []
    for start in range(0, len(x), ncol):
        tiles += [x[start:start + ncol], reconstructed[start:start + ncol]]
    return _image_figure(np.concatenate(tiles), ncol, "inputs and reconstructions")


def confusion_matrix(labels: np.ndarray, clusters: np.ndarray, facet: int, label: str) -> Figure:
    """Counts of each label value (columns) in each cluster (rows); clusters sorted by their
    majority label, so a facet that captured the label shows a staircase."""
    values, y = np.unique(labels, return_inverse=True)
    ks, c = np.unique(clusters, return_inverse=True)
    counts = np.zeros((len(ks), len(values)), dtype=np.int64)
    np.add.at(counts, (c, y), 1)
    order = np.lexsort((-counts.max(1), counts.argmax(1)))
    fig = Figure(figsize=(1.5 + 0.3 * len(values), 1.2 + 0.18 * len(ks)))
    ax = fig.add_subplot()
    image = ax.imshow(counts[order], aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    ax.set_xticks(range(len(values)), [str(v) for v in values], fontsize=7)
    ax.set_yticks(range(len(ks)), [str(k) for k in ks[order]], fontsize=6)
    ax.set_xlabel(label)
    ax.set_ylabel(f"facet {facet} cluster")
    ax.set_title(f"facet {facet} x {label}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig
