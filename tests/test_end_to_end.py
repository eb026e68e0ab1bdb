"""End to end: an MFCVAE must recover two known, independent factors, one per facet.

The data are 64-pixel grey-level vectors made of two regions. Factor ``a`` (4 values) picks one of
four random binary templates for the 48-pixel left region; factor ``b`` (4 values) picks one of
four templates for the 16-pixel right region. Templates are 0.1 / 0.9 per pixel plus a little
noise, so every (a, b) combination is trivially separable by an MLP. Both facets are needed: one
facet with 4 clusters cannot represent the 16 combinations, so the only way to explain the data
with a 4-cluster top facet is one factor per facet. ``a`` explains more of the pixels, so
progressive training (top facet first) should give it to the top facet, and ``b`` to the lower one.

The top facet is kept small (1-D latent, 4 clusters) so it cannot hold both factors; the lower
facet gets 8 clusters for b's 4 values (over-clustering, scored many-to-one as in the paper),
which avoids the local optimum where two of b's values share a cluster. Without free_bits the
lower facet collapses onto its prior (a KL near zero, accuracy at chance) as soon as it is faded
in. If this test fails, that collapse (or the merge) is the first thing to check: the failure
message prints each facet's KL and the full accuracy table.
"""

from __future__ import annotations

import numpy as np

from mfcvae import MFCVAE
from mfcvae.metrics import evaluate_assignments, format_table


def make_two_region_data(n: int, seed: int = 0, sizes=(48, 16), levels: int = 4, noise: float = 0.05):
    """(n, 64) inputs in [0, 1] and labels {"a", "b"}: factor a sets the left region, b the right one."""
    templates = np.random.default_rng(1234)  # the same templates for every call
    left_templates = templates.random((levels, sizes[0])) < 0.5
    right_templates = templates.random((levels, sizes[1])) < 0.5
    rng = np.random.default_rng(seed)
    a, b = rng.integers(levels, size=n), rng.integers(levels, size=n)
    x = np.concatenate([np.where(left_templates[a], 0.9, 0.1), np.where(right_templates[b], 0.9, 0.1)], axis=1)
    x = np.clip(x + rng.normal(0, noise, x.shape), 0, 1).astype(np.float32)
    return x, {"a": a, "b": b}


def test_each_facet_recovers_a_different_factor():
    """Each factor must be clustered by its own facet with (many-to-one) accuracy >= 0.9."""
    X, labels = make_two_region_data(1200)
    est = MFCVAE(
        n_clusters=(8, 4),
        latent_dims=(4, 1),
        hidden_dims=(64, 128),
        learn_weights=False,
        epochs=80,
        batch_size=64,
        lr=2e-3,
        free_bits=3.0,  # keeps the lower facet from collapsing onto its prior when it fades in
        refit_at_end=False,  # what training alone learns
        seed=0,
        device="cpu",
        precision="float32",  # not "auto": the same arithmetic on every test machine
        verbose=False,
    ).fit(X)
    rows = evaluate_assignments(est.predict(X), labels)
    accuracy = {(r["facet"], r["label"]): r["accuracy"] for r in rows}
    last = est.history_[-1]
    report = f"\nKL per facet: {last['kl_0']:.2f} / {last['kl_1']:.2f} nats\n{format_table(rows)}"

    best_facet = {name: max((0, 1), key=lambda j: accuracy[j, name]) for name in labels}
    assert best_facet["a"] != best_facet["b"], "both factors landed in the same facet" + report
    assert accuracy[best_facet["a"], "a"] >= 0.9, report
    assert accuracy[best_facet["b"], "b"] >= 0.9, report
    # The facet that captured one factor must not also capture the other (that would be no split).
    assert accuracy[best_facet["a"], "b"] < 0.5 and accuracy[best_facet["b"], "a"] < 0.5, report
