"""What training tells the outside world: progress (a bar on a terminal, one line per epoch
elsewhere), metrics.csv, and the run folder, which leaves an older run's files alone until the
new run first writes and then clears them all."""

from __future__ import annotations

import csv
import io
import re
import sys

import pytest

from mfcvae import estimator as estimator_module
from mfcvae.callbacks import Callback, MetricsCSV, Progress
from mfcvae.model import MultiFacetVAE
from mfcvae.runs import CHECKPOINT_FILE, DATA_FILE, METRICS_FILE, TENSORBOARD_DIR, RunFolder
from mfcvae.serialization import CONFIG_FILE, MODEL_FILE

EPOCH_LINE = re.compile(r"epoch (\d+)/2: elbo -?\d+\.\d, rec -?\d+\.\d, kl \d+\.\d\d/\d+\.\d\d, \d+\.\d s")


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_writes_one_line_per_epoch_where_the_stream_is_not_a_terminal(tiny_estimator, X, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)  # where fit's Progress writes
    tiny_estimator(verbose=True, epochs=2).fit(X)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert [int(EPOCH_LINE.fullmatch(line).group(1)) for line in lines] == [1, 2]


def test_progress_draws_a_bar_on_a_terminal(tiny_estimator, X, monkeypatch):
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    tiny_estimator(verbose=True, epochs=2).fit(X)
    text = stream.getvalue()
    assert "\r" in text and "epoch 2/2" in text and "10/10" in text  # 300 inputs in batches of 64: 5 a epoch
    assert "elbo" in text and not EPOCH_LINE.search(text)


def test_progress_under_a_time_budget_names_the_budget(tiny_estimator, X, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    tiny_estimator(verbose=True, epochs=1, max_seconds=1e4, refit_at_end=False).fit(X)
    assert stream.getvalue().startswith("epoch 1, 10000 s: elbo ")


@pytest.mark.parametrize("stream_type", [io.StringIO, Terminal])
def test_progress_messages_reach_the_stream_either_way(stream_type):
    stream = stream_type()
    progress = Progress(stream)
    assert progress.interactive == (stream_type is Terminal)
    progress.message("compiling the loss")
    assert "compiling the loss\n" in stream.getvalue()


def test_quiet_fits_write_nothing(tiny_estimator, X, capsys):
    tiny_estimator(verbose=False, epochs=1).fit(X)
    assert capsys.readouterr() == ("", "")


# --- metrics.csv -----------------------------------------------------------------------------------

def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_holds_the_history_row_by_row(tiny_estimator, X, tmp_path):
    est = tiny_estimator(epochs=2).fit(X, run_dir=tmp_path)
    rows = read_rows(tmp_path / METRICS_FILE)
    assert list(rows[0]) == list(est.history_[0])
    assert len(rows) == len(est.history_) == 2
    for row, epoch in zip(rows, est.history_):
        assert {k: float(v) for k, v in row.items()} == pytest.approx(epoch)


def test_metrics_csv_callback_appends_each_epochs_row_under_one_header(tmp_path):
    run = RunFolder(tmp_path / "run")
    callback = MetricsCSV(run)
    assert not (tmp_path / "run").exists()  # nothing written yet: nothing created
    for epoch in (1, 2):
        callback.on_epoch_end(None, {"epoch": epoch, "elbo": -10.0 * epoch})
    assert read_rows(tmp_path / "run" / METRICS_FILE) == [{"epoch": "1", "elbo": "-10.0"},
                                                          {"epoch": "2", "elbo": "-20.0"}]


# --- the run folder --------------------------------------------------------------------------------

OLD_RUN = {CHECKPOINT_FILE: b"old checkpoint", METRICS_FILE: b"epoch\n1\n", MODEL_FILE: b"old weights",
           CONFIG_FILE: b"{}", "evaluation.json": b"{}", "report.html": b"<html>", "report_facet0.png": b"png",
           DATA_FILE: b'{"path": "old.npz", "options": {}}'}


def old_run(path) -> dict[str, bytes]:
    """A folder holding an older run's files, a user's own file and TensorBoard logs; returns its files."""
    path.mkdir()
    for name, content in OLD_RUN.items():
        (path / name).write_bytes(content)
    (path / "notes.txt").write_text("mine")
    (path / TENSORBOARD_DIR).mkdir()
    (path / TENSORBOARD_DIR / "events").write_bytes(b"old events")
    return files_in(path)


def files_in(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_run_folder_clears_an_older_runs_outputs_on_its_first_write_only(tmp_path):
    before = old_run(tmp_path / "run")
    run = RunFolder(tmp_path / "run", data_record={"path": "new.npz", "options": {"size": 8}})
    assert run.holds_run() and not run.claimed
    assert files_in(tmp_path / "run") == before  # creating it touches nothing
    run.append_metrics({"epoch": 1})
    assert run.claimed
    assert files_in(tmp_path / "run") == {DATA_FILE: files_in(tmp_path / "run")[DATA_FILE],
                                          METRICS_FILE: b"epoch\r\n1\r\n", "notes.txt": b"mine"}
    assert run.read_data_record() == {"path": "new.npz", "options": {"size": 8}}
    run.write_checkpoint({}, {"step": 5})  # a later write clears nothing
    assert read_rows(tmp_path / "run" / METRICS_FILE) == [{"epoch": "1"}]
    assert run.read_checkpoint()[1] == {"step": 5}


def test_a_run_without_a_data_record_removes_an_older_runs(tmp_path):
    """data.json would otherwise describe the data of a run that is no longer in the folder."""
    old_run(tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    run.claim()
    assert run.read_data_record() is None
    assert sorted(files_in(tmp_path / "run")) == ["notes.txt"]


def test_a_resumed_run_adopts_the_folders_files(tmp_path):
    before = old_run(tmp_path / "run")
    run = RunFolder(tmp_path / "run", data_record={"path": "new.npz", "options": {}})
    run.adopt()
    run.append_metrics({"epoch": "2"})
    after = files_in(tmp_path / "run")
    assert after[METRICS_FILE] == b"epoch\n1\n2\r\n"
    assert {k: v for k, v in after.items() if k != METRICS_FILE} == {k: v for k, v in before.items()
                                                                     if k != METRICS_FILE}


def test_run_folder_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        RunFolder(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        RunFolder(tmp_path / "empty").read_checkpoint()
    assert not RunFolder(tmp_path / "empty").holds_run() and not (tmp_path / "empty").exists()


def test_a_fit_that_fails_in_its_first_epoch_leaves_an_older_runs_files_whole(tiny_estimator, X, tmp_path,
                                                                               monkeypatch):
    """Mini-batches trained and reported, then a loss that turns NaN before the first epoch ends:
    nothing of the new run is written, its data record included, and the old files stay as they were."""
    before = old_run(tmp_path / "run")
    original, calls = MultiFacetVAE.elbo_terms, []

    def turns_nan_at_step_3(self, x, alphas=None):
        terms = original(self, x, alphas)
        calls.append(1)
        if len(calls) == 3:
            terms.reconstruction = terms.reconstruction * float("nan")
        return terms

    monkeypatch.setattr(MultiFacetVAE, "elbo_terms", turns_nan_at_step_3)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    run = RunFolder(tmp_path / "run", data_record={"path": "new.npz", "options": {}})
    with pytest.raises(FloatingPointError, match="epoch 1, step 2"):
        tiny_estimator(verbose=True).fit(X, run_dir=run)
    assert not run.claimed
    assert files_in(tmp_path / "run") == before


def test_the_trainer_tells_its_callbacks_every_batch_and_epoch(tiny_estimator, X, monkeypatch):
    events = []

    class Recorder(Callback):
        def on_train_begin(self, trainer):
            events.append("begin")

        def on_batch_end(self, trainer, sums):
            events.append(("batch", trainer.step, sums["n"]))

        def on_epoch_end(self, trainer, row):
            events.append(("epoch", row["epoch"]))

        def on_train_end(self, trainer):
            events.append("end")

    monkeypatch.setattr(estimator_module, "Progress", Recorder)  # the callback a verbose fit makes
    tiny_estimator(verbose=True, epochs=2).fit(X)
    sizes = [64, 128, 192, 256, 300]  # the epoch's running count of inputs
    assert events == ["begin", *[("batch", s, n) for s, n in zip(range(1, 6), sizes)], ("epoch", 1),
                      *[("batch", s, n) for s, n in zip(range(6, 11), sizes)], ("epoch", 2), "end"]
