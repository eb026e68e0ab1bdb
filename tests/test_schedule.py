"""ProgressiveSchedule (SPEC 5): stage boundaries, the linear fade-in of each lower facet and the
validation of stage_epochs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mfcvae.config import TrainConfig
from mfcvae.schedule import FADE_FRACTION, ProgressiveSchedule

BASE = dict(epochs=10, batch_size=32, lr=1e-3, max_seconds=None, progressive=True, stage_epochs=None, fade_steps=None,
            free_bits=0.0, reseed_dead=False, refit_at_end=False, select_clusters=(), n_init=1, seed=0, compile=False)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**BASE, **kw})


def test_two_facet_stages_and_linear_fade():
    """Top facet on from step 0; facet 0 off before its stage, linear over fade_steps, then 1."""
    sched = ProgressiveSchedule.from_config(cfg(stage_epochs=(4, 6), fade_steps=20), n_facets=2, steps_per_epoch=10)
    assert sched.stage_starts == (0, 40)
    assert sched.fade_steps == 20
    for step in (0, 1, 39):
        torch.testing.assert_close(sched.weights(step), torch.tensor([0.0, 1.0]))
        assert sched.stage(step) == 0
    for step, expected in [(40, 0.0), (45, 0.25), (50, 0.5), (55, 0.75), (60, 1.0), (61, 1.0), (99, 1.0), (10**6, 1.0)]:
        torch.testing.assert_close(sched.weights(step), torch.tensor([expected, 1.0]), msg=f"step {step}")
    assert sched.stage(40) == 1 and sched.stage(99) == 1


def test_three_facets_switch_on_top_down():
    """J = 3: stage 0 trains facet 2, stage 1 fades in facet 1, stage 2 fades in facet 0; on facets stay on."""
    sched = ProgressiveSchedule.from_config(cfg(epochs=6, stage_epochs=(1, 2, 3), fade_steps=4), 3, 10)
    assert sched.stage_starts == (0, 10, 30)
    assert sched.facet_of_stage(0) == 2 and sched.facet_of_stage(2) == 0
    torch.testing.assert_close(sched.weights(5), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(sched.weights(12), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(sched.weights(29), torch.tensor([0.0, 1.0, 1.0]))
    torch.testing.assert_close(sched.weights(31), torch.tensor([0.25, 1.0, 1.0]))
    torch.testing.assert_close(sched.weights(59), torch.ones(3))
    assert [sched.stage(s) for s in (0, 9, 10, 29, 30, 59)] == [0, 0, 1, 1, 2, 2]


def test_weights_never_decrease_and_stay_in_unit_interval():
    sched = ProgressiveSchedule.from_config(cfg(epochs=9, fade_steps=7), 3, 5)
    previous = sched.weights(0)
    for step in range(1, 9 * 5):
        w = sched.weights(step)
        assert torch.all((w >= 0) & (w <= 1))
        assert torch.all(w >= previous), step
        previous = w


def test_zero_fade_switches_on_at_the_stage_start():
    sched = ProgressiveSchedule.from_config(cfg(stage_epochs=(5, 5), fade_steps=0), 2, 3)
    torch.testing.assert_close(sched.weights(14), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(sched.weights(15), torch.tensor([1.0, 1.0]))


def test_progressive_off_gives_all_ones_from_the_start():
    sched = ProgressiveSchedule.from_config(cfg(progressive=False), 3, 10)
    assert not sched.enabled
    for step in (0, 1, 50, 99):
        torch.testing.assert_close(sched.weights(step), torch.ones(3))


def test_default_stages_are_equal_and_fade_is_half_a_stage():
    """Without stage_epochs the run is split equally; without fade_steps a facet fades in over
    FADE_FRACTION (half) of the (shortest) later stage, in mini-batches."""
    assert FADE_FRACTION == 0.5
    sched = ProgressiveSchedule.from_config(cfg(epochs=10), 2, steps_per_epoch=8)
    assert sched.stage_starts == (0, 40)
    assert sched.fade_steps == round(0.5 * 5 * 8)
    sched = ProgressiveSchedule.from_config(cfg(epochs=9), 3, steps_per_epoch=4)
    assert sched.stage_starts == (0, 12, 24)
    assert sched.fade_steps == round(0.5 * 3 * 4)


def test_the_default_fade_is_half_the_shortest_later_stage():
    sched = ProgressiveSchedule.from_config(cfg(epochs=10, stage_epochs=(2, 5, 3)), 3, 4)
    assert sched.stage_starts == (0, 8, 28)
    assert sched.fade_steps == round(FADE_FRACTION * 3 * 4)


def test_explicit_fade_steps_override_the_default_fade():
    sched = ProgressiveSchedule.from_config(cfg(stage_epochs=(5, 5), fade_steps=23), 2, 10)
    assert sched.fade_steps == 23


def test_a_fade_longer_than_its_stage_is_cut_to_the_stage_with_a_warning():
    """The mnist preset's 15,000-batch fade on a small data set would never finish."""
    with pytest.warns(UserWarning, match="fade-in is cut to the stage length"):
        sched = ProgressiveSchedule.from_config(cfg(stage_epochs=(5, 5), fade_steps=123), 2, 10)
    assert sched.fade_steps == 50
    assert sched.weights(100).tolist() == [1.0, 1.0]


def test_default_stages_split_mini_batches_so_a_one_epoch_run_passes_every_stage():
    sched = ProgressiveSchedule.from_config(cfg(epochs=1), n_facets=3, steps_per_epoch=10)
    assert sched.stage_starts == (0, 3, 6)
    assert sched.fade_steps == 2  # half of the shortest later stage (3 batches), rounded
    torch.testing.assert_close(sched.weights(9), torch.ones(3))


def test_single_facet_is_always_on():
    sched = ProgressiveSchedule.from_config(cfg(), 1, 10)
    assert sched.stage_starts == (0,)
    torch.testing.assert_close(sched.weights(0), torch.ones(1))


@pytest.mark.parametrize("stage_epochs", [(10,), (4, 3, 3)])
def test_stage_epochs_needs_one_entry_per_facet(stage_epochs):
    with pytest.raises(ValueError, match="stage_epochs"):
        ProgressiveSchedule.from_config(cfg(epochs=10, stage_epochs=stage_epochs), 2, 10)


def test_stage_epochs_of_another_run_length_are_stretched_with_the_fade():
    """A preset's [101, 301] epochs and 2000-batch fade, run for 201 epochs: the same schedule at half scale."""
    sched = ProgressiveSchedule.from_config(cfg(epochs=201, stage_epochs=(101, 301), fade_steps=2000), 2, 10)
    assert sched.stage_starts == (0, 505) and sched.fade_steps == 1000
    longer = ProgressiveSchedule.from_config(cfg(epochs=20, stage_epochs=(5, 5), fade_steps=7), 2, 3)
    assert longer.stage_starts == (0, 30) and longer.fade_steps == 14


@pytest.mark.parametrize("kw", [dict(stage_epochs=(0, 10)), dict(fade_steps=-1), dict(epochs=0), dict(lr=0.0),
                                dict(batch_size=0), dict(max_seconds=0.0), dict(max_seconds=float("inf")),
                                dict(free_bits=-1.0), dict(seed=-1), dict(seed=1.5), dict(progressive="yes"),
                                dict(reseed_dead=None), dict(refit_at_end="no"), dict(compile="always")])
def test_train_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        cfg(**kw)


def test_train_config_has_no_defaults_and_no_removed_fields():
    """Every field is given (the estimator is the one place for defaults); the removed options
    (a learning-rate schedule, a fade fraction, pre-training, a choice of initialisation) are gone."""
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(TrainConfig))
    with pytest.raises(TypeError):
        TrainConfig(epochs=10, batch_size=32, lr=1e-3)
    for removed in ("fade_fraction", "lr_schedule", "lr_decay_start", "pretrain_epochs", "init", "refit_every"):
        with pytest.raises(TypeError):
            cfg(**{removed: None})
