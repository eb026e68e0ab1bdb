"""The scikit-learn style MFCVAE estimator: shapes and ranges of every output, determinism,
persistence, checkpoint/resume and the input validation at its public boundary."""

from __future__ import annotations

import csv
import inspect
import json
import signal
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from mfcvae import MFCVAE, list_presets, load_preset
from mfcvae import mixtures, runtime
from mfcvae import train as train_module
from mfcvae.model import MultiFacetVAE
from mfcvae.runs import CHECKPOINT_FILE, METRICS_FILE
from mfcvae.runtime import resolve_precision, warn_if_emulated
from mfcvae.serialization import read_safetensors, write_safetensors

N_CLUSTERS = (4, 3)
LATENT_DIMS = (2, 3)


def metrics_rows(run_dir) -> list[dict]:
    with open(run_dir / METRICS_FILE, newline="") as f:
        return list(csv.DictReader(f))


def read_checkpoint(run_dir) -> dict:
    return read_safetensors(run_dir / CHECKPOINT_FILE)[1]


# --- outputs of a fitted model ----------------------------------------------------------------

def test_fit_returns_self_and_records_history(tiny_estimator, X):
    est = tiny_estimator(epochs=1)
    assert est.fit(X) is est
    assert len(est.history_) == 1
    assert est.input_shape_ == X.shape[1:]
    assert np.isfinite(est.history_[0]["elbo"])
    assert 0 < est.history_[0]["seconds"] < 60 and est.history_[0]["epoch"] == 1


def test_history_terms_add_up(tiny_estimator, X):
    """Each epoch's ELBO terms are the ones named: ELBO = reconstruction - sum_j KL_j, and
    KL_j = E[log q(z_j|x)] + E[log q(c_j|x)] - E[log p(z_j|c_j)] - E[log p(c_j)]."""
    row = tiny_estimator(epochs=1, free_bits=0.0).fit(X).history_[0]
    kls = [row[f"log_q_z_{j}"] + row[f"log_q_c_{j}"] - row[f"log_p_z_{j}"] - row[f"log_p_c_{j}"] for j in (0, 1)]
    np.testing.assert_allclose([row["kl_0"], row["kl_1"]], kls, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(row["elbo"], row["reconstruction"] - row["kl_0"] - row["kl_1"], rtol=1e-5)
    assert row["kl_0"] > 0 and row["kl_1"] > 0 and row["reconstruction"] < 0


def test_predict_gives_one_cluster_id_per_facet(fitted, X):
    labels = fitted.predict(X)
    assert labels.shape == (len(X), 2)
    assert np.issubdtype(labels.dtype, np.integer)
    for j, k in enumerate(N_CLUSTERS):
        assert labels[:, j].min() >= 0 and labels[:, j].max() < k


def test_predict_proba_rows_are_distributions_and_argmax_is_predict(fitted, X):
    proba = fitted.predict_proba(X)
    assert isinstance(proba, list) and [p.shape for p in proba] == [(len(X), k) for k in N_CLUSTERS]
    for p in proba:
        assert np.all(p >= 0)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.stack([p.argmax(1) for p in proba], 1), fitted.predict(X))


def test_predict_is_batch_independent(fitted, X):
    """A row's prediction must not depend on which other rows are in the call."""
    full = fitted.predict_proba(X)
    part = fitted.predict_proba(X[10:17])
    for a, b in zip(full, part):
        np.testing.assert_allclose(a[10:17], b, atol=1e-5)


def test_transform_gives_posterior_means_per_facet(fitted, X):
    z = fitted.transform_facets(X)
    assert [a.shape for a in z] == [(len(X), d) for d in LATENT_DIMS]
    assert all(np.isfinite(a).all() for a in z)
    np.testing.assert_array_equal(fitted.transform(X), np.concatenate(z, axis=1))


def test_reconstruct_has_the_input_shape_and_range(fitted, X):
    rec = fitted.reconstruct(X[:20])
    assert rec.shape == X[:20].shape
    assert rec.min() >= 0 and rec.max() <= 1  # Bernoulli means


@pytest.mark.parametrize("shape", [(192,), (8, 24)], ids=["N,D", "N,H,W"])
def test_fit_and_reconstruct_flat_and_single_channel_inputs(tiny_estimator, X, shape):
    Xs = X.reshape(len(X), *shape)
    est = tiny_estimator(epochs=1).fit(Xs)
    assert est.reconstruct(Xs[:5]).shape == (5, *shape)
    assert est.predict(Xs).shape == (len(X), 2)


def test_fit_accepts_a_torch_tensor(tiny_estimator, X):
    est = tiny_estimator(epochs=1).fit(torch.from_numpy(X))
    assert est.predict(torch.from_numpy(X[:4])).shape == (4, 2)


def test_sample_shapes_and_controlled_generation(fitted, X):
    out = fitted.sample(7)
    assert out.shape == (7, *X.shape[1:])
    assert out.min() >= 0 and out.max() <= 1
    assert fitted.sample(5, facet=0, cluster=3).shape == (5, *X.shape[1:])
    assert fitted.sample(5, facet=1, cluster=2, temperature=0.3).shape == (5, *X.shape[1:])


def test_sample_is_seeded(fitted):
    np.testing.assert_array_equal(fitted.sample(4, seed=1), fitted.sample(4, seed=1))
    assert not np.allclose(fitted.sample(4, seed=1), fitted.sample(4, seed=2))


def test_sample_from_a_cluster_differs_between_clusters(fitted):
    """Controlled generation must actually use the requested cluster of the top facet."""
    a = fitted.sample(50, facet=1, cluster=0, temperature=0.0, seed=0)
    b = fitted.sample(50, facet=1, cluster=1, temperature=0.0, seed=0)
    assert not np.allclose(a, b)


@pytest.mark.parametrize("kw, match", [
    (dict(n=0), "n must be"),
    (dict(n=3, cluster=1), "cluster needs facet"),
    (dict(n=3, facet=2, cluster=0), "facet"),
    (dict(n=3, facet=0, cluster=4), "clusters 0..3"),
    (dict(n=3, facet=1, cluster=-1), "clusters 0..2"),
    (dict(n=3, facet=1, cluster=1.5), "cluster must be an integer"),
    (dict(n=3, facet=True, cluster=1), "facet must be an integer"),
    (dict(n=3, temperature=float("inf")), "temperature"),
    (dict(n=3, temperature=True), "temperature"),
])
def test_sample_rejects_bad_arguments(fitted, kw, match):
    with pytest.raises(ValueError, match=match):
        fitted.sample(**kw)


def test_sample_takes_numpy_numbers(fitted):
    """Arguments computed with numpy (np.float32, np.int64) are numbers like any other."""
    np.testing.assert_array_equal(fitted.sample(4, facet=np.int64(1), cluster=np.int64(0), temperature=np.float32(0.5)),
                                  fitted.sample(4, facet=1, cluster=0, temperature=0.5))


def test_verbose_takes_numpy_bools(tiny_estimator, X):
    assert tiny_estimator(epochs=1, verbose=np.False_).fit(X).verbose is np.False_


def test_fit_predict_is_fit_then_predict(tiny_estimator, X):
    est = tiny_estimator(epochs=1)
    np.testing.assert_array_equal(est.fit_predict(X), tiny_estimator(epochs=1).fit(X).predict(X))
    assert est.predict(X).shape == (len(X), 2)


def test_predict_takes_half_precision_tensors(fitted, X):
    """numpy has no bfloat16: such a tensor is read as float32, not refused by numpy's converter."""
    half = torch.as_tensor(X[:16]).to(torch.bfloat16)
    np.testing.assert_array_equal(fitted.predict(half), fitted.predict(half.float().numpy()))


def test_fit_needs_two_examples_even_for_one_cluster(tiny_estimator, X):
    with pytest.raises(ValueError, match="at least 2"):
        tiny_estimator(n_clusters=(1, 1), epochs=1).fit(X[:1])


def test_compose_with_itself_is_the_reconstruction(fitted, X):
    """Swapping a facet's latent with the same input's latent changes nothing."""
    for facet in (0, 1):
        np.testing.assert_allclose(fitted.compose(X[:9], X[:9], facet=facet), fitted.reconstruct(X[:9]), atol=1e-6)


def test_compose_swaps_exactly_one_facet(fitted, X):
    """compose(X_a, X_b, j) decodes X_a's latents with facet j's replaced by X_b's, row by row."""
    xa, xb = X[:6], X[100:106]
    out = fitted.compose(xa, xb, facet=1)
    assert out.shape == xa.shape
    za, zb = fitted.transform_facets(xa), fitted.transform_facets(xb)
    with torch.no_grad():
        manual = fitted.model_.decode_mean([torch.from_numpy(za[0]), torch.from_numpy(zb[1])])
    np.testing.assert_allclose(out, manual.numpy(), atol=1e-6)
    assert not np.allclose(out, fitted.reconstruct(xa), atol=1e-4)


def test_compose_rejects_mismatched_inputs(fitted, X):
    with pytest.raises(ValueError, match="same number"):
        fitted.compose(X[:3], X[:4], facet=0)
    with pytest.raises(ValueError, match="facet"):
        fitted.compose(X[:3], X[:3], facet=2)
    with pytest.raises(ValueError, match="X_b"):
        fitted.compose(X[:3], X[:3].reshape(3, -1), facet=0)


def test_score_is_finite_and_repeatable_and_leaves_global_rng_alone(fitted, X):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    s1 = fitted.score(X)
    assert torch.equal(torch.get_rng_state(), before), "score must not consume the caller's RNG"
    s2 = fitted.score(X)
    assert np.isfinite(s1) and s1 < 0
    assert s1 == s2


def test_cluster_weights_are_distributions(fitted):
    weights = fitted.cluster_weights_
    assert [w.shape for w in weights] == [(k,) for k in N_CLUSTERS]
    for w in weights:
        np.testing.assert_allclose(w.sum(), 1.0, atol=1e-6)


def test_evaluate_reports_every_facet_label_pair(fitted, shapes_data):
    X, labels = shapes_data
    rows = fitted.evaluate(X, labels)
    assert {(r["facet"], r["label"]) for r in rows} == {(j, name) for j in (0, 1) for name in labels}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    with pytest.raises(TypeError, match="dict"):
        fitted.evaluate(X, labels["shape"])


def test_estimator_is_sklearn_clonable(fitted):
    """BaseEstimator contract: get_params round-trips and clone gives an unfitted copy."""
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "model_")


# --- determinism ------------------------------------------------------------------------------

def test_same_seed_gives_identical_fits_and_restores_global_rng(tiny_estimator, X, fitted):
    torch.manual_seed(7)
    before = torch.get_rng_state()
    again = tiny_estimator().fit(X)
    assert torch.equal(torch.get_rng_state(), before), "fit must not consume the caller's RNG"
    np.testing.assert_array_equal(again.predict(X), fitted.predict(X))
    for a, b in zip(again.predict_proba(X), fitted.predict_proba(X)):
        np.testing.assert_array_equal(a, b)


def test_different_seed_gives_a_different_model(tiny_estimator, X, fitted):
    other = tiny_estimator(seed=1).fit(X)
    assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(other.predict_proba(X), fitted.predict_proba(X)))


def test_other_model_options_fit_and_predict(tiny_estimator, X):
    """Full covariances, the one-sample posterior, the paper's Gaussian, fixed weights, no progressive
    training: the combination trains and predicts, and fixed weights stay uniform."""
    est = tiny_estimator(covariance="full", posterior="mc", likelihood="sigmoid_gaussian", likelihood_scale=0.5,
                         learn_weights=False, progressive=False, epochs=1).fit(X)
    assert est.predict(X).shape == (len(X), 2)
    for w, k in zip(est.cluster_weights_, N_CLUSTERS):
        np.testing.assert_allclose(w, np.full(k, 1 / k), atol=1e-7)
    assert np.isfinite(est.score(X))


# --- persistence ------------------------------------------------------------------------------

def test_save_load_round_trip_gives_identical_outputs(fitted, X, tmp_path):
    fitted.save(tmp_path / "model")
    loaded = MFCVAE.load(tmp_path / "model", device="cpu")
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    for a, b in zip(loaded.predict_proba(X), fitted.predict_proba(X)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.transform(X), fitted.transform(X))
    np.testing.assert_array_equal(loaded.sample(3), fitted.sample(3))
    assert loaded.input_shape_ == fitted.input_shape_
    assert loaded.history_ == fitted.history_
    params = fitted.get_params()
    assert {k: v for k, v in loaded.get_params().items() if k != "device"} == {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items() if k != "device"}


def test_bfloat16_fit_trains_float32_weights_and_round_trips(tiny_estimator, X, tmp_path):
    """precision="bfloat16" trains (the loss falls), keeps float32 weights, and a saved model
    loads with the same precision and the same predictions."""
    est = tiny_estimator(precision="bfloat16", epochs=4).fit(X)
    assert est.history_[-1]["elbo"] > est.history_[0]["elbo"]
    assert all(p.dtype == torch.float32 for p in est.model_.parameters())
    est.save(tmp_path / "model")
    loaded = MFCVAE.load(tmp_path / "model", device="cpu")
    assert loaded.precision == "bfloat16" and loaded.model_.cfg.precision == "bfloat16"
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


def _cpu_has_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_precision_auto_follows_the_cpu(tiny_estimator, X, monkeypatch, native, expected):
    _cpu_has_bf16(monkeypatch, native)
    est = tiny_estimator(precision="auto", epochs=1).fit(X)
    assert est.precision == "auto" and est.precision_ == expected


def test_bfloat16_asked_for_on_a_cpu_without_it_warns_at_the_callers_line(tiny_estimator, X, monkeypatch):
    """Emulated bfloat16 is about ten times slower than float32: say so before training."""
    _cpu_has_bf16(monkeypatch, False)
    with pytest.warns(UserWarning, match="emulated") as record:
        est = tiny_estimator(precision="bfloat16", epochs=1).fit(X)
    assert est.precision_ == "bfloat16"
    assert [w.filename for w in record if "emulated" in str(w.message)] == [__file__]


@pytest.mark.parametrize("native, precision", [(False, "auto"), (False, "float32"), (True, "bfloat16"), (True, "auto")])
def test_no_emulation_warning_where_nothing_is_emulated(monkeypatch, native, precision):
    _cpu_has_bf16(monkeypatch, native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_emulated(resolve_precision(precision, torch.device("cpu")), torch.device("cpu"))
        warn_if_emulated("bfloat16", torch.device("cuda"))


def test_precision_auto_on_a_gpu_is_float32():
    assert resolve_precision("auto", torch.device("cuda")) == "float32"
    assert resolve_precision("bfloat16", torch.device("cuda")) == "bfloat16"


def test_precision_auto_model_keeps_its_arithmetic_on_another_machine(tiny_estimator, X, tmp_path, monkeypatch):
    """A model trained in bfloat16 under "auto" loads in bfloat16 where "auto" would pick float32."""
    _cpu_has_bf16(monkeypatch, True)
    est = tiny_estimator(precision="auto", epochs=2).fit(X)
    est.save(tmp_path / "model")
    _cpu_has_bf16(monkeypatch, False)
    loaded = MFCVAE.load(tmp_path / "model", device="cpu")
    assert loaded.precision == "auto" and loaded.precision_ == "bfloat16"
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


def test_resume_keeps_the_arithmetic_the_run_started_in(tiny_estimator, X, tmp_path, monkeypatch):
    _cpu_has_bf16(monkeypatch, True)
    tiny_estimator(precision="auto", epochs=1).fit(X, run_dir=tmp_path)
    _cpu_has_bf16(monkeypatch, False)
    with pytest.warns(UserWarning, match="emulated"):  # kept in bfloat16 where it is emulated: say so
        est = tiny_estimator(precision="auto", epochs=2).fit(X, run_dir=tmp_path, resume=True)
    assert est.precision_ == "bfloat16" and len(est.history_) == 2


def test_refit_at_end_fits_the_trained_encoders_output(tiny_estimator, X):
    """The same run with and without refit_at_end trains the same networks; the priors differ by
    exactly one mixture fit to draws from q(z|x), seeded by the run's seed."""
    plain = tiny_estimator(epochs=3, refit_at_end=False).fit(X)
    refit = tiny_estimator(epochs=3).fit(X)  # on by default
    for name, p in plain.model_.named_parameters():
        if not name.startswith("priors."):
            torch.testing.assert_close(refit.model_.get_parameter(name), p, rtol=0, atol=0, msg=name)
    assert not torch.allclose(refit.model_.priors[1].means, plain.model_.priors[1].means)
    mixtures.refit_priors(plain.model_, torch.as_tensor(X), plain.batch_size, 0, torch.device("cpu"))
    for a, b in zip(plain.predict_proba(X), refit.predict_proba(X)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_model_file_of_another_format_version_is_refused_by_name(fitted, tmp_path):
    fitted.save(tmp_path / "model")
    config_file = tmp_path / "model" / "config.json"
    config = json.loads(config_file.read_text())
    config["version"] = 1
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version 1"):
        MFCVAE.load(tmp_path / "model", device="cpu")


def test_parameters_are_keyword_only_and_every_default_lives_in_the_signature():
    """MFCVAE(5) is refused; ModelConfig and TrainConfig hold no defaults of their own."""
    import dataclasses

    from mfcvae.config import ModelConfig, TrainConfig

    with pytest.raises(TypeError):
        MFCVAE((4, 4))
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in inspect.signature(MFCVAE).parameters.values())
    for config in (ModelConfig, TrainConfig):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(config))


def test_reseed_dead_logs_its_work_per_epoch(tiny_estimator, X):
    """Every epoch's row says how many clusters each facet had re-seeded as it started: none
    before the first epoch, none in a facet not yet switched on."""
    est = tiny_estimator(epochs=4, n_clusters=(8, 8), reseed_dead=True).fit(X)
    rows = est.history_
    assert all({"reseeded_0", "reseeded_1"} <= set(r) for r in rows)
    assert (rows[0]["reseeded_0"], rows[0]["reseeded_1"]) == (0, 0)
    assert rows[1]["reseeded_0"] == 0  # facet 0 fades in from epoch 3 on
    assert sum(r["reseeded_1"] for r in rows) > 0  # 8 clusters for the demo's 4 shapes: some die
    assert "reseeded_0" not in tiny_estimator(epochs=1, reseed_dead=False).fit(X).history_[0]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "svhn", "3dshapes_1", "3dshapes_2"])
def test_paper_presets_pin_the_paper_recipe_where_the_defaults_go_beyond_it(name):
    """The defaults train with batch 128, precision "auto" and full covariances; a paper preset
    must not inherit them, nor any option beyond the paper. The covariance key must be in the
    file (the MLP presets' diagonal one is not the default)."""
    assert MFCVAE().covariance == "full"
    assert load_preset(name)["covariance"] == ("diag" if "mnist" in name else "full")
    est = MFCVAE(**load_preset(name))
    assert est.precision == "float32" and est.batch_size == (512 if "mnist" in name else 150)
    assert (est.free_bits, est.merge_scale, est.posterior, est.reseed_dead, est.weight_floor,
            est.refit_at_end) == (0.0, None, "exact", False, 0.0, False)
    assert est.likelihood == ("bernoulli" if "mnist" in name else "sigmoid_gaussian")


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_pins_progressive_training(name):
    """The paper's presets keep its progressive schedule whatever the estimator's default, and
    two_factors trains its facets together: the key is in the file, not inherited (checking
    ``est.progressive`` would pass on the default)."""
    assert load_preset(name).get("progressive") is (name != "two_factors")


def test_load_missing_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved model"):
        MFCVAE.load(tmp_path / "nothing-here")


def test_load_corrupt_weights_raises_value_error(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read"):
        MFCVAE.load(tmp_path / "m")


def test_load_weights_that_do_not_fit_the_config_raises_value_error(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["params"]["n_clusters"] = config["n_clusters"] = [5, 3]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weights do not fit the network its config.json describes: size mismatch"):
        MFCVAE.load(tmp_path / "m")


def test_load_counts_of_clusters_that_contradict_the_parameters_raises_value_error(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["n_clusters"] = [5, 3]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="clusters per facet"):
        MFCVAE.load(tmp_path / "m")


def test_load_foreign_config_raises_value_error(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not an mfcvae"):
        MFCVAE.load(tmp_path / "m")


@pytest.mark.parametrize("method, args", [
    ("predict", ("X",)), ("predict_proba", ("X",)), ("transform", ("X",)), ("reconstruct", ("X",)),
    ("score", ("X",)), ("sample", (3,)), ("compose", ("X", "X", 0)), ("save", ("PATH",)),
])
def test_methods_before_fit_raise_not_fitted(tiny_estimator, X, tmp_path, method, args):
    est = tiny_estimator()
    args = tuple(X if a == "X" else tmp_path / "m" if a == "PATH" else a for a in args)
    with pytest.raises(NotFittedError):
        getattr(est, method)(*args)


# --- checkpoints and resume -------------------------------------------------------------------

def test_run_dir_holds_metrics_checkpoint_and_model(tiny_estimator, X, tmp_path):
    est = tiny_estimator().fit(X, run_dir=tmp_path)
    rows = metrics_rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert (tmp_path / CHECKPOINT_FILE).is_file()
    np.testing.assert_array_equal(MFCVAE.load(tmp_path, device="cpu").predict(X), est.predict(X))


def test_a_loss_that_stops_being_finite_stops_the_run_and_the_last_checkpoint_is_kept(tiny_estimator, X, tmp_path,
                                                                                     monkeypatch):
    """A non-finite loss stops training before the optimiser takes that step; the error names
    where, and the checkpoint of the last finished epoch is left as it was."""
    original, calls, adam_step, steps = MultiFacetVAE.elbo_terms, [], torch.optim.Adam.step, []

    def turns_nan_at_step_8(self, x, alphas=None):
        terms = original(self, x, alphas)
        calls.append(1)
        if len(calls) >= 8:  # 300 inputs in mini-batches of 64: the 3rd of 5 in epoch 2
            terms.reconstruction = terms.reconstruction * float("nan")
        return terms

    def counted_step(self, *args, **kwargs):
        steps.append(1)
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(MultiFacetVAE, "elbo_terms", turns_nan_at_step_8)
    monkeypatch.setattr(torch.optim.Adam, "step", counted_step)
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 2, step 7"):
        tiny_estimator(epochs=3).fit(X, run_dir=tmp_path)
    assert len(steps) == 7  # the 8th, with the NaN loss, was not taken
    tensors, meta = read_safetensors(tmp_path / CHECKPOINT_FILE)
    assert meta["epoch"] == 1 and meta["step"] == 5
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_fresh_fit_in_an_old_run_dir_forgets_the_old_logs(tiny_estimator, X, tmp_path):
    tiny_estimator().fit(X, run_dir=tmp_path)
    tiny_estimator(epochs=1).fit(X, run_dir=tmp_path)
    assert len(metrics_rows(tmp_path)) == 1


def test_a_fresh_fit_failing_in_its_first_epoch_leaves_the_old_run_whole(tiny_estimator, X, tmp_path, monkeypatch):
    """An older run's files (checkpoint, metrics, model) go only when the new run first writes its
    own: a fresh fit that fails before (a loss that turns NaN at once, say) leaves them resumable."""
    tiny_estimator().fit(X, run_dir=tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {CHECKPOINT_FILE, METRICS_FILE, "model.safetensors", "config.json"} <= set(before)

    def diverge(self, *args, **kwargs):
        raise FloatingPointError("the loss became nan at epoch 1, step 1")

    monkeypatch.setattr(train_module.Trainer, "_train_epoch", diverge)
    with pytest.raises(FloatingPointError):
        tiny_estimator(lr=1e6).fit(X, run_dir=tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    assert len(tiny_estimator(epochs=4).fit(X, run_dir=tmp_path, resume=True).history_) == 4


def test_resume_with_more_epochs_lengthens_the_last_stage(tiny_estimator, X, tmp_path):
    """fit(epochs=2) then resume to epochs=4 keeps the 2-epoch run's schedule (stage 1 starts after
    epoch 1, its fade as long as it was) and trains two more epochs in the last stage: exactly the
    model a straight run with that schedule gives (CPU training is deterministic and the checkpoint
    stores optimiser, RNG and schedule)."""
    first = tiny_estimator(epochs=2).fit(X, run_dir=tmp_path)
    steps_per_epoch = first.history_[0]["step"]
    resumed = tiny_estimator(epochs=4).fit(X, run_dir=tmp_path, resume=True)
    assert len(resumed.history_) == 4
    assert [int(r["epoch"]) for r in metrics_rows(tmp_path)] == [1, 2, 3, 4]
    straight = tiny_estimator(epochs=4, stage_epochs=(1, 3), fade_steps=round(0.5 * steps_per_epoch)).fit(X)
    np.testing.assert_array_equal(resumed.predict(X), straight.predict(X))
    for a, b in zip(resumed.predict_proba(X), straight.predict_proba(X)):
        np.testing.assert_array_equal(a, b)


def test_resume_with_fewer_epochs_than_done_raises(tiny_estimator, X, tmp_path):
    tiny_estimator(epochs=3).fit(X, run_dir=tmp_path)
    with pytest.raises(ValueError, match="epochs=2"):
        tiny_estimator(epochs=2).fit(X, run_dir=tmp_path, resume=True)


def test_resume_with_more_epochs_equals_a_straight_run_without_progressive_training(tiny_estimator, X, tmp_path):
    """As above with progressive=False, where the schedule cannot depend on the epoch count: this
    isolates the optimiser / RNG / shuffling restoration."""
    tiny_estimator(epochs=2, progressive=False).fit(X, run_dir=tmp_path)
    resumed = tiny_estimator(epochs=4, progressive=False).fit(X, run_dir=tmp_path, resume=True)
    assert len(resumed.history_) == 4 and len(metrics_rows(tmp_path)) == 4
    straight = tiny_estimator(epochs=4, progressive=False).fit(X)
    for a, b in zip(resumed.predict_proba(X), straight.predict_proba(X)):
        np.testing.assert_array_equal(a, b)


def _interrupt(monkeypatch, *, at_epoch: int, at_batch: int | None = None):
    """Raise KeyboardInterrupt at the start of epoch ``at_epoch`` (0-based) or, with ``at_batch``,
    just before that batch's optimiser step."""
    original_epoch = train_module.Trainer._train_epoch
    original_step = torch.optim.Adam.step
    state = {"trainer": None, "in_epoch": 0}

    def train_epoch(self, *args, **kwargs):
        state["trainer"], state["in_epoch"] = self, 0
        if at_batch is None and self.epoch == at_epoch:
            raise KeyboardInterrupt
        return original_epoch(self, *args, **kwargs)

    def step(self, *args, **kwargs):
        trainer = state["trainer"]
        if at_batch is not None and trainer is not None and trainer.epoch == at_epoch and state["in_epoch"] == at_batch:
            raise KeyboardInterrupt
        state["in_epoch"] += 1
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(train_module.Trainer, "_train_epoch", train_epoch)
    monkeypatch.setattr(torch.optim.Adam, "step", step)


@pytest.mark.parametrize("extra", [{}, dict(free_bits=1.0, reseed_dead=False, weight_floor=0.3, refit_at_end=False)],
                         ids=["defaults", "other-options"])
def test_resume_after_ctrl_c_between_epochs_equals_an_uninterrupted_run(tiny_estimator, X, tmp_path, monkeypatch,
                                                                       extra):
    """Ctrl-C writes a checkpoint; resuming with the same parameters finishes the same run. The
    interrupt falls on the start of stage 1 (epoch 3 of 4)."""
    with monkeypatch.context() as m:
        _interrupt(m, at_epoch=2)
        with pytest.raises(KeyboardInterrupt):
            tiny_estimator(epochs=4, **extra).fit(X, run_dir=tmp_path)
    assert len(metrics_rows(tmp_path)) == 2
    resumed = tiny_estimator(epochs=4, **extra).fit(X, run_dir=tmp_path, resume=True)
    straight = tiny_estimator(epochs=4, **extra).fit(X)
    assert [h["step"] for h in resumed.history_] == [h["step"] for h in straight.history_]
    for a, b in zip(resumed.predict_proba(X), straight.predict_proba(X)):
        np.testing.assert_array_equal(a, b)


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tiny_estimator, X, tmp_path, monkeypatch):
    """... and, where an older run's checkpoint is still in run_dir (the new run had not written
    yet), that it is that run's."""
    with monkeypatch.context() as m:
        _interrupt(m, at_epoch=0)
        with pytest.raises(KeyboardInterrupt, match="before the first checkpoint: nothing to resume$"):
            tiny_estimator(epochs=2).fit(X, run_dir=tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()  # nothing written, not even the folder
    tiny_estimator(epochs=1).fit(X, run_dir=tmp_path / "old")
    with monkeypatch.context() as m:
        _interrupt(m, at_epoch=0)
        with pytest.raises(KeyboardInterrupt, match=r"nothing to resume \(the checkpoint in .* is an earlier run's\)"):
            tiny_estimator(epochs=2).fit(X, run_dir=tmp_path / "old")


def test_resume_after_ctrl_c_mid_epoch_keeps_the_step_count(tiny_estimator, X, tmp_path, monkeypatch):
    """An interrupt in the middle of an epoch must not leave a checkpoint that, resumed, trains more
    mini-batches than the run has (which would also shift the progressive schedule)."""
    with monkeypatch.context() as m:
        _interrupt(m, at_epoch=2, at_batch=2)
        with pytest.raises(KeyboardInterrupt):
            tiny_estimator(epochs=4).fit(X, run_dir=tmp_path)
    resumed = tiny_estimator(epochs=4).fit(X, run_dir=tmp_path, resume=True)
    straight = tiny_estimator(epochs=4).fit(X)
    assert [h["step"] for h in resumed.history_] == [h["step"] for h in straight.history_]
    assert [int(r["epoch"]) for r in metrics_rows(tmp_path)] == [1, 2, 3, 4]


@pytest.mark.parametrize("epochs, at_step, extra", [(3, 7, {}), (4, 17, dict(n_clusters=(8, 8)))],
                         ids=["epoch-2", "epoch-4-after-a-reseed"])
def test_ctrl_c_mid_epoch_checkpoints_that_batch_and_resume_finishes_the_same_run(tiny_estimator, X, tmp_path,
                                                                                 monkeypatch, epochs, at_step, extra):
    """A real SIGINT in the middle of an epoch (5 mini-batches of 64 per epoch with 300 examples;
    batch 2 of epoch 2, or of epoch 4, which starts by re-seeding clusters): training stops after
    that mini-batch, the checkpoint holds exactly that point (shuffle order, position, running sums,
    the re-seed count), and resuming gives the model and the per-epoch log an uninterrupted run gives."""
    original_step = torch.optim.Adam.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_step:
            signal.raise_signal(signal.SIGINT)
        return original_step(self, *args, **kwargs)

    handler = signal.getsignal(signal.SIGINT)  # Python's default; ignored in a background job
    with monkeypatch.context() as m:
        m.setattr(torch.optim.Adam, "step", step)
        with pytest.raises(KeyboardInterrupt, match=f"holds step {at_step}; fit again with resume=True"):
            tiny_estimator(epochs=epochs, **extra).fit(X, run_dir=tmp_path)
    assert read_checkpoint(tmp_path)["step"] == at_step
    assert signal.getsignal(signal.SIGINT) is handler  # handler restored
    resumed = tiny_estimator(epochs=epochs, **extra).fit(X, run_dir=tmp_path, resume=True)
    straight = tiny_estimator(epochs=epochs, **extra).fit(X)
    if extra:  # the interrupted epoch did re-seed, so its count had to survive the checkpoint
        assert straight.history_[-1]["reseeded_0"] + straight.history_[-1]["reseeded_1"] > 0
    for key in ("step", "elbo", "kl_0", "reseeded_0", "reseeded_1"):
        assert [h[key] for h in resumed.history_] == pytest.approx([h[key] for h in straight.history_], rel=1e-9)
    for a, b in zip(resumed.predict_proba(X), straight.predict_proba(X)):
        np.testing.assert_array_equal(a, b)


def test_resume_with_changed_structure_raises(tiny_estimator, X, tmp_path):
    tiny_estimator(epochs=1).fit(X, run_dir=tmp_path)
    with pytest.raises(ValueError, match="n_clusters"):
        tiny_estimator(epochs=2, n_clusters=(5, 3)).fit(X, run_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="lr"):
        tiny_estimator(epochs=2, lr=0.01).fit(X, run_dir=tmp_path, resume=True)


def test_resume_needs_a_run_dir_with_a_checkpoint(tiny_estimator, X, tmp_path):
    with pytest.raises(ValueError, match="run_dir"):
        tiny_estimator().fit(X, resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        tiny_estimator().fit(X, run_dir=tmp_path / "empty", resume=True)


# --- input validation -------------------------------------------------------------------------

def _with(X, fn):
    X = X.copy()
    fn(X)
    return X


BAD_INPUTS = {
    "nan": (lambda X: _with(X, lambda a: a.__setitem__((0, 0, 0, 0), np.nan)), ValueError, "NaN"),
    "inf": (lambda X: _with(X, lambda a: a.__setitem__((1, 2, 3, 4), np.inf)), ValueError, "infinity"),
    "1-D": (lambda X: X.reshape(-1), ValueError, "Reshape your data"),
    "5-D": (lambda X: X[:, None], ValueError, "dimension"),
    "empty": (lambda X: X[:0], ValueError, "0 sample"),
    "strings": (lambda X: np.array([["a", "b"], ["c", "d"]]), ValueError, "numeric"),
    "ragged": (lambda X: [[0.1, 0.2], [0.3]], (TypeError, ValueError), "array-like|inhomogeneous"),
    "fewer rows than clusters": (lambda X: X[:3], ValueError, "clusters"),
    "empty feature dim": (lambda X: np.zeros((5, 0)), ValueError, "0 feature"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_fit_rejects_bad_inputs_with_a_message(tiny_estimator, X, name):
    make, error, match = BAD_INPUTS[name]
    with pytest.raises(error, match=match):
        tiny_estimator().fit(make(X))


BAD_PARAMS = {
    "facet count mismatch": (dict(n_clusters=(4, 3, 2)), "n_clusters and latent_dims"),
    "hidden_dims length": (dict(hidden_dims=(32,)), "hidden_dims"),
    "zero clusters": (dict(n_clusters=(0, 3)), "n_clusters"),
    "negative latent": (dict(latent_dims=(2, -1)), "latent_dims"),
    "zero hidden": (dict(hidden_dims=(0, 64)), "hidden_dims"),
    "float clusters": (dict(n_clusters=(2.5, 3)), "n_clusters"),
    "zero epochs": (dict(epochs=0), "epochs"),
    "zero batch": (dict(batch_size=0), "batch_size"),
    "negative lr": (dict(lr=-1.0), "lr"),
    "covariance": (dict(covariance="spherical"), "covariance"),
    "likelihood": (dict(likelihood="poisson"), "likelihood"),
    "likelihood_scale": (dict(likelihood="gaussian", likelihood_scale=0.0), "likelihood_scale"),
    "posterior": (dict(posterior="approx"), "posterior"),
    "architecture": (dict(architecture="transformer"), "architecture"),
    "device": (dict(device="banana"), "device"),
    "stage_epochs per facet": (dict(stage_epochs=(1, 1, 2)), "stage_epochs"),
    "free_bits": (dict(free_bits=-1.0), "free_bits"),
    "learn_weights not a bool": (dict(learn_weights=2), "learn_weights"),
    "weight_floor above 1": (dict(weight_floor=1.5), "weight_floor"),
    "weight_floor negative": (dict(weight_floor=-0.1), "weight_floor"),
    "reseed_dead not a bool": (dict(reseed_dead="yes"), "reseed_dead"),
    "refit_at_end not a bool": (dict(refit_at_end="yes"), "refit_at_end"),
    "lr a string": (dict(lr="1e-3"), "lr must be a number"),
    "merge_scale": (dict(merge_scale=-1.0), "merge_scale"),
    "precision": (dict(precision="float16"), "precision"),
    "compile": (dict(compile="yes"), "compile"),
    "lr infinite": (dict(lr=float("inf")), "lr must be a finite number"),
    "free_bits infinite": (dict(free_bits=float("inf")), "free_bits must be a finite number"),
    "likelihood_scale infinite": (dict(likelihood_scale=float("inf")), "likelihood_scale must be a finite"),
    "merge_scale NaN": (dict(merge_scale=float("nan")), "merge_scale must be a finite number"),
    "verbose a string": (dict(verbose="no"), "verbose must be true or false"),
}


@pytest.mark.parametrize("name", list(BAD_PARAMS))
def test_fit_rejects_bad_parameters_with_a_message(tiny_estimator, X, name):
    params, match = BAD_PARAMS[name]
    with pytest.raises(ValueError, match=match):
        tiny_estimator(**params).fit(X)


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_fit_rejects_devices_other_than_cpu_and_cuda(tiny_estimator, X, device):
    """The documented choices are 'auto', 'cpu' and 'cuda[:i]'; other torch device types must fail
    up front with a ValueError naming the device, not deep inside training."""
    with pytest.raises(ValueError, match="device"):
        tiny_estimator(device=device, epochs=1).fit(X[:20])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_full_covariances_train_save_load_and_predict_on_a_cuda_gpu(tiny_estimator, X, tmp_path):
    """The CUDA path of the default's full covariances (Cholesky factors on the GPU), through the
    public API; CI has no GPU, so this runs where one is."""
    est = tiny_estimator(device="cuda", covariance="full", epochs=3).fit(X)
    assert next(est.model_.parameters()).device.type == "cuda"
    proba = est.predict_proba(X[:64])
    est.save(tmp_path / "m")
    again = MFCVAE.load(tmp_path / "m", device="cuda").predict_proba(X[:64])
    assert all(np.allclose(a, b, atol=1e-5) and np.allclose(a.sum(1), 1, atol=1e-4) for a, b in zip(proba, again))
    assert est.compose(X[:4], X[4:8], facet=1).shape == X[:4].shape
    assert np.isfinite(est.sample(8, facet=0, cluster=1)).all()


def test_bad_parameters_fail_before_training(tiny_estimator, X, monkeypatch):
    """Validation happens before any optimisation work starts."""
    monkeypatch.setattr(train_module.Trainer, "run", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError):
        tiny_estimator(covariance="nope").fit(X)


def test_predict_rejects_wrong_feature_shape(fitted, X):
    with pytest.raises(ValueError, match=r"shape \(192,\).*fitted on \(3, 8, 8\)"):
        fitted.predict(X.reshape(len(X), -1))
    with pytest.raises(ValueError, match="fitted on"):
        fitted.transform(X[:, :2])


def test_predict_rejects_nan_and_strings(fitted, X):
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict(_with(X[:4], lambda a: a.__setitem__((0, 0, 0, 0), np.nan)))
    with pytest.raises(ValueError, match="numeric"):
        fitted.predict(np.full((2, 3, 8, 8), "x"))


def test_parameters_given_as_numpy_values_checkpoint_save_and_load(tiny_estimator, X, tmp_path):
    """A seed from np.arange or cluster counts in an array reach the JSON of the checkpoint and of
    config.json as plain numbers, instead of failing there after an epoch of training."""
    est = tiny_estimator(epochs=1, seed=np.int64(3), n_clusters=np.array([4, 3]), lr=np.float32(1e-3))
    est.fit(X, run_dir=tmp_path / "run")
    assert read_safetensors(tmp_path / "run" / CHECKPOINT_FILE)[1]["estimator"]["n_clusters"] == [4, 3]
    loaded = MFCVAE.load(tmp_path / "run", device="cpu")
    assert (loaded.seed, tuple(loaded.n_clusters)) == (3, (4, 3))
    tiny_estimator(epochs=2, seed=np.int64(3), n_clusters=np.array([4, 3]), lr=np.float32(1e-3)).fit(
        X, run_dir=tmp_path / "run", resume=True)


def test_a_run_dir_that_is_a_file_is_refused_before_training(tiny_estimator, X, tmp_path, monkeypatch):
    """Refused before the mixture initialisation, not when the first checkpoint is written."""
    (tmp_path / "taken").write_text("not a folder")
    monkeypatch.setattr(train_module, "initialise_priors", lambda *a, **k: pytest.fail("initialised"))
    monkeypatch.setattr(train_module.Trainer, "run", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match="exists and is not a folder"):
        tiny_estimator().fit(X, run_dir=tmp_path / "taken")


def test_values_outside_the_unit_interval_are_refused_by_the_bounded_likelihoods(fitted, X, tiny_estimator):
    """0..255 floats are a mistake for a Bernoulli model at predict time as at fit time (with a hint);
    the paper's sigmoid Gaussian needs [0, 1] too; "auto" and "gaussian" take any real values."""
    with pytest.raises(ValueError, match=r"needs them in \[0, 1\].*divide by 255"):
        fitted.predict(X[:4] * 255)
    for likelihood in ("bernoulli", "sigmoid_gaussian"):
        with pytest.raises(ValueError, match=rf"likelihood='{likelihood}' needs them in \[0, 1\]"):
            tiny_estimator(likelihood=likelihood, epochs=1).fit(X * 2 - 1)
    assert tiny_estimator(epochs=1).fit(X * 2 - 1).likelihood_ == "gaussian"
    gaussian = tiny_estimator(likelihood="gaussian", epochs=1).fit(X)
    assert gaussian.predict(X[:4] * 2).shape == (4, 2)


def test_arrays_and_datasets_mix_freely(tiny_estimator):
    """uint8 arrays are read as images (value / 255) as a Dataset reads them, and (N, H, W) and
    (N, 1, H, W) are the same inputs; outputs keep the shape they were given."""
    from mfcvae.datasets import Dataset

    raw = np.random.default_rng(0).integers(0, 256, size=(70, 8, 8), dtype=np.uint8)
    model = tiny_estimator().fit(raw[:, None] / np.float32(255))  # fitted on (N, 1, 8, 8) floats
    expected = model.predict(raw[:, None] / np.float32(255))
    np.testing.assert_array_equal(model.predict(raw), expected)  # uint8, no channel axis
    np.testing.assert_array_equal(model.predict(Dataset(raw)), expected)
    assert model.reconstruct(raw[:3]).shape == (3, 8, 8)
    assert model.compose(raw[:2], raw[2:4], facet=0).shape == (2, 8, 8)
    flat = tiny_estimator().fit(raw / np.float32(255))  # fitted on (N, 8, 8)
    np.testing.assert_array_equal(flat.predict(Dataset(raw)), flat.predict(raw))
    with pytest.raises(ValueError, match="channel-last"):
        model.predict(np.zeros((2, 8, 8, 3), np.float32))
