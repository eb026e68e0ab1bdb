"""``n_init``: several short starts from different seeds, the one with the best ELBO trains on."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
import torch

from mfcvae import train as train_module
from mfcvae.callbacks import Callback
from mfcvae.estimator import MFCVAE
from mfcvae.runs import METRICS_FILE
from test_estimator import _interrupt

CPU = torch.device("cpu")


class Heard(Callback):
    def __init__(self):
        self.messages, self.epochs = [], []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.epochs.append(row["epoch"])


def fit_with_starts(tiny_estimator, X, n_init: int, **kw):
    """Fit, recording every start's trainer and what the callbacks hear."""
    heard, trainers = Heard(), []
    run = train_module.Trainer.run

    def recording_run(self, x, until=None):
        if until is not None:
            trainers.append(self)
        return run(self, x, until)

    estimator = tiny_estimator(n_init=n_init, **kw)
    original = train_module.train

    def train_with(model, x, cfg, device, **options):
        return original(model, x, cfg, device, **{**options, "callbacks": [*options.get("callbacks", ()), heard]})

    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_module.Trainer, "run", recording_run)
        m.setattr("mfcvae.estimator.train", train_with)
        estimator.fit(X, **kw.pop("fit", {}))
    return estimator, trainers, heard


def test_the_start_with_the_best_elbo_trains_on_and_the_others_do_not(tiny_estimator, X):
    estimator, trainers, heard = fit_with_starts(tiny_estimator, X, 3, epochs=10)
    assert len(trainers) == 3 and len(heard.messages) == 3
    assert [t.epoch for t in trainers] != [10, 10, 10]
    elbos = [t.history[0]["elbo"] for t in trainers]
    assert len(set(elbos)) == 3  # different seeds, different starts
    best = int(np.argmax(elbos))
    assert [t.epoch for t in trainers] == [10 if i == best else 1 for i in range(3)]
    assert all(f"start {i + 1} of 3: ELBO {e:.2f}" in m for i, (e, m) in enumerate(zip(elbos, heard.messages)))
    assert heard.epochs == list(range(1, 11))  # the chosen start's first epoch is reported too
    assert estimator.history_ == trainers[best].history
    # the estimator's model holds the chosen start's weights (refitted at the end)
    chosen = trainers[best].model.state_dict()
    assert all(torch.equal(v, chosen[k]) for k, v in estimator.model_.state_dict().items() if "priors" not in k)


def test_one_start_is_the_plain_run(tiny_estimator, X):
    a, b = tiny_estimator(n_init=1).fit(X), tiny_estimator().fit(X)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in a.history_] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in b.history_]


def test_a_run_with_starts_writes_the_chosen_one_to_its_folder_and_resumes_it(tiny_estimator, X, tmp_path,
                                                                             monkeypatch):
    straight = tiny_estimator(n_init=2, epochs=6).fit(X)
    with monkeypatch.context() as m:
        _interrupt(m, at_epoch=3)  # the chosen start, in its fourth epoch
        with pytest.raises(KeyboardInterrupt):
            tiny_estimator(n_init=2, epochs=6).fit(X, run_dir=tmp_path)
    with open(tmp_path / METRICS_FILE, newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    resumed = tiny_estimator(n_init=2, epochs=6).fit(X, run_dir=tmp_path, resume=True)
    for key in ("step", "elbo", "kl_0", "reseeded_0"):
        assert [h[key] for h in resumed.history_] == pytest.approx([h[key] for h in straight.history_], rel=1e-9)


def test_starts_share_the_time_budget(tiny_estimator, X):
    start = time.perf_counter()
    model = tiny_estimator(n_init=3, epochs=10_000, max_seconds=4.0).fit(X)
    assert time.perf_counter() - start < 4.0 + 2.0
    assert model.history_[-1]["epoch"] > 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_n_init_must_be_a_positive_integer(tiny_estimator, X, bad):
    with pytest.raises(ValueError, match="n_init must hold positive integers"):
        tiny_estimator(n_init=bad).fit(X)
