"""Feature vectors end to end: the number of clusters chosen by the end refit
(``n_clusters="auto"``), two independent groupings of vectors found as two facets, and the
``embeddings`` preset through the command line on an AnnData and a Parquet file."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from mfcvae.cli import main
from mfcvae.config import load_preset
from mfcvae.estimator import MFCVAE
from mfcvae.metrics import evaluate_assignments
from mfcvae.mixtures import MixturePrior, cluster_candidates, select_n_clusters

TINY = dict(latent_dims=(2, 1), hidden_dims=(32, 32), epochs=3, batch_size=64, device="cpu", precision="float32",
            verbose=False)


def two_groupings(n: int = 3000, seed: int = 1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N, 32) float32 vectors: features 0-15 from one of 4 clusters (label "a"), features 16-31
    from one of 3 (label "b"), drawn independently, each with unit noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 4, n), rng.integers(0, 3, n)
    centres_a, centres_b = rng.normal(0, 3, (4, 16)), rng.normal(0, 3, (3, 16))
    x = np.concatenate([centres_a[a], centres_b[b]], axis=1) + rng.normal(size=(n, 32))
    return x.astype(np.float32), {"a": a, "b": b}


# --- choosing the number of clusters --------------------------------------------------------
@pytest.mark.parametrize("covariance, learn_weights", [("full", True), ("diag", False)])
def test_bic_chooses_the_number_of_well_separated_groups(covariance, learn_weights):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (5, 3))
    means = centres[rng.integers(0, 5, 2000)] + rng.normal(size=(2000, 3))
    z = means + 0.1 * rng.normal(size=means.shape)
    prior = MixturePrior(12, 3, covariance, learn_weights)
    k, start = select_n_clusters(means, z, prior, seed=0)
    assert k == 5
    assert start["means_init"].shape == (5, 3)


def test_one_cluster_is_a_candidate_and_many_are_spaced_geometrically():
    assert cluster_candidates(4) == [1, 2, 3, 4]
    many = cluster_candidates(200)
    assert many[0] == 1 and many[-1] == 200 and len(many) <= 30 and many == sorted(set(many))
    rng = np.random.default_rng(0)
    blob = rng.normal(size=(1000, 2))
    assert select_n_clusters(blob, blob, MixturePrior(6, 2, "full"), seed=0)[0] == 1


def test_auto_facets_get_the_chosen_count_and_fixed_ones_keep_theirs(tmp_path):
    x, _ = two_groupings(600)
    model = MFCVAE(n_clusters=("auto", 3), max_clusters=8, **TINY).fit(x)
    k0, k1 = model.n_clusters_
    assert 1 <= k0 <= 8 and k1 == 3
    assert [len(w) for w in model.cluster_weights_] == [k0, 3]
    assert model.predict_proba(x)[0].shape == (600, k0) and model.labels_[:, 0].max() < k0
    assert model.get_params()["n_clusters"] == ("auto", 3)  # the parameter stays as given
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["n_clusters"] == [k0, 3]
    loaded = MFCVAE.load(tmp_path / "m", device="cpu")
    assert loaded.n_clusters_ == (k0, 3)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.sample(2, facet=0, cluster=k0 - 1).shape == (2, 32)
    with pytest.raises(ValueError, match=f"clusters 0..{k0 - 1}"):
        loaded.sample(2, facet=0, cluster=k0)


@pytest.mark.parametrize("params, message", [
    (dict(n_clusters="auto", refit_at_end=False), "n_clusters='auto' needs refit_at_end=True"),
    (dict(n_clusters=("auto", "many")), "entries must be positive integers or 'auto'"),
    (dict(n_clusters="some"), "entries must be positive integers or 'auto'"),
    (dict(n_clusters="auto", max_clusters=0), "max_clusters must be a positive integer"),
    (dict(n_clusters=("auto", 2, 2)), "one entry per facet"),
])
def test_bad_automatic_counts_are_refused_before_training(params, message):
    with pytest.raises(ValueError, match=message):
        MFCVAE(**{**TINY, **params}).fit(np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))


def test_one_auto_means_every_facet():
    model = MFCVAE(n_clusters="auto", max_clusters=4, **TINY).fit(two_groupings(300)[0])
    assert len(model.n_clusters_) == 2 and all(1 <= k <= 4 for k in model.n_clusters_)


# --- two groupings, two facets --------------------------------------------------------------
def test_two_independent_groupings_of_vectors_are_found_as_two_facets():
    x, labels = two_groupings()
    params = {**load_preset("embeddings"), "epochs": 20, "batch_size": 128, "verbose": False, "device": "cpu"}
    model = MFCVAE(**params).fit(x)
    nmi = {(r["facet"], r["label"]): r["nmi"] for r in evaluate_assignments(model.labels_, labels)}
    # each grouping is held by a different facet, clearly more than by the other one
    holder = {label: max((0, 1), key=lambda j: nmi[j, label]) for label in ("a", "b")}
    assert holder["a"] != holder["b"], nmi
    for label in ("a", "b"):
        assert nmi[holder[label], label] > 0.6, nmi
        assert nmi[holder[label], label] - nmi[1 - holder[label], label] > 0.25, nmi


# --- the embeddings preset through the command line -----------------------------------------
@pytest.fixture(scope="module")
def cell_files(tmp_path_factory):
    """The same 400 'cells' as a sparse .h5ad (obs cell_type and phase) and as a Parquet table."""
    folder = tmp_path_factory.mktemp("cells")
    x, labels = two_groupings(400)
    x = np.clip(x, 0, None)  # counts-like: non-negative, about half zeros
    types = np.array(["B", "NK", "T", "mono"])[labels["a"]]
    phases = np.array(["G1", "G2M", "S"])[labels["b"]]
    obs = pd.DataFrame({"cell_type": pd.Categorical(types), "phase": pd.Categorical(phases)},
                       index=[f"c{i}" for i in range(len(x))])
    anndata.AnnData(sparse.csr_matrix(x), obs=obs).write_h5ad(folder / "cells.h5ad")
    pd.DataFrame({**{f"g{i}": x[:, i] for i in range(x.shape[1])}, "cell_type": types, "phase": phases}) \
        .to_parquet(folder / "cells.parquet", row_group_size=128)
    return folder


FAST = ["--epochs", "2", "--quiet", "--device", "cpu", "--set", "hidden_dims=[16, 16]", "--set", "max_clusters=5",
        "--set", "batch_size=64"]


@pytest.mark.parametrize("name", ["cells.h5ad", "cells.parquet"])
def test_the_embeddings_preset_fits_a_table_reports_its_labels_and_writes_a_report(cell_files, tmp_path, capsys, name):
    run = tmp_path / "run"
    assert main(["fit", "--preset", "embeddings", "--data", str(cell_files / name), "--data-option",
                 "labels=[cell_type, phase]", "--data-option", "lazy=true", "--out", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    assert "cell_type" in out and "phase" in out and "chosen by BIC (at most 5)" in out
    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "chosen by BIC (at most 5)" in page and "cell_type" in page
