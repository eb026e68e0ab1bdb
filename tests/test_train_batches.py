"""Mini-batch boundaries: a last batch of one example joins the one before (batch-norm cannot
normalise a single example in training), and the schedule counts the same batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfcvae import train as train_module
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


def test_batch_norm_statistics_are_recalibrated_after_training(tiny_estimator):
    """After fit, a batch-norm layer's running mean is the plain average of its inputs over the
    training batches (not a momentum-lagged estimate), here for the encoder's first layer."""
    x = np.random.default_rng(0).random((96, 3, 16, 16), dtype=np.float32)
    model = tiny_estimator(architecture="conv", hidden_dims=(4, 8), batch_size=32, epochs=1).fit(x)
    conv, norm = model.model_.encoder.blocks[0][0], model.model_.encoder.blocks[0][1]
    with torch.no_grad():
        features = conv(torch.from_numpy(x))  # every example falls in one of the 3 batches used
    torch.testing.assert_close(norm.running_mean, features.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert norm.momentum == 0.1 and not model.model_.training


def test_re_seeding_in_the_middle_of_training_sees_batch_norm_statistics_of_the_current_weights(
        tiny_estimator, monkeypatch):
    """reseed_dead (and the refits between epochs) judge clusters in eval mode: the running
    statistics are first re-estimated for the weights as they are, so that at that moment the
    first layer's running mean is the plain average of its inputs, not a momentum-lagged one."""
    x = np.random.default_rng(0).random((96, 3, 16, 16), dtype=np.float32)
    seen = []
    original = train_module.reseed_dead_clusters

    def checking(model, *args, **kwargs):
        conv, norm = model.encoder.blocks[0][0], model.encoder.blocks[0][1]
        with torch.no_grad():
            seen.append((norm.running_mean.clone(), conv(torch.from_numpy(x)).mean((0, 2, 3)), model.training))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "reseed_dead_clusters", checking)
    tiny_estimator(architecture="conv", hidden_dims=(4, 8), batch_size=32, epochs=3, reseed_dead=True,
                   progressive=False).fit(x)
    assert len(seen) == 2  # as epochs 2 and 3 start
    for running, plain, training in seen:
        torch.testing.assert_close(running, plain, atol=1e-5, rtol=1e-4)
        assert not training
