"""The optimisation loop: prior initialisation, progressive schedule, Adam, logs, checkpoints.

``Trainer`` owns everything that changes while a model trains (optimiser, step and epoch
counters, random-number state, history) and can write all of it to one safetensors
checkpoint and read it back, so that ``resume`` continues a run where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import importlib.util
import math
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import SpectralClustering
from sklearn.mixture import GaussianMixture
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .model import MultiFacetVAE
from .schedule import ProgressiveSchedule
from .serialization import (CONFIG_FILE, MODEL_FILE, optimizer_from_tensors, optimizer_to_tensors, read_safetensors,
                            write_safetensors)

CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
# An older run's files in a run folder, which a fresh run removes as it first writes its own
RUN_FILES = (CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, CONFIG_FILE)


@dataclasses.dataclass
class EpochProgress:
    """Where the current epoch stands, so that a checkpoint can be taken in the middle of it."""

    order: torch.Tensor  # this epoch's shuffled example indices
    done: int = 0  # mini-batches of it already trained
    sums: dict[str, float] = dataclasses.field(default_factory=dict)  # running ELBO-term sums
    seconds: float = 0.0
    reseeded: dict[str, int] = dataclasses.field(default_factory=dict)  # reseed_dead's work as it began


GMM_MAX_POINTS = 20_000  # the mixture initialisation fits on at most this many encoded inputs
# A trained model's refit fits on at most this many: on 12 saved Fashion-MNIST models all 70,000
# inputs gave a little more accurate partitions than 20,000 (+0.004; benchmarks/refit_starts.py)
REFIT_MAX_POINTS = 100_000
# refit_start="spectral": the neighbours per input in the graph the partition cuts (UMAP's default), and
# the extra time max_seconds keeps back for the end refit, as a multiple of the first mixture fit's.
# With it five ten-minute Fashion-MNIST runs ended at 598.2-600.4 s (README, "Default changed: the
# spectral start"); the k-means start's runs, which keep back nothing extra, end 1-3 s late, so part of it
# makes up for the rest of the estimate, not for the cut
SPECTRAL_NEIGHBOURS = 15
SPECTRAL_COST_RATIO = 11.0
RESEED_POINTS = 4096  # inputs on which reseed_dead judges which clusters are used
DEAD_SHARE = 0.1  # ... a cluster is dead below this fraction of its fair share (1/K) of them


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive mini-batches over n examples; a last batch of a single
    example joins the one before it (batch-norm cannot normalise one example while training)."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def data_fingerprint(x: torch.Tensor) -> str:
    """A cheap identity of a training set (its shape and 256 examples spread over it), so that
    a resumed run can tell it is given other data."""
    picks = torch.linspace(0, len(x) - 1, min(len(x), 256)).long()
    digest = hashlib.sha1(str((tuple(x.shape), x.dtype)).encode())
    digest.update(x[picks].contiguous().numpy().tobytes())
    return digest.hexdigest()


def to_model_input(xb: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` as float32; uint8 images become value / 255 after the move (a
    quarter of the bytes to copy, and the data set itself never exists as float32)."""
    xb = xb.to(device, non_blocking=True)
    return xb.float().div_(255) if xb.dtype == torch.uint8 else xb


def iterate_batches(x: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Consecutive mini-batches of ``x``, ready for the model on ``device``."""
    for start, stop in batch_bounds(len(x), batch_size):
        yield to_model_input(x[start:stop], device)


@torch.no_grad()
def map_batches(fn: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, batch_size: int,
                device: torch.device) -> list[torch.Tensor]:
    """Apply ``fn`` (returning a list of tensors) batch-wise and concatenate each output on the CPU."""
    outputs = [[t.cpu() for t in fn(xb)] for xb in iterate_batches(x, batch_size, device)]
    return [torch.cat(parts) for parts in zip(*outputs)]


FACET_SUMS = ("log_p_z", "log_p_c", "log_q_z", "log_q_c", "kl")  # per facet, after loss, elbo, reconstruction


def sum_names(n_facets: int) -> list[str]:
    """The names of ``batch_loss``'s sums, in its order (the per-epoch metrics' columns)."""
    return ["loss", "elbo", "reconstruction"] + [f"{name}_{j}" for name in FACET_SUMS for j in range(n_facets)]


def batch_loss(model: MultiFacetVAE, xb: torch.Tensor, weights: torch.Tensor,
               free_bits: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One mini-batch's training loss, and its ELBO terms summed over the batch in one vector
    (``sum_names`` order, no gradient): a step reads the device once, not once per term."""
    terms = model.elbo_terms(xb, alphas=weights)
    loss = -terms.elbo(gammas=weights, free_bits=free_bits).mean()
    kl, reconstruction = terms.kl().sum(0), terms.reconstruction.sum()
    totals = torch.stack([loss * len(xb), reconstruction - kl.sum(), reconstruction])  # the true ELBO's sum
    per_facet = (terms.log_p_z.sum(0), terms.log_p_c.sum(0), terms.log_q_z.sum(0), terms.log_q_c.sum(0), kl)
    return loss, torch.cat([totals, *per_facet]).detach()  # FACET_SUMS order


# compile="auto" compiles only runs that can repay it: the first compile of the default network
# took 6-24 s in the checks of issue 6 (GPU and CPU); a time budget under a minute, or a run of
# a few thousand steps, would spend much of itself on it.
AUTO_COMPILE_MIN_STEPS = 5_000
AUTO_COMPILE_MIN_SECONDS = 60.0


def compile_mode(cfg: TrainConfig, device: torch.device, steps_per_epoch: int) -> str | None:
    """The torch.compile mode training uses, or None: eager training.

    True: "reduce-overhead" (CUDA graphs) on a GPU, "default" on a CPU. "auto": on a GPU that
    Triton serves (installed, compute capability 7.0 or later), for a run long enough to repay
    the compile; never on a CPU, where a step is bound by its matrix products. Measured with
    benchmarks/budget.py: in one minute on an H200, 16-36 epochs compiled against 8-9 eager
    (bfloat16); in two on the 2-core CPU host, 21 against 22.
    """
    if cfg.compile == "auto":
        long_enough = (cfg.epochs * steps_per_epoch >= AUTO_COMPILE_MIN_STEPS
                       and (cfg.max_seconds is None or cfg.max_seconds >= AUTO_COMPILE_MIN_SECONDS))
        served = (device.type == "cuda" and importlib.util.find_spec("triton") is not None
                  and torch.cuda.get_device_capability(device) >= (7, 0))
        if not (long_enough and served):
            return None
    elif not cfg.compile:
        return None
    return "reduce-overhead" if device.type == "cuda" else "default"


def adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel (CPU and CUDA): the same update as the default multi-tensor
    one in one pass over the weights instead of several, which on a CPU is a large part of a
    step for the paper's 3-million-weight MLP (ten minutes on the 2-core host: 112-116 epochs
    instead of 91-93; benchmarks/results/budget.csv)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The step size of mini-batch ``step`` of ``total_steps``: ``cfg.lr`` throughout (the paper's),
    or with ``cosine`` falling from ``cfg.lr`` to 0 along half a cosine, which starts once the share
    ``cfg.lr_decay_start`` of the run is done (0: from the first step). A function of the step
    alone, so a resumed run continues it exactly."""
    done = min(step / total_steps, 1.0)
    if cfg.lr_schedule == "constant" or done <= cfg.lr_decay_start:
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (done - cfg.lr_decay_start) / (1 - cfg.lr_decay_start)))


@torch.no_grad()
def initialise_priors(model: MultiFacetVAE, x: torch.Tensor, method: str, seed: int, device: torch.device,
                      facets: list[int] | None = None, fit_variances: bool = False, draws: bool = False,
                      max_points: int | None = None, start: str = "kmeans") -> None:
    """Place each facet's component means among the encoded training data (SPEC section 6),
    fitted to at most ``max_points`` random inputs (None: GMM_MAX_POINTS).

    ``gmm``: the means of a diagonal GaussianMixture fitted to the posterior means of z_j.
    ``random``: K_j posterior means of randomly chosen inputs. Variances and weights keep
    their initial values (0.01, uniform), unless ``fit_variances`` (gmm only): then the
    prior takes the fitted mixture's covariances (a full-covariance prior from a mixture
    with full covariances), and its weights where weights are learned, so that it matches
    the scale of the encoded data (which a warm-up makes far wider than 0.01).

    With ``draws`` the mixture is fitted to one draw z ~ q(z_j|x) per input instead of the
    means: to the aggregate posterior, whose spread includes the encoder's variances (what
    ``refit_at_end`` fits a trained model's priors to).

    ``start`` (gmm only): where the mixture's EM starts. "kmeans" is scikit-learn's k-means
    start; "spectral" starts from ``spectral_start``'s partition of the posterior means.
    """
    rng = np.random.default_rng(seed)
    max_points = GMM_MAX_POINTS if max_points is None else max_points
    if len(x) > max_points:
        x = x[torch.from_numpy(np.sort(rng.choice(len(x), max_points, replace=False)))]
    posteriors = map_batches(lambda xb: [t for m, v in model.encode(xb) for t in (m, v)], x, 1024, device)
    noise = torch.Generator().manual_seed(seed)
    for j in range(model.n_facets) if facets is None else facets:
        prior, (means, var) = model.priors[j], posteriors[2 * j:2 * j + 2]
        z = means + var.sqrt() * torch.randn(means.shape, generator=noise, dtype=means.dtype) if draws else means
        z = z.double().numpy()
        if method == "gmm":
            full = fit_variances and prior.covariance == "full"
            covariance = "full" if full else "diag"
            begin = {} if start == "kmeans" else spectral_start(means.double().numpy(), z, prior.n_clusters,
                                                                  covariance, seed)
            gmm = GaussianMixture(prior.n_clusters, covariance_type=covariance, random_state=seed, **begin).fit(z)
            prior.set_means(torch.from_numpy(gmm.means_))
            if fit_variances:
                set_covariances = prior.set_covariances if full else prior.set_variances
                set_covariances(torch.from_numpy(gmm.covariances_))
                if isinstance(prior.logits, nn.Parameter):
                    prior.set_weights(torch.from_numpy(gmm.weights_))
        else:
            prior.set_means(torch.from_numpy(z[rng.choice(len(z), prior.n_clusters, replace=False)]))


def spectral_start(means: np.ndarray, z: np.ndarray, k: int, covariance: str, seed: int) -> dict:
    """GaussianMixture start parameters (weights, means, precisions) from a spectral partition
    of the graph joining each posterior mean to its SPECTRAL_NEIGHBOURS nearest (at most
    GMM_MAX_POINTS of them, drawn at random), the groups' moments taken over ``z``.

    Why: a mixture's likelihood favours partitions that split wide groups and merge close
    ones, and EM from k-means ends in one of those; a cut of the neighbour graph follows the
    data's connected regions instead, and EM started there tends to stay near them (on 20 saved
    Fashion-MNIST models, partitions closer to the classes; README, "Default changed: the
    spectral start").
    {} (k-means' start) when a group has fewer than 2 points to take moments of.
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(means), min(len(means), GMM_MAX_POINTS), replace=False)
    with warnings.catch_warnings():  # a graph in several pieces is still cut; nothing for the user to do
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        warnings.filterwarnings("ignore", message="Exited")  # lobpcg short of its tolerance: the groups hold
        # lobpcg, not scikit-learn's arpack, whose solve time varies: with arpack five ten-minute
        # Fashion-MNIST runs ended at 606-627 s, with lobpcg at 598.2-600.4 s, as accurate
        groups = SpectralClustering(k, affinity="nearest_neighbors", assign_labels="cluster_qr", random_state=seed,
                                    n_neighbors=min(SPECTRAL_NEIGHBOURS, len(pick) - 1),
                                    eigen_solver="lobpcg").fit_predict(means[pick])
    z = z[pick]
    sizes = np.bincount(groups, minlength=k)
    if sizes.min() < 2:
        return {}
    centres = np.stack([z[groups == c].mean(0) for c in range(k)])
    reg = 1e-6 * np.eye(z.shape[1])  # GaussianMixture's reg_covar
    covariances = np.stack([np.cov(z[groups == c].T, bias=True).reshape(z.shape[1], z.shape[1]) + reg
                            for c in range(k)])
    precisions = np.linalg.inv(covariances) if covariance == "full" else 1 / np.diagonal(covariances, axis1=1, axis2=2)
    return {"weights_init": sizes / sizes.sum(), "means_init": centres, "precisions_init": precisions}


def refit_priors(model: MultiFacetVAE, x: torch.Tensor, seed: int, device: torch.device,
                 facets: list[int] | None = None, max_points: int | None = None, start: str = "kmeans") -> None:
    """The refit of ``refit_at_end`` and ``refit_every``: each facet's mixture (means, covariances
    and learned weights) fitted afresh to one draw from q(z_j|x) per input, for at most
    ``max_points`` inputs (None: REFIT_MAX_POINTS), its EM begun from ``start``."""
    initialise_priors(model, x, "gmm", seed, device, facets=facets, fit_variances=True, draws=True,
                      max_points=REFIT_MAX_POINTS if max_points is None else max_points, start=start)


@torch.no_grad()
def reseed_dead_clusters(model: MultiFacetVAE, x: torch.Tensor, facets: list[int], rng: np.random.Generator,
                         device: torch.device) -> list[int]:
    """Re-seed the dead clusters of ``facets``: those that are the most probable cluster (argmax
    q(c|x), as predictions take it) for under DEAD_SHARE / K of RESEED_POINTS random inputs. Each,
    in turn, takes over about half of the most used cluster: its covariance and half its weight,
    centred on the posterior mean of one of its inputs (half of them count as the new cluster's when
    the next one is chosen). The optimiser then pulls the two apart; Adam's moments for the re-seeded
    rows are kept, small for a cluster that had no inputs. A facet with fewer inputs than clusters is
    left alone (some clusters must go without). Returns the count per facet."""
    if len(x) > RESEED_POINTS:
        x = x[torch.from_numpy(np.sort(rng.choice(len(x), RESEED_POINTS, replace=False)))]
    assignments = map_batches(lambda xb: [lp.argmax(1) for lp in model.cluster_log_posteriors(xb)], x, 1024, device)
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
    return reseeded


@torch.no_grad()
def recalibrate_batch_norm(model: MultiFacetVAE, x: torch.Tensor, batch_size: int, device: torch.device,
                           seed: int, max_batches: int = 50) -> None:
    """Re-estimate every batch-norm layer's running statistics as plain averages over up to
    ``max_batches`` random training batches, with the weights as trained.

    The running averages kept during training trail the weights (momentum 0.1); after a short
    run they are far off, and an eval-mode encoder then maps every input to nearly the same
    latent, i.e. one cluster.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for lo, hi in batch_bounds(len(x), batch_size)[:max_batches]:
        xb = to_model_input(x[order[lo:hi]], device)
        model.decode([m for m, _ in model.encode(xb)])  # encoder and decoder layers both see data
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


class Trainer:
    def __init__(
        self,
        model: MultiFacetVAE,
        cfg: TrainConfig,
        n_samples: int,
        device: torch.device,
        run_dir: str | Path | None = None,
        verbose: bool = True,
        metadata: dict | None = None,
        data_id: str = "",
        started: float | None = None,
    ):
        self.model, self.cfg, self.device, self.verbose = model, cfg, device, verbose
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.metadata = metadata or {}  # stored in every checkpoint (the estimator's parameters)
        self.data_id = data_id  # the training data's fingerprint, checked on resume
        self.steps_per_epoch = len(batch_bounds(n_samples, cfg.batch_size))
        self.schedule = ProgressiveSchedule.from_config(cfg, model.n_facets, self.steps_per_epoch)
        self.optimizer = adam(model, cfg.lr)
        self._sum_names = sum_names(model.n_facets)
        mode = compile_mode(cfg, device, self.steps_per_epoch)
        self._compiled_loss = None if mode is None else torch.compile(batch_loss, mode=mode)
        self._compile_pending = mode is not None  # until the first compiled step, which compiles
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.step, self.history = 0, 0, []
        self.progress: EpochProgress | None = None  # set while an epoch is under way
        # With a time budget (cfg.max_seconds) the clock starts at ``started`` (the caller's
        # perf_counter when its work began: fit's, so that building the model on the device,
        # the first CUDA call included, counts) or here; warm-up and mixture initialisation
        # count too, and the training loop gets what they leave.
        self.created = time.perf_counter() if started is None else started
        self.loop_budget: float | None = None  # seconds the training loop may take
        self.elapsed = 0.0  # seconds the training loop has taken, earlier sessions of a resumed run included
        self._clock: tuple[float, float] | None = None  # (elapsed, perf_counter) when this session's loop began
        self.stage_reached = 0  # the progressive stage of the last mini-batch trained
        self._stop_requested = False
        self._saved_step: int | None = None  # the step of the checkpoint last written
        self._run_dir_claimed = False  # whether the files in run_dir are this run's yet

    def pretrain(self, x: torch.Tensor, epochs: int) -> None:
        """Warm up encoder and decoder as a plain autoencoder (z = posterior mean, every rung on).

        Beyond the paper: the mixture initialisation then clusters embeddings that already
        describe the data, instead of an untrained encoder's near-constant output.
        """
        if epochs == 0:
            return
        self.model.train()
        optimizer = adam(self.model, self.cfg.lr)
        ones = torch.ones(self.model.n_facets, device=self.device)
        for _ in tqdm(range(epochs), desc="warm-up", disable=not self.verbose, unit="epoch"):
            order = torch.randperm(len(x), generator=self.shuffle)
            for batch_idx in (order[a:b] for a, b in batch_bounds(len(x), self.cfg.batch_size)):
                xb = to_model_input(x[batch_idx], self.device)
                means = [m for m, _ in self.model.encode(xb)]
                loss = -self.model.likelihood.log_prob(self.model.decode(means, ones), xb).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    # --- the loop ------------------------------------------------------------------
    def run(self, x: torch.Tensor, reserve_seconds: float = 0.0) -> list[dict]:
        """Train until ``cfg.epochs`` epochs are done or ``cfg.max_seconds`` is spent, less
        ``reserve_seconds`` kept for work after the loop; returns the per-epoch history (a run
        stopped by its deadline ends with a partial epoch).

        Ctrl-C finishes the mini-batch in flight, writes a checkpoint of exactly that point
        (with ``run_dir``) and raises KeyboardInterrupt, whose message says what there is to
        resume; a second Ctrl-C stops at once.
        """
        total = self.cfg.epochs * self.steps_per_epoch
        if self.cfg.max_seconds is not None and self.loop_budget is None:  # a fresh run
            self.loop_budget = self.cfg.max_seconds - reserve_seconds - (time.perf_counter() - self.created)
            if self.loop_budget <= 0:
                kept = f" less {reserve_seconds:.1f} s kept for refit_at_end" if reserve_seconds > 0 else ""
                warnings.warn(f"set-up, warm-up and initialisation took the whole max_seconds={self.cfg.max_seconds}"
                              f"{kept}; training one mini-batch only", stacklevel=3)
        self._clock = (self.elapsed, time.perf_counter())
        # The bar follows the position, so that under a time budget it fills with the time spent.
        bar = tqdm(total=total, initial=self.position, disable=not self.verbose, unit="batch", dynamic_ncols=True)
        writer = None  # TensorBoard's, opened with the run's first files
        try:
            with self._deferred_ctrl_c(bar):
                while not self.finished:
                    limit = f"/{self.cfg.epochs}" if self.loop_budget is None else f", {self.cfg.max_seconds:g} s"
                    bar.set_description(f"epoch {self.epoch + 1}{limit}")
                    row = self._train_epoch(x, bar)
                    self.epoch += 1
                    self.history.append(row)
                    if writer is None and self.run_dir is not None:
                        self._claim_run_dir()
                        writer = self._tensorboard()
                    self._log(row, writer)
                    if self.run_dir is not None:
                        self.save_checkpoint()
        except KeyboardInterrupt:
            # Only a deferred Ctrl-C stops between mini-batches, where the state is consistent;
            # otherwise the checkpoint on disk (the last epoch boundary) stays as it is. What is
            # left to resume goes into the exception, which the caller shows (the CLI its own hint).
            if self.run_dir is None:
                raise
            if self._stop_requested:
                self.save_checkpoint()
            if self._saved_step is None:
                older = "" if self._run_dir_claimed or not (self.run_dir / CHECKPOINT_FILE).exists() else \
                    f" (the checkpoint in {self.run_dir} is an earlier run's)"
                raise KeyboardInterrupt(f"interrupted before the first checkpoint: nothing to resume{older}") from None
            raise KeyboardInterrupt(f"interrupted: {self.run_dir / CHECKPOINT_FILE} holds step {self._saved_step}; "
                                    "fit again with resume=True to continue") from None
        finally:
            # no gradients left behind: compiled on a GPU they live in the CUDA graphs' memory,
            # which the next compiled run in this process overwrites
            self.optimizer.zero_grad(set_to_none=True)
            bar.close()
            if writer is not None:
                writer.close()
        return self.history

    def _elapsed_now(self) -> float:
        if self._clock is None:
            return self.elapsed
        before, since = self._clock
        return before + time.perf_counter() - since

    @property
    def position(self) -> int:
        """How far through the run we are, in mini-batches of the planned ``epochs``: the step,
        or with a time budget the share of it spent, whichever is further. The progressive
        schedule and the learning-rate schedule follow it, so that under a time budget every
        stage gets its share of the time however fast the machine is."""
        total = self.cfg.epochs * self.steps_per_epoch
        if self.loop_budget is None:
            return self.step
        spent = self._elapsed_now() / self.loop_budget if self.loop_budget > 0 else 1.0
        return max(self.step, min(total, int(spent * total)))

    @property
    def finished(self) -> bool:
        return self.step > 0 and self.position >= self.cfg.epochs * self.steps_per_epoch

    @contextlib.contextmanager
    def _deferred_ctrl_c(self, bar: tqdm) -> Iterator[None]:
        """Turn the first SIGINT into a request to stop after the current mini-batch."""
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():  # signals need the main thread
            yield
            return

        def request_stop(signum, frame):
            self._stop_requested = True
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts right away
            bar.write("Ctrl-C: stopping after this mini-batch (press again to stop at once)")

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _train_epoch(self, x: torch.Tensor, bar: tqdm) -> dict:
        if self.progress is None:
            self._refit_periodically(x)
            self.progress = EpochProgress(torch.randperm(len(x), generator=self.shuffle), reseeded=self._reseed_dead(x))
        progress, start = self.progress, time.perf_counter()
        for lo, hi in batch_bounds(len(x), self.cfg.batch_size)[progress.done:]:
            batch_idx = progress.order[lo:hi]
            position = self.position
            self._refit_starting_facets(x, position)
            self.model.train()
            xb = to_model_input(x[batch_idx], self.device)
            compiling = self._compile_pending and len(xb) == self.cfg.batch_size
            if compiling:
                bar.set_postfix_str("compiling the loss")
            loss, device_sums = self._batch_loss(xb, self.schedule.weights(position).to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            batch_sums = device_sums.tolist()  # read once backward is queued: the device works meanwhile
            if not math.isfinite(batch_sums[0]):
                raise FloatingPointError(
                    f"the loss became {batch_sums[0] / len(xb)} at epoch {self.epoch + 1}, step {self.step}; "
                    "try a smaller lr or check the inputs"
                )
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.cfg, position, self.cfg.epochs * self.steps_per_epoch)
            self.optimizer.step()
            self.step, progress.done = self.step + 1, progress.done + 1
            for name, value in zip(self._sum_names, batch_sums, strict=True):
                progress.sums[name] = progress.sums.get(name, 0.0) + value
            progress.sums["n"] = progress.sums.get("n", 0) + len(xb)
            bar.update(self.position - bar.n)
            if progress.done % 10 == 1 or compiling:
                sums, n = progress.sums, progress.sums["n"]
                bar.set_postfix(elbo=f"{sums['elbo'] / n:.1f}", rec=f"{sums['reconstruction'] / n:.1f}",
                                kl="/".join(f"{sums[f'kl_{j}'] / n:.2f}" for j in range(self.model.n_facets)))
            if self._stop_requested:
                progress.seconds += time.perf_counter() - start
                raise KeyboardInterrupt
            if self.finished:  # the deadline (an epoch's last mini-batch ends the run anyway)
                break
        n = progress.sums["n"]
        row = {k: v / n for k, v in progress.sums.items() if k != "n"}
        row.update(epoch=self.epoch + 1, step=self.step, seconds=progress.seconds + time.perf_counter() - start)
        row.update(progress.reseeded)
        for j, w in enumerate(self.schedule.weights(self.position).tolist()):
            row[f"weight_{j}"] = w
        self.progress = None
        return row

    def _batch_loss(self, xb: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_loss``, compiled for mini-batches of ``batch_size`` when training compiles: an
        epoch's last one, of another size, runs eagerly rather than compile a second graph.

        With compile="auto", a first compile that fails (no C compiler for Triton, a Python
        torch.compile does not support, ...) warns and leaves training eager.
        """
        if self._compiled_loss is None or len(xb) != self.cfg.batch_size:
            return batch_loss(self.model, xb, weights, self.cfg.free_bits)
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are spent
        try:
            out = self._compiled_loss(self.model, xb, weights, self.cfg.free_bits)
        except Exception as err:
            if not (self._compile_pending and self.cfg.compile == "auto"):
                raise
            warnings.warn(f"compile='auto': torch.compile failed ({type(err).__name__}: {err}); training "
                          "eagerly (compile=False skips the attempt)", RuntimeWarning, stacklevel=2)
            self._compiled_loss = None
            out = batch_loss(self.model, xb, weights, self.cfg.free_bits)
        self._compile_pending = False
        return out

    def _refit_starting_facets(self, x: torch.Tensor, position: int) -> None:
        """With ``refit_on_stage``: re-initialise the mixture of a facet whose stage starts at this
        mini-batch, on what the encoder (trained by the earlier stages) makes of the data."""
        if not (self.cfg.refit_on_stage and self.schedule.enabled):
            return
        stage = self.schedule.stage(position)
        starting = [self.schedule.facet_of_stage(s) for s in range(self.stage_reached + 1, stage + 1)]
        self.stage_reached = stage
        if starting:
            self._eval_mode(x)
            initialise_priors(self.model, x, self.cfg.init, self.cfg.seed, self.device, facets=starting,
                              fit_variances=self.cfg.init_variances)

    def _eval_mode(self, x: torch.Tensor) -> MultiFacetVAE:
        """The model in eval mode for a pass over the data in the middle of training (a refit, a
        re-seeding), its batch-norm statistics first re-estimated for the current weights: the
        running ones trail the weights and move the eval-mode clusters of some inputs."""
        recalibrate_batch_norm(self.model, x, self.cfg.batch_size, self.device, self.cfg.seed + self.epoch)
        return self.model.eval()

    def _switched_on(self) -> list[int]:
        """The facets the progressive schedule has switched on (weight > 0) at this point of the run."""
        return [j for j, w in enumerate(self.schedule.weights(self.position).tolist()) if w > 0]

    def _refit_periodically(self, x: torch.Tensor) -> None:
        """With ``refit_every`` = n, as every n-th epoch starts: fit the mixtures of the switched-on
        facets afresh to the aggregate posterior, as ``refit_at_end`` does, so that the rest of
        training pulls the encoder towards clusters of the current embedding rather than towards
        a mixture SGD has left where the earlier one put it."""
        n = self.cfg.refit_every
        if not n or self.epoch == 0 or self.epoch % n:
            return
        refit_priors(self._eval_mode(x), x, self.cfg.seed + self.epoch, self.device, self._switched_on(),
                     start=self.cfg.refit_start)

    def _reseed_dead(self, x: torch.Tensor) -> dict[str, int]:
        """With ``reseed_dead``, as an epoch after the first starts: re-seed the dead clusters of the
        facets that are switched on; the count per facet goes into the epoch's row. At the start
        of an epoch rather than the end of one, so that a re-seeded cluster always trains, and a
        run resumed with more epochs re-seeds where a straight run would."""
        if not self.cfg.reseed_dead:
            return {}
        facets = self._switched_on() if self.epoch > 0 else []
        counts = dict.fromkeys(range(self.model.n_facets), 0)
        if facets:
            self._eval_mode(x)
            rng = np.random.default_rng([self.cfg.seed, self.epoch])
            counts.update(zip(facets, reseed_dead_clusters(self.model, x, facets, rng, self.device)))
        return {f"reseeded_{j}": n for j, n in counts.items()}

    # --- logs ----------------------------------------------------------------------
    def _tensorboard(self):
        if self.run_dir is None or importlib.util.find_spec("tensorboard") is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))

    def _claim_run_dir(self) -> None:
        """A fresh run's first write to run_dir (after its first epoch, or at a Ctrl-C) removes an
        older run's files there (RUN_FILES, TensorBoard logs); until then (a loss that turns NaN at
        once, say) the older run stays whole."""
        if not self._run_dir_claimed:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in RUN_FILES:
                (self.run_dir / stale).unlink(missing_ok=True)
            shutil.rmtree(self.run_dir / TENSORBOARD_DIR, ignore_errors=True)
            self._run_dir_claimed = True

    def _log(self, row: dict, writer) -> None:
        if self.run_dir is None:
            return
        path = self.run_dir / METRICS_FILE
        new = not path.exists()
        with path.open("a", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(row))
            if new:
                out.writeheader()
            out.writerow(row)
        if writer is not None:
            for key, value in row.items():
                writer.add_scalar(key, value, row["epoch"])

    # --- checkpoints ---------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        assert self.run_dir is not None
        self._claim_run_dir()
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim_tensors, optim_meta = optimizer_to_tensors(self.optimizer)
        tensors.update(optim_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.shuffle"] = self.shuffle.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {"epoch": self.epoch, "step": self.step, "history": self.history, "optimizer": optim_meta,
                "schedule": dataclasses.asdict(self.schedule), "estimator": self.metadata, "progress": None,
                "data": self.data_id, "stage_reached": self.stage_reached, "elapsed": self._elapsed_now(),
                "loop_budget": self.loop_budget, "precision": self.model.cfg.precision}
        if self.progress is not None:  # a checkpoint in the middle of an epoch
            tensors["progress.order"] = self.progress.order
            meta["progress"] = {"done": self.progress.done, "sums": self.progress.sums,
                                "seconds": self.progress.seconds, "reseeded": self.progress.reseeded}
        path = self.run_dir / CHECKPOINT_FILE
        write_safetensors(path, tensors, meta)
        self._saved_step = self.step
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        tensors, meta = read_safetensors(Path(path))
        if meta.get("data") and self.data_id and meta["data"] != self.data_id:
            raise ValueError(f"cannot resume {path}: it was trained on other data (a resumed run must see the same "
                             "examples, in the same order)")
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        self.shuffle.set_state(tensors["rng.shuffle"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.epoch, self.step, self.history = meta["epoch"], meta["step"], meta["history"]
        self._saved_step, self._run_dir_claimed = self.step, True  # a resumed run goes on writing its own files
        if meta["progress"] is not None:
            self.progress = EpochProgress(tensors["progress.order"], **meta["progress"])
        # The run keeps the schedule it started with: a resume that asks for more epochs
        # lengthens the last stage instead of moving stage boundaries already passed.
        saved = meta["schedule"]
        self.schedule = ProgressiveSchedule(saved["n_facets"], tuple(saved["stage_starts"]), saved["fade_steps"],
                                            saved["enabled"])
        # The time budget and the refit bookkeeping (absent from checkpoints of older versions).
        self.stage_reached = meta.get("stage_reached", self.schedule.stage(max(self.step - 1, 0)))
        self.elapsed = meta.get("elapsed", sum(row["seconds"] for row in self.history))
        self.loop_budget = meta.get("loop_budget")
        if self.cfg.epochs < self.epoch:
            raise ValueError(f"epochs={self.cfg.epochs} is fewer than the {self.epoch} the checkpoint has done")
        trained_for = meta["estimator"]["epochs"]
        if self.loop_budget is not None and self.cfg.epochs != trained_for:
            raise ValueError(f"epochs cannot change on resume of a run with a time budget (max_seconds="
                             f"{self.cfg.max_seconds:g}): its progress is the share of the time spent, not of the "
                             f"epochs; resume with epochs={trained_for}")
        last_start = self.schedule.stage_starts[-1]
        if self.schedule.enabled and last_start >= self.cfg.epochs * self.steps_per_epoch:
            raise ValueError(f"epochs={self.cfg.epochs} ends before this run's last stage starts "
                             f"(epoch {last_start // self.steps_per_epoch + 1}); ask for more epochs")


def read_checkpoint_metadata(path: str | Path) -> dict:
    """The estimator parameters stored in a checkpoint (to rebuild the estimator on resume)."""
    return read_safetensors(Path(path))[1]["estimator"]
