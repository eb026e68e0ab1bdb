"""Shared fixtures: tiny models and small data, so the whole suite runs in seconds on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfcvae import MFCVAE
from mfcvae.config import ModelConfig
from mfcvae.datasets import make_shapes
from mfcvae.ladder import PAPER_MERGE_SCALE
from mfcvae.model import MultiFacetVAE

torch.set_num_threads(1)  # tiny models: threads only add overhead (and suffer under load)

# Small, fast estimator settings shared by the estimator tests.
TINY = dict(
    n_clusters=(4, 3),
    latent_dims=(2, 3),
    hidden_dims=(32, 64),
    epochs=2,
    batch_size=64,
    lr=1e-3,
    device="cpu",
    precision="float32",  # not "auto": the same arithmetic on every test machine
    verbose=False,
)


def _tiny_estimator(**overrides) -> MFCVAE:
    return MFCVAE(**{**TINY, **overrides})


@pytest.fixture(scope="session")
def tiny_estimator():
    """Factory: an MFCVAE with the TINY settings, any of them overridden by keyword."""
    return _tiny_estimator


@pytest.fixture(scope="session")
def shapes_data() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """300 8x8 RGB shape images (N, 3, 8, 8) in [0, 1] with their labels."""
    ds = make_shapes(n=300, size=8, seed=0)
    return ds.x[:], ds.labels


@pytest.fixture(scope="session")
def X(shapes_data) -> np.ndarray:
    return shapes_data[0]


@pytest.fixture(scope="session")
def fitted(X) -> MFCVAE:
    """One tiny estimator fitted once on ``X`` and shared by the read-only estimator tests."""
    return _tiny_estimator().fit(X)


def _make_model(input_shape=(3, 4, 4), covariance="diag", posterior="exact", likelihood="bernoulli",
                n_clusters=(4, 3), latent_dims=(2, 3), hidden_dims=(16, 8), seed=0, architecture="mlp",
                learn_weights=True, **network) -> MultiFacetVAE:
    """A small MultiFacetVAE with randomised prior parameters (so no term is trivially symmetric;
    fixed weights stay uniform); ``network``: any other ModelConfig field."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{
        "input_shape": tuple(input_shape), "n_clusters": n_clusters, "latent_dims": latent_dims,
        "hidden_dims": hidden_dims, "architecture": architecture, "covariance": covariance,
        "learn_weights": learn_weights, "weight_floor": 0.0, "likelihood": likelihood, "likelihood_scale": 0.3,
        "posterior": posterior, "merge_scale": PAPER_MERGE_SCALE[architecture], "precision": "float32", **network})
    model = MultiFacetVAE(cfg)
    with torch.no_grad():
        for prior in model.priors:
            prior.means.normal_()
            if learn_weights:
                prior.logits.normal_()
            if covariance == "diag":
                prior.log_var.uniform_(-1.0, 0.5)
            else:
                prior.chol_diag_raw.uniform_(-0.5, 0.5)
                prior.chol_offdiag.normal_(0, 0.3)
    return model


@pytest.fixture(scope="session")
def make_model():
    """Factory: a small MultiFacetVAE with randomised prior parameters (see ``_make_model``)."""
    return _make_model
