"""The `mfcvae` command line, end to end on small files: fit -> evaluate / predict / sample,
resume, presets, --help, and errors that exit with status 2 and a message."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mfcvae import MFCVAE
from mfcvae import train as train_module
from mfcvae.cli import main
from mfcvae.datasets import Dataset, make_tinted
from mfcvae.runs import CHECKPOINT_FILE
from mfcvae.serialization import read_safetensors

from test_datasets import write_3dshapes, write_mnist_folder

TINY_CONFIG = dict(n_clusters=[4, 3], latent_dims=[2, 3], hidden_dims=[32, 64], epochs=2, batch_size=64,
                   lr=0.001, device="cpu", precision="float32")  # not "auto": same arithmetic on every machine


@pytest.fixture()
def files(tmp_path, shapes_data):
    x, labels = shapes_data
    np.savez(tmp_path / "data.npz", x=x, **labels)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    return tmp_path


def fit(files, *extra: str) -> int:
    return main(["fit", "--config", str(files / "tiny.yaml"), "--data", str(files / "data.npz"),
                 "--out", str(files / "run"), "--quiet", *extra])


def test_fit_then_evaluate_predict_and_sample(files, shapes_data, capsys):
    x, labels = shapes_data
    assert fit(files) == 0
    out = capsys.readouterr().out
    assert "shape" in out and "colour" in out  # the labels in the .npz were evaluated
    for name in ("model.safetensors", "config.json", "metrics.csv", CHECKPOINT_FILE, "evaluation.json"):
        assert (files / "run" / name).is_file(), name

    assert main(["evaluate", str(files / "run"), "--data", str(files / "data.npz"), "--device", "cpu",
                 "--json", str(files / "eval.json")]) == 0
    assert "ELBO per example" in capsys.readouterr().out and (files / "eval.json").is_file()

    assert main(["predict", str(files / "run"), "--data", str(files / "data.npz"), "--device", "cpu",
                 "--out", str(files / "c.csv")]) == 0
    table = np.loadtxt(files / "c.csv", delimiter=",", skiprows=1, dtype=int)
    assert (files / "c.csv").read_text().splitlines()[0] == "facet_0,facet_1"
    np.testing.assert_array_equal(table, MFCVAE.load(files / "run", device="cpu").predict(x))

    assert main(["sample", str(files / "run"), "--facet", "1", "--cluster", "2", "--n", "6",
                 "--out", str(files / "grid.png")]) == 0
    assert (files / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_with_more_epochs_and_overwrite_starts_over(files):
    assert fit(files) == 0
    assert main(["fit", "--out", str(files / "run"), "--data", str(files / "data.npz"), "--resume",
                 "--epochs", "3", "--quiet"]) == 0
    assert len((files / "run" / "metrics.csv").read_text().splitlines()) == 1 + 3
    assert fit(files, "--overwrite") == 0
    assert len((files / "run" / "metrics.csv").read_text().splitlines()) == 1 + 2


def test_fit_on_the_built_in_data_with_a_preset_and_overrides(tmp_path, capsys):
    assert main(["fit", "--preset", "demo", "--out", str(tmp_path / "run"), "--epochs", "2", "--quiet",
                 "--set", "stage_epochs=[1, 1]", "--set", "hidden_dims=[16, 16]", "--set", "precision=bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "colour" in out and "(networks in bfloat16)" in out
    assert tuple(MFCVAE.load(tmp_path / "run").hidden_dims) == (16, 16)


def test_presets_lists_the_named_configurations(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {line.split()[0] for line in lines} == {"demo", "mnist", "fashion_mnist", "3dshapes_1", "3dshapes_2", "svhn",
                                                        "two_factors", "embeddings"}


FAST = ["--epochs", "2", "--quiet", "--set", "stage_epochs=[1, 1]", "--set", "fade_steps=2", "--set", "batch_size=32",
        "--set", "hidden_dims=[8, 16]", "--device", "cpu"]


def test_two_factors_preset_trains_both_facets_together_on_tinted_images(tmp_path, capsys):
    """`fit --preset two_factors` on a tinted set: K = 10 + 10, full covariances, no progressive
    schedule, the mixtures refitted at the end; both labels are scored."""
    rng = np.random.default_rng(0)
    grey = Dataset((rng.random((200, 1, 28, 28)) * 255).astype(np.uint8), {"label": rng.integers(0, 10, 200)})
    tinted = make_tinted(grey, seed=0)
    np.savez(tmp_path / "tinted.npz", x=tinted.x.raw, **tinted.labels)
    run = tmp_path / "run"
    assert main(["fit", "--preset", "two_factors", "--data", str(tmp_path / "tinted.npz"), "--out", str(run),
                 "--epochs", "1", "--quiet", "--set", "hidden_dims=[8, 16]", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "colour" in out and "label" in out
    model = MFCVAE.load(run, device="cpu")
    assert model.input_shape_ == (3, 28, 28) and list(model.n_clusters) == [10, 10]
    assert (model.covariance, model.progressive, model.refit_at_end, model.merge_scale) == ("full", False, True, 1.0)


def test_3dshapes_preset_reads_its_configuration_holds_out_a_test_part_and_remembers_its_data(tmp_path, capsys):
    """`fit --preset 3dshapes_1 --data 3dshapes.h5` selects config 1, resizes to 32x32, trains the conv
    ladder on 80 %, evaluates both parts; later commands find the same data (and part) by themselves."""
    write_3dshapes(tmp_path / "3dshapes.h5")
    run = tmp_path / "run"
    assert main(["fit", "--preset", "3dshapes_1", "--data", str(tmp_path / "3dshapes.h5"), "--out", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    assert "train (128 examples)" in out and "test (32 examples)" in out and "floor_hue" in out
    model = MFCVAE.load(run, device="cpu")
    assert model.input_shape_ == (3, 32, 32) and model.model_.cfg.architecture == "conv"
    assert model.model_.cfg.covariance == "full" and model.n_clusters == [60, 20]
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert set(evaluation) == {"train", "test"}

    # on the CPU, where fit evaluated: evaluated on an H200, one near-tied example of 32 changed
    # cluster (a GPU rounds otherwise)
    assert main(["evaluate", str(run), "--part", "test", "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text()) == evaluation["test"]
    assert main(["predict", str(run), "--out", str(tmp_path / "all.csv")]) == 0
    assert len((tmp_path / "all.csv").read_text().splitlines()) == 1 + 160
    assert main(["fit", "--out", str(run), "--resume", "--epochs", "3", "--quiet"]) == 0  # no --data needed
    assert "train (128 examples)" in capsys.readouterr().out


def test_data_options_from_the_command_line_and_presets_that_do_not_apply(tmp_path, files, capsys):
    write_mnist_folder(tmp_path / "fashion", n_train=40, n_test=10)
    assert main(["fit", "--preset", "fashion_mnist", "--data", str(tmp_path / "fashion"), "--data-option",
                 "split=test", "--out", str(tmp_path / "f"), *FAST, "--set", "n_clusters=[3, 3]"]) == 0
    assert "10 examples" in capsys.readouterr().out
    # The 3DShapes preset's `config` means nothing for a .npz: skipped with a note; test_fraction still applies.
    assert main(["fit", "--preset", "3dshapes_1", "--data", str(files / "data.npz"), "--out", str(tmp_path / "n"),
                 *FAST, "--set", "architecture=mlp", "--set", "n_clusters=[4, 3]"]) == 0
    captured = capsys.readouterr()
    assert "config=1 does not apply" in captured.err and "test (60 examples)" in captured.out
    # An option the user gives that the reader does not take is an error.
    assert main(["fit", "--config", str(files / "tiny.yaml"), "--data", str(files / "data.npz"),
                 "--data-option", "split=train", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "takes no option ['split']" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["mnist", "fashion_mnist"])
def test_mnist_presets_fit_on_the_training_files_and_report_the_test_files_apart(tmp_path, capsys, preset):
    """The paper's protocol: fit on the training files (split=train), report training and test files
    separately; `--part test` evaluates on the test files, `--part all` covers both."""
    arrays = write_mnist_folder(tmp_path / "mnist", n_train=40, n_test=10)
    run = tmp_path / "run"
    assert main(["fit", "--preset", preset, "--data", str(tmp_path / "mnist"), "--out", str(run), *FAST,
                 "--set", "n_clusters=[3, 3]"]) == 0
    out = capsys.readouterr().out
    assert "train (40 examples)" in out and "test (10 examples)" in out
    model = MFCVAE.load(run, device="cpu")
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert set(evaluation) == {"train", "test"}
    assert main(["evaluate", str(run), "--part", "test", "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text()) == evaluation["test"]
    for part, rows in (("train", 40), ("test", 10), ("all", 50)):
        assert main(["predict", str(run), "--part", part, "--out", str(tmp_path / f"{part}.csv")]) == 0
        assert len((tmp_path / f"{part}.csv").read_text().splitlines()) == 1 + rows, part
    test_clusters = np.loadtxt(tmp_path / "test.csv", delimiter=",", skiprows=1, dtype=int)
    np.testing.assert_array_equal(test_clusters, model.predict(arrays["t10k"][0][:, None] / 255))


def test_model_commands_part_needs_a_run_with_a_test_fraction(files, capsys):
    assert fit(files) == 0
    assert main(["evaluate", str(files / "run"), "--part", "test"]) == 2
    assert "--part test needs a run fitted with test_fraction" in capsys.readouterr().err
    assert main(["evaluate", str(files / "run")]) == 0  # the recorded data, all of it


def test_only_the_demo_preset_defaults_to_the_built_in_data(tmp_path, capsys):
    assert main(["fit", "--preset", "svhn", "--out", str(tmp_path / "r"), "--epochs", "1", "--quiet"]) == 2
    assert "--data is needed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


ERRORS = {
    "missing data": (["--data", "nowhere.npz"], "no such file or folder"),
    "bad yaml in --set": (["--set", "n_clusters=[4, 3"], "cannot read the value"),
    "string lr": (["--set", "lr=fast"], "lr must be a number"),
    "float seed": (["--set", "seed=1.5"], "seed must be a non-negative integer"),
    "not a bool": (["--set", "progressive=maybe"], "progressive must be true or false"),
    "resume with a preset": (["--resume", "--preset", "svhn"], "drop --preset/--config"),
    "unknown parameter": (["--set", "banana=1"], "unknown parameter"),
    "bad --set": (["--set", "epochs"], "field=value"),
    "bad value": (["--set", "covariance=spherical"], "covariance"),
    "resume nothing": (["--resume"], "nothing to resume"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_fit_errors_exit_2_with_a_message(files, capsys, name):
    extra, message = ERRORS[name]
    argv = ["fit", "--config", str(files / "tiny.yaml"), "--data", str(files / "data.npz"),
            "--out", str(files / "fresh"), "--quiet", *extra]
    if name.startswith("resume"):
        argv.remove("--config"), argv.remove(str(files / "tiny.yaml"))
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_fit_refuses_to_overwrite_a_run_without_being_asked(files, capsys):
    assert fit(files) == 0
    before = (files / "run" / CHECKPOINT_FILE).read_bytes()
    assert fit(files) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (files / "run" / CHECKPOINT_FILE).read_bytes() == before


def test_overwrite_with_a_wrong_value_leaves_the_run_folder_as_it_was(files, capsys):
    """The parameters are checked before --overwrite clears anything: the old model, its data
    record and its evaluation stay together."""
    assert fit(files) == 0
    run = files / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert fit(files, "--overwrite", "--set", "covariance=spherical") == 2
    assert "covariance" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("extra, message", [
    (["--set", "free_bits=.inf"], "free_bits must be a finite number"),
    (["--set", "n_clusters=[400, 3]"], "fewer than the 400 clusters"),
    (["--set", "stage_epochs=[1, 2, 3]"], "stage_epochs needs one entry per facet"),
    (["--data", "bad.npz"], "NaN"),
])
def test_overwrite_with_bad_data_or_values_found_only_with_the_data_leaves_the_run_as_it_was(files, capsys, extra,
                                                                                              message):
    """Checks that need the data (NaN in it, more clusters than examples) and values that would
    only fail in training (infinite) come before --overwrite clears anything too; a fresh --out
    is not even created."""
    assert fit(files) == 0
    x = np.load(files / "data.npz")["x"].astype(np.float32) / 255
    x[3] = np.nan
    np.savez(files / "bad.npz", x=x)
    run = files / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    data = ["--data", str(files / extra[1])] if extra[0] == "--data" else ["--data", str(files / "data.npz"), *extra]
    argv = ["fit", "--config", str(files / "tiny.yaml"), "--quiet", *data]
    assert main([*argv, "--out", str(run), "--overwrite"]) == 2
    assert message in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main([*argv, "--out", str(files / "fresh")]) == 2
    assert not (files / "fresh").exists()


def test_the_demo_records_its_data_for_the_model_commands(tmp_path, monkeypatch, capsys):
    """`make demo`'s run folder says it was fitted on the built-in data, so `mfcvae evaluate`,
    `compose` and `report` find the data without --data (as the README shows them)."""
    from mfcvae import cli, demo
    from mfcvae.datasets import make_shapes

    small = lambda seed: make_shapes(n=300, seed=seed)  # noqa: E731  (the built-in data, fewer of them)
    monkeypatch.setattr(demo, "make_shapes", small)
    monkeypatch.setattr(cli, "make_shapes", small)
    monkeypatch.setattr(demo, "load_preset", lambda name: {**TINY_CONFIG, "epochs": 1})
    monkeypatch.setattr(demo, "build_report", lambda model, data, out: out)
    assert demo.main(["--out", str(tmp_path / "demo")]) == 0
    assert json.loads((tmp_path / "demo" / "data.json").read_text()) == {"path": "demo", "options": {}}
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "demo")]) == 0
    assert "shape" in capsys.readouterr().out


def test_an_overwrite_interrupted_before_its_first_checkpoint_leaves_the_old_run_whole(files, monkeypatch, capsys):
    """--overwrite replaces the old run's files (its data record with them) only when the new run
    writes its first checkpoint: stopped in its first epoch, the old model, its data record and
    its evaluation stay together; stopped later, the folder is the new run's, ready to resume."""
    assert fit(files) == 0
    run = files / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    (files / "other.npz").write_bytes((files / "data.npz").read_bytes())
    train_step = train_module.Trainer._train_step

    def ctrl_c_at(step: int):
        def interrupted(self, xb):
            if self.step + 1 == step:
                raise KeyboardInterrupt
            train_step(self, xb)
        return interrupted

    argv = ["fit", "--config", str(files / "tiny.yaml"), "--data", str(files / "other.npz"), "--out", str(run),
            "--quiet", "--overwrite"]
    monkeypatch.setattr(train_module.Trainer, "_train_step", ctrl_c_at(2))  # 300 inputs in batches of 64: epoch 1
    assert main(argv) == 130
    assert "nothing to resume" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    monkeypatch.setattr(train_module.Trainer, "_train_step", ctrl_c_at(7))  # epoch 2
    assert main(argv) == 130
    assert f"continue with: mfcvae fit --out {run} --resume" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.safetensors", "data.json", "metrics.csv"]
    assert json.loads((run / "data.json").read_text())["path"] == str((files / "other.npz").resolve())


def test_an_out_path_that_is_a_file_is_an_error_not_a_traceback(files, capsys):
    (files / "taken").write_text("not a folder")
    assert main(["fit", "--config", str(files / "tiny.yaml"), "--data", str(files / "data.npz"),
                 "--out", str(files / "taken"), "--quiet"]) == 2
    assert "taken" in capsys.readouterr().err


def test_model_commands_report_a_missing_model(files, capsys):
    assert main(["sample", str(files / "nothing"), "--out", str(files / "g.png")]) == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["fit"], ["evaluate"], ["predict"], ["sample"], ["compose"], ["report"],
                                     ["presets"]])
def test_help_everywhere(command):
    result = subprocess.run([sys.executable, "-m", "mfcvae.cli", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: mfcvae" in result.stdout


def test_numbers_read_as_python_reads_them(files, tmp_path):
    """1e-3 is a number in --set and in config files (plain YAML 1.1 would read a string), None is null."""
    config = yaml.safe_load((files / "tiny.yaml").read_text())
    text = yaml.safe_dump(config).replace("lr: 0.001", "lr: 1e-3")
    (files / "sci.yaml").write_text(text)
    assert "1e-3" in text
    assert main(["fit", "--config", str(files / "sci.yaml"), "--data", str(files / "data.npz"), "--out",
                 str(tmp_path / "r"), "--quiet", "--set", "lr=2e-3", "--set", "fade_steps=None"]) == 0
    model = MFCVAE.load(tmp_path / "r")
    assert model.lr == 2e-3 and model.fade_steps is None


def test_resume_on_other_data_is_refused(files, capsys):
    assert fit(files) == 0
    x = np.load(files / "data.npz")["x"]
    np.savez(files / "other.npz", x=x[::-1].copy())
    assert main(["fit", "--out", str(files / "run"), "--data", str(files / "other.npz"), "--resume", "--epochs", "3",
                 "--quiet"]) == 2
    assert "trained on other data" in capsys.readouterr().err
    np.savez(files / "small.npz", x=x[:, :, :4, :4].copy())
    assert main(["fit", "--out", str(files / "run"), "--data", str(files / "small.npz"), "--resume", "--epochs", "3",
                 "--quiet"]) == 2
    assert "trained on other data" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["compose", "{run}", "--facet", "0", "--n", "0", "--out", "{tmp}/c.png"], "1 to 32 inputs a side"),
    (["compose", "{run}", "--facet", "0", "--n", "100", "--out", "{tmp}/c.png"], "1 to 32 inputs a side"),
    (["report", "{run}", "--max-clusters", "0"], "max_clusters must be a positive integer"),
    (["sample", "{run}", "--temperature", "-1", "--out", "{tmp}/s.png"], "temperature must be >= 0"),
    (["sample", "{run}", "--out", "{tmp}/s"], "ending in .png"),
    (["evaluate", "{run}", "--data-option", "test_fraction=0.5"], "keeps its own split"),
])
def test_model_command_arguments_are_checked(files, capsys, argv, message):
    assert fit(files) == 0
    argv = [a.format(run=files / "run", tmp=files) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_config_data_options_are_checked_and_a_new_run_clears_old_results(files, tmp_path, capsys):
    config = {**TINY_CONFIG, "data": {"sise": 16}}
    (files / "typo.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(files / "typo.yaml"), "--data", str(files / "data.npz"), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 2
    assert "unknown data option(s) ['sise']" in capsys.readouterr().err
    assert fit(files) == 0 and main(["report", str(files / "run")]) == 0
    assert (files / "run" / "report.html").exists()
    assert fit(files, "--overwrite") == 0
    assert not (files / "run" / "report.html").exists() and not list((files / "run").glob("report_*.png"))


def test_a_run_killed_with_sigkill_resumes_from_its_last_checkpoint_to_the_end(files):
    """kill -9 gives the process no chance to save: the checkpoint of the last finished epoch (written
    atomically) is what is left, and --resume trains the rest of the run from it."""
    import signal
    import time

    config = {**TINY_CONFIG, "epochs": 400, "progressive": False}  # so that a shorter resumed run is the same run
    (files / "long.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "mfcvae", "fit", "--config", str(files / "long.yaml"), "--data",
               str(files / "data.npz"), "--out", str(files / "run"), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (files / "run" / CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a few more epochs
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    done = read_safetensors(files / "run" / CHECKPOINT_FILE)[1]
    assert 1 <= done["epoch"] < 400
    assert main(["fit", "--out", str(files / "run"), "--resume", "--epochs", str(done["epoch"] + 2), "--quiet"]) == 0
    model = MFCVAE.load(files / "run", device="cpu")
    assert len(model.history_) == done["epoch"] + 2
    assert [row["epoch"] for row in model.history_] == list(range(1, done["epoch"] + 3))
