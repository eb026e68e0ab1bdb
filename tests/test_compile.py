"""compile: the training loss through torch.compile. The compiled loss computes what the eager
one does; mini-batches of batch_size take the compiled path and an epoch's last one, of another
size, the eager one; "auto" compiles long runs on a GPU only, and falls back to eager training
where compiling fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

from mfcvae import runtime
from mfcvae import train as train_module
from mfcvae.runtime import AUTO_COMPILE_MIN_SECONDS, AUTO_COMPILE_MIN_STEPS, compile_mode
from mfcvae.train import batch_loss, sum_names

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def test_compiled_loss_and_gradients_match_the_eager_ones(make_model):
    """A real compile (Inductor's CPU back-end), with its random numbers drawn as eager draws them."""
    model = make_model().train()
    x, weights = torch.rand(16, 3, 4, 4), torch.tensor([0.3, 1.0])

    def loss_and_grads(fn):
        torch.manual_seed(0)
        model.zero_grad()
        loss, sums = fn(model, x, weights, 2.0)
        loss.backward()
        return loss, sums, [p.grad.clone() for p in model.parameters()]

    eager = loss_and_grads(batch_loss)
    with inductor_config.patch(fallback_random=True):
        compiled = loss_and_grads(torch.compile(batch_loss))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-3)
    for got, want in zip(compiled[2], eager[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    assert len(eager[1]) == len(sum_names(model.n_facets)) and not eager[1].requires_grad


def fake_compile(calls: list):
    """A stand-in for torch.compile that records the mode and the batch sizes, and runs eagerly."""
    def compile(fn, mode):
        calls.append(mode)

        def counted(xb, weights):
            calls.append(len(xb))
            return fn(xb, weights)
        return counted
    return compile


def test_full_batches_take_the_compiled_path_and_the_last_one_does_not(tiny_estimator, X, monkeypatch):
    """300 inputs in batches of 64: 4 compiled steps and 1 eager one per epoch; the epochs'
    sums (and so the history) count every batch."""
    calls = []
    monkeypatch.setattr(train_module.torch, "compile", fake_compile(calls))
    model = tiny_estimator(compile=True, epochs=2).fit(X)
    assert calls == ["default"] + [64] * 8  # a CPU: no CUDA graphs to capture
    assert [row["step"] for row in model.history_] == [5, 10]
    assert all(np.isfinite(row["elbo"]) for row in model.history_)


def test_a_real_compiled_fit_compiles_once(tiny_estimator, X):
    """Dead clusters re-seeded between compiled steps (in place) and the progressive schedule's
    changing weights do not make torch.compile compile again; the run trains."""
    torch._dynamo.reset()  # forget the other tests' compiles of the same function
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        model = tiny_estimator(compile=True, epochs=3, reseed_dead=True).fit(X)
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert model.history_[-1]["elbo"] > model.history_[0]["elbo"]


@pytest.mark.parametrize("compile, device, triton, capability, steps, seconds, expected", [
    (True, "cpu", False, None, 10, None, "default"),
    (True, "cuda", False, (6, 1), 10, 1.0, "reduce-overhead"),  # asked for: no questions
    (False, "cuda", True, (9, 0), 10**6, None, None),
    ("auto", "cpu", True, None, 10**6, None, None),
    ("auto", "cuda", True, (9, 0), 10**6, None, "reduce-overhead"),
    ("auto", "cuda", False, (9, 0), 10**6, None, None),  # no Triton
    ("auto", "cuda", True, (6, 1), 10**6, None, None),  # a GPU Triton does not serve
    ("auto", "cuda", True, (9, 0), AUTO_COMPILE_MIN_STEPS - 1, None, None),  # too short a run
    ("auto", "cuda", True, (9, 0), AUTO_COMPILE_MIN_STEPS, None, "reduce-overhead"),
    ("auto", "cuda", True, (9, 0), 10**6, AUTO_COMPILE_MIN_SECONDS / 2, None),  # too short a budget
    ("auto", "cuda", True, (9, 0), 10**6, AUTO_COMPILE_MIN_SECONDS, "reduce-overhead"),
])
def test_compile_mode(compile, device, triton, capability, steps, seconds, expected, monkeypatch):
    monkeypatch.setattr(runtime.importlib.util, "find_spec",
                        lambda name: object() if triton or name != "triton" else None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    assert compile_mode(compile, torch.device(device), steps, seconds) == expected


@pytest.mark.parametrize("compile, device, expected", [
    ("auto", "cuda", None),  # DDP's gradient hooks run outside CUDA graphs: "auto" stays eager
    (True, "cuda", "default"),  # asked for: compiled, without CUDA graphs
    (True, "cpu", "default"),
])
def test_compile_mode_of_data_parallel_training(compile, device, expected, monkeypatch):
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert compile_mode(compile, torch.device(device), 10**6, None, data_parallel=True) == expected


def test_the_trainer_asks_for_the_mode_of_the_whole_run(tiny_estimator, X, monkeypatch):
    """compile_mode hears the run's total mini-batches (epochs x batches per epoch) and its budget."""
    asked = []
    monkeypatch.setattr(train_module, "compile_mode", lambda *args: asked.append(args))
    tiny_estimator(epochs=3, max_seconds=1e6, compile="auto").fit(X)
    assert asked == [("auto", torch.device("cpu"), 3 * 5, 1e6, False)]  # one process: not data-parallel


def test_auto_falls_back_to_eager_training_where_compiling_fails(tiny_estimator, X, monkeypatch):
    def broken_compile(fn, mode):
        def fails(*args):
            raise RuntimeError("no C compiler")
        return fails

    monkeypatch.setattr(train_module.torch, "compile", broken_compile)
    monkeypatch.setattr(train_module, "compile_mode", lambda *args: "reduce-overhead")
    with pytest.warns(RuntimeWarning, match="torch.compile failed .RuntimeError: no C compiler.; training eagerly"):
        model = tiny_estimator(compile="auto", epochs=2).fit(X)
    assert [row["step"] for row in model.history_] == [5, 10]
    with pytest.raises(RuntimeError, match="no C compiler"):  # asked for explicitly: the error stands
        tiny_estimator(compile=True, epochs=2).fit(X)


def test_a_run_resumes_with_compile_changed(tiny_estimator, X, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_module.torch, "compile", fake_compile(calls))
    tiny_estimator(epochs=1).fit(X, run_dir=tmp_path)
    resumed = tiny_estimator(epochs=2, compile=True).fit(X, run_dir=tmp_path, resume=True)
    assert [row["epoch"] for row in resumed.history_] == [1, 2] and calls == ["default"] + [64] * 4
