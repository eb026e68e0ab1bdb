"""Files on disk: optimiser state through safetensors, metadata round trips and atomic model writes."""

from __future__ import annotations

import pytest
import torch

from mfcvae import serialization
from mfcvae.serialization import (
    CONFIG_FILE,
    MODEL_FILE,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_model_dir,
    read_safetensors,
    write_model_dir,
    write_safetensors,
)


def trained_adam(seed: int = 0, steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Adam]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    return net, opt


def test_adam_state_round_trips_through_a_safetensors_file(tmp_path):
    """State saved after a few steps, written to disk with its metadata and read into a fresh
    optimiser, equals the original; the next step then updates both models identically."""
    net, opt = trained_adam()
    tensors, meta = optimizer_to_tensors(opt)
    assert tensors, "Adam's moments must be stored as tensors"
    write_safetensors(tmp_path / "ckpt.safetensors", tensors, {"optimizer": meta})
    loaded_tensors, loaded_meta = read_safetensors(tmp_path / "ckpt.safetensors")

    net2, _ = trained_adam(seed=1, steps=0)
    net2.load_state_dict(net.state_dict())
    opt2 = torch.optim.Adam(net2.parameters(), lr=0.5)  # a different lr: must be restored from the file
    optimizer_from_tensors(opt2, loaded_tensors, loaded_meta["optimizer"])

    a, b = opt.state_dict(), opt2.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for idx in a["state"]:
        assert a["state"][idx].keys() == b["state"][idx].keys()
        for key, value in a["state"][idx].items():
            torch.testing.assert_close(b["state"][idx][key], value, rtol=0, atol=0)
    assert b["param_groups"][0]["lr"] == pytest.approx(1e-2)
    assert list(b["param_groups"][0]["betas"]) == list(a["param_groups"][0]["betas"])

    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(9))
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).pow(2).mean().backward()
        o.step()
    for p, q in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_adam_state_saved_unfused_continues_in_a_fused_adam():
    """A checkpoint written before training used the fused kernel (its groups say fused: None)
    keeps its moments and step count, and goes on with the kernel the new optimiser asks for."""
    net, opt = trained_adam()
    tensors, meta = optimizer_to_tensors(opt)
    assert meta["param_groups"][0]["fused"] is None
    fused = torch.optim.Adam(net.parameters(), lr=0.5, fused=True)
    optimizer_from_tensors(fused, tensors, meta)
    assert fused.param_groups[0]["fused"] is True and fused.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert float(fused.state_dict()["state"][0]["step"]) == 3
    torch.testing.assert_close(fused.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    net(torch.randn(8, 4)).pow(2).mean().backward()
    fused.step()
    assert float(fused.state_dict()["state"][0]["step"]) == 4


def test_adam_state_of_channels_last_weights_comes_back_in_their_layout(tmp_path):
    """A checkpoint stores every tensor contiguous; the moments of a channels-last convolution are
    put back in its layout, without which the fused step would pair the wrong elements."""
    def conv_and_adam(seed: int):
        torch.manual_seed(seed)
        conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        return conv, torch.optim.Adam(conv.parameters(), lr=1e-2, fused=True)

    def step(conv, opt, seed):
        x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(seed))
        opt.zero_grad()
        conv(x.contiguous(memory_format=torch.channels_last)).pow(2).mean().backward()
        opt.step()

    conv, opt = conv_and_adam(0)
    for seed in range(3):
        step(conv, opt, seed)
    tensors, meta = optimizer_to_tensors(opt)
    write_safetensors(tmp_path / "ckpt.safetensors", tensors, {"optimizer": meta})
    loaded, loaded_meta = read_safetensors(tmp_path / "ckpt.safetensors")
    conv2, opt2 = conv_and_adam(1)
    conv2.load_state_dict(conv.state_dict())
    optimizer_from_tensors(opt2, loaded, loaded_meta["optimizer"])
    assert opt2.state[conv2.weight]["exp_avg"].is_contiguous(memory_format=torch.channels_last)
    for model, optimizer in ((conv, opt), (conv2, opt2)):
        step(model, optimizer, 9)
    torch.testing.assert_close(conv2.weight, conv.weight, rtol=0, atol=0)


def test_safetensors_round_trip_keeps_tensors_and_nested_metadata(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b.c": torch.tensor([1, 2], dtype=torch.int64),
               "scalar": torch.tensor(3.5)}
    meta = {"epoch": 3, "history": [{"loss": 1.5}, {"loss": 1.25}], "name": "ü", "nested": {"k": [1, 2]}}
    path = tmp_path / "sub" / "t.safetensors"
    write_safetensors(path, tensors, meta)
    got, got_meta = read_safetensors(path)
    assert got.keys() == tensors.keys()
    for k in tensors:
        assert got[k].dtype == tensors[k].dtype
        torch.testing.assert_close(got[k], tensors[k], rtol=0, atol=0)
    assert got_meta == meta
    assert [p.name for p in path.parent.iterdir()] == ["t.safetensors"], "no temporary files left behind"


def test_read_safetensors_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_safetensors(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    with pytest.raises(ValueError, match="not a valid"):
        read_safetensors(bad)


def test_write_model_dir_round_trip_keeps_other_files(tmp_path):
    """The model folder can also be a run folder: its logs and checkpoint must survive a save."""
    (tmp_path / "metrics.csv").write_text("epoch\n1\n")
    state = {"w": torch.randn(3, 2)}
    write_model_dir(tmp_path, state, {"format": "x", "v": 1})
    got_state, got_config = read_model_dir(tmp_path)
    torch.testing.assert_close(got_state["w"], state["w"])
    assert got_config == {"format": "x", "v": 1}
    assert (tmp_path / "metrics.csv").read_text() == "epoch\n1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, MODEL_FILE, "metrics.csv"])


def test_failed_write_leaves_the_existing_model_intact(tmp_path, monkeypatch):
    """If writing the new weights fails, the old model.safetensors and config.json still load unchanged."""
    old = {"w": torch.ones(2, 2)}
    write_model_dir(tmp_path / "m", old, {"version": "old"})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        write_model_dir(tmp_path / "m", {"w": torch.zeros(2, 2)}, {"version": "new"})
    state, config = read_model_dir(tmp_path / "m")
    torch.testing.assert_close(state["w"], old["w"])
    assert config == {"version": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "the staging folder must be cleaned up"


def test_failed_safetensors_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    write_safetensors(path, {"x": torch.ones(1)}, {"step": 1})
    monkeypatch.setattr(serialization, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
        write_safetensors(path, {"x": torch.zeros(1)}, {"step": 2})
    tensors, meta = read_safetensors(path)
    assert meta == {"step": 1} and tensors["x"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_read_model_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved model"):
        read_model_dir(tmp_path / "nowhere")
    write_model_dir(tmp_path / "m", {"w": torch.ones(1)}, {})
    (tmp_path / "m" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        read_model_dir(tmp_path / "m")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        write_model_dir(tmp_path / "f", {"w": torch.ones(1)}, {})


def test_a_trainers_checkpoint_round_trips_through_its_run_folder(make_model, tmp_path):
    """Everything a resumed run needs (weights, Adam's moments, counters, history, schedule, RNG,
    budget) comes back from checkpoint.safetensors into a fresh trainer; other data is refused."""
    from mfcvae.budget import TimeBudget
    from mfcvae.config import TrainConfig
    from mfcvae.runs import RunFolder
    from mfcvae.train import Trainer, data_fingerprint

    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-3, max_seconds=None, progressive=True, stage_epochs=None,
                      fade_steps=None, free_bits=0.0, reseed_dead=False, refit_at_end=False, select_clusters=(), n_init=1, seed=0, compile=False)
    x, cpu = torch.rand(40, 3, 4, 4), torch.device("cpu")

    def trainer(seed: int, run: RunFolder | None = None, data: torch.Tensor = x) -> Trainer:
        return Trainer(make_model(seed=seed), cfg, len(x), cpu, TimeBudget(None), run=run,
                       data_id=data_fingerprint(data))

    run = RunFolder(tmp_path / "run")
    first = trainer(0, run)
    first.run(x[:])  # 3 epochs of 3 mini-batches, a checkpoint after each
    second = trainer(1)
    second.load_state(*run.read_checkpoint())
    for (name, want), got in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    want, got = first.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert want.keys() == got.keys()
    for index in want:
        torch.testing.assert_close(got[index]["exp_avg_sq"], want[index]["exp_avg_sq"], rtol=0, atol=0)
    assert (second.epoch, second.step, second.history) == (3, 9, first.history)
    assert second.schedule == first.schedule
    torch.testing.assert_close(second.shuffle.get_state(), first.shuffle.get_state(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="trained on other data"):
        trainer(1, data=x.flip(0)).load_state(*run.read_checkpoint())
