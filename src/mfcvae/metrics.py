"""Clustering metrics for evaluating one facet's assignments against one label.

- ``many_to_one_accuracy``: the paper's metric. Every cluster is mapped to the majority
  label of its members; several clusters may map to one label. Grows with K.
- ``hungarian_accuracy``: one-to-one matching of clusters to labels that maximises the
  matches (scipy's linear_sum_assignment); when K differs from the number of labels, the
  unmatched clusters count as wrong.
- ``nmi`` / ``ari``: scikit-learn's normalized mutual information and adjusted Rand index.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """counts[c, l]: inputs in cluster c with label l (over the values that occur)."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if labels.shape != clusters.shape or labels.ndim != 1:
        raise ValueError(f"labels and clusters must be 1-D of equal length, got {labels.shape} and {clusters.shape}")
    if len(labels) == 0:
        raise ValueError("cannot score an empty set of assignments")
    _, label_idx = np.unique(labels, return_inverse=True)
    _, cluster_idx = np.unique(clusters, return_inverse=True)
    counts = np.zeros((cluster_idx.max() + 1, label_idx.max() + 1), dtype=np.int64)
    np.add.at(counts, (cluster_idx, label_idx), 1)
    return counts


def many_to_one_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    counts = _contingency(labels, clusters)
    return float(counts.max(axis=1).sum() / counts.sum())


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    counts = _contingency(labels, clusters)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    return float(normalized_mutual_info_score(labels, clusters))


def ari(labels: np.ndarray, clusters: np.ndarray) -> float:
    return float(adjusted_rand_score(labels, clusters))


def _class_ids(name: str, y: np.ndarray, n: int) -> np.ndarray:
    """Label ``name`` as n class ids: integers, bools or strings; floats only where every value is
    a whole number (as a data frame may hold integer labels); Python objects only where they are
    all of one of those kinds. NaN and None are no class."""
    if y.shape != (n,):
        raise ValueError(f"label {name!r} has shape {y.shape}, expected ({n},)")
    if y.dtype.kind == "O":  # e.g. a data frame's column: what numpy makes of the values themselves
        y = np.array(y.tolist())
        if y.dtype.kind == "O":
            kinds = sorted({type(v).__name__ for v in y.tolist()})
            raise ValueError(f"label {name!r} must hold class ids (integers or strings), got values of the "
                             f"kinds {kinds}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise ValueError(f"label {name!r} must hold class ids (integers or strings), got float values "
                             f"such as {y[bad][0]!r}")
        return np.unique(y, return_inverse=True)[1]  # not astype(int64): huge whole floats would collide
    if y.dtype.kind not in "biuUS":
        raise ValueError(f"label {name!r} must hold class ids (integers or strings), got dtype {y.dtype}")
    return y


def evaluate_assignments(assignments: np.ndarray, labels: dict[str, np.ndarray]) -> list[dict]:
    """Every metric for every (facet, label) pair: one dict per pair.

    ``assignments``: (N, J) cluster ids; ``labels``: name -> (N,) array.
    """
    assignments = np.asarray(assignments)
    if assignments.ndim != 2:
        raise ValueError(f"assignments must be (N, J) cluster ids, got shape {assignments.shape}")
    if not labels:
        raise ValueError("labels is empty: pass a dict of label name -> (N,) array")
    rows = []
    for name, y in labels.items():
        y = _class_ids(name, np.asarray(y), len(assignments))
        for facet in range(assignments.shape[1]):
            c = assignments[:, facet]
            rows.append({
                "facet": facet, "label": name,
                "accuracy": many_to_one_accuracy(y, c), "hungarian_accuracy": hungarian_accuracy(y, c),
                "nmi": nmi(y, c), "ari": ari(y, c), "active_clusters": int(len(np.unique(c))),
            })
    return rows


def best_facet_per_label(rows: list[dict], key: str = "accuracy") -> dict[str, dict]:
    """For each label, the row of the facet that scores highest on ``key`` (the paper's choice)."""
    best: dict[str, dict] = {}
    for row in rows:
        if row["label"] not in best or row[key] > best[row["label"]][key]:
            best[row["label"]] = row
    return best


def format_table(rows: list[dict]) -> str:
    """A plain-text table of ``evaluate_assignments`` rows."""
    header = f"{'facet':>5}  {'label':<14}{'acc(m2o)':>9}{'acc(hung)':>10}{'NMI':>7}{'ARI':>7}{'active':>7}"
    lines = [header]
    for r in rows:
        lines.append(f"{r['facet']:>5}  {r['label']:<14}{r['accuracy']:>9.3f}{r['hungarian_accuracy']:>10.3f}"
                     f"{r['nmi']:>7.3f}{r['ari']:>7.3f}{r['active_clusters']:>7}")
    return "\n".join(lines)
