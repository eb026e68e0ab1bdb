"""``max_seconds``: a wall-clock budget for fit. Time is faked (a clock that advances a fixed
amount per reading), so these tests are deterministic and never depend on the machine's speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mfcvae import MFCVAE
from mfcvae import estimator as estimator_module
from mfcvae import train as train_module
from mfcvae.budget import TimeBudget
from mfcvae.cli import main
from mfcvae.model import MultiFacetVAE
from mfcvae.runs import CHECKPOINT_FILE
from mfcvae.serialization import read_safetensors
from mfcvae.train import refit_cost

STEPS_PER_EPOCH = 5  # 300 examples in batches of 64


class FakeClock:
    """A perf_counter that advances ``tick`` seconds each time it is read."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def fake_clock(monkeypatch, tick: float) -> FakeClock:
    """Every ``time.perf_counter`` reading (fit's start, the budget's, the mixture fits' timing) on
    one fake clock."""
    fake = FakeClock(tick)
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    return fake_clock(monkeypatch, 0.01)


# --- TimeBudget on its own ------------------------------------------------------------------------

def test_without_a_limit_the_budget_plans_nothing(clock):
    budget = TimeBudget(None)
    budget.plan_loop(reserve=5.0)
    budget.start()
    assert not budget.limited and budget.loop_seconds is None and budget.fraction() is None
    assert budget.spent() > 0


def test_the_loop_gets_what_set_up_leaves_less_the_reserve(clock):
    """Counted from ``started``: 10 s budget, 2 s gone before the plan, 3 s kept back -> 5 s of loop."""
    budget = TimeBudget(10.0, started=0.0)
    clock.now, clock.tick = 2.0 - 0.01, 0.01  # the plan reads 2.0
    budget.plan_loop(reserve=3.0)
    assert budget.loop_seconds == pytest.approx(5.0)
    budget.start()  # reads 2.01
    clock.now = 4.51 - 0.01
    assert budget.fraction() == pytest.approx(0.5)
    clock.now = 100.0
    assert budget.fraction() == 1.0  # capped


def test_loop_time_accumulates_across_a_resumed_runs_sessions(clock):
    first = TimeBudget(10.0, started=0.0)
    first.plan_loop(reserve=0.0)
    first.start()
    clock.now += 3.0
    state = first.state()
    assert state["loop_seconds"] == pytest.approx(10.0, abs=0.05) and state["elapsed"] == pytest.approx(3.0, abs=0.05)
    clock.now += 50.0  # time between the sessions does not count
    second = TimeBudget(10.0)
    second.load_state(state)
    second.start()
    assert second.spent() == pytest.approx(3.0, abs=0.05)
    assert second.fraction() == pytest.approx(0.3, abs=0.01)


def test_a_budget_spent_before_the_loop_warns_and_counts_as_spent(clock):
    budget = TimeBudget(1.0, started=0.0)
    clock.now = 0.5
    with pytest.warns(UserWarning, match=r"max_seconds=1.0 less 0.6 s kept for the end refit"):
        budget.plan_loop(reserve=0.6)
    budget.start()
    assert budget.fraction() == 1.0


def test_the_refit_is_expected_to_cost_the_first_fit_scaled_by_its_inputs_and_the_spectral_start(monkeypatch):
    monkeypatch.setattr(train_module, "GMM_MAX_POINTS", 100)
    monkeypatch.setattr(train_module, "REFIT_MAX_POINTS", 400)
    monkeypatch.setattr(train_module, "SPECTRAL_COST_RATIO", 2.0)
    assert refit_cost(1.5, n=50) == pytest.approx(1.5 * (1 + 2))  # both fits take every input
    assert refit_cost(1.5, n=200) == pytest.approx(1.5 * (2 + 2))
    assert refit_cost(1.5, n=10**6) == pytest.approx(1.5 * (4 + 2))
    assert refit_cost(1.5, n=50, candidate_fits=12.5) == pytest.approx(1.5 * (1 + 2 + 12.5))  # choosing K


# --- the budget through fit -----------------------------------------------------------------------

def test_training_stops_at_the_deadline_with_every_stage_passed(tiny_estimator, X, clock):
    est = tiny_estimator(epochs=1000, max_seconds=2.0, refit_at_end=False).fit(X)
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


@pytest.fixture()
def slow_fits(monkeypatch) -> FakeClock:
    """A fake clock on which every mixture fit, the first one and the end refit, takes 0.5 s."""
    clock = fake_clock(monkeypatch, 0.01)
    for name in ("initialise_priors", "refit_priors"):
        def slow(*args, real=getattr(train_module, name), **kwargs):
            clock.now += 0.5
            real(*args, **kwargs)
        monkeypatch.setattr(train_module, name, slow)
    return clock


def test_an_initialisation_that_spends_the_budget_leaves_one_mini_batch(tiny_estimator, X, slow_fits):
    with pytest.warns(UserWarning, match="max_seconds"):
        est = tiny_estimator(epochs=50, max_seconds=0.4, refit_at_end=False).fit(X)
    assert est.history_[-1]["step"] == 1


def test_building_the_model_counts_against_the_budget(tiny_estimator, X, monkeypatch):
    """The clock starts when fit does: time spent before training starts (moving the model to the
    device, where a first CUDA call can take seconds) comes out of the budget too."""
    clock = fake_clock(monkeypatch, 0.01)

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
    est = tiny_estimator(epochs=1000, max_seconds=1.0, refit_at_end=False).fit(X, run_dir=run)
    budget = read_safetensors(run / CHECKPOINT_FILE)[1]["budget"]
    assert 0 < budget["loop_seconds"] < 1.0  # what set-up and initialisation left of the budget
    assert budget["elapsed"] >= budget["loop_seconds"]
    again = tiny_estimator(epochs=1000, max_seconds=1.0, refit_at_end=False).fit(X, run_dir=run, resume=True)
    assert again.history_ == est.history_
    # more epochs would change nothing but the schedule's arithmetic (progress is time spent): refused
    with pytest.raises(ValueError, match=r"epochs cannot change on resume of a run with a time budget.*epochs=1000"):
        tiny_estimator(epochs=2000, max_seconds=1.0, refit_at_end=False).fit(X, run_dir=run, resume=True)


@pytest.mark.parametrize("value", [0, -5.0, float("nan"), float("inf"), "10"])
def test_bad_budgets_are_refused_before_training(tiny_estimator, X, value):
    with pytest.raises(ValueError, match="max_seconds"):
        tiny_estimator(max_seconds=value).fit(X)


def test_refit_at_end_gets_the_time_the_first_mixture_fit_took(tiny_estimator, X, slow_fits, monkeypatch):
    """With refit_at_end the loop stops early by what the initial mixture fit cost (here with no
    allowance for the spectral start), so that the fit at the end stays inside max_seconds."""
    monkeypatch.setattr(train_module, "SPECTRAL_COST_RATIO", 0.0)
    clock = slow_fits
    steps, seconds = {}, {}
    for refit in (False, True):
        est = tiny_estimator(epochs=1000, max_seconds=3.0, refit_at_end=refit)
        start = clock.now
        est.fit(X)
        steps[refit], seconds[refit] = est.history_[-1]["step"], clock.now - start
    assert steps[True] < steps[False]
    assert seconds[True] == pytest.approx(3.0, abs=0.1)  # the loop, then the second fit, within the budget


@pytest.mark.parametrize("points_ratio, spectral_ratio, ends_at", [
    (2, 0.0, 2.5),  # the refit fits twice the inputs: 1.0 s kept for a refit that takes 0.5 s
    (1, 2.0, 2.0),  # the spectral start's allowance: 1.5 s kept for a refit that takes 0.5 s
])
def test_the_time_kept_for_the_refit_grows_with_its_inputs_and_its_spectral_start(
        tiny_estimator, X, slow_fits, monkeypatch, points_ratio, spectral_ratio, ends_at):
    """The end refit fits up to REFIT_MAX_POINTS inputs where the first fit took GMM_MAX_POINTS,
    and its spectral start costs SPECTRAL_COST_RATIO times the first fit besides: the loop keeps
    back the first fit's time scaled by both (the fake refit takes 0.5 s whatever it is given, so
    the whole fit ends early by the difference)."""
    monkeypatch.setattr(train_module, "GMM_MAX_POINTS", len(X) // 4)
    monkeypatch.setattr(train_module, "REFIT_MAX_POINTS", points_ratio * len(X) // 4)
    monkeypatch.setattr(train_module, "SPECTRAL_COST_RATIO", spectral_ratio)
    tiny_estimator(epochs=1000, max_seconds=3.0).fit(X)
    assert slow_fits.now == pytest.approx(ends_at, abs=0.1)


def test_cli_max_seconds_reaches_the_estimator(tmp_path, shapes_data, clock):
    x, labels = shapes_data
    np.savez(tmp_path / "data.npz", x=x, **labels)
    assert main(["fit", "--preset", "demo", "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "run"),
                 "--quiet", "--epochs", "1000", "--max-seconds", "1.5", "--set", "hidden_dims=[16, 16]",
                 "--set", "fade_steps=10"]) == 0
    model = MFCVAE.load(tmp_path / "run")
    assert model.max_seconds == 1.5
    assert model.history_[-1]["epoch"] < 1000
