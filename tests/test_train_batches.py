"""Mini-batch boundaries: a last batch of one example joins the one before (batch-norm cannot
normalise a single example in training), and the schedule counts the same batches."""

from __future__ import annotations

import pytest

from mfcvae.train import batch_bounds


@pytest.mark.parametrize("n, size, expected", [
    (10, 4, [(0, 4), (4, 8), (8, 10)]),
    (9, 4, [(0, 4), (4, 9)]),  # 1 left over: merged
    (8, 4, [(0, 4), (4, 8)]),
    (1, 4, [(0, 1)]),  # a single example is a single batch
    (5, 10, [(0, 5)]),
])
def test_batch_bounds(n, size, expected):
    assert batch_bounds(n, size) == expected


def test_a_trailing_batch_of_one_trains_with_batch_norm(tiny_estimator, X):
    """65 examples, batches of 64: one step per epoch, the schedule agrees, batch-norm does not fail."""
    model = tiny_estimator(batch_norm=True, epochs=2).fit(X[:65])
    assert [row["step"] for row in model.history_] == [1, 2]
