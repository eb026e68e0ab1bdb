"""Fitting the facets' mixture priors to what the encoder makes of the data.

Three steps outside the optimiser use it: the initial fit before training (SPEC section 6),
the refit of every facet after training (``refit_at_end``) and the re-seeding of dead
clusters between epochs (``reseed_dead``). Each encodes the data in eval mode, with
batch-norm statistics re-estimated for the current weights first, so that an input's
encoding does not depend on which other inputs share its batch.

In data-parallel training every rank encodes its share of the inputs, rank 0 fits the
mixtures to all of them, and every rank then takes rank 0's parameters (distributed.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.manifold import spectral_embedding
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import kneighbors_graph
from torch import nn

from . import distributed
from .batches import batch_bounds, to_model_input
from .model import MultiFacetVAE
from .priors import MixturePrior

GMM_MAX_POINTS = 20_000  # the initial fit and the spectral cut use at most this many inputs
REFIT_MAX_POINTS = 100_000  # the end refit fits at most this many
SPECTRAL_NEIGHBOURS = 15  # neighbours per input in the graph the spectral start cuts (UMAP's default)
# The time a budgeted run keeps back for the end refit, as a multiple of the initial fit's
# (scaled by the refit's larger number of inputs): the spectral cut and the encoding of every input.
SPECTRAL_COST_RATIO = 11.0
RESEED_POINTS = 4096  # inputs on which reseed_dead judges which clusters are used
DEAD_SHARE = 0.1  # ... a cluster is dead below this fraction of its fair share (1/K) of them
ENCODE_BATCH = 1024


@torch.no_grad()
def recalibrate_batch_norm(model: MultiFacetVAE, x: torch.Tensor, batch_size: int, device: torch.device,
                           seed: int, max_batches: int = 50) -> None:
    """Re-estimate every batch-norm layer's running statistics as plain averages over up to
    ``max_batches`` random batches of ``x`` with the current weights; leaves the model in eval mode.

    The running averages kept during training trail the weights (momentum 0.1); an eval-mode
    encoder with stale statistics can map every input to nearly the same latent. Data-parallel,
    the ranks share the batches and average their statistics.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        batches = batch_bounds(len(x), batch_size)[:max_batches]
        for lo, hi in batches[distributed.rank()::distributed.world_size()]:
            xb = to_model_input(x[order[lo:hi]], device)
            model.decode([m for m, _ in model.encode(xb)])  # encoder and decoder layers both see data
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            _average_over_ranks(m)
    model.eval()


def _average_over_ranks(norm: nn.modules.batchnorm._BatchNorm) -> None:
    """Make a batch-norm layer's cumulative running statistics the average over every rank's batches."""
    if not distributed.active():
        return
    count = norm.num_batches_tracked.double()
    totals = distributed.all_reduce_sum(torch.cat([norm.running_mean.double() * count,
                                                   norm.running_var.double() * count, count.reshape(1)]))
    n = totals[-1]
    features = len(norm.running_mean)
    norm.running_mean.copy_(totals[:features] / n)
    norm.running_var.copy_(totals[features:2 * features] / n)
    norm.num_batches_tracked.fill_(int(n))


def _subset(x: torch.Tensor, max_points: int, rng: np.random.Generator) -> torch.Tensor:
    if len(x) <= max_points:
        return x
    return x[torch.from_numpy(np.sort(rng.choice(len(x), max_points, replace=False)))]


def _encode(model: MultiFacetVAE, x: torch.Tensor, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(mean_j, log_var_j)] of q(z_j|x) for every facet, on the CPU, in the model's current mode
    (data-parallel: each rank encodes its share, and every rank gets them all)."""
    flat = distributed.map_shards(lambda xb: [t for pair in model.encode(xb) for t in pair], x, ENCODE_BATCH, device)
    return list(zip(flat[0::2], flat[1::2]))


@torch.no_grad()
def initialise_priors(model: MultiFacetVAE, x: torch.Tensor, batch_size: int, seed: int,
                      device: torch.device) -> None:
    """The paper's initialisation: each facet's component means from a diagonal GaussianMixture
    fitted to the posterior means of z_j of at most GMM_MAX_POINTS random inputs; variances and
    weights keep their initial values."""
    rng = np.random.default_rng(seed)
    x = _subset(x, GMM_MAX_POINTS, rng)
    recalibrate_batch_norm(model, x, batch_size, device, seed)
    encoded = _encode(model, x, device)
    if distributed.is_main():
        for prior, (means, _) in zip(model.priors, encoded):
            gmm = GaussianMixture(prior.n_clusters, covariance_type="diag", random_state=seed)
            prior.set_means(torch.from_numpy(gmm.fit(means.double().numpy()).means_))
    distributed.broadcast_state(model)


@torch.no_grad()
def refit_priors(model: MultiFacetVAE, x: torch.Tensor, batch_size: int, seed: int, device: torch.device,
                 select: Sequence[int] = ()) -> None:
    """Fit every facet's mixture afresh to the aggregate posterior: a GaussianMixture on one draw
    z ~ q(z_j|x) for each of at most REFIT_MAX_POINTS random inputs, its EM started from
    ``spectral_start``'s partition. The prior takes the fitted means and covariances, and the
    weights where they are learned; fixed weights stay fixed during the fit too. The facets in
    ``select`` first get the number of clusters ``select_n_clusters`` chooses, at most the one
    they trained with (the model's prior, and its config, are resized)."""
    rng = np.random.default_rng(seed)
    x = _subset(x, REFIT_MAX_POINTS, rng)
    recalibrate_batch_norm(model, x, batch_size, device, seed)
    encoded = _encode(model, x, device)
    if distributed.is_main():
        _refit(model, encoded, seed, select)
    if select and distributed.active():  # every rank takes rank 0's sizes before its parameters
        sizes = distributed.broadcast_value(torch.tensor(model.cfg.n_clusters))
        for j, k in enumerate(sizes.tolist()):
            if k != model.priors[j].n_clusters:
                model.resize_prior(j, k)
    distributed.broadcast_state(model)


def _refit(model: MultiFacetVAE, encoded: list[tuple[torch.Tensor, torch.Tensor]], seed: int,
           select: Sequence[int] = ()) -> None:
    noise = torch.Generator().manual_seed(seed)
    for j, (means, log_var) in enumerate(encoded):
        z = means + (0.5 * log_var).exp() * torch.randn(means.shape, generator=noise, dtype=means.dtype)
        z, means = z.double().numpy(), means.double().numpy()
        if j in select:
            k, start = select_n_clusters(means, z, model.priors[j], seed)
            model.resize_prior(j, k)
        else:
            start = spectral_start(means, z, model.priors[j].n_clusters, model.priors[j].covariance, seed)
        prior = model.priors[j]
        gmm = _mixture(prior, prior.n_clusters, seed, start).fit(z)
        prior.set_means(torch.from_numpy(gmm.means_))
        if prior.covariance == "full":
            prior.set_covariances(torch.from_numpy(gmm.covariances_))
        else:
            prior.set_variances(torch.from_numpy(gmm.covariances_))
        if prior.learn_weights:
            prior.set_weights(torch.from_numpy(gmm.weights_))


class _FixedWeightsMixture(GaussianMixture):
    """A GaussianMixture whose EM keeps its starting weights (``weights_init``) throughout: the
    M-step updates means and covariances only. Overrides scikit-learn's private ``_m_step``."""

    def _m_step(self, X: np.ndarray, log_resp: np.ndarray, **kwargs) -> None:
        super()._m_step(X, log_resp, **kwargs)
        self.weights_ = np.asarray(self.weights_init, dtype=float)


def _mixture(prior: MixturePrior, k: int, seed: int, start: dict) -> GaussianMixture:
    """The GaussianMixture of ``k`` components that fits ``prior``'s kind of mixture: weights
    learned, or held fixed (at the prior's own when it has ``k`` components, else uniform)."""
    if prior.learn_weights:
        return GaussianMixture(k, covariance_type=prior.covariance, random_state=seed, **start)
    weights = prior.log_weights.exp().double().cpu().numpy() if k == prior.n_clusters else np.ones(k)
    start = {**start, "weights_init": weights / weights.sum()}
    return _FixedWeightsMixture(k, covariance_type=prior.covariance, random_state=seed, **start)


def select_n_clusters(means: np.ndarray, z: np.ndarray, prior: MixturePrior, seed: int) -> tuple[int, dict]:
    """(k, start): the number of clusters, at most ``prior``'s, whose mixture has the lowest
    BIC on draws ``z`` (N, d) of q(z|x), and the start of its EM. Each candidate
    (``cluster_candidates``) is fitted, from its own spectral partition of the posterior means
    ``means`` (one spectral embedding serves them all), to the at most GMM_MAX_POINTS draws that
    partition covers, with ``prior``'s covariance type and fixed or learned weights."""
    candidates = cluster_candidates(prior.n_clusters)
    pick, partitions = spectral_partitions(means, candidates, seed)
    best = None
    for k in candidates:
        start = _start_from_groups(partitions[k], z[pick], k, prior.covariance) if k > 1 else {}
        with warnings.catch_warnings():  # a candidate that does not converge just scores worse
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            bic = _mixture(prior, k, seed, start).fit(z[pick]).bic(z[pick])
        if best is None or bic < best[0]:
            best = (bic, k, start)
    return best[1], best[2]


def cluster_candidates(max_clusters: int, count: int = 30) -> list[int]:
    """The numbers of clusters ``select_n_clusters`` compares: every one from 1 to ``max_clusters``,
    or ``count`` of them spaced geometrically when there are more."""
    if max_clusters <= count:
        return list(range(1, max_clusters + 1))
    return sorted({int(k) for k in np.geomspace(1, max_clusters, count).round()})


def spectral_partitions(means: np.ndarray, ks: Sequence[int], seed: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(pick, k -> groups): partitions into k groups (each k of ``ks`` above 1) of the graph joining
    each of at most GMM_MAX_POINTS random rows ``pick`` of the posterior means ``means`` to its
    SPECTRAL_NEIGHBOURS nearest; groups[i] labels row pick[i]. Computed as scikit-learn's
    SpectralClustering does (nearest-neighbour affinity, lobpcg, cluster_qr labels), from one
    spectral embedding of max(ks) dimensions, each k cut from its first k."""
    pick = np.random.default_rng(seed).choice(len(means), min(len(means), GMM_MAX_POINTS), replace=False)
    ks = [k for k in ks if k > 1]
    if not ks:
        return pick, {}
    graph = kneighbors_graph(means[pick], n_neighbors=min(SPECTRAL_NEIGHBOURS, len(pick) - 1), include_self=True)
    with warnings.catch_warnings():  # a graph in several pieces is still cut; nothing for the user to do
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        # lobpcg short of its tolerance: the groups hold
        warnings.filterwarnings("ignore", message="Exited|Failed at iteration")
        # lobpcg rather than arpack: arpack's solve time varies widely, which a time budget cannot plan for
        embedding = spectral_embedding(0.5 * (graph + graph.T), n_components=max(ks), eigen_solver="lobpcg",
                                       random_state=np.random.RandomState(seed), drop_first=False)
    return pick, {k: _cluster_qr(embedding[:, :k]) for k in ks}


def _cluster_qr(vectors: np.ndarray) -> np.ndarray:
    """Labels (n,) from a spectral embedding (n, k): Damle, Minden and Ying's direct assignment
    (a pivoted QR picks k representative rows; each row joins the one it aligns with most)."""
    k = vectors.shape[1]
    _, _, pivots = scipy.linalg.qr(vectors.T, pivoting=True)
    u, _, vt = scipy.linalg.svd(vectors[pivots[:k], :].T)
    return np.abs(vectors @ (u @ vt.conj())).argmax(axis=1)


def spectral_start(means: np.ndarray, z: np.ndarray, k: int, covariance: str, seed: int) -> dict:
    """GaussianMixture start parameters (weights, means, precisions) from a spectral partition
    into k groups (``spectral_partitions``), the groups' moments taken over ``z``.

    A mixture's likelihood favours partitions that split wide groups and merge close ones, and
    EM from k-means ends in one of those; a cut of the neighbour graph follows the data's
    connected regions, and EM started there tends to stay near them.
    {} (k-means' start) for a single cluster, or when a group has fewer than 2 points to take moments of.
    """
    if k < 2:
        return {}
    pick, partitions = spectral_partitions(means, [k], seed)
    return _start_from_groups(partitions[k], z[pick], k, covariance)


def _start_from_groups(groups: np.ndarray, z: np.ndarray, k: int, covariance: str) -> dict:
    """Start parameters from a partition ``groups`` (n,) of the draws ``z`` (n, d) into k groups:
    their shares, means and precisions; {} when a group has fewer than 2 draws."""
    sizes = np.bincount(groups, minlength=k)
    if sizes.min() < 2:
        return {}
    centres = np.stack([z[groups == c].mean(0) for c in range(k)])
    reg = 1e-6 * np.eye(z.shape[1])  # GaussianMixture's reg_covar
    covariances = np.stack([np.cov(z[groups == c].T, bias=True).reshape(z.shape[1], z.shape[1]) + reg
                            for c in range(k)])
    precisions = np.linalg.inv(covariances) if covariance == "full" else 1 / np.diagonal(covariances, axis1=1, axis2=2)
    return {"weights_init": sizes / sizes.sum(), "means_init": centres, "precisions_init": precisions}


@torch.no_grad()
def reseed_dead_clusters(model: MultiFacetVAE, x: torch.Tensor, facets: list[int], batch_size: int,
                         rng: np.random.Generator, device: torch.device) -> list[int]:
    """Re-seed the dead clusters of ``facets``: those that are the most probable cluster (argmax
    q(c|x), as predictions take it) for under DEAD_SHARE / K of RESEED_POINTS random inputs. Each,
    in turn, takes over about half of the most used cluster: its covariance and half its weight,
    centred on the posterior mean of one of its inputs (half of them count as the new cluster's when
    the next one is chosen). The optimiser then pulls the two apart. A facet with fewer inputs than
    clusters is left alone. Returns the count per facet; leaves the model in eval mode. Data-parallel,
    every rank makes the same choices from the same gathered assignments and takes rank 0's result."""
    x = _subset(x, RESEED_POINTS, rng)
    recalibrate_batch_norm(model, x, batch_size, device, int(rng.integers(2**31)))
    assignments = distributed.map_shards(lambda xb: [lp.argmax(1) for lp in model.cluster_log_posteriors(xb)], x,
                              ENCODE_BATCH, device)
    reseeded = []
    for j in facets:
        prior, assigned = model.priors[j], assignments[j]
        counts = torch.bincount(assigned, minlength=prior.n_clusters)
        dead = [] if len(x) < prior.n_clusters else \
            (counts < DEAD_SHARE * len(x) / prior.n_clusters).nonzero().flatten().tolist()
        n_reseeded = 0
        for k in dead:
            biggest = int(counts.argmax())
            members = (assigned == biggest).nonzero().flatten()
            if len(members) < 2:  # nothing left to split
                break
            moved = members[torch.from_numpy(rng.permutation(len(members))[:len(members) // 2])]
            seed_mean = model.encode(to_model_input(x[moved[:1]], device))[j][0][0]
            prior.split_component(biggest, k, seed_mean)
            assigned[moved] = k
            counts = torch.bincount(assigned, minlength=prior.n_clusters)
            n_reseeded += 1
        reseeded.append(n_reseeded)
    distributed.broadcast_state(model)
    return reseeded
