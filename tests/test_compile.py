"""compile=True: the training loss through torch.compile. The compiled loss computes what the
eager one does; full mini-batches take the compiled path and an epoch's short last one the
eager path; "auto" compiles on a GPU only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._inductor import config as inductor_config

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

from mfcvae import MFCVAE
from mfcvae import train as train_module
from mfcvae.estimator import resolve_compile
from mfcvae.train import batch_loss, sum_names


def test_compiled_loss_and_gradients_match_the_eager_ones(make_model, monkeypatch):
    """A real compile (Inductor's CPU back-end), with its random numbers drawn as eager draws them."""
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    model = make_model().train()
    x, weights = torch.rand(16, 3, 4, 4), torch.tensor([0.3, 1.0])

    def loss_and_grads(fn):
        torch.manual_seed(0)
        model.zero_grad()
        loss, sums = fn(model, x, weights, 2.0)
        loss.backward()
        return loss, sums, [p.grad.clone() for p in model.parameters()]

    eager = loss_and_grads(batch_loss)
    compiled = loss_and_grads(torch.compile(batch_loss))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-3)
    for got, want in zip(compiled[2], eager[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    assert len(eager[1]) == len(sum_names(model.n_facets)) and not eager[1].requires_grad


def test_full_batches_take_the_compiled_path_and_the_short_last_one_does_not(tiny_estimator, X, monkeypatch):
    """300 inputs in batches of 64: 4 compiled steps and 1 eager one per epoch; the epoch's sums
    (and so its history) are those of every batch."""
    compiled_sizes, modes = [], []

    def fake_compile(fn, mode):
        modes.append(mode)

        def counted(model, xb, weights, free_bits):
            compiled_sizes.append(len(xb))
            return fn(model, xb, weights, free_bits)
        return counted

    monkeypatch.setattr(train_module.torch, "compile", fake_compile)
    model = tiny_estimator(compile=True, epochs=2).fit(X)
    assert modes == ["default"]  # CPU: no CUDA graphs to capture
    assert compiled_sizes == [64] * 8
    assert [row["step"] for row in model.history_] == [5, 10]
    assert all(np.isfinite(row["elbo"]) and row["kl_0"] > 0 for row in model.history_)


def test_compile_is_off_by_default_on_a_cpu(tiny_estimator, X, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile called")

    monkeypatch.setattr(train_module.torch, "compile", refuse)
    tiny_estimator(epochs=1).fit(X)


@pytest.mark.parametrize("value, device, expected", [
    ("auto", "cpu", False), (True, "cpu", True), (False, "cuda", False), (True, "cuda", True),
])
def test_resolve_compile(value, device, expected):
    assert resolve_compile(value, torch.device(device)) is expected


@pytest.mark.parametrize("triton, capability, expected", [(False, (9, 0), False), (True, (6, 1), False),
                                                       (True, (9, 0), True)])
def test_auto_compiles_on_a_gpu_only_where_triton_serves_it(triton, capability, expected, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if triton or name != "triton" else None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    assert resolve_compile("auto", torch.device("cuda")) is expected


def test_a_run_resumes_with_compile_changed(tiny_estimator, X, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module.torch, "compile", lambda fn, mode: fn)
    tiny_estimator(epochs=1).fit(X, run_dir=tmp_path)
    resumed = tiny_estimator(epochs=2, compile=True).fit(X, run_dir=tmp_path, resume=True)
    assert [row["epoch"] for row in resumed.history_] == [1, 2]

