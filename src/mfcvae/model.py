"""MultiFacetVAE: the network and its ELBO. Knows nothing of files, loaders or progress bars.

Per facet j: q(z_j|x) = N(m_j(x), diag v_j(x)) from two linear heads on ladder feature h_j,
a MixturePrior p(c_j) p(z_j|c_j), and the optimal q(c_j|x). The decoder p(x|z_0..z_{J-1})
is a ladder whose rung j is scaled by alpha_j (progressive fade-in).

With ``precision="bfloat16"`` the ladder networks run under autocast (2.4x the epochs per
minute on the AMD EPYC host of benchmarks/budget.py, which has AVX-512 BF16); the linear
heads, the priors, the posteriors and the likelihood stay float32, where rounding would move
log densities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .ladder import build_ladder
from .likelihoods import Bernoulli, Gaussian
from .priors import LOG_2PI, MixturePrior


@dataclass
class ELBOTerms:
    """The ELBO's pieces per example: ``reconstruction`` (N,), the rest (N, J), one column per facet.

    log_p_z = E_q[log p(z_j|c_j)], log_p_c = E_q[log p(c_j)],
    log_q_z = E_q[log q(z_j|x)],   log_q_c = E_q[log q(c_j|x)].
    """

    reconstruction: torch.Tensor
    log_p_z: torch.Tensor
    log_p_c: torch.Tensor
    log_q_z: torch.Tensor
    log_q_c: torch.Tensor

    def kl(self) -> torch.Tensor:
        """Per-facet KL(q(z_j, c_j | x) || p(z_j, c_j)), shape (N, J)."""
        return self.log_q_z + self.log_q_c - self.log_p_z - self.log_p_c

    def elbo(self, gammas: torch.Tensor | None = None, free_bits: float = 0.0) -> torch.Tensor:
        """reconstruction - sum_j gamma_j KL_j, shape (N,); gamma = 1, free_bits = 0: the true ELBO.

        ``free_bits`` > 0 is a training objective only (Kingma et al., 2016): while facet j's
        KL averaged over the batch is below it, the facet's KL is held at that floor with no
        gradient, so a facet that has just faded in is not pushed onto its prior before it
        carries information. Averaged over the batch the penalty is max(mean_n KL_nj, free_bits);
        per example the facet's full KL gradient, clustering term included, returns as soon as
        the batch mean clears the floor.
        """
        kl = self.kl()
        if free_bits > 0:
            below = kl.mean(0, keepdim=True) < free_bits
            kl = torch.where(below, torch.full_like(kl, free_bits), kl)
        if gammas is not None:
            kl = kl * gammas
        return self.reconstruction - kl.sum(1)


class MultiFacetVAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = build_ladder(cfg.architecture, cfg.input_shape, cfg.hidden_dims,
                                                  cfg.latent_dims, cfg.activation, cfg.batch_norm, cfg.merge_scale)
        self.mean_heads = nn.ModuleList(nn.Linear(h, d) for h, d in zip(self.encoder.feature_dims, cfg.latent_dims))
        self.logvar_heads = nn.ModuleList(nn.Linear(h, d) for h, d in zip(self.encoder.feature_dims, cfg.latent_dims))
        self.priors = nn.ModuleList(
            MixturePrior(k, d, cfg.covariance, cfg.learn_weights, cfg.weight_floor)
            for k, d in zip(cfg.n_clusters, cfg.latent_dims)
        )
        self.likelihood = Bernoulli() if cfg.likelihood == "bernoulli" else Gaussian(cfg.likelihood_scale)

    @property
    def n_facets(self) -> int:
        return self.cfg.n_facets

    def _networks_precision(self, x: torch.Tensor) -> torch.autocast:
        """Autocast for the ladder networks; their outputs are cast back to the input's dtype."""
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bfloat16")

    def encode(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(mean_j, var_j)] of q(z_j|x) for every facet, each (N, d_j)."""
        with self._networks_precision(x):
            features = [h.to(x.dtype) for h in self.encoder(x)]
        return [
            (mean_head(h), torch.exp(logvar_head(h)))
            for h, mean_head, logvar_head in zip(features, self.mean_heads, self.logvar_heads)
        ]

    def cluster_log_posteriors(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[log q(c_j|x)] per facet, each (N, K_j), for prediction: noise-free.

        ``exact``: the closed form. ``mc``: the paper's evaluation, p(c|z) at z = posterior mean.
        """
        return [
            prior.cluster_log_posterior(m, v, z=m if self.cfg.posterior == "mc" else None)
            for prior, (m, v) in zip(self.priors, self.encode(x))
        ]

    def decode(self, zs: list[torch.Tensor], alphas: torch.Tensor | None = None) -> torch.Tensor:
        """Raw decoder output for latents zs (one per facet); alphas default to all ones."""
        if alphas is None:
            alphas = torch.ones(self.n_facets, device=zs[0].device)
        with self._networks_precision(zs[0]):
            return self.decoder(zs, alphas).to(zs[0].dtype)

    def elbo_terms(self, x: torch.Tensor, alphas: torch.Tensor | None = None) -> ELBOTerms:
        """Every ELBO term, in closed form except the reconstruction (one reparameterised z).

        E_q[log p(z|c)] = sum_k q(c=k|x) E_q(z)[log N(z; mu_k, Sigma_k)]; the other
        expectations are the Gaussian entropy and sums over q(c|x).
        """
        log_p_z, log_p_c, log_q_z, log_q_c, zs = [], [], [], [], []
        for prior, (mean, var) in zip(self.priors, self.encode(x)):
            z = mean + var.sqrt() * torch.randn_like(mean)
            expected = prior.expected_log_prob(mean, var)
            log_lik = expected if self.cfg.posterior == "exact" else prior.log_prob(z)
            log_qc = torch.log_softmax(prior.log_weights + log_lik, dim=-1)
            qc = log_qc.exp()
            log_p_z.append((qc * expected).sum(-1))
            log_p_c.append((qc * prior.log_weights).sum(-1))
            log_q_z.append(-0.5 * (LOG_2PI + 1 + var.log()).sum(-1))
            log_q_c.append((qc * log_qc).sum(-1))
            zs.append(z)
        reconstruction = self.likelihood.log_prob(self.decode(zs, alphas), x)
        stack = lambda terms: torch.stack(terms, dim=1)  # noqa: E731
        return ELBOTerms(reconstruction, stack(log_p_z), stack(log_p_c), stack(log_q_z), stack(log_q_c))

    def sample_latents(
        self,
        n: int,
        facet: int | None = None,
        cluster: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """Every facet from its prior at ``temperature``; then facet ``facet``'s latent is replaced
        by draws from its cluster ``cluster``, if given. The replacement is drawn last, so with
        the same generator state the other facets are the same whichever cluster is asked for."""
        zs = [prior.sample(n, None, temperature, generator) for prior in self.priors]
        if cluster is not None:
            zs[facet] = self.priors[facet].sample(n, cluster, temperature, generator)
        return zs


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
