"""benchmarks/bench.py: a smoke run writes a self-describing row; table, pair and page read rows
back; bad arguments are refused before any training. benchmarks/facet_probe.py: what it measures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mfcvae import MFCVAE
from mfcvae.config import load_preset

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench  # noqa: E402
import facet_probe  # noqa: E402

TINY = ["--n", "120", "--epochs", "1", "--set", "hidden_dims=[16,32]", "--set", "n_clusters=[4,3]",
        "--set", "batch_size=32"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """One tiny demo run of MFCVAE and of the k-means baseline, uint8-stored, in a results file of its own."""
    results = tmp_path_factory.mktemp("bench") / "runs.jsonl"
    bench.main(["run", "--data", "demo", "--storage", "uint8", "--variants", "default", "kmeans", "--seeds", "0",
                *TINY, "--out", str(results)])
    return results


def test_a_run_writes_a_row_that_describes_itself(smoke):
    mfcvae, kmeans = (json.loads(line) for line in smoke.read_text().splitlines())
    label = "+hidden_dims=[16,32]+n_clusters=[4,3]+batch_size=32"
    assert (mfcvae["variant"], kmeans["variant"]) == ("default" + label, "kmeans" + label)
    assert mfcvae["delta"] == {"hidden_dims": [16, 32], "n_clusters": [4, 3], "batch_size": 32}
    assert mfcvae["seed"] == 0 and mfcvae["preset"] is None
    assert mfcvae["budget"] == kmeans["budget"] == {"epochs": 1, "seconds": None}
    assert mfcvae["data"] == {"name": "demo", "n": 120, "storage": "uint8", "shape": [3, 16, 16],
                              "splits": {"train": 120}}
    assert len(mfcvae["commit"]) == 40 and isinstance(mfcvae["dirty"], bool)
    assert mfcvae["command"].startswith("python benchmarks/bench.py run --data demo --storage uint8")
    assert set(mfcvae["machine"]) == {"cpu", "isa", "threads", "gpu", "torch", "python"}
    assert mfcvae["machine"]["threads"] >= 1 and mfcvae["machine"]["cpu"]
    # every estimator parameter, resolved as run, and what "auto" settled on
    assert set(mfcvae["params"]) == set(MFCVAE().get_params())
    assert mfcvae["params"]["epochs"] == 1 and mfcvae["params"]["max_seconds"] is None
    assert mfcvae["resolved"]["precision"] in ("float32", "bfloat16")
    assert mfcvae["resolved"]["likelihood"] == "bernoulli" and mfcvae["resolved"]["architecture"] in ("mlp", "conv")
    assert mfcvae["resolved"]["epochs_trained"] == 1 and mfcvae["resolved"]["hidden_dims"] == [16, 32]
    assert len(mfcvae["kl"]) == 2 and mfcvae["train_seconds"] > 0
    # every facet against every label: all metrics, and each facet's K
    assert {(s["split"], s["facet"], s["label"]) for s in mfcvae["scores"]} == {
        ("train", f, label) for f in (0, 1) for label in ("shape", "colour")}
    for score in mfcvae["scores"] + kmeans["scores"]:
        assert {"accuracy", "hungarian_accuracy", "nmi", "ari", "active_clusters", "n_clusters"} <= set(score)
        assert 0 < score["accuracy"] <= 1 and 1 <= score["active_clusters"] <= score["n_clusters"]
    assert kmeans["params"]["n_clusters"] == [3, 4] and kmeans["kl"] is None and kmeans["resolved"] is None


def fake_row(variant: str, seed: int, accuracy: float, cpu: str = "AMD EPYC", commit: str = "a" * 40,
             data: str = "demo", splits: tuple[str, ...] = ("train",)) -> dict:
    """A stored row whose facet 1 captures 'shape' with ``accuracy`` on each split (facet 0: 0.3)."""
    scores = [{"split": split, "facet": f, "label": "shape", "accuracy": acc, "hungarian_accuracy": acc,
               "nmi": acc / 2, "ari": acc / 4, "active_clusters": 4, "n_clusters": 4}
              for split in splits for f, acc in ((0, 0.3), (1, accuracy))]
    return {"variant": variant, "preset": None, "delta": {}, "seed": seed, "commit": commit, "dirty": False,
            "command": f"python benchmarks/bench.py run --data {data} --variants {variant}",
            "data": {"name": data, "n": 100, "storage": "float32", "shape": [3, 16, 16], "splits": {"train": 100}},
            "budget": {"epochs": 5, "seconds": None}, "params": {}, "train_seconds": 10.0, "kl": [1.0, 2.0],
            "resolved": {"precision": "float32", "likelihood": "bernoulli", "architecture": "mlp",
                         "epochs_trained": 5},
            "machine": {"cpu": cpu, "isa": "avx2", "threads": 2, "gpu": None, "torch": "2", "python": "3"},
            "scores": scores}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_table_summarises_the_best_facet_over_seeds_per_machine(tmp_path, capsys):
    rows = [fake_row("A", 0, 0.5), fake_row("A", 1, 0.9), fake_row("A", 1, 0.7),  # seed 1's latest run: 0.7
            fake_row("A", 0, 0.8, cpu="Intel Xeon", commit="b" * 40, data="digits")]
    results = write(tmp_path / "runs.jsonl", rows)
    bench.main(["table", "--results", str(results)])
    out = capsys.readouterr().out
    assert "### demo 100 (float32) on AMD EPYC, avx2, 2 threads" in out
    assert "python benchmarks/bench.py run --data demo --variants A" in out
    assert ("| 5 epochs | A | train | shape | 2 | 0.600 +- 0.100 | 0.600 +- 0.100 | 0.300 +- 0.050 "
            "| 0.150 +- 0.025 | 1 | 4.0 of 4 | 2.00 | 5 | 10 | aaaaaaa |") in out
    assert "### digits 100 (float32) on Intel Xeon, avx2, 2 threads" in out
    for flags, kept in ((["--machine", "xeon"], "digits"), (["--commit", "aaa"], "demo"), (["--data", "digits"], "digits"),
                        (["--variants", "B"], None)):
        bench.main(["table", "--results", str(results), *flags])
        out = capsys.readouterr().out
        assert ("### demo" in out) == (kept == "demo") and ("### digits" in out) == (kept == "digits"), flags


def test_pair_gives_seed_by_seed_differences_on_one_machine(tmp_path, capsys):
    rows = [fake_row("A", s, acc, splits=("train", "test")) for s, acc in enumerate((0.5, 0.6, 0.7))]
    rows += [fake_row("B", s, acc, splits=("train", "test")) for s, acc in enumerate((0.6, 0.5, 0.9))]
    rows += [fake_row("B", 3, 0.1), fake_row("A", 3, 0.9, cpu="Intel Xeon")]  # no partner on its machine
    results = write(tmp_path / "runs.jsonl", rows)
    bench.main(["pair", "A", "B", "--results", str(results)])
    out = capsys.readouterr().out
    assert "demo 100 (float32), 5 epochs, train, shape (accuracy) on AMD EPYC, avx2, 2 threads: B (B) against A (A)" \
        in out and ", test, shape (accuracy)" in out
    assert "| 0 | 0.500 | 0.600 | +0.100 |" in out and "| 1 | 0.600 | 0.500 | -0.100 |" in out
    assert out.count("B - A = +0.067 +- 0.125, B ahead on 2 of 3; A 0.600 +- 0.082, B 0.667 +- 0.170") == 2
    assert "| 3 |" not in out
    bench.main(["pair", "A", "B", "--results", str(results), "--metric", "ari"])
    assert "B - A = +0.017 +- 0.031" in capsys.readouterr().out


def protocol_rows(gains: dict[str, float], spread: float = 0.02) -> list[dict]:
    """A and B on three seeds of each data set in ``gains`` (B = A + gain), scored on train and test."""
    rows = []
    for data, gain in gains.items():
        for seed, base in enumerate((0.6 - spread, 0.6, 0.6 + spread)):
            rows += [fake_row("A", seed, base, data=data, splits=("train", "test")),
                     fake_row("B", seed, base + gain, data=data, splits=("train", "test"))]
    return rows


@pytest.mark.parametrize("gains, expected", [
    ({"demo": 0.05, "digits": 0.01, "fashion": -0.01}, "B may replace A"),
    ({"demo": 0.2, "digits": 0.01, "fashion": -0.05}, "it loses by more than the seed spread on fashion"),
    ({"demo": -0.01, "digits": 0.0, "fashion": 0.005}, "it does not gain on the mean"),
    ({"demo": 0.05, "digits": 0.05}, "fewer than 3 entries"),
])
def test_verdict_applies_the_protocol_on_held_out_splits(tmp_path, capsys, gains, expected):
    results = write(tmp_path / "runs.jsonl", protocol_rows(gains))
    bench.main(["verdict", "A", "B", "--results", str(results)])
    out = capsys.readouterr().out
    assert expected in out
    assert "test shape" in out and "train shape" not in out  # the held-out split where there is one


@pytest.mark.parametrize("variant, a, b, expected", [
    ("default", "default", "n_init_3", "n_init_3"),
    ("two_factors:default", "default", "default+free_bits=4", "two_factors:default+free_bits=4"),
    ("default+n_clusters=[10,10]", "default", "default+free_bits=4", "default+n_clusters=[10,10]+free_bits=4"),
    ("demo:default+lr=0.001", "default", "joint", "demo:joint+lr=0.001"),
    ("paper", "default", "joint", None),
    ("default_x", "default", "joint", None),
])
def test_counterpart_makes_the_change_under_presets_and_sets(variant, a, b, expected):
    assert bench.counterpart(variant, a, b) == expected


def test_verdict_counts_the_change_under_a_preset(tmp_path, capsys):
    rows = protocol_rows({"demo": 0.05, "digits": 0.01})
    rows += [{**r, "variant": {"A": "p:A", "B": "p:B"}[r["variant"]]} for r in protocol_rows({"fashion": 0.02})]
    bench.main(["verdict", "A", "B", "--results", str(write(tmp_path / "runs.jsonl", rows))])
    out = capsys.readouterr().out
    assert "fashion 100 (float32) (p:A)" in out and "B may replace A" in out


def test_verdict_needs_three_seeds(tmp_path, capsys):
    rows = [r for r in protocol_rows({"demo": 0.1, "digits": 0.1, "fashion": 0.1}) if r["seed"] < 2]
    bench.main(["verdict", "A", "B", "--results", str(write(tmp_path / "runs.jsonl", rows))])
    assert "no data set has 'A' and 'B' on 3 or more common seeds" in capsys.readouterr().out


def test_page_writes_the_documentation_from_the_rows(smoke, tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"
    bench.main(["page", str(out), "--results", str(smoke)])
    text = out.read_text()
    row = json.loads(smoke.read_text().splitlines()[0])
    assert text.startswith("# Benchmarks\n") and "## What is measured" in text and "## Variants" in text
    assert "| `paper` | free_bits=0.0, reseed_dead=False, refit_at_end=False, covariance=diag" in text
    assert f"### demo 120 (uint8) on {bench.machine_label(row)}" in text
    assert row["command"] in text and row["commit"][:7] in text
    assert f"| 1 epochs | {row['variant']} | train | shape | 1 |" in text
    bench.main(["page", str(out), "--results", str(tmp_path / "none.jsonl")])
    assert "No results yet" in out.read_text()


def test_run_hands_the_budget_to_the_estimator_and_labels_presets_and_storages(tmp_path, monkeypatch):
    """--seconds is max_seconds with epochs left to the deadline; one row per storage x variant x seed."""
    seen = []

    def fake_fit(params: dict, splits: dict) -> dict:
        seen.append((params, {s: str(d.x.raw.dtype) for s, d in splits.items()}))
        return {"params": params, "resolved": {"epochs_trained": 3}, "train_seconds": 1.0, "kl": [0.0, 0.0],
                "scores": fake_row("x", 0, 0.5)["scores"]}

    monkeypatch.setattr(bench, "fit_mfcvae", fake_fit)
    results = tmp_path / "runs.jsonl"
    bench.main(["run", "--data", "demo", "--n", "50", "--seconds", "7", "--preset", "demo", "--storage", "float",
                "uint8", "--variants", "default", "paper", "--seeds", "0", "1", "--out", str(results)])
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["data"]["storage"], r["variant"], r["seed"]) for r in rows] == [
        (storage, f"demo:{v}", s) for storage in ("float32", "uint8") for v in ("default", "paper") for s in (0, 1)]
    assert all(r["budget"] == {"epochs": None, "seconds": 7.0} for r in rows)
    params, dtypes = seen[2]
    assert params["max_seconds"] == 7 and params["epochs"] == bench.EPOCHS_UNDER_A_DEADLINE
    assert params["free_bits"] == 0.0 and params["latent_dims"] == load_preset("demo")["latent_dims"]
    assert dtypes == {"train": "float32"} and seen[-1][1] == {"train": "uint8"}


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--data", "demo", "--variants", "nope"], "unknown variant(s) ['nope']"),
    (["run", "--data", "demo", "--set", "lr"], "--set expects key=value, got 'lr'"),
    (["run", "--data", "demo", "--set", "colour=1"], "MFCVAE has no parameter 'colour'"),
    (["run", "--data", "demo", "--set", "epochs=3"], "give the budget with --epochs or --seconds"),
    (["run", "--data", "demo", "--epochs", "0"], "--epochs must be positive, got 0"),
    (["run", "--data", "demo", "--seconds", "-1"], "--seconds must be positive"),
    (["run", "--data", "demo", "--n", "1"], "--n must be at least 2"),
    (["run", "--data", "demo", "--epochs", "1", "--seconds", "5"], "not allowed with argument"),
    (["run", "--data", "mnist"], "invalid choice: 'mnist'"),
    (["run", "--data", "demo", "--preset", "nope"], "unknown preset 'nope'"),
    (["pair", "A", "A"], "two different variants"),
    (["pair", "A", "C"], "no rows of 'C'; variants in these rows: ['A', 'B']"),
    (["table", "--results", "missing.jsonl"], "no results file missing.jsonl"),
])
def test_bad_arguments_are_refused_with_a_clear_message(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    results = write(tmp_path / "runs.jsonl", [fake_row("A", 0, 0.5), fake_row("B", 0, 0.6)])
    if "--results" not in argv:
        argv = [*argv, "--results", str(results)]
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err
    assert results.read_text().count("\n") == 2  # nothing appended


def test_every_variant_changes_only_estimator_parameters():
    known = MFCVAE().get_params()
    for name, delta in bench.VARIANTS.items():
        assert set(delta) <= set(known), name
        MFCVAE(**delta)
    assert bench.VARIANTS["default"] == {}
    assert bench.VARIANTS["paper"] == {"free_bits": 0.0, "reseed_dead": False, "refit_at_end": False,
                                       "covariance": "diag", "batch_size": 512, "precision": "float32"}


@pytest.mark.parametrize(("flags", "isa"), [
    ("fpu sse2 avx avx2", "avx2"), ("avx2 avx512f", "avx512"), ("avx2 avx512f avx512_bf16", "avx512_bf16"),
    ("avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "amx"), ("fpu sse2 avx", "avx")])
def test_the_machine_names_its_instruction_set_level(tmp_path, flags, isa):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n"
                       "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    assert bench.cpu_info(cpuinfo) == {"cpu": "Some CPU", "isa": isa}


def test_facet_probe_tells_codes_that_separate_a_label_from_codes_that_do_not():
    rng = np.random.default_rng(0)
    y = rng.integers(3, size=300)
    separated = y[:, None] * 5.0 + rng.normal(size=(300, 2))
    assert facet_probe.neighbour_accuracy(separated, y) > 0.95
    assert facet_probe.neighbour_accuracy(rng.normal(size=(300, 2)), y) < 0.55


def test_facet_probe_reports_every_facet_and_label():
    from mfcvae.datasets import make_shapes
    data = make_shapes(n=120, seed=0)
    params = {**load_preset("demo"), "epochs": 1, "stage_epochs": None, "fade_steps": 1, "verbose": False}
    model = MFCVAE(**params).fit(data)
    row = facet_probe.probe(model, data)
    assert len(row["facets"]) == 2 and np.isfinite(row["elbo"])
    for facet in row["facets"]:
        assert set(facet["accuracy"]) == set(facet["knn_accuracy"]) == {"shape", "colour"}
        assert all(0 <= v <= 1 for v in [*facet["accuracy"].values(), *facet["knn_accuracy"].values()])


def test_provenance_names_the_commit_machine_and_a_rerunnable_command():
    row = bench.provenance("facet_probe.py", ["--set", "n_clusters=[4,4]"])
    assert row["command"] == "python benchmarks/facet_probe.py --set 'n_clusters=[4,4]'"
    assert {"commit", "dirty", "machine"} <= set(row) and row["machine"]["threads"] >= 1
