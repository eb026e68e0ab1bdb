"""The mixture initialisation (SPEC section 6) and its variance-fitting extension."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from mfcvae.train import initialise_priors

CPU = torch.device("cpu")


def encoded_means(model, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [m.double().numpy() for m, _ in model.encode(x)]


@pytest.mark.parametrize("covariance", ["diag", "full"])
@pytest.mark.parametrize("fit_variances", [False, True])
def test_gmm_initialisation_copies_the_fitted_mixture(make_model, covariance, fit_variances):
    """Means always come from a diagonal GaussianMixture on the encoded posterior means; with
    fit_variances the covariances (and learned weights) do too, else they keep the paper's values."""
    model = make_model(covariance=covariance).eval()
    x = torch.rand(200, 3, 4, 4)
    before = [(p.scale_tril().detach().clone(), p.log_weights.detach().clone()) for p in model.priors]
    initialise_priors(model, x, "gmm", seed=3, device=CPU, fit_variances=fit_variances)
    for prior, z, (scale_before, weights_before) in zip(model.priors, encoded_means(model, x), before):
        gmm = GaussianMixture(prior.n_clusters, covariance_type="diag", random_state=3).fit(z)
        np.testing.assert_allclose(prior.means.detach().numpy(), gmm.means_, rtol=1e-5, atol=1e-6)
        L = prior.scale_tril().detach()
        if fit_variances:
            np.testing.assert_allclose((L @ L.transpose(-1, -2)).numpy(),
                                       np.stack([np.diag(v) for v in gmm.covariances_]), rtol=1e-4, atol=1e-9)
            np.testing.assert_allclose(prior.log_weights.exp().detach().numpy(), gmm.weights_, rtol=1e-5)
        else:
            torch.testing.assert_close(L, scale_before)
            torch.testing.assert_close(prior.log_weights, weights_before)


def test_fitted_variances_leave_fixed_weights_alone(make_model):
    """Weights that are not learned (a buffer) are not the initialisation's to change."""
    model = make_model(learn_weights=False).eval()
    before = [p.logits.clone() for p in model.priors]
    initialise_priors(model, torch.rand(100, 3, 4, 4), "gmm", seed=0, device=CPU, fit_variances=True)
    for prior, logits in zip(model.priors, before):
        assert torch.equal(prior.logits, logits)
