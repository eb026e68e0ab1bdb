"""CI-sized smoke runs of the benchmark scripts: they train, score and write their results
(the real runs are long and read Fashion-MNIST; these use the built-in demo data)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from mfcvae.config import load_preset
from mfcvae.datasets import load
from mfcvae.metrics import many_to_one_accuracy
from mfcvae.train import REFIT_MAX_POINTS

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import budget  # noqa: E402
import common  # noqa: E402
import demo_and_fashion  # noqa: E402
import refit_starts  # noqa: E402


def test_the_two_factors_preset_is_the_measured_tinted_recipe_with_full_covariances():
    """The preset must train what the tinted rows measured; only the run's length (epochs instead
    of a time budget, the paper's schedule keys unused without progressive training) and
    precision ("auto": float32 on the AVX2 hosts and GPUs measured, bfloat16 on the AVX-512 host
    of the newest rows) may differ."""
    measured = budget.params_for("bf16_batch_128_merge_1_joint_floor_free_bits_refit_end",
                                 {"covariance": "full", "refit_start": "spectral"})
    preset = load_preset("two_factors")
    unused = {"epochs", "precision", "verbose", "stage_epochs", "fade_steps"}
    assert {k: v for k, v in measured.items() if k not in unused} == {k: v for k, v in preset.items() if k not in unused}
    assert preset["progressive"] is False and preset["precision"] == "auto"


def test_budget_smoke_run_writes_rows_and_a_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(budget, "RESULTS", tmp_path / "budget.csv")
    monkeypatch.setattr(sys, "argv", ["budget.py", "--data", "demo", "--n", "300", "--epochs", "1",
                                      "--variants", "paper", "free_bits", "--seeds", "0",
                                      "--set", "hidden_dims=[32, 64]", "--set", "batch_size=64",
                                      "--set", "lr=1e-3"])
    budget.main()
    with (tmp_path / "budget.csv").open() as f:
        rows = list(csv.DictReader(f))
    changes = "(hidden_dims=[32, 64]) (batch_size=64) (lr=0.001)"  # the --set changes, named in each row
    runs = [r for r in rows if r["variant"] in (f"paper {changes}", f"free_bits {changes}")]
    assert len(runs) == 2 * 2 * 2  # variants x facets x labels
    assert {r["label"] for r in rows} == {"shape", "colour"}
    assert all(float(r["kl"]) >= 0 and 0 < float(r["accuracy"]) <= 1 for r in runs)
    assert any(r["variant"] == "kmeans_K10" for r in rows)
    out = capsys.readouterr().out
    assert f"| demo 300 | 1 epochs | free_bits {changes} | shape |" in out
    monkeypatch.setattr(sys, "argv", ["budget.py", "--table", "--plot", str(tmp_path / "budget.png")])
    budget.main()
    assert f"| demo 300 | 1 epochs | paper {changes} | colour |" in capsys.readouterr().out
    from PIL import Image

    with Image.open(tmp_path / "budget.png") as image:
        assert image.width > 500  # one panel per label, drawn
    monkeypatch.setattr(sys, "argv", ["budget.py", "--data", "demo", "--set", "lr"])
    with pytest.raises(SystemExit):
        budget.main()
    assert "--set expects field=value, got 'lr'" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["budget.py", "--table", "--machine", "no such machine"])
    budget.main()
    assert "| demo 300 |" not in capsys.readouterr().out


def test_budget_in_seconds_is_the_estimators_deadline(tmp_path, monkeypatch, capsys):
    """--seconds hands the budget to the estimator (max_seconds) and records the epochs it bought."""
    fits = []
    original_fit = budget.MFCVAE.fit

    def recording_fit(self, data, **kwargs):
        fits.append(self.get_params())
        return original_fit(self, data, **kwargs)

    monkeypatch.setattr(budget.MFCVAE, "fit", recording_fit)
    monkeypatch.setattr(sys, "argv", ["budget.py", "--data", "demo", "--n", "200", "--seconds", "1.5",
                                      "--variants", "paper", "--seeds", "0", "--no-kmeans",
                                      "--results", str(tmp_path / "budget.csv"),
                                      "--set", "hidden_dims=[16, 16]", "--set", "batch_size=64",
                                      "--save-models", str(tmp_path / "models"),
                                      "--save-data", str(tmp_path / "d.npz"), "--machine-note", "slow day"])
    budget.main()
    assert [(p["max_seconds"], p["epochs"]) for p in fits] == [(1.5, budget.EPOCHS_UNDER_A_DEADLINE)]
    with (tmp_path / "budget.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["budget_seconds"] for r in rows} == {"1.5"}
    label = "paper (hidden_dims=[16, 16]) (batch_size=64)"  # rows name the --set changes
    assert {r["variant"] for r in rows} == {label}
    assert all(r["machine"].endswith(", slow day") for r in rows)  # kept apart from the same CPU's other rows
    assert 1 <= int(rows[0]["epochs"]) < budget.EPOCHS_UNDER_A_DEADLINE
    saved = budget.MFCVAE.load(tmp_path / "models" / "demo-200-paper-1.5-seed0")
    assert saved.max_seconds == 1.5 and saved.history_[-1]["epoch"] == int(rows[0]["epochs"])
    written = load(tmp_path / "d.npz")  # what `mfcvae report --data` reads
    assert len(written) == 200 and set(written.labels) == {"shape", "colour"}
    assert written.shape == saved.input_shape_
    assert f"| demo 200 | 1.5 s | {label} |" in capsys.readouterr().out


@pytest.mark.parametrize("variant", list(budget.VARIANTS))
def test_every_variant_is_a_valid_estimator_configuration(variant):
    from mfcvae import MFCVAE

    params = budget.params_for(variant, {})
    MFCVAE(**params)._train_config()
    assert MFCVAE(**params)._model_config((1, 28, 28), "float32").n_clusters == (10, 10)


def test_summary_keeps_machines_apart():
    """A wall-clock budget buys different epochs on different CPUs: one row per machine."""
    row = {"dataset": "demo", "n": "10", "variant": "paper", "seed": "0", "epochs": "3", "budget_seconds": "60.0",
           "train_seconds": "59", "facet": "0", "label": "shape", "accuracy": "0.5", "nmi": "0.1",
           "active_clusters": "2", "n_clusters": "4", "kl": "1.0"}
    rows = [{**row, "machine": "x86_64, AMD EPYC, 2 threads, torch 2.13.0+cpu"},
            {**row, "epochs": "7", "machine": "x86_64, Intel Xeon, 2 threads, torch 2.13.0+cpu"}]
    table = budget.summarise(rows).splitlines()[2:]
    assert len(table) == 2
    assert table[0].endswith("| 3 | 59 | AMD EPYC, 2 threads |")
    assert table[1].endswith("| 7 | 59 | Intel Xeon, 2 threads |")


@pytest.mark.parametrize("native", [True, False])
def test_machine_says_whether_the_cpu_computes_bfloat16(monkeypatch, native):
    """A CPU row names the arithmetic "auto" trains in there, which sets the epochs a time budget buys."""
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(common, "cpu_has_native_bfloat16", lambda: native)
    line = common.machine()
    assert f"threads, bfloat16 {'native' if native else 'emulated'}, torch " in line
    assert budget.short_machine(line).endswith(f"bfloat16 {'native' if native else 'emulated'}")


def _run_rows(variant: str, seed: int, machine: str, accuracies: tuple[float, float]) -> list[dict]:
    """The two facet rows (label 'shape') one stored run leaves in budget.csv."""
    row = {"dataset": "demo", "n": "10", "variant": variant, "seed": str(seed), "epochs": "3",
           "budget_seconds": "60.0", "train_seconds": "59", "label": "shape", "nmi": "0.1",
           "active_clusters": "2", "n_clusters": "4", "kl": "1.0", "machine": machine}
    return [{**row, "facet": str(j), "accuracy": str(acc)} for j, acc in enumerate(accuracies)]


def test_pair_compares_the_best_facets_seed_by_seed():
    """Each seed pairs A's and B's best facet on one machine; a seed each ran once, on different
    machines, pairs across them (marked); a seed run twice with no same-machine partner is left out."""
    day1, day2 = (f"x86_64, AMD EPYC, 2 threads, torch 2.13.0+cpu, day {d}" for d in (1, 2))
    rows = (_run_rows("A", 0, day1, (0.2, 0.7)) + _run_rows("B", 0, day1, (0.6, 0.1))     # +0.1
            + _run_rows("A", 1, day1, (0.5, 0.4)) + _run_rows("B", 1, day2, (0.3, 0.6))   # -0.1, across
            + _run_rows("A", 2, day2, (0.9, 0.1)) + _run_rows("B", 2, day2, (0.6, 0.1))   # +0.3
            + _run_rows("B", 2, day1, (0.2, 0.1))                                          # its day-1 run: unused
            + _run_rows("A", 3, day1, (0.5, 0.1)) + _run_rows("A", 3, day2, (0.5, 0.1))
            + _run_rows("B", 3, "elsewhere", (0.5, 0.1))                                   # ambiguous
            + _run_rows("A", 4, day1, (0.5, 0.1)) + _run_rows("C", 4, day1, (0.1, 0.1)))   # B never ran seed 4
    out = budget.paired(rows, "A", "B").splitlines()
    table = [line for line in out if line.startswith("| ") and not line.startswith("| seed")]
    assert [line.split(" | ")[:4] for line in table] == [
        ["| 0", "0.700", "0.600", "+0.100"], ["| 1", "0.500", "0.600", "-0.100"], ["| 2", "0.900", "0.600", "+0.300"]]
    assert "(across machines)" in table[1] and "(across machines)" not in table[0] + table[2]
    assert "3 pairs over 3 seeds: A - B = +0.100 +- 0.163, A ahead on 2 of 3; A 0.700 +- 0.163, B 0.600 +- 0.000" in out
    assert out[-1] == "left out, ambiguous: seed 3 (2 and 1 runs, on different machines)"
    assert budget.paired(rows, "A", "D") == "no rows of 'D' (name variants as the --table column does)"
    only_ambiguous = budget.paired([r for r in rows if r["seed"] == "3"], "A", "B").splitlines()
    assert only_ambiguous[1:] == ["left out, ambiguous: seed 3 (2 and 1 runs, on different machines)"]
    seed_3 = [r for r in rows if r["seed"] == "3"]
    seed_3[0:2] = _run_rows("A", 3, day1, (0.3, 0.1))  # its day-1 run now differs from its day-2 run
    for prefer, diff in ((["day 1", "day 2"], "-0.200"), (["day 2", "day 1"], "+0.000")):
        preferred = budget.paired(seed_3, "A", "B", prefer=prefer).splitlines()
        assert preferred[3].split(" | ")[:4] == ["| 3", f"{0.5 + float(diff):.3f}", "0.500", diff], prefer


def test_pair_on_the_command_line_reads_the_stored_rows_of_the_machines_named(tmp_path, monkeypatch, capsys):
    """--machine with several texts keeps the rows of each; a seed both ran on two of them pairs twice."""
    results = tmp_path / "budget.csv"
    with results.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=budget.FIELDS, extrasaction="ignore")
        writer.writeheader()
        for machine, a in (("day 1", 0.5), ("day 2", 0.8), ("day 3", 0.7)):
            writer.writerows(_run_rows("A", 0, machine, (a, 0.1)) + _run_rows("B", 0, machine, (0.4, 0.1)))
    monkeypatch.setattr(sys, "argv", ["budget.py", "--pair", "A", "B", "--results", str(results),
                                      "--machine", "day 1", "day 3"])
    budget.main()
    assert "2 pairs over 1 seed: A - B = +0.200 +- 0.100" in capsys.readouterr().out  # day 2's +0.4 not among them
    # --pair-machines: A's day-2 run against B's day-1 run, though both ran on day 1 too
    monkeypatch.setattr(sys, "argv", ["budget.py", "--pair", "A", "B", "--results", str(results),
                                      "--pair-machines", "day 2", "day 1"])
    budget.main()
    out = capsys.readouterr().out
    assert "1 pairs over 1 seed: A - B = +0.400 +- 0.000" in out and "(across machines)" in out
    for wrong, message in ((["--pair", "A", "A"], "two different variants"),
                           (["--table", "--pair-machines", "day 1", "day 2"], "--pair-machines goes with --pair"),
                           (["--pair", "A", "B", "--plot", str(tmp_path / "p.png")], "--plot draws the --table")):
        monkeypatch.setattr(sys, "argv", ["budget.py", *wrong, "--results", str(results)])
        with pytest.raises(SystemExit):
            budget.main()
        assert message in capsys.readouterr().err


def test_refit_starts_refits_a_saved_model_per_seed_and_writes_rows(tmp_path, monkeypatch, capsys, tiny_estimator):
    """Each fit seed refits the best facet as refit_at_end does, for each number of inputs and each
    start; the first seed's row at refit_at_end's number is what a fresh fit with refit_at_end and
    that seed would give the facet (fit seed 0 = run seed 0); other settings are compared with the first."""
    data = budget.load_data("demo", None)
    plain = tiny_estimator(epochs=1, refit_at_end=False).fit(data)
    plain.save(tmp_path / "model")
    monkeypatch.setattr(refit_starts, "RESULTS", tmp_path / "refit_starts.csv")
    monkeypatch.setattr(sys, "argv", ["refit_starts.py", str(tmp_path / "model"), "--data", "demo",
                                      "--label", "shape", "--fits", "2", "--machine-note", "day 1",
                                      "--points", str(REFIT_MAX_POINTS), "100"])
    refit_starts.main()
    with (tmp_path / "refit_starts.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["points"], r["start"], r["fit_seed"]) for r in rows] == [
        (points, "kmeans", seed) for points in (str(REFIT_MAX_POINTS), "100") for seed in ("0", "1")]
    assert all(r["machine"].endswith(", day 1") and r["model"] == f"{tmp_path.name}/model" for r in rows)
    out = capsys.readouterr().out
    assert "as saved" in out and f"at most 100 inputs from kmeans against {REFIT_MAX_POINTS} from kmeans" in out
    refit = tiny_estimator(epochs=1, refit_start="kmeans").fit(data)  # the start refit_starts.py takes first
    facet = int(rows[0]["facet"])
    accuracy = many_to_one_accuracy(data.labels["shape"], refit.predict(data)[:, facet])
    assert float(rows[0]["accuracy"]) == pytest.approx(accuracy, abs=1e-4)

    monkeypatch.setattr(sys, "argv", ["refit_starts.py", str(tmp_path / "model"), "--data", "demo", "--label", "shape",
                                      "--fits", "1", "--points", "300", "--starts", "kmeans", "spectral"])
    refit_starts.main()  # each start scored, the second against the first
    with (tmp_path / "refit_starts.csv").open() as f:
        assert [(r["points"], r["start"]) for r in list(csv.DictReader(f))[4:]] == [("300", "kmeans"), ("300", "spectral")]
    assert "at most 300 inputs from spectral against 300 from kmeans" in capsys.readouterr().out


def test_demo_table_shows_the_latest_run_per_data_set_seed_and_epochs(tmp_path, monkeypatch, capsys):
    def result(seed: int, seconds: float, epochs: int = 30) -> dict:
        return {"dataset": "demo shapes", "seed": seed, "epochs": epochs, "train_seconds": seconds,
                "best": {"shape": {"facet": 0, "accuracy": 1.0, "nmi": 0.8}}, "kmeans": []}

    stored = [result(0, 20.0), result(1, 21.0), result(0, 12.0), result(0, 30.0, epochs=60)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in stored))
    monkeypatch.setattr(demo_and_fashion, "RESULTS", results)
    monkeypatch.setattr(sys, "argv", ["demo_and_fashion.py", "--table"])
    demo_and_fashion.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| demo shapes")]
    assert [row.split(" | ")[1:4] for row in rows] == [["0", "30", "12 s"], ["1", "30", "21 s"], ["0", "60", "30 s"]]
