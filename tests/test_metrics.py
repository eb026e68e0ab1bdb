"""Clustering metrics on small hand-computed examples (SPEC 8)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfcvae.metrics import (
    ari,
    best_facet_per_label,
    evaluate_assignments,
    format_table,
    hungarian_accuracy,
    many_to_one_accuracy,
    nmi,
)


def test_many_to_one_maps_each_cluster_to_its_majority_label():
    labels = [0, 0, 0, 1, 1, 1, 2, 2]
    clusters = [0, 0, 1, 1, 1, 1, 2, 2]  # cluster 1 holds one 0 and three 1s -> one error
    assert many_to_one_accuracy(labels, clusters) == pytest.approx(7 / 8)


def test_many_to_one_rewards_splitting_a_label_but_hungarian_does_not():
    """Two clusters for label 0: many-to-one counts both, one-to-one matching only one (K=3 > 2 labels)."""
    labels = np.array([0, 0, 0, 0, 1, 1])
    clusters = np.array([0, 0, 1, 1, 2, 2])
    assert many_to_one_accuracy(labels, clusters) == pytest.approx(1.0)
    assert hungarian_accuracy(labels, clusters) == pytest.approx(4 / 6)


def test_hungarian_with_fewer_clusters_than_labels():
    labels = np.array([0, 1, 2, 3, 0, 1])
    clusters = np.array([5, 5, 9, 9, 5, 9])  # arbitrary cluster ids
    # counts: cluster 5 -> labels {0:2, 1:1}, cluster 9 -> {1:1, 2:1, 3:1}; best matching 5->0, 9->1|2|3.
    assert hungarian_accuracy(labels, clusters) == pytest.approx(3 / 6)
    assert many_to_one_accuracy(labels, clusters) == pytest.approx(3 / 6)


def test_hungarian_finds_the_best_permutation_not_the_greedy_one():
    """Greedy (largest cell first: c0->a with 3) gives 3 + 0 = 3; the optimum c0->b, c1->a gives 2 + 2 = 4."""
    labels = np.array(["a", "a", "a", "b", "b", "a", "a"])
    clusters = np.array([0, 0, 0, 0, 0, 1, 1])
    # counts: c0 -> a:3, b:2 ; c1 -> a:2, b:0.
    assert hungarian_accuracy(labels, clusters) == pytest.approx(4 / 7)


def test_perfect_clustering_under_relabelling_scores_one_everywhere():
    labels = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([7, 7, 3, 3, 5, 5])
    assert many_to_one_accuracy(labels, clusters) == 1.0
    assert hungarian_accuracy(labels, clusters) == 1.0
    assert nmi(labels, clusters) == pytest.approx(1.0)
    assert ari(labels, clusters) == pytest.approx(1.0)


def test_nmi_hand_computed():
    """labels (0,0,1,1), clusters (0,0,0,1): MI / mean(H(labels), H(clusters)) (arithmetic normalisation)."""
    labels, clusters = [0, 0, 1, 1], [0, 0, 0, 1]
    h_labels = math.log(2)
    h_clusters = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    mi = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.25 * 0.5))
    assert nmi(labels, clusters) == pytest.approx(mi / ((h_labels + h_clusters) / 2))


def test_ari_of_an_orthogonal_split_is_minus_one_half():
    """labels (0,0,1,1) vs clusters (0,1,0,1): index 0, expected 2/3, max 2 -> (0 - 2/3) / (2 - 2/3) = -0.5."""
    assert ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("metric", [many_to_one_accuracy, hungarian_accuracy])
def test_accuracies_reject_mismatched_or_empty_inputs(metric):
    with pytest.raises(ValueError, match="equal length"):
        metric([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        metric(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        metric([], [])


def test_evaluate_assignments_gives_one_row_per_facet_and_label():
    assignments = np.array([[0, 1], [0, 1], [1, 0], [1, 0], [2, 0], [2, 1]])
    labels = {"colour": np.array([0, 0, 1, 1, 2, 2]), "shape": np.array([1, 1, 0, 0, 0, 1])}
    rows = evaluate_assignments(assignments, labels)
    assert [(r["facet"], r["label"]) for r in rows] == [(0, "colour"), (1, "colour"), (0, "shape"), (1, "shape")]
    expected_keys = {"facet", "label", "accuracy", "hungarian_accuracy", "nmi", "ari", "active_clusters"}
    assert all(set(r) == expected_keys for r in rows)
    by = {(r["facet"], r["label"]): r for r in rows}
    assert by[0, "colour"]["accuracy"] == 1.0 and by[0, "colour"]["active_clusters"] == 3
    assert by[1, "shape"]["accuracy"] == 1.0 and by[1, "shape"]["active_clusters"] == 2
    assert by[1, "colour"]["accuracy"] == pytest.approx(4 / 6)
    assert by[0, "shape"]["hungarian_accuracy"] == pytest.approx(4 / 6)

    best = best_facet_per_label(rows)
    assert best["colour"]["facet"] == 0 and best["shape"]["facet"] == 1
    table = format_table(rows)
    assert len(table.splitlines()) == 1 + len(rows)
    assert "colour" in table and "shape" in table


def test_evaluate_assignments_errors_name_the_problem():
    assignments = np.zeros((4, 2), dtype=int)
    with pytest.raises(ValueError, match="labels is empty"):
        evaluate_assignments(assignments, {})
    with pytest.raises(ValueError, match="'digit'.*shape"):
        evaluate_assignments(assignments, {"digit": np.zeros(5)})
    with pytest.raises(ValueError, match="'digit'"):
        evaluate_assignments(assignments, {"digit": np.zeros((4, 1))})
    with pytest.raises(ValueError, match="'digit' must hold class ids.*0.5"):
        evaluate_assignments(assignments, {"digit": np.array([0.0, 1.0, 0.5, 1.0])})
    with pytest.raises(ValueError, match="'digit' must hold class ids.*nan"):
        evaluate_assignments(assignments, {"digit": np.array([0.0, 1.0, np.nan, 1.0])})
    with pytest.raises(ValueError, match="'digit' must hold class ids.*complex"):
        evaluate_assignments(assignments, {"digit": np.zeros(4, dtype=complex)})
    with pytest.raises(ValueError, match="'digit' must hold class ids.*kinds \\['NoneType', 'str'\\]"):
        evaluate_assignments(assignments, {"digit": np.array([None, "a", "b", "a"], dtype=object)})


def test_labels_may_be_whole_floats_or_strings():
    """Class ids as a data frame may hold them: whole-number floats and strings score as integers do."""
    assignments = np.array([[0, 1], [0, 1], [1, 0], [1, 1]])
    as_ints = evaluate_assignments(assignments, {"y": np.array([3, 3, 7, 7])})
    assert evaluate_assignments(assignments, {"y": np.array([3.0, 3.0, 7.0, 7.0])}) == as_ints
    assert evaluate_assignments(assignments, {"y": np.array(["a", "a", "b", "b"])}) == as_ints
    assert evaluate_assignments(assignments, {"y": np.array(["a", "a", "b", "b"], dtype=object)}) == as_ints
    assert evaluate_assignments(assignments, {"y": np.array([1e20, 1e20, 2e20, 2e20])}) == as_ints  # not one class
