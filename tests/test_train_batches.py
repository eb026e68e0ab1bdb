"""Mini-batches: boundaries (a last batch of one example joins the one before, since batch-norm
cannot normalise a single example in training, and the schedule counts the same batches), how
stored inputs reach the model, and batch-norm statistics wherever the model runs in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfcvae import train as train_module
from mfcvae.batches import batch_bounds, iterate_batches, map_batches, to_model_input

CPU = torch.device("cpu")


@pytest.mark.parametrize("n, size, expected", [
    (10, 4, [(0, 4), (4, 8), (8, 10)]),
    (9, 4, [(0, 4), (4, 9)]),  # 1 left over: merged
    (8, 4, [(0, 4), (4, 8)]),
    (1, 4, [(0, 1)]),  # a single example is a single batch
    (5, 10, [(0, 5)]),
])
def test_batch_bounds(n, size, expected):
    assert batch_bounds(n, size) == expected


def test_uint8_batches_reach_the_model_as_value_over_255_and_floats_as_they_are():
    raw = torch.arange(0, 256, 5, dtype=torch.uint8).reshape(-1, 1)
    as_float = to_model_input(raw, CPU)
    assert as_float.dtype == torch.float32
    torch.testing.assert_close(as_float, raw.float() / 255)
    x = torch.rand(7, 3)
    assert to_model_input(x, CPU) is x


def test_iterate_and_map_batches_cover_every_example_in_order():
    x = torch.arange(9, dtype=torch.float32).reshape(9, 1)
    assert [len(b) for b in iterate_batches(x, 4, CPU)] == [4, 5]  # the batch of one joined the one before
    doubled, sizes = map_batches(lambda xb: [2 * xb, torch.full((len(xb),), len(xb))], x, 4, CPU)
    torch.testing.assert_close(doubled, 2 * x)
    assert sizes.tolist() == [4] * 4 + [5] * 5


def test_a_trailing_batch_of_one_trains_with_batch_norm(tiny_estimator):
    """65 examples, batches of 64: one step per epoch, the schedule agrees, batch-norm (the conv
    ladder's) does not fail."""
    x = np.random.default_rng(0).random((65, 3, 16, 16), dtype=np.float32)
    model = tiny_estimator(architecture="conv", hidden_dims=(4, 8), epochs=2).fit(x)
    assert model.model_.cfg.batch_norm
    assert [row["step"] for row in model.history_] == [1, 2]


@pytest.mark.parametrize("refit_at_end", [False, True])
def test_batch_norm_statistics_are_recalibrated_after_training(tiny_estimator, refit_at_end):
    """After fit, with or without the end refit, a batch-norm layer's running mean is the plain
    average of its inputs over the training batches (not a momentum-lagged estimate), here for
    the encoder's first layer."""
    x = np.random.default_rng(0).random((96, 3, 16, 16), dtype=np.float32)
    model = tiny_estimator(architecture="conv", hidden_dims=(4, 8), batch_size=32, epochs=1,
                           refit_at_end=refit_at_end).fit(x)
    conv, norm = model.model_.encoder.blocks[0][0], model.model_.encoder.blocks[0][1]
    with torch.no_grad():
        features = conv(torch.from_numpy(x))  # every example falls in one of the 3 batches used
    torch.testing.assert_close(norm.running_mean, features.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert norm.momentum == 0.1 and not model.model_.training


def test_re_seeding_in_the_middle_of_training_judges_clusters_with_batch_norm_statistics_of_the_current_weights(
        tiny_estimator, monkeypatch):
    """reseed_dead judges clusters in eval mode: when it asks for the inputs' clusters, the running
    statistics have been re-estimated for the weights as they are, so that the first layer's
    running mean is the plain average of its inputs, not a momentum-lagged one."""
    x = np.random.default_rng(0).random((96, 3, 16, 16), dtype=np.float32)
    seen = []
    original = train_module.reseed_dead_clusters

    def checking(model, *args, **kwargs):
        conv, norm = model.encoder.blocks[0][0], model.encoder.blocks[0][1]
        judge, judged_before = model.cluster_log_posteriors, []

        def judged(xb):
            if not judged_before:  # the moment it first asks
                judged_before.append(True)
                with torch.no_grad():
                    seen.append((norm.running_mean.clone(), conv(torch.from_numpy(x)).mean((0, 2, 3)), model.training))
            return judge(xb)

        model.cluster_log_posteriors = judged
        try:
            return original(model, *args, **kwargs)
        finally:
            del model.cluster_log_posteriors

    monkeypatch.setattr(train_module, "reseed_dead_clusters", checking)
    tiny_estimator(architecture="conv", hidden_dims=(4, 8), batch_size=32, epochs=3, reseed_dead=True,
                   progressive=False).fit(x)
    assert len(seen) == 2  # as epochs 2 and 3 start
    for running, plain, training in seen:
        torch.testing.assert_close(running, plain, atol=1e-5, rtol=1e-4)
        assert not training
