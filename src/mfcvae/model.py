"""MultiFacetVAE: the network and its ELBO. Knows nothing of files, loaders or progress bars.

Per facet j: q(z_j|x) = N(m_j(x), diag exp(l_j(x))) from two linear heads on ladder feature h_j
(mean and log-variance; the log-variance is carried as it is wherever it can be, and bent
smoothly into LOG_VAR_RANGE so that any head output gives finite terms), a MixturePrior
p(c_j) p(z_j|c_j), and the optimal q(c_j|x). The decoder p(x|z_0..z_{J-1}) is a ladder whose
rung j is scaled by alpha_j (progressive fade-in).

With the "gaussian" likelihood the model works on standardised inputs (x - shift) / scale,
per feature, with the shift and scale held as buffers (``set_input_scaling``, computed by
``input_moments``): the encoder sees them and the likelihood scores them; ``decode_mean``
returns means in the inputs' own units.

With ``precision="bfloat16"`` the ladder networks run under autocast; the input scaling, the
linear heads, the priors, the posteriors and the likelihood stay float32, where rounding would
move log densities.
"""

from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batches import batch_bounds, to_model_input
from .config import ModelConfig
from .ladder import build_ladder
from .likelihoods import make_likelihood
from .priors import LOG_2PI, MixturePrior

# Bounds of the posterior log-variance: standard deviations from 3e-7 (below float32's resolution
# of a latent of size 1) to 2.2e4 (far beyond any prior's scale).
LOG_VAR_RANGE = (-30.0, 20.0)


def soft_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x`` itself on the middle three fifths of (low, high), bent smoothly (with a continuous
    slope) towards the bounds beyond, never reaching them: every finite value, however large,
    maps to a finite one with a finite gradient, and the usual values pass through untouched."""
    margin = 0.2 * (high - low)
    a, b = low + margin, high - margin
    below = a - margin * (1 - torch.exp((x - a).clamp(max=0) / margin))
    above = b + margin * (1 - torch.exp((b - x).clamp(max=0) / margin))
    return torch.where(x < a, below, torch.where(x > b, above, x))


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
        self.likelihood = make_likelihood(cfg.likelihood, cfg.likelihood_scale)
        # per-feature standardisation of the inputs ("gaussian" likelihood only); identity until set
        self.register_buffer("input_shift", torch.zeros(cfg.input_shape))
        self.register_buffer("input_scale", torch.ones(cfg.input_shape))
        if cfg.architecture == "conv":  # convolutions run in channels-last memory (ladder.py)
            self.to(memory_format=torch.channels_last)

    @property
    def n_facets(self) -> int:
        return self.cfg.n_facets

    def resize_prior(self, facet: int, n_clusters: int) -> None:
        """Give facet ``facet`` a fresh prior of ``n_clusters`` components (parameters as a new
        MixturePrior has them, to be set) and record the new count in ``cfg``."""
        old = self.priors[facet]
        self.priors[facet] = MixturePrior(n_clusters, old.dim, old.covariance, old.learn_weights,
                                          old.weight_floor).to(old.means.device)
        sizes = tuple(n_clusters if j == facet else k for j, k in enumerate(self.cfg.n_clusters))
        self.cfg = dataclasses.replace(self.cfg, n_clusters=sizes)

    def _networks_precision(self, x: torch.Tensor) -> torch.autocast:
        """Autocast for the ladder networks; their outputs are cast back to the input's dtype."""
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bfloat16")

    @torch.no_grad()
    def set_input_scaling(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Standardise inputs as (x - shift) / scale, per feature; ``shift`` and ``scale`` have the
        shape of one input, ``scale`` positive. Only for the "gaussian" likelihood. Both are
        buffers, so they are saved and loaded with the model's state_dict."""
        if self.cfg.likelihood != "gaussian":
            raise ValueError(f"input scaling is for likelihood='gaussian'; this model's is {self.cfg.likelihood!r}")
        shift, scale = torch.as_tensor(shift), torch.as_tensor(scale)
        for name, value in (("shift", shift), ("scale", scale)):
            if tuple(value.shape) != self.cfg.input_shape:
                raise ValueError(f"input {name} must have the input shape {self.cfg.input_shape}, "
                                 f"got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"input {name} has non-finite values")
        if not (scale > 0).all():
            raise ValueError("input scale must be positive everywhere")
        self.input_shift.copy_(shift)
        self.input_scale.copy_(scale)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """The inputs as the networks and the likelihood see them: (x - shift) / scale with the
        "gaussian" likelihood, x itself otherwise."""
        if self.cfg.likelihood != "gaussian":
            return x
        return (x - self.input_shift) / self.input_scale

    def _posteriors(self, xs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(mean_j, log_var_j)] of q(z_j|x) for standardised inputs ``xs``."""
        with self._networks_precision(xs):
            features = [h.to(xs.dtype) for h in self.encoder(xs)]
        return [
            (mean_head(h), soft_clamp(logvar_head(h), *LOG_VAR_RANGE))
            for h, mean_head, logvar_head in zip(features, self.mean_heads, self.logvar_heads)
        ]

    def encode(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(mean_j, log_var_j)] of q(z_j|x) = N(mean_j, diag exp(log_var_j)) for every facet, each
        (N, d_j); ``x`` in the inputs' own units, log_var_j within LOG_VAR_RANGE."""
        return self._posteriors(self.standardise(x))

    def cluster_log_posteriors(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[log q(c_j|x)] per facet, each (N, K_j), for prediction: noise-free.

        ``exact``: the closed form. ``mc``: the paper's evaluation, p(c|z) at z = posterior mean.
        """
        return [
            prior.cluster_log_posterior(m, log_var, z=m if self.cfg.posterior == "mc" else None)
            for prior, (m, log_var) in zip(self.priors, self.encode(x))
        ]

    def decode(self, zs: list[torch.Tensor], alphas: torch.Tensor | None = None) -> torch.Tensor:
        """Raw decoder output for latents zs (one per facet); alphas default to all ones."""
        if alphas is None:
            alphas = torch.ones(self.n_facets, device=zs[0].device)
        with self._networks_precision(zs[0]):
            return self.decoder(zs, alphas).to(zs[0].dtype)

    def decode_mean(self, zs: list[torch.Tensor], alphas: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's mean for latents zs, in the inputs' own units (de-standardised)."""
        mean = self.likelihood.mean(self.decode(zs, alphas))
        if self.cfg.likelihood != "gaussian":
            return mean
        return mean * self.input_scale + self.input_shift

    def elbo_terms(self, x: torch.Tensor, alphas: torch.Tensor | None = None) -> ELBOTerms:
        """Every ELBO term, in closed form except the reconstruction (one reparameterised z).

        E_q[log p(z|c)] = sum_k q(c=k|x) E_q(z)[log N(z; mu_k, Sigma_k)]; the other
        expectations are the Gaussian entropy and sums over q(c|x). With the "gaussian"
        likelihood the reconstruction scores the standardised x.
        """
        xs = self.standardise(x)
        log_p_z, log_p_c, log_q_z, log_q_c, zs = [], [], [], [], []
        for prior, (mean, log_var) in zip(self.priors, self._posteriors(xs)):
            z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
            expected = prior.expected_log_prob(mean, log_var)
            log_lik = expected if self.cfg.posterior == "exact" else prior.log_prob(z)
            log_qc = torch.log_softmax(prior.log_weights + log_lik, dim=-1)
            qc = log_qc.exp()
            log_p_z.append((qc * expected).sum(-1))
            log_p_c.append((qc * prior.log_weights).sum(-1))
            log_q_z.append(-0.5 * (LOG_2PI + 1 + log_var).sum(-1))
            log_q_c.append((qc * log_qc).sum(-1))
            zs.append(z)
        reconstruction = self.likelihood.log_prob(self.decode(zs, alphas), xs)
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


@torch.no_grad()
def input_moments(x: torch.Tensor, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale): the per-feature mean and standard deviation of ``x`` (N, ...) as the model
    sees it (uint8 read as value / 255), each of shape x.shape[1:], float32. A constant feature
    (spread below float32's resolution of its mean) gets scale 1. Read ``batch_size`` examples at
    a time and merged in float64 (Chan et al.'s pairwise update), so no float copy of the whole
    of ``x`` is made."""
    if len(x) == 0:
        raise ValueError("x is empty: no moments to compute")
    count = 0
    mean = torch.zeros(x.shape[1:], dtype=torch.float64)
    m2 = torch.zeros(x.shape[1:], dtype=torch.float64)  # sum of squared deviations from the mean
    for start, stop in batch_bounds(len(x), batch_size):
        xb = to_model_input(x[start:stop], torch.device("cpu")).double()
        n = len(xb)
        batch_mean = xb.mean(0)
        delta = batch_mean - mean
        total = count + n
        mean += delta * (n / total)
        m2 += (xb - batch_mean).pow(2).sum(0) + delta.pow(2) * (count * n / total)
        count = total
    if not (torch.isfinite(mean).all() and torch.isfinite(m2).all()):
        raise ValueError("x has non-finite values (NaN or inf): cannot standardise it")
    std = (m2 / count).sqrt()
    constant = (std <= torch.finfo(torch.float32).eps * mean.abs()) | (std < torch.finfo(torch.float32).tiny)
    return mean.float(), torch.where(constant, torch.ones_like(std), std).float()


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
