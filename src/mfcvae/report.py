"""One self-contained HTML report of a fitted model (images embedded, nothing fetched when it
is viewed), with every figure also written as a PNG file beside it.

What it shows, as the paper does: training curves and the progressive schedule, the mixture
weights and active clusters, inputs per cluster, controlled generation and compositionality
per facet, reconstructions and, when the data has labels, accuracy / NMI / ARI per facet x
label with a confusion matrix each.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.utils.validation import check_is_fitted

from . import plots
from .datasets import Dataset, Inputs
from .estimator import MFCVAE
from .images import can_draw
from .metrics import best_facet_per_label, evaluate_assignments


@dataclass
class Section:
    title: str
    figures: list[tuple[str, Figure, str]] = field(default_factory=list)  # (file-name stem, figure, caption)
    text: str = ""  # HTML put before the figures


MAX_COMPOSE = 32  # inputs a side of a compositionality grid (its decodes grow as the square)


@dataclass(frozen=True)
class ReportOptions:
    per_cluster: int = 8  # inputs shown per cluster
    n_samples: int = 8  # generated samples per cluster
    n_compose: int = 6  # inputs in each compositionality grid
    max_clusters: int = 30  # clusters shown per facet (the largest)
    max_examples: int = 10_000  # inputs used for the example grids (metrics use all)
    temperature: float = 1.0  # prior temperature for generation (the paper: 1 on MNIST, 0.3 elsewhere)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("per_cluster", "n_samples", "max_clusters", "max_examples"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not (isinstance(self.n_compose, int) and 1 <= self.n_compose <= MAX_COMPOSE):
            raise ValueError(f"the compositionality grid takes 1 to {MAX_COMPOSE} inputs a side, got {self.n_compose!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")


def build_report(model: MFCVAE, data: Dataset | None, out: str | Path, options: ReportOptions = ReportOptions()) -> Path:
    """Write ``out`` (HTML) and ``<out stem>_<figure>.png`` beside it; returns the HTML path."""
    check_is_fitted(model, "model_")
    out = Path(out)
    if data is not None and not isinstance(data, Dataset):
        raise TypeError(f"data must be a mfcvae.datasets.Dataset or None, got {type(data).__name__}")
    drawable = can_draw(model.input_shape_)
    sections = [_summary(model, data, drawable)]
    if model.history_:
        sections.append(Section("Training", [("training", plots.training_curves(model.history_),
                                              "Per epoch: ELBO terms, each facet's KL, and the progressive schedule "
                                              "(a facet's decoder-rung and KL weight, rising from 0 to 1 as it fades in).")]))

    x = proba = None
    if data is not None:
        subset = example_subset(data, options.max_examples, options.seed)
        x, proba = subset.x, model.predict_proba(subset)  # x stays compact: only what is drawn is converted
    assignments = None if proba is None else np.stack([p.argmax(1) for p in proba], axis=1)
    sections.append(Section("Mixture weights", [("weights", plots.mixture_weights(model.cluster_weights_, assignments),
                                                 "pi_j of each facet; beside it, the share of the inputs assigned to each "
                                                 "cluster. A cluster is active when it receives inputs.")]))

    if drawable:
        for j in range(len(model.cluster_weights_)):
            sections.append(_facet_section(model, j, x, None if proba is None else proba[j], options))
        if x is not None:
            n = min(16, len(x))
            sections.append(Section("Reconstructions", [("reconstructions",
                                                         plots.reconstructions(x[:n], model.reconstruct(x[:n])),
                                                         "Rows of inputs, each followed by their reconstructions.")]))
    if data is not None and data.labels:
        sections.append(_evaluation_section(model, data))
    _write(sections, out)
    return out


def _summary(model: MFCVAE, data: Dataset | None, drawable: bool) -> Section:
    cfg = model.model_.cfg
    rows = [("facets", cfg.n_facets), ("clusters per facet", clusters_text(model)), ("latent dims", cfg.latent_dims),
            ("ladder", f"{cfg.architecture} {cfg.hidden_dims}, {cfg.activation}"
                       + (", batch-norm" if cfg.batch_norm else "")),
            ("covariance", cfg.covariance), ("likelihood", cfg.likelihood), ("posterior q(c|x)", cfg.posterior),
            ("input shape", model.input_shape_), ("epochs trained", len(model.history_)),
            ("data", repr(data) if data is not None else "none given: no input examples or metrics")]
    text = "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows) + "</table>"
    if not drawable:
        text += "<p>Inputs of this shape cannot be drawn as images, so the image grids are left out.</p>"
    return Section("Model", text=text)


def clusters_text(model: MFCVAE) -> str:
    """The clusters per facet, and which of them the end refit chose."""
    chosen = model._auto_facets()
    text = str(model.n_clusters_)
    if chosen:
        text += (f"; facet{'s' if len(chosen) > 1 else ''} {', '.join(map(str, chosen))} chosen by BIC "
                 f"(at most {model.max_clusters})")
    return text


def _facet_section(model: MFCVAE, facet: int, x: Inputs | None, proba: np.ndarray | None,
                   options: ReportOptions) -> Section:
    n_clusters = model.model_.cfg.n_clusters[facet]
    if proba is not None:
        clusters = plots.cluster_order(proba)[:options.max_clusters]
    else:
        clusters = [int(k) for k in np.argsort(-model.cluster_weights_[facet], kind="stable")[:options.max_clusters]]
    shown = "every cluster" if len(clusters) == n_clusters else f"the largest {len(clusters)} of {n_clusters} clusters"
    section = Section(f"Facet {facet}", text=f"<p>{shown.capitalize()}, largest first.</p>")
    if proba is not None:
        section.figures.append((f"facet{facet}_examples",
                                plots.cluster_examples(x, proba, facet, options.per_cluster, clusters),
                                "Inputs per cluster (row), most confident first; the number of members in brackets."))
    samples = [model.sample(options.n_samples, facet=facet, cluster=k, temperature=options.temperature,
                            seed=options.seed) for k in clusters]
    section.figures.append((f"facet{facet}_generation",
                            plots.controlled_generation(samples, clusters, facet, options.temperature),
                            f"Controlled generation: row k is drawn from cluster k of facet {facet}; the other facets' "
                            "latents are drawn once per column from their priors and kept the same down the column."))
    if proba is not None:
        rows = x[confident_members(proba, options.n_compose)]
        section.figures.append((f"facet{facet}_compositions",
                                plots.compositions(rows, rows, swap_grid(model, rows, facet), facet),
                                f"Compositionality: each cell is its row's input (left) with facet {facet}'s latent "
                                "taken from its column's input (top), decoded. The inputs are the most confident "
                                "members of different clusters of this facet; the diagonal is the reconstruction."))
    return section


def example_subset(data: Dataset, max_examples: int = 10_000, seed: int = 0) -> Dataset:
    """A random subset of at most ``max_examples`` inputs (all of them if fewer), in their order:
    enough to find each cluster's most confident members without predicting everything."""
    if len(data) <= max_examples:
        return data
    return data.subset(np.sort(np.random.default_rng(seed).choice(len(data), max_examples, replace=False)))


def swap_grid(model: MFCVAE, inputs: np.ndarray, facet: int) -> np.ndarray:
    """(n, n, ...): cell (r, c) is input r with facet ``facet``'s latent taken from input c."""
    n = len(inputs)
    swapped = model.compose(np.repeat(inputs, n, axis=0), np.tile(inputs, (n, *[1] * (inputs.ndim - 1))), facet)
    return swapped.reshape(n, n, *inputs.shape[1:])


def confident_members(proba: np.ndarray, n: int) -> np.ndarray:
    """The most confident member of each of the n largest clusters (then the next most
    confident inputs, if fewer than n clusters are active): inputs that differ in this facet."""
    assigned, chosen = proba.argmax(1), []
    for k in plots.cluster_order(proba):
        members = np.flatnonzero(assigned == k)
        if len(members):
            chosen.append(int(members[proba[members, k].argmax()]))
    rest = [int(i) for i in np.argsort(-proba.max(1), kind="stable") if int(i) not in chosen]
    return np.array((chosen + rest)[:n])


def _evaluation_section(model: MFCVAE, data: Dataset) -> Section:
    assignments = model.predict(data)
    rows = evaluate_assignments(assignments, data.labels)
    best = {(r["facet"], r["label"]) for r in best_facet_per_label(rows).values()}
    header = "<tr><th>facet</th><th>label</th><th>accuracy (many-to-one)</th><th>Hungarian accuracy</th>" \
             "<th>NMI</th><th>ARI</th><th>active clusters</th></tr>"
    body = "".join(
        f"<tr{' class=best' if (r['facet'], r['label']) in best else ''}><td>{r['facet']}</td>"
        f"<td>{html.escape(r['label'])}</td><td>{r['accuracy']:.3f}</td><td>{r['hungarian_accuracy']:.3f}</td>"
        f"<td>{r['nmi']:.3f}</td><td>{r['ari']:.3f}</td><td>{r['active_clusters']}</td></tr>" for r in rows)
    text = (f"<p>On all {len(data)} inputs. Many-to-one accuracy maps each cluster to its majority label (the paper's "
            "measure); Hungarian accuracy matches clusters to labels one to one. The best facet per label is "
            f"highlighted.</p><table>{header}{body}</table>")
    figures = [(f"confusion_facet{j}_{name}", plots.confusion_matrix(y, assignments[:, j], j, name),
                f"Inputs per cluster of facet {j} (rows) and value of {name} (columns).")
               for name, y in data.labels.items() for j in range(assignments.shape[1])]
    return Section("Facets x labels", figures, text)


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
tr.best{background:#e6f3e6}figure{margin:1em 0}img{max-width:100%}figcaption{color:#666;font-size:.85em}
figure.small{display:inline-block;vertical-align:top;max-width:32%;margin:.5em}"""


def _write(sections: list[Section], out: Path) -> None:
    """Write the page and its figures; figures of an earlier report at ``out`` that this one
    does not draw (a facet fewer, no data this time) are removed, so none is left to mislead."""
    out.parent.mkdir(parents=True, exist_ok=True)
    earlier = _figure_names(out.read_text(encoding="utf-8", errors="replace")) if out.is_file() else set()
    written = set()
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>mfcvae report</title><style>{CSS}</style>"
             "</head><body><h1>mfcvae report</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>{section.text}")
        for stem, fig, caption in section.figures:
            png = _png(fig)
            name = f"{out.stem}_{stem}.png"
            (out.parent / name).write_bytes(png)
            written.add(name)
            css = " class=small" if stem.startswith("confusion") else ""
            parts.append(f"<figure{css}><img alt='{html.escape(stem)}' src='data:image/png;base64,"
                         f"{base64.b64encode(png).decode()}'><figcaption>{html.escape(caption)} ({html.escape(name)})"
                         "</figcaption></figure>")
    parts.append("</body></html>")
    out.write_text("\n".join(parts), encoding="utf-8")
    for name in earlier - written:
        if name.startswith(f"{out.stem}_"):  # only files the earlier report named as its own
            (out.parent / name).unlink(missing_ok=True)


def _figure_names(page: str) -> set[str]:
    """The PNG files a report page names in its captions (as ``_write`` writes them)."""
    return {html.unescape(name) for name in re.findall(r"\(([^()<>/\\]+\.png)\)</figcaption>", page)}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()
