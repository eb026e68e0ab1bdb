"""``max_seconds``: a wall-clock budget for fit. Time is faked (a clock that advances a fixed
amount per reading), so these tests are deterministic and never depend on the machine's speed."""

from __future__ import annotations

import numpy as np
import pytest

from mfcvae import MFCVAE
from mfcvae import estimator as estimator_module
from mfcvae import train as train_module
from mfcvae.cli import main
from mfcvae.model import MultiFacetVAE
from mfcvae.serialization import read_safetensors
from mfcvae.train import CHECKPOINT_FILE

STEPS_PER_EPOCH = 5  # 300 examples in batches of 64


class FakeClock:
    """A perf_counter that advances ``tick`` seconds each time it is read."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock(0.01)
    monkeypatch.setattr(train_module.time, "perf_counter", fake)
    return fake


def test_training_stops_at_the_deadline_with_every_stage_passed(tiny_estimator, X, clock):
    est = tiny_estimator(epochs=1000, max_seconds=2.0).fit(X)
    last = est.history_[-1]
    assert 1 < last["step"] < 1000 * STEPS_PER_EPOCH  # the deadline, not the epochs, ended the run
    assert clock.now == pytest.approx(2.0, abs=0.1)
    # The progressive schedule was laid over the time: by the deadline the lower facet is fully on,
    # although by mini-batch count (stage 1 starts at epoch 500) it would not have started.
    assert last["weight_0"] == 1.0 and last["weight_1"] == 1.0
    early = next(row for row in est.history_ if row["step"] >= 2)
    assert early["weight_0"] == 0.0  # stage 0 (top facet alone) came first
    assert est.predict(X).shape == (len(X), 2)


def test_a_budget_that_never_binds_changes_nothing(tiny_estimator, X):
    plain = tiny_estimator().fit(X)
    timed = tiny_estimator(max_seconds=1e6).fit(X)
    np.testing.assert_array_equal(plain.predict_proba(X)[1], timed.predict_proba(X)[1])
    assert [r["step"] for r in plain.history_] == [r["step"] for r in timed.history_]


def test_warm_up_that_spends_the_budget_leaves_one_mini_batch(tiny_estimator, X, monkeypatch):
    monkeypatch.setattr(train_module.time, "perf_counter", FakeClock(1.0))
    with pytest.warns(UserWarning, match="max_seconds"):
        est = tiny_estimator(epochs=50, max_seconds=0.5, pretrain_epochs=1).fit(X)
    assert est.history_[-1]["step"] == 1


def test_building_the_model_counts_against_the_budget(tiny_estimator, X, monkeypatch):
    """The clock starts when fit does: time spent before the trainer exists (moving the model to
    the device, where a first CUDA call can take seconds) comes out of the budget too."""
    clock = FakeClock(0.01)
    monkeypatch.setattr(train_module.time, "perf_counter", clock)

    class SlowToBuild(MultiFacetVAE):
        def __init__(self, cfg):
            super().__init__(cfg)
            clock.now += 5.0  # longer than the whole budget

    monkeypatch.setattr(estimator_module, "MultiFacetVAE", SlowToBuild)
    with pytest.warns(UserWarning, match="max_seconds"):
        est = tiny_estimator(epochs=50, max_seconds=2.0).fit(X)
    assert est.history_[-1]["step"] == 1


def test_checkpoint_keeps_the_budget_and_a_spent_run_resumes_to_nothing(tiny_estimator, X, tmp_path, clock):
    run = tmp_path / "run"
    est = tiny_estimator(epochs=1000, max_seconds=1.0).fit(X, run_dir=run)
    meta = read_safetensors(run / CHECKPOINT_FILE)[1]
    assert 0 < meta["loop_budget"] < 1.0  # what set-up and initialisation left of the budget
    assert meta["elapsed"] >= meta["loop_budget"]
    again = tiny_estimator(epochs=1000, max_seconds=1.0).fit(X, run_dir=run, resume=True)
    assert again.history_ == est.history_
    # more epochs would change nothing but the schedule's arithmetic (progress is time spent): refused
    with pytest.raises(ValueError, match=r"epochs cannot change on resume of a run with a time budget.*epochs=1000"):
        tiny_estimator(epochs=2000, max_seconds=1.0).fit(X, run_dir=run, resume=True)


@pytest.mark.parametrize("value", [0, -5.0, float("nan"), float("inf"), "10"])
def test_bad_budgets_are_refused_before_training(tiny_estimator, X, value):
    with pytest.raises(ValueError, match="max_seconds"):
        tiny_estimator(max_seconds=value).fit(X)


@pytest.fixture()
def slow_fits(monkeypatch) -> FakeClock:
    """A fake clock on which every mixture fit, the first one and the end refit, takes 0.5 s."""
    clock = FakeClock(0.01)
    monkeypatch.setattr(train_module.time, "perf_counter", clock)
    real_fit = estimator_module.initialise_priors

    def slow_fit(*args, **kwargs):
        clock.now += 0.5
        real_fit(*args, **kwargs)

    monkeypatch.setattr(estimator_module, "initialise_priors", slow_fit)  # the first fit
    monkeypatch.setattr(train_module, "initialise_priors", slow_fit)  # the end refit (refit_priors)
    return clock


def test_refit_at_end_gets_the_time_the_first_mixture_fit_took(tiny_estimator, X, slow_fits):
    """With refit_at_end (from k-means' start) the loop stops early by what the initial mixture fit
    cost, so that the fit at the end stays inside max_seconds."""
    clock = slow_fits
    steps, seconds = {}, {}
    for refit in (False, True):
        est = tiny_estimator(epochs=1000, max_seconds=3.0, refit_at_end=refit, refit_start="kmeans")
        start = clock.now
        est.fit(X)
        steps[refit], seconds[refit] = est.history_[-1]["step"], clock.now - start
    assert steps[True] < steps[False]
    assert seconds[True] == pytest.approx(3.0, abs=0.1)  # the loop, then the second fit, within the budget


def test_the_time_kept_for_the_refit_grows_with_the_inputs_it_fits(tiny_estimator, X, slow_fits, monkeypatch):
    """The end refit fits up to REFIT_MAX_POINTS inputs where the first fit took GMM_MAX_POINTS:
    the loop keeps back the first fit's time scaled by the ratio (here 2: 1.0 s for a refit that
    takes 0.5 s in the fake clock, so the whole fit ends 0.5 s early)."""
    for module in (estimator_module, train_module):
        monkeypatch.setattr(module, "GMM_MAX_POINTS", len(X) // 4)
        monkeypatch.setattr(module, "REFIT_MAX_POINTS", len(X) // 2)
    tiny_estimator(epochs=1000, max_seconds=3.0, refit_start="kmeans").fit(X)
    assert slow_fits.now == pytest.approx(2.5, abs=0.1)


def test_a_spectral_start_keeps_back_its_cost_as_well(tiny_estimator, X, slow_fits, monkeypatch):
    """refit_start="spectral" adds SPECTRAL_COST_RATIO times the first fit (here 2: 1.0 s more kept
    back than the 0.5 s refit takes, so the fit ends 1.0 s early)."""
    monkeypatch.setattr(estimator_module, "SPECTRAL_COST_RATIO", 2.0)
    tiny_estimator(epochs=1000, max_seconds=3.0, refit_start="spectral").fit(X)
    assert slow_fits.now == pytest.approx(2.0, abs=0.1)


def test_cli_max_seconds_reaches_the_estimator(tmp_path, shapes_data, clock):
    x, labels = shapes_data
    np.savez(tmp_path / "data.npz", x=x, **labels)
    assert main(["fit", "--preset", "demo", "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "run"),
                 "--quiet", "--epochs", "1000", "--max-seconds", "1.5", "--set", "hidden_dims=[16, 16]",
                 "--set", "fade_steps=10"]) == 0
    model = MFCVAE.load(tmp_path / "run")
    assert model.max_seconds == 1.5
    assert model.history_[-1]["epoch"] < 1000
