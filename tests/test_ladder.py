"""The two ladder architectures: the paper's conv ladder sizes, shapes for other J and image
sizes, the fade-in weight's effect, gradients, and the estimator's choice by input shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfcvae import MFCVAE
from mfcvae.datasets import Dataset
from mfcvae.ladder import ConvLadderDecoder, ConvLadderEncoder, conv_ladder_fits
from mfcvae.model import count_parameters

CONV = dict(architecture="conv")


def test_conv_ladder_has_the_papers_sizes():
    """SPEC 4: on 32x32x3 with channels (64, 128), h_0 has 64x7x7 = 3136 features, h_1 256x2x2 = 1024;
    the decoder goes 256x8x8 -> 128x16x16 -> 64x16x16 (+ rung 0: 64x16x16) -> 3x32x32."""
    encoder = ConvLadderEncoder((3, 32, 32), (64, 128))
    assert encoder.feature_dims == (3136, 1024)
    features = encoder(torch.rand(2, 3, 32, 32))
    assert [tuple(h.shape) for h in features] == [(2, 3136), (2, 1024)]
    decoder = ConvLadderDecoder((3, 32, 32), (64, 128), (20, 2))
    assert decoder.top_shape == (256, 8, 8) and decoder.rung_shapes == [(64, 16, 16)]
    assert decoder([torch.randn(2, 20), torch.randn(2, 2)], torch.ones(2)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("input_shape, hidden", [((3, 16, 16), (8,)), ((1, 64, 32), (8, 16, 32)), ((3, 64, 64), (8, 16))])
def test_conv_ladder_other_depths_and_image_sizes(make_model, input_shape, hidden):
    n_facets = len(hidden)
    model = make_model(input_shape=input_shape, hidden_dims=hidden, n_clusters=(3,) * n_facets,
                       latent_dims=(2,) * n_facets, **CONV)
    x = torch.rand(4, *input_shape)
    assert model.decode([m for m, _ in model.encode(x)]).shape == x.shape
    assert model.elbo_terms(x).kl().shape == (4, n_facets)


def test_conv_fade_in_weight_zero_removes_a_facet_from_the_decoder(make_model):
    model = make_model(input_shape=(3, 16, 16), hidden_dims=(8, 16), **CONV).eval()
    z0, z1 = torch.randn(4, 2), torch.randn(4, 3)
    off = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(model.decode([z0, z1], off), model.decode([5 * z0, z1], off))
    assert not torch.allclose(model.decode([z0, z1]), model.decode([5 * z0, z1]))


def test_conv_gradients_reach_every_parameter(make_model):
    model = make_model(input_shape=(3, 16, 16), hidden_dims=(8, 16), covariance="full", **CONV)
    (-model.elbo_terms(torch.rand(6, 3, 16, 16)).elbo().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} receives an all-zero gradient"


def test_the_conv_ladder_runs_channels_last_and_computes_what_the_default_layout_does(make_model):
    model = make_model(input_shape=(3, 16, 16), hidden_dims=(8, 16), **CONV).eval()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.ndim == 4)
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        encoded = model.encode(x)
        decoded = model.decode([m for m, _ in encoded])
        assert decoded.is_contiguous(memory_format=torch.channels_last) and decoded.shape == x.shape
        model.to(memory_format=torch.contiguous_format)
        for (m, v), (m2, v2) in zip(encoded, model.encode(x)):
            torch.testing.assert_close(m, m2, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(decoded, model.decode([m for m, _ in encoded]), rtol=1e-5, atol=1e-5)


def test_conv_ladder_rejects_shapes_it_cannot_halve():
    assert conv_ladder_fits((3, 32, 32), 2) and conv_ladder_fits((1, 16, 48), 2)
    assert not conv_ladder_fits((3, 8, 8), 2)  # 2x2 at the top
    assert not conv_ladder_fits((3, 30, 32), 2) and not conv_ladder_fits((3072,), 2)
    with pytest.raises(ValueError, match="divisible by 2"):
        ConvLadderEncoder((3, 30, 32), (8, 16))


@pytest.mark.parametrize("architecture, activation, norm",
                         [("mlp", torch.nn.ReLU, False), ("conv", torch.nn.ELU, True)])
def test_the_architecture_fixes_activation_and_batch_norm(make_model, architecture, activation, norm):
    """As the paper has them: the MLP ladder with relu and no batch-norm, the conv ladder with elu
    and batch-norm."""
    model = make_model(input_shape=(3, 16, 16), hidden_dims=(8, 16), architecture=architecture)
    assert (model.cfg.activation, model.cfg.batch_norm) == (activation.__name__.lower(), norm)
    assert any(isinstance(m, activation) for m in model.modules())
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.ELU)) and not isinstance(m, activation)
                   for m in model.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()) == norm
    assert model.elbo_terms(torch.rand(5, 3, 16, 16)).elbo().shape == (5,)


# --- the estimator's choice -----------------------------------------------------------------------

def test_auto_architecture_by_input_shape(tiny_estimator):
    colour = np.random.default_rng(0).random((40, 3, 16, 16), dtype=np.float32)
    conv = tiny_estimator(hidden_dims=None, epochs=1).fit(colour)
    cfg = conv.model_.cfg
    assert (cfg.architecture, cfg.hidden_dims, cfg.activation, cfg.batch_norm) == ("conv", (64, 128), "elu", True)
    grey = tiny_estimator(hidden_dims=None, epochs=1).fit(colour[:, :1])
    cfg = grey.model_.cfg
    assert (cfg.architecture, cfg.hidden_dims, cfg.activation, cfg.batch_norm) == ("mlp", (500, 2000), "relu", False)
    assert tiny_estimator(hidden_dims=None, n_clusters=(2, 2, 2), latent_dims=(1, 1, 1), epochs=1) \
        .fit(colour[:, 0, 0]).model_.cfg.hidden_dims == (500, 1000, 2000)
    with pytest.raises(ValueError, match="conv ladder needs"):
        tiny_estimator(architecture="conv").fit(colour[:, 0])
    with pytest.raises(ValueError, match="architecture must be one of"):
        tiny_estimator(architecture="transformer").fit(colour)


def test_conv_estimator_fit_save_load_round_trip(tiny_estimator, tmp_path):
    """Batch-norm statistics are part of the saved state: a loaded model predicts identically."""
    x = np.random.default_rng(0).random((65, 3, 16, 16), dtype=np.float32)  # 65 = 64 + a batch of one
    model = tiny_estimator(architecture="conv", hidden_dims=(8, 16), covariance="full").fit(x)
    model.save(tmp_path / "m")
    again = MFCVAE.load(tmp_path / "m", device="cpu")
    np.testing.assert_array_equal(model.predict(x), again.predict(x))
    np.testing.assert_allclose(model.reconstruct(x[:3]), again.reconstruct(x[:3]), atol=1e-6)


def test_fit_on_a_uint8_dataset_equals_fit_on_its_float_array(tiny_estimator):
    """A Dataset stays uint8 and is divided by 255 batch by batch: the same model as the float array."""
    raw = np.random.default_rng(0).integers(0, 256, size=(70, 3, 8, 8), dtype=np.uint8)
    ds = Dataset(raw, {"y": np.arange(70) % 3})
    from_ds = tiny_estimator().fit(ds)
    from_array = tiny_estimator().fit(raw / np.float32(255))
    np.testing.assert_array_equal(from_ds.predict(ds), from_array.predict(raw / np.float32(255)))
    np.testing.assert_allclose(from_ds.transform(ds)[0], from_array.transform(raw / np.float32(255))[0], atol=1e-5)
    rows = from_ds.evaluate(ds)  # labels default to the Dataset's
    assert {(r["facet"], r["label"]) for r in rows} == {(0, "y"), (1, "y")}
    with pytest.raises(ValueError, match=r"the model was fitted on \(3, 8, 8\)"):
        from_ds.predict(Dataset(raw[:, :, :4, :4]))


def test_fit_on_a_float_dataset_is_validated(tiny_estimator):
    bad = np.full((20, 5), 2.0, np.float32)
    with pytest.raises(ValueError, match=r"needs them in \[0, 1\]"):
        tiny_estimator(likelihood="bernoulli").fit(Dataset(bad))
    nan = np.zeros((20, 5), np.float32)
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tiny_estimator(likelihood="gaussian").fit(Dataset(nan))


def test_paper_conv_model_size():
    """The 3DShapes preset's network (conv ladder, K=(60, 20), z=(20, 2), full covariance) builds at 32x32."""
    from mfcvae.config import ModelConfig
    from mfcvae.model import MultiFacetVAE

    cfg = ModelConfig(input_shape=(3, 32, 32), n_clusters=(60, 20), latent_dims=(20, 2), hidden_dims=(64, 128),
                      architecture="conv", covariance="full", learn_weights=False, weight_floor=0.0,
                      likelihood="gaussian", likelihood_scale=0.3, posterior="exact", merge_scale=1.0,
                      precision="float32")
    assert 1_000_000 < count_parameters(MultiFacetVAE(cfg)) < 3_000_000


@pytest.mark.parametrize("network", [dict(architecture="mlp"), CONV], ids=["mlp", "conv"])
def test_merge_scale_multiplies_the_lower_rungs_like_the_fade_in_weight(make_model, network):
    """merge_scale s with fade-in weight a gives the decoder of merge_scale 1 with weight s * a."""
    shape = (3, 16, 16)
    scaled = make_model(input_shape=shape, hidden_dims=(8, 16), merge_scale=0.25, **network).eval()
    plain = make_model(input_shape=shape, hidden_dims=(8, 16), merge_scale=1.0, **network).eval()
    plain.load_state_dict(scaled.state_dict())
    zs = [torch.randn(4, 2), torch.randn(4, 3)]
    torch.testing.assert_close(scaled.decode(zs, torch.tensor([0.8, 1.0])), plain.decode(zs, torch.tensor([0.2, 1.0])))
    assert not torch.allclose(scaled.decode(zs), plain.decode(zs))


def test_estimator_merge_scale_defaults_to_the_papers_per_architecture():
    def merge_scale(estimator: MFCVAE, input_shape: tuple[int, ...]) -> float:
        return estimator._model_config(input_shape, "float32", "bernoulli").merge_scale

    assert merge_scale(MFCVAE(), (1, 28, 28)) == 0.1
    assert merge_scale(MFCVAE(), (3, 32, 32)) == 1.0  # conv
    assert merge_scale(MFCVAE(merge_scale=1.0), (1, 28, 28)) == 1.0
    with pytest.raises(ValueError, match="merge_scale"):
        merge_scale(MFCVAE(merge_scale=0.0), (1, 28, 28))
