"""MFCVAE: the scikit-learn style estimator that users hold.

It validates inputs, turns its hyper-parameters into ModelConfig / TrainConfig, hands the
optimisation to ``train.Trainer`` and answers questions about the fitted model. It knows
nothing of layer shapes (model.py) or of command lines (cli.py).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from .config import ARCHITECTURES, PRECISIONS, ModelConfig, TrainConfig, check_positive_ints, check_real, is_int
from .datasets import Dataset
from .ladder import conv_ladder_fits
from .metrics import evaluate_assignments
from .model import MultiFacetVAE
from .serialization import CONFIG_FILE, read_model_dir, read_safetensors, write_model_dir
from .train import (CHECKPOINT_FILE, GMM_MAX_POINTS, REFIT_MAX_POINTS, SPECTRAL_COST_RATIO, Trainer,
                    data_fingerprint, initialise_priors, map_batches, recalibrate_batch_norm, refit_priors)
from .validation import as_tensor

FORMAT_VERSION = 1
PREDICT_BATCH = 2048
# Parameters that may differ between a checkpoint and the estimator that resumes it.
RESUMABLE_CHANGES = {"epochs", "verbose", "device", "compile"}
# Parameters added after models and checkpoints were first saved, with the value that describes
# how a file without them was trained (today's default may differ).
BEFORE_THEY_EXISTED = {"weight_floor": 0.0, "reseed_dead": False, "refit_at_end": False, "refit_every": 0,
                      "lr_decay_start": 0.0, "refit_start": "kmeans"}


def as_trained(saved_params: dict) -> dict:
    """The estimator parameters stored in a saved model or checkpoint, with those the file predates
    filled in as it was trained (today's defaults may differ): the one place files are read so."""
    return {**BEFORE_THEY_EXISTED, **saved_params}


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else must name a usable device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}") from err
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bfloat16' on a CPU that computes it natively (AVX-512 BF16 or AMX), else 'float32'.

    Measured (benchmarks/budget.py): on such a CPU bfloat16 fits 2.4x the epochs in a time budget;
    emulated (an AVX2-only CPU) it fits a tenth of float32's (warn_if_emulated says so). On a
    GPU (an H200) the networks are too small for bfloat16 to pay: eager, autocast's extra casts
    made an epoch slower (46 against 57 epochs a minute); compiled, it ran at float32's speed and
    came out level (0.619 against 0.611 over 7 paired seeds, ahead on 5), so a GPU gets float32.
    """
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"precision must be one of {('auto', *PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "float32"
    return "bfloat16" if cpu_has_native_bfloat16() else "float32"


def warn_if_emulated(precision: str, device: torch.device) -> None:
    """Warn before training in bfloat16 on a CPU that emulates it: a fresh run asked for it, or a
    resumed one started on a machine that had it (either way the caller of ``fit`` is named)."""
    if precision == "bfloat16" and device.type == "cpu" and not cpu_has_native_bfloat16():
        warnings.warn("precision='bfloat16' on a CPU without native bfloat16 (no AVX-512 BF16, no AMX): "
                      "it is emulated and about ten times slower than float32 (measured: 3 epochs of "
                      "Fashion-MNIST in ten minutes, 32 in float32); precision='auto' picks float32 here",
                      stacklevel=3)


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX). torch.cpu's feature
    probes are private; a torch without them answers no, so "auto" falls back to float32."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def trained_precision(record: dict, params: dict) -> str:
    """The arithmetic a saved model or checkpoint (``record``, with its estimator ``params``) was
    trained in, whatever precision="auto" picks where it is read; float32 where it predates precision."""
    return record.get("precision", params.get("precision", "float32"))


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block under torch's global RNG seeded with ``seed``, restoring the caller's RNG after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class MFCVAE(BaseEstimator):
    """Multi-Facet Clustering VAE: J independent clusterings of the same data.

    Facet j has ``n_clusters[j]`` clusters and a ``latent_dims[j]``-dimensional latent.
    Facet 0 is the bottom rung of the ladder (nearest the pixels), facet J-1 the top.
    The defaults are the paper's MNIST network and optimiser (two facets, 25 clusters and 5
    latent dimensions each, MLP ladder 500/2000, learned weights, Bernoulli likelihood, Adam
    at 5e-4, GMM initialisation, progressive training; 100 epochs in equal stages rather than
    its 402) with measured changes: batch 128 instead of 512 and precision "auto" (bfloat16
    networks on a CPU that has it natively), which reach more accuracy in the same time,
    free bits with dead clusters re-seeded, which keep lower facets from collapsing at the
    same accuracy, the mixtures fitted afresh at the end, from a spectral cut of the encoded
    data, and full covariances instead of diagonal ones, which raise the mean accuracy
    (benchmarks/budget.py).
    Colour images get the paper's convolutional ladder. The paper's recipe exactly:
    ``MFCVAE(**mfcvae.load_preset("mnist"))`` (or ``--preset mnist``).

    Inputs X: an array or tensor, (N, D), (N, H, W) or (N, C, H, W), or a
    ``mfcvae.datasets.Dataset`` (kept compact, converted batch by batch).

    Parameters
    ----------
    n_clusters, latent_dims : one entry per facet.
    hidden_dims : one entry per facet: MLP rung widths or conv block channels; default
        (None): MLP 500 ... 2000 (the paper's (500, 2000) for two facets), conv 64, 128, ...
    covariance : "full" (default) or "diag" (the paper's) covariance of every mixture
        component. A cluster of the encoded data is seldom aligned with the latent axes; with
        full covariances the mixture, the one fitted at the end included, follows it (ten
        float32 CPU-minutes of Fashion-MNIST: ahead of diagonal ones on 6 of 7 seeds, +0.036
        on average, at about the same epochs; README, "Default changed: full covariances").
    learn_weights : learn the mixture weights pi_j (else uniform, fixed).
    weight_floor : share of each facet's prior mass spread evenly over its clusters, so that
        pi_jk >= weight_floor / K_j: a cluster cannot die by its weight shrinking to zero
        (0 = the paper's; 1 = uniform weights; beyond the paper).
    likelihood : "bernoulli" or "gaussian" with std ``likelihood_scale``; both take inputs in
        [0, 1] (their means are sigmoids), so scale feature vectors into it.
    posterior : "exact" (closed-form optimal q(c|x)) or "mc" (the paper code's one-sample estimate).
    architecture : "mlp", "conv" or "auto" (conv for colour images, (3, H, W) with H and W
        divisible by 2^J and >= 4 * 2^J; MLP for everything else).
    activation : "relu" or "elu"; default (None): relu for MLP, elu for conv (the paper's).
    batch_norm : batch-norm after the hidden layers (conv: every convolution); default (None):
        off for MLP, on for conv.
    merge_scale : factor on each lower facet's contribution to the decoder; default (None): the
        paper's, 0.1 for MLP and 1 for conv. 1 lets a lower MLP facet take over a strong factor
        (beyond the paper).
    precision : "auto" (default), "float32" (the paper's) or "bfloat16": with bfloat16 the
        ladder networks run in bfloat16 under autocast, the heads and every probability term in
        float32. On a CPU with AVX-512 BF16 a time budget buys 2.4x the epochs (measured,
        benchmarks/budget.py); CPUs without it emulate bfloat16, about ten times slower (a
        warning says so); on a GPU it needs bfloat16 support (Ampere or later), and on an H200
        it was slower eager and level with float32 compiled. "auto": bfloat16 on a CPU with
        native bfloat16, else float32
        (``precision_`` says which; a saved model and a resumed run keep it).
    epochs, batch_size, lr : Adam optimisation (the paper: batch 512; 128 buys four times the
        steps per epoch, which pays off under a time budget).
    lr_schedule : "constant" (default, the paper's) or "cosine": lr falls to 0 along half a
        cosine, over the run's planned length (with ``max_seconds``, its time).
    lr_decay_start : with "cosine", the share of the run trained at ``lr`` before the decay
        starts (0, the default: from the first step; 0.8: over the last fifth only).
    progressive : train facets one at a time, top first, each faded in (else all at once).
    stage_epochs : epochs per stage; default: equal stages. With a sum other than ``epochs``
        the schedule (fade_steps included) is stretched or squeezed to the run's length, so
        a preset's schedule keeps its shape under ``--epochs``.
    fade_steps : fade-in length in mini-batches; default: ``fade_fraction`` of a stage.
    init : "gmm" (fit a Gaussian mixture to encoded data) or "random" (K encoded inputs).
    pretrain_epochs : epochs of plain-autoencoder warm-up before the mixture initialisation
        (beyond the paper; 0 = the paper's recipe).
    refit_on_stage : re-initialise a facet's mixture when its stage starts (beyond the paper).
    refit_at_end : after training, fit every facet's mixture afresh to what the trained encoder
        makes of the data (a Gaussian mixture on one draw from q(z_j|x) per input, at most
        100,000 inputs where the first fit takes 20,000; its means, covariances and, where
        weights are learned, weights). SGD leaves the mixture where the early, poorer embedding
        put it; a fresh fit finds clusters of the final one (beyond the paper; on by default;
        with ``max_seconds`` the training loop leaves it the time the initial mixture fit
        took, scaled by the ratio of inputs, which is little with ``init="random"``).
        ``history_`` ends before it, so ``score`` after ``fit`` differs a little from the last
        epoch's ELBO.
    refit_every : n > 0: as every n-th epoch starts, fit the switched-on facets' mixtures
        afresh in the same way, so that the rest of training pulls the encoder towards clusters
        of its current embedding (beyond the paper; 0, the default: never. Every 5 epochs it
        fell behind on both seeds screened, ten CPU-minutes of Fashion-MNIST, when the refits
        fitted 20,000 inputs; README).
    refit_start : where those refits' EM starts: "spectral" (default; the groups of a cut of
        the graph joining each encoded input to its 15 nearest, see ``train.spectral_start``) or
        "kmeans" (scikit-learn's start). The spectral start matched Fashion-MNIST's classes
        better: +0.043 over five paired ten-minute runs (0.682 against 0.639, each ending by
        600.4 s); refitting saved models, +0.015 on 15 and +0.034 on 5; on tinted data (three
        paired runs, three refits) the colour stayed at 1.000 and the item moved by -0.014 to
        +0.042 (beyond the paper; README, "Default changed: the spectral start"). The cut's
        eigenvectors come from lobpcg: with scikit-learn's arpack the same seeds' runs took 606-627 s.
    reseed_dead : as every epoch after the first starts, a cluster of a switched-on facet that
        is the most probable one for under a tenth of its fair share of the data (judged on 4096
        inputs) is re-seeded: the most used cluster is split in two (beyond the paper; on by
        default, with free bits: alone it cannot revive a facet whose latent is unused).
    free_bits : KL (nats, per facet and example) below which a facet is not pulled towards its
        prior during training; > 0 keeps lower facets from collapsing (beyond the paper;
        default 2, the paper's is 0).
    max_seconds : a wall-clock budget for ``fit`` (warm-up and initialisation included): the
        progressive and learning-rate schedules are laid over the time instead of the
        mini-batches, and training stops at the deadline or after ``epochs``, whichever comes
        first (so make ``epochs`` generous); the time kept back for ``refit_at_end`` is an
        estimate (ten-minute Fashion-MNIST runs ended at 598.2-600.4 s with the spectral start,
        601-603 s with the k-means one). None: no time limit, the run is ``epochs`` long.
        Timed runs are not reproducible to the bit: where stages switch depends on the machine.
    seed : same seed, same data, same machine -> same clusters.
    device : "auto" (CUDA if present, else CPU), "cpu" or "cuda[:i]".
    compile : train with the loss compiled by ``torch.compile``, on a GPU with CUDA graphs
        (a step's forward and backward pass replayed as two graphs instead of hundreds of small
        kernel launches). "auto" (default): on a GPU that Triton serves, for runs long enough
        to repay the compile (the first step compiles; ``max_seconds`` counts that time),
        and falling back to eager training, with a warning, where compiling fails; never on a
        CPU, where it was no faster (benchmarks/budget.py). Compiled training draws other
        random numbers, so it matches eager training in distribution, not bit for bit.
    verbose : show a progress bar while training.

    Attributes (after fit)
    ----------------------
    model_ : the trained ``MultiFacetVAE``.
    input_shape_ : the shape of one example.
    history_ : per-epoch training metrics (list of dicts).
    cluster_weights_ : list of J arrays pi_j.
    precision_ : "float32" or "bfloat16", the networks' arithmetic.
    """

    def __init__(
        self,
        n_clusters: tuple[int, ...] = (25, 25),
        latent_dims: tuple[int, ...] = (5, 5),
        hidden_dims: tuple[int, ...] | None = None,
        covariance: str = "full",
        learn_weights: bool = True,
        weight_floor: float = 0.0,
        likelihood: str = "bernoulli",
        likelihood_scale: float = 0.3,
        posterior: str = "exact",
        architecture: str = "auto",
        activation: str | None = None,
        batch_norm: bool | None = None,
        merge_scale: float | None = None,
        precision: str = "auto",
        epochs: int = 100,
        batch_size: int = 128,
        lr: float = 5e-4,
        lr_schedule: str = "constant",
        lr_decay_start: float = 0.0,
        progressive: bool = True,
        stage_epochs: tuple[int, ...] | None = None,
        fade_steps: int | None = None,
        fade_fraction: float = 0.5,
        init: str = "gmm",
        init_variances: bool = False,
        pretrain_epochs: int = 0,
        refit_on_stage: bool = False,
        refit_at_end: bool = True,
        refit_every: int = 0,
        refit_start: str = "spectral",
        reseed_dead: bool = True,
        free_bits: float = 2.0,
        max_seconds: float | None = None,
        seed: int = 0,
        device: str = "auto",
        compile: bool | str = "auto",
        verbose: bool = True,
    ):
        self.n_clusters = n_clusters
        self.latent_dims = latent_dims
        self.hidden_dims = hidden_dims
        self.covariance = covariance
        self.learn_weights = learn_weights
        self.weight_floor = weight_floor
        self.likelihood = likelihood
        self.likelihood_scale = likelihood_scale
        self.posterior = posterior
        self.architecture = architecture
        self.activation = activation
        self.batch_norm = batch_norm
        self.merge_scale = merge_scale
        self.precision = precision
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.lr_decay_start = lr_decay_start
        self.progressive = progressive
        self.stage_epochs = stage_epochs
        self.fade_steps = fade_steps
        self.fade_fraction = fade_fraction
        self.init = init
        self.init_variances = init_variances
        self.pretrain_epochs = pretrain_epochs
        self.refit_on_stage = refit_on_stage
        self.refit_at_end = refit_at_end
        self.refit_every = refit_every
        self.refit_start = refit_start
        self.reseed_dead = reseed_dead
        self.free_bits = free_bits
        self.max_seconds = max_seconds
        self.seed = seed
        self.device = device
        self.compile = compile
        self.verbose = verbose

    # --- configuration -------------------------------------------------------------
    def _model_config(self, input_shape: tuple[int, ...], precision: str) -> ModelConfig:
        """The network for inputs of ``input_shape``, its arithmetic ``precision`` already settled
        (resolve_precision, or what a saved model or checkpoint was trained in)."""
        n_clusters, latent_dims = (_as_tuple(n, v) for n, v in (
            ("n_clusters", self.n_clusters), ("latent_dims", self.latent_dims)))
        if len(n_clusters) != len(latent_dims):
            raise ValueError(
                f"n_clusters and latent_dims need one entry per facet each; got {len(n_clusters)} and "
                f"{len(latent_dims)} ({self.n_clusters!r} vs {self.latent_dims!r})"
            )
        input_shape = tuple(int(s) for s in input_shape)
        architecture = self._architecture(input_shape, len(n_clusters))
        conv = architecture == "conv"
        if self.hidden_dims is not None:
            hidden_dims = _as_tuple("hidden_dims", self.hidden_dims)
        elif conv:
            hidden_dims = tuple(64 * 2**j for j in range(len(n_clusters)))
        else:
            hidden_dims = tuple(int(w) for w in np.geomspace(500, 2000, len(n_clusters)).round()) \
                if len(n_clusters) > 1 else (500,)
        return ModelConfig(
            input_shape=input_shape, n_clusters=n_clusters, latent_dims=latent_dims,
            hidden_dims=hidden_dims, covariance=self.covariance, learn_weights=self.learn_weights,
            weight_floor=self.weight_floor,
            likelihood=self.likelihood, likelihood_scale=self.likelihood_scale, posterior=self.posterior,
            architecture=architecture, activation=self.activation or ("elu" if conv else "relu"),
            batch_norm=conv if self.batch_norm is None else self.batch_norm,
            merge_scale=self.merge_scale, precision=precision,
        )

    def _architecture(self, input_shape: tuple[int, ...], n_facets: int) -> str:
        """"auto" -> "conv" for colour images the conv ladder can take, else "mlp"."""
        if self.architecture != "auto":
            if self.architecture not in ARCHITECTURES:
                raise ValueError(f"architecture must be one of {('auto', *ARCHITECTURES)}, got {self.architecture!r}")
            return self.architecture
        return "conv" if input_shape[:1] == (3,) and conv_ladder_fits(input_shape, n_facets) else "mlp"

    def _train_config(self) -> TrainConfig:
        stage_epochs = None if self.stage_epochs is None else _as_tuple("stage_epochs", self.stage_epochs)
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, lr_schedule=self.lr_schedule,
            lr_decay_start=self.lr_decay_start,
            progressive=self.progressive, stage_epochs=stage_epochs, fade_steps=self.fade_steps,
            fade_fraction=self.fade_fraction, init=self.init, init_variances=self.init_variances,
            pretrain_epochs=self.pretrain_epochs, refit_on_stage=self.refit_on_stage,
            refit_at_end=self.refit_at_end, refit_every=self.refit_every, refit_start=self.refit_start,
            free_bits=self.free_bits,
            reseed_dead=self.reseed_dead,
            max_seconds=self.max_seconds, seed=self.seed, compile=self.compile,
        )

    def _validate_fit_input(self, X) -> torch.Tensor:
        """X as a tensor, once X and every parameter (and the device) pass the checks ``fit`` makes
        before it trains: for callers (the CLI) that must not touch a run folder when one fails."""
        x = as_tensor(X)
        device = resolve_device(self.device)
        model_cfg = self._model_config(tuple(x.shape[1:]), resolve_precision(self.precision, device))
        train_cfg = self._train_config()
        if train_cfg.stage_epochs is not None:  # TrainConfig does not know the number of facets
            check_positive_ints("stage_epochs", train_cfg.stage_epochs, len(model_cfg.n_clusters))
        if not (isinstance(self.verbose, (bool, np.bool_)) or (is_int(self.verbose) and self.verbose >= 0)):
            raise ValueError(f"verbose must be true or false (or a level >= 0), got {self.verbose!r}")
        if len(x) < 2:  # a mixture fit needs two points even for one cluster
            raise ValueError("X has 1 example: fit needs at least 2")
        if len(x) < max(model_cfg.n_clusters):
            raise ValueError(f"X has {len(x)} examples, fewer than the {max(model_cfg.n_clusters)} clusters asked for")
        return x

    # --- training ------------------------------------------------------------------
    def fit(self, X, y=None, *, run_dir: str | Path | None = None, resume: bool = False) -> "MFCVAE":
        """Train on X ((N, D), (N, H, W) or (N, C, H, W)); ``y`` is ignored (unsupervised).

        With ``run_dir``, per-epoch metrics (metrics.csv), a checkpoint at every epoch
        boundary (what a Ctrl-C leaves behind) and the final model are written there;
        ``resume=True`` continues from the checkpoint, a larger ``epochs`` lengthening the
        last stage of the progressive schedule.
        """
        started = time.perf_counter()  # a max_seconds budget counts from here
        x = self._validate_fit_input(X)
        device = resolve_device(self.device)
        if resume and run_dir is None:
            raise ValueError("resume=True needs the run_dir holding the checkpoint")
        if run_dir is not None and Path(run_dir).exists() and not Path(run_dir).is_dir():
            raise ValueError(f"run_dir {run_dir} exists and is not a folder")
        checkpoint = Path(run_dir) / CHECKPOINT_FILE if run_dir is not None else None
        # a resumed run keeps the arithmetic it started in, whatever "auto" picks here
        precision = self._check_resumable(checkpoint) if resume else resolve_precision(self.precision, device)
        warn_if_emulated(precision, device)
        model_cfg, train_cfg = self._model_config(tuple(x.shape[1:]), precision), self._train_config()

        with seeded(self.seed, device):
            model = MultiFacetVAE(model_cfg).to(device)
            with warnings.catch_warnings():
                if resume:  # the checkpoint's schedule replaces the one built here: no warnings about it
                    warnings.simplefilter("ignore", UserWarning)
                trainer = Trainer(model, train_cfg, len(x), device, run_dir, self.verbose,
                                  metadata=_jsonable(self.get_params()), data_id=data_fingerprint(x), started=started)
            fit_seconds = 0.0  # how long the end refit will take here: kept back for refit_at_end
            if resume:
                trainer.load_checkpoint(checkpoint)
            else:
                trainer.pretrain(x, train_cfg.pretrain_epochs)
                fit_started = time.perf_counter()
                initialise_priors(model, x, train_cfg.init, train_cfg.seed, device,
                                  fit_variances=train_cfg.init_variances)
                # the refit encodes and fits more inputs than this fit did, for proportionally longer,
                # and a spectral start costs a multiple of this fit besides
                fit_seconds = (time.perf_counter() - fit_started) * (
                    min(len(x), REFIT_MAX_POINTS) / min(len(x), GMM_MAX_POINTS)
                    + (SPECTRAL_COST_RATIO if train_cfg.refit_start == "spectral" else 0.0))
            trainer.run(x, reserve_seconds=fit_seconds if train_cfg.refit_at_end else 0.0)
            recalibrate_batch_norm(model, x, train_cfg.batch_size, device, train_cfg.seed)
            if train_cfg.refit_at_end:
                refit_priors(model.eval(), x, train_cfg.seed, device, start=train_cfg.refit_start)

        self.model_, self.input_shape_, self.history_ = model.eval(), tuple(x.shape[1:]), trainer.history
        self.n_features_in_ = int(np.prod(self.input_shape_))
        if run_dir is not None:
            self.save(run_dir)
        return self

    def _check_resumable(self, checkpoint: Path) -> str:
        """Refuse a checkpoint whose parameters differ from this estimator's; return the precision
        its run trains in."""
        if not checkpoint.is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint} does not exist")
        meta = read_safetensors(checkpoint)[1]
        saved, mine = as_trained(meta["estimator"]), self.get_params()
        changed = sorted(k for k in saved if k not in RESUMABLE_CHANGES and _jsonable(saved[k]) != _jsonable(mine.get(k)))
        if changed:
            raise ValueError(f"cannot resume {checkpoint}: these parameters differ from the checkpoint's: {changed}")
        return trained_precision(meta, saved)

    # --- inference -----------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this MFCVAE is not fitted yet: call fit(X) or MFCVAE.load(path) first")

    def _inputs(self, X, name: str = "X") -> torch.Tensor:
        self._check_fitted()
        return as_tensor(X, name=name, input_shape=self.input_shape_)

    @property
    def _device(self) -> torch.device:
        return next(self.model_.parameters()).device

    def _map(self, fn, X) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in map_batches(fn, X, PREDICT_BATCH, self._device)]

    def predict_proba(self, X) -> list[np.ndarray]:
        """q(c_j | x) for every facet: a list of J arrays (N, K_j) whose rows sum to 1."""
        return self._map(lambda xb: [lq.exp() for lq in self.model_.cluster_log_posteriors(xb)], self._inputs(X))

    def predict(self, X) -> np.ndarray:
        """Cluster ids, shape (N, J): argmax_k q(c_j = k | x) with z at the posterior mean."""
        return np.stack([p.argmax(1) for p in self.predict_proba(X)], axis=1).astype(np.int64)

    def fit_predict(self, X, y=None, **fit_params) -> np.ndarray:
        """``fit(X, **fit_params)``, then ``predict(X)``: scikit-learn's shortcut for clusterers."""
        return self.fit(X, **fit_params).predict(X)

    def _latent_means(self, x: torch.Tensor) -> list[np.ndarray]:
        return self._map(lambda xb: [m for m, _ in self.model_.encode(xb)], x)

    def transform(self, X) -> list[np.ndarray]:
        """Posterior means of z_j: a list of J arrays (N, d_j)."""
        return self._latent_means(self._inputs(X))

    def _decode_mean(self, zs: list[torch.Tensor]) -> torch.Tensor:
        return self.model_.likelihood.mean(self.model_.decode([z.to(self._device) for z in zs]))

    def reconstruct(self, X) -> np.ndarray:
        """Decode the posterior means: an array shaped like X."""
        out = self._map(lambda xb: [self._decode_mean([m for m, _ in self.model_.encode(xb)])], self._inputs(X))[0]
        return out.reshape(_shape_of(X))

    def compose(self, X_a, X_b, facet: int) -> np.ndarray:
        """X_a with facet ``facet``'s latent taken from X_b (row by row), decoded."""
        a, b = self._inputs(X_a, "X_a"), self._inputs(X_b, "X_b")
        if len(a) != len(b):
            raise ValueError(f"X_a and X_b must have the same number of examples, got {len(a)} and {len(b)}")
        self._check_facet(facet)
        za = self._latent_means(a)
        za[facet] = self._latent_means(b)[facet]
        with torch.no_grad():
            parts = [self._decode_mean([torch.from_numpy(z[i:i + PREDICT_BATCH]) for z in za]).cpu().numpy()
                     for i in range(0, len(a), PREDICT_BATCH)]
        return np.concatenate(parts).reshape(_shape_of(X_a))

    def sample(self, n: int, facet: int | None = None, cluster: int | None = None,
               temperature: float = 1.0, seed: int | None = None) -> np.ndarray:
        """n new inputs: every facet drawn from its prior at ``temperature``, facet ``facet``
        from its cluster ``cluster`` (controlled generation)."""
        self._check_fitted()
        if not (is_int(n) and n > 0):
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if cluster is not None and facet is None:
            raise ValueError("cluster needs facet: say which facet's cluster to sample from")
        check_real("temperature", temperature, 0)
        if facet is not None:
            self._check_facet(facet)
        if cluster is not None:
            last = self.model_.cfg.n_clusters[facet] - 1
            if not (is_int(cluster) and 0 <= cluster <= last):
                raise ValueError(f"facet {facet} has clusters 0..{last}: cluster must be an integer among them, "
                                 f"got {cluster!r}")
        generator = torch.Generator(self._device).manual_seed(self.seed if seed is None else seed)
        with torch.no_grad():
            zs = self.model_.sample_latents(n, facet, cluster, temperature, generator)
            return self._decode_mean(zs).cpu().numpy()

    def score(self, X) -> float:
        """Mean ELBO per example (one reparameterised sample, seeded, so repeatable)."""
        x = self._inputs(X)
        with seeded(self.seed, self._device):
            elbos = self._map(lambda xb: [self.model_.elbo_terms(xb).elbo()], x)[0]
        return float(elbos.mean())

    def evaluate(self, X, labels: dict[str, np.ndarray] | None = None) -> list[dict]:
        """Accuracy (many-to-one, the paper's), Hungarian accuracy, NMI, ARI and active clusters
        for every facet x label pair; ``labels`` maps a name to an (N,) array (default: the
        labels of a Dataset X)."""
        if labels is None and isinstance(X, Dataset):
            labels = X.labels
        if labels is None:
            raise TypeError("evaluate needs labels: a dict of label name -> (N,) array, or a Dataset that has them")
        if not isinstance(labels, dict):
            raise TypeError("labels must be a dict of label name -> (N,) array")
        return evaluate_assignments(self.predict(X), labels)

    @property
    def precision_(self) -> str:
        """The networks' arithmetic, "float32" or "bfloat16" (what precision="auto" settled on)."""
        self._check_fitted()
        return self.model_.cfg.precision

    @property
    def cluster_weights_(self) -> list[np.ndarray]:
        self._check_fitted()
        return [p.log_weights.exp().detach().cpu().numpy() for p in self.model_.priors]

    def _check_facet(self, facet: int) -> None:
        if not (is_int(facet) and 0 <= facet < self.model_.n_facets):
            raise ValueError(f"facet must be an integer in [0, {self.model_.n_facets}), got {facet!r}")

    # --- persistence ---------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``path/model.safetensors`` (weights) and ``path/config.json`` (everything else)."""
        self._check_fitted()
        config = {"format": "mfcvae", "version": FORMAT_VERSION, "params": _jsonable(self.get_params()),
                  "input_shape": list(self.input_shape_), "precision": self.precision_, "history": self.history_}
        write_model_dir(Path(path), self.model_.state_dict(), config)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "MFCVAE":
        """Load a model written by ``save`` (or a ``fit(run_dir=...)`` / ``mfcvae fit --out`` folder)."""
        state, config = read_model_dir(Path(path))
        if config.get("format") != "mfcvae":
            raise ValueError(f"{Path(path) / CONFIG_FILE} is not an mfcvae model config")
        est = cls(**{**as_trained(config["params"]), "device": device})
        model = MultiFacetVAE(est._model_config(tuple(config["input_shape"]), trained_precision(config, config["params"])))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:  # sizes or names differ: one of the two files was changed or swapped
            lines = str(err).splitlines()  # torch's first line only says that there are errors
            detail = lines[1] if len(lines) > 1 else lines[0]
            raise ValueError(f"{Path(path)}: the weights do not fit the network its {CONFIG_FILE} describes: "
                             f"{detail.strip()}") from err
        est.model_ = model.to(resolve_device(device)).eval()
        est.input_shape_, est.history_ = tuple(config["input_shape"]), config["history"]
        est.n_features_in_ = int(np.prod(est.input_shape_))
        return est


def _shape_of(X) -> tuple[int, ...]:
    """The shape of validated inputs X as the caller gave them (a Dataset: its stored shape)."""
    return tuple(X.x.shape) if isinstance(X, Dataset) else tuple(np.shape(X))


def _as_tuple(name: str, value) -> tuple:
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    try:
        return tuple(int(v) if isinstance(v, np.integer) else v for v in value)
    except TypeError as err:
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}") from err


def _jsonable(value):
    """Tuples and numpy arrays -> lists, numpy scalars -> Python, recursively (for the JSON of
    config.json and checkpoints, and for comparisons): parameters may be given as numpy values."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
