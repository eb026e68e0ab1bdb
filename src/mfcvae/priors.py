"""One facet's Mixture-of-Gaussians prior p(c) p(z | c) and its optimal posterior q(c | x).

A facet's prior is pi = softmax(logits) over K clusters (optionally with a floor: a share
of the mass spread evenly, so no weight can reach zero) and, per cluster, a Gaussian
N(mu_k, Sigma_k) with a diagonal or full covariance. Full covariances are stored as a
Cholesky factor whose diagonal is made positive by softplus, so every value of the raw
parameters is a valid covariance.

The quantity everything else is built on is ``expected_log_prob``: for a Gaussian
q(z|x) = N(m, diag v), given by its mean m and log-variance log v, E_q[log N(z; mu_k, Sigma_k)]
in closed form. The paper's optimal categorical posterior is
q(c=k|x) ∝ pi_k exp(E_q[log N(z; mu_k, Sigma_k)]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class MixturePrior(nn.Module):
    """p(c) p(z|c) for one facet: ``n_clusters`` Gaussians in ``dim`` dimensions.

    Initialised as the paper does: uniform weights, zero means (to be overwritten by the
    mixture initialisation), variance 0.01 (diag) or Cholesky diagonal 0.1 (full).
    ``weight_floor`` f makes pi = f / K + (1 - f) softmax(logits), so pi_k >= f / K.
    """

    def __init__(self, n_clusters: int, dim: int, covariance: str = "diag", learn_weights: bool = True,
                 weight_floor: float = 0.0):
        super().__init__()
        if covariance not in ("diag", "full"):
            raise ValueError(f"covariance must be 'diag' or 'full', got {covariance!r}")
        if not 0 <= weight_floor <= 1:
            raise ValueError(f"weight_floor must be in [0, 1], got {weight_floor!r}")
        self.n_clusters, self.dim, self.covariance = n_clusters, dim, covariance
        self.weight_floor = weight_floor
        logits = torch.zeros(n_clusters)
        if learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)
        self.means = nn.Parameter(torch.zeros(n_clusters, dim))
        if covariance == "diag":
            self.log_var = nn.Parameter(torch.full((n_clusters, dim), math.log(0.01)))
        else:
            self.chol_diag_raw = nn.Parameter(_inverse_softplus(torch.full((n_clusters, dim), 0.1)))
            self.chol_offdiag = nn.Parameter(torch.zeros(n_clusters, dim, dim))

    # --- parameters in usable form -------------------------------------------------
    @property
    def learn_weights(self) -> bool:
        """Whether the weights are learned (else uniform and fixed)."""
        return isinstance(self.logits, nn.Parameter)

    @property
    def log_weights(self) -> torch.Tensor:
        """log pi, shape (K,)."""
        log_softmax = F.log_softmax(self.logits, dim=-1)
        if self.weight_floor == 0:
            return log_softmax
        floor = torch.full_like(log_softmax, math.log(self.weight_floor / self.n_clusters))
        if self.weight_floor == 1:
            return floor
        return torch.logaddexp(floor, math.log1p(-self.weight_floor) + log_softmax)

    def scale_tril(self) -> torch.Tensor:
        """Cholesky factor L of every Sigma_k (Sigma = L L^T), shape (K, d, d)."""
        if self.covariance == "diag":
            return torch.diag_embed(torch.exp(0.5 * self.log_var))
        strictly_lower = torch.tril(self.chol_offdiag, diagonal=-1)
        return strictly_lower + torch.diag_embed(F.softplus(self.chol_diag_raw))

    def _log_det(self) -> torch.Tensor:
        """log |Sigma_k|, shape (K,)."""
        if self.covariance == "diag":
            return self.log_var.sum(-1)
        return 2 * torch.log(F.softplus(self.chol_diag_raw)).sum(-1)

    def _mahalanobis(self, z: torch.Tensor) -> torch.Tensor:
        """(z_n - mu_k)^T Sigma_k^-1 (z_n - mu_k), shape (N, K), for z of shape (N, d)."""
        diff = z.unsqueeze(1) - self.means  # (N, K, d)
        if self.covariance == "diag":
            return (diff.pow(2) * torch.exp(-self.log_var)).sum(-1)
        # Solve L_k y = diff for every k at once: (K, d, d) against (K, d, N).
        y = torch.linalg.solve_triangular(self.scale_tril(), diff.permute(1, 2, 0), upper=False)
        return y.pow(2).sum(1).T

    def _precision_diagonal(self) -> torch.Tensor:
        """diag(Sigma_k^-1), shape (K, d): all the trace term tr(Sigma^-1 diag v) needs."""
        if self.covariance == "diag":
            return torch.exp(-self.log_var)
        eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
        inv_l = torch.linalg.solve_triangular(self.scale_tril(), eye.expand(self.n_clusters, -1, -1), upper=False)
        return inv_l.pow(2).sum(-2)  # (L^-T L^-1)_dd = sum_i (L^-1)_id^2

    # --- densities -----------------------------------------------------------------
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z_n; mu_k, Sigma_k) for every input and cluster, shape (N, K)."""
        return -0.5 * (self.dim * LOG_2PI + self._log_det() + self._mahalanobis(z))

    def expected_log_prob(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """E_{N(z; mean, diag exp(log_var))}[log N(z; mu_k, Sigma_k)], shape (N, K), in closed form,
        for ``mean`` and ``log_var`` of shape (N, d).

        = -1/2 [d log 2pi + log|Sigma_k| + tr(Sigma_k^-1 diag var) + Mahalanobis(mean)].
        """
        trace = log_var.exp() @ self._precision_diagonal().T
        return -0.5 * (self.dim * LOG_2PI + self._log_det() + trace + self._mahalanobis(mean))

    def cluster_log_posterior(
        self, mean: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log q(c=k | x), shape (N, K): the optimal categorical posterior for
        q(z|x) = N(mean, diag exp(log_var)).

        Exact (``z is None``): log softmax_k(log pi_k + E_q[log N(z; mu_k, Sigma_k)]).
        With a sample ``z`` from q(z|x): the paper code's one-sample estimate of that
        expectation, log softmax_k(log pi_k + log N(z; mu_k, Sigma_k)).
        """
        log_lik = self.expected_log_prob(mean, log_var) if z is None else self.log_prob(z)
        return F.log_softmax(self.log_weights + log_lik, dim=-1)

    # --- generation ----------------------------------------------------------------
    def sample(
        self,
        n: int,
        cluster: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """n draws of z (shape (n, d)): c ~ pi (or fixed ``cluster``), z ~ N(mu_c, T^2 Sigma_c)."""
        device = self.means.device
        if cluster is None:
            c = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        else:
            if not 0 <= cluster < self.n_clusters:
                raise ValueError(f"cluster must be in [0, {self.n_clusters}), got {cluster}")
            c = torch.full((n,), cluster, dtype=torch.long, device=device)
        eps = torch.randn(n, self.dim, 1, generator=generator, device=device, dtype=self.means.dtype)
        return self.means[c] + temperature * (self.scale_tril()[c] @ eps).squeeze(-1)

    @torch.no_grad()
    def set_means(self, means: torch.Tensor) -> None:
        """Overwrite the component means (the mixture initialisation)."""
        self.means.copy_(means.to(self.means))

    @torch.no_grad()
    def set_variances(self, variances: torch.Tensor) -> None:
        """Make every component's covariance diag(``variances``), shape (K, d)."""
        variances = variances.to(self.means)
        if self.covariance == "diag":
            self.log_var.copy_(variances.log())
        else:
            self.chol_diag_raw.copy_(_inverse_softplus(variances.sqrt()))
            self.chol_offdiag.zero_()

    @torch.no_grad()
    def set_covariances(self, covariances: torch.Tensor) -> None:
        """Make every component's covariance of a full-covariance prior ``covariances``, shape (K, d, d)."""
        if self.covariance != "full":
            raise ValueError("set_covariances is for full covariances; a diagonal prior takes set_variances")
        scale_tril = torch.linalg.cholesky(covariances.to(self.means))
        self.chol_diag_raw.copy_(_inverse_softplus(torch.diagonal(scale_tril, dim1=-2, dim2=-1)))
        self.chol_offdiag.copy_(scale_tril)  # only its strictly lower part is read

    @torch.no_grad()
    def split_component(self, source: int, target: int, mean: torch.Tensor) -> None:
        """Make component ``target`` a copy of ``source`` centred on ``mean`` (shape (d,)), with equal
        weights that together make about ``source``'s (what ``target`` had is spread over all):
        how a dead component is re-seeded."""
        self.means[target] = mean.to(self.means)
        if self.covariance == "diag":
            self.log_var[target] = self.log_var[source]
        else:
            self.chol_diag_raw[target] = self.chol_diag_raw[source]
            self.chol_offdiag[target] = self.chol_offdiag[source]
        if self.learn_weights:  # both logits at source's - log 2
            self.logits[source] -= math.log(2)
            self.logits[target] = self.logits[source]

    @torch.no_grad()
    def set_weights(self, weights: torch.Tensor) -> None:
        """Make pi = ``weights`` (shape (K,), positive, summing to 1); only for learned weights.
        Under a floor, a weight at or below it becomes the floor plus a thousandth of a fair share
        of the rest, so that its logit can still move (at log(0) its gradient would vanish)."""
        weights = weights.to(self.means) - self.weight_floor / self.n_clusters
        smallest = 1e-3 * (1 - self.weight_floor) / self.n_clusters if self.weight_floor > 0 else 0.0
        self.logits.copy_(weights.clamp_min(max(smallest, torch.finfo(weights.dtype).tiny)).log())
