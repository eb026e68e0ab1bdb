"""MFCVAE: the scikit-learn estimator that users hold.

It validates inputs and parameters once, turns the parameters into ModelConfig / TrainConfig,
hands training to ``train.train`` and answers questions about the fitted model. It knows
nothing of layer shapes (model.py) or of command lines (cli.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.exceptions import NotFittedError

from . import distributed
from .batches import map_batches, value_range
from .callbacks import Callback, MetricsCSV, Progress, TensorBoard
from .config import ARCHITECTURES, LIKELIHOODS, ModelConfig, TrainConfig, check_positive_ints, check_real, is_int
from .datasets import Dataset
from .ladder import PAPER_MERGE_SCALE, conv_ladder_fits
from .metrics import evaluate_assignments
from .model import MultiFacetVAE, input_moments
from .runs import RunFolder
from .runtime import resolve_device, resolve_precision, seeded, warn_if_emulated
from .serialization import CONFIG_FILE, read_model_dir, write_model_dir
from .train import train
from .validation import as_tensor

FORMAT_VERSION = 2
PREDICT_BATCH = 2048
BOUNDED_LIKELIHOODS = ("bernoulli", "sigmoid_gaussian")  # their means lie in [0, 1], so the inputs must too
# Parameters that may differ between a checkpoint and the estimator that resumes it.
RESUMABLE_CHANGES = {"epochs", "verbose", "device", "compile"}


class MFCVAE(ClusterMixin, TransformerMixin, BaseEstimator):
    """Multi-Facet Clustering VAE: J independent clusterings of the same data.

    Facet j has ``n_clusters[j]`` clusters and a ``latent_dims[j]``-dimensional latent z_j with
    a mixture-of-Gaussians prior. Facet 0 is the bottom rung of the ladder (nearest the input),
    facet J-1 the top. The network and optimiser default to the paper's MNIST model; the
    training recipe adds free bits, re-seeding of dead clusters and a refit of the mixtures at
    the end, and uses full covariances (``load_preset("mnist")`` gives the paper's recipe exactly).

    Inputs X: an array or tensor, (N, D) features, (N, H, W) or (N, C, H, W) images, or a
    ``mfcvae.datasets.Dataset`` (kept compact, converted batch by batch). uint8 arrays are
    images and are read as value / 255.

    Parameters
    ----------
    n_clusters : tuple of int or "auto", int or "auto", default (25, 25)
        Clusters per facet; its length is the number of facets J. One value: the same for every
        facet (J is then the length of ``latent_dims``). "auto": the facet trains with
        ``max_clusters`` and the end refit chooses its number of clusters, the one whose mixture
        has the lowest BIC on the facet's latent draws (every count from 1 to ``max_clusters``,
        or 30 of them spaced geometrically above 30; needs ``refit_at_end``). ``n_clusters_``
        holds the counts chosen.
    max_clusters : int, default 25
        The most clusters an "auto" facet may have.
    latent_dims : tuple of int or int, default (5, 5)
        Dimension of each facet's latent z_j; one int: the same for every facet.
    hidden_dims : tuple of int or None, default None
        Width of each MLP rung or channels of each conv block, one per facet. None: MLP
        500 ... 2000 (geometric; (500, 2000) for two facets), conv 64, 128, ...
    architecture : {"auto", "mlp", "conv"}, default "auto"
        The ladder: "conv" (elu, batch-norm) for colour images (3, H, W) whose sides divide by
        2^J and are at least 4 * 2^J under "auto"; "mlp" (relu, no batch-norm) otherwise.
    covariance : {"full", "diag"}, default "full"
        Covariance of every mixture component.
    learn_weights : bool, default True
        Learn the mixture weights pi_j (else uniform and fixed, also in the end refit).
    likelihood : {"auto", "bernoulli", "gaussian", "sigmoid_gaussian"}, default "auto"
        p(x|z). "bernoulli": grey levels in [0, 1]. "gaussian": real-valued features,
        standardised per feature by the estimator (the shift and scale are stored with the
        model and undone in ``reconstruct``, ``compose`` and ``sample``), unbounded mean, std
        ``likelihood_scale`` in standardised units. "sigmoid_gaussian": inputs in [0, 1], mean a
        sigmoid of the decoder output, std ``likelihood_scale`` (the paper's 3DShapes and SVHN
        model). "auto": "bernoulli" when every input lies in [0, 1], else "gaussian".
    likelihood_scale : float, default 0.3
        Standard deviation of the Gaussian likelihoods.
    posterior : {"exact", "mc"}, default "exact"
        q(c_j|x) in closed form, or the paper's code's one-sample estimate.
    epochs : int, default 100
        Passes over the data (with ``max_seconds``: at most this many).
    batch_size : int, default 128
        Examples per Adam step.
    lr : float, default 5e-4
        Adam's step size (constant).
    max_seconds : float or None, default None
        A wall-clock budget for ``fit``, set-up and the mixture fits included: the progressive
        schedule is laid over the time instead of the mini-batches, and training stops at the
        deadline or after ``epochs``, whichever comes first. Timed runs are not reproducible to
        the bit: where stages switch depends on the machine's speed.
    progressive : bool, default True
        Train the facets one at a time, top first, each faded in (else all at once).
    stage_epochs : tuple of int or None, default None
        Epochs per stage; None: equal stages. A sum other than ``epochs`` stretches or squeezes
        the schedule (``fade_steps`` included) to the run's length.
    fade_steps : int or None, default None
        Fade-in length in mini-batches; None: half a stage.
    free_bits : float, default 2.0
        KL (nats, per facet and example) below which a facet is not pulled towards its prior
        during training, which keeps lower facets from collapsing (0: the paper's objective).
        Where extra information buys little reconstruction (few features), a facet's KL settles
        at this floor, so it is also how much a facet may carry.
    reseed_dead : bool, default True
        As every epoch after the first starts, re-seed the clusters of switched-on facets that
        are the most probable cluster for under a tenth of their fair share of 4096 inputs, by
        splitting the most used cluster.
    n_init : int, default 1
        Starts from different seeds (weights, mixture initialisation, shuffling), as scikit-learn's
        KMeans and GaussianMixture have them: each trains for a tenth of the run (whole epochs),
        and the one whose last epoch has the highest mean ELBO trains on to the end. The other
        starts' training comes out of the same ``epochs`` or ``max_seconds`` budget: under a
        time budget every start's share is planned ahead; with ``epochs`` the starts add
        (n_init - 1) tenths of a run.
    refit_at_end : bool, default True
        After training, fit every facet's mixture afresh (means, covariances and learned
        weights) to one draw from q(z_j|x) per input (at most 100,000 inputs), its EM started
        from a spectral cut of the inputs' 15-nearest-neighbour graph. ``history_`` ends
        before it, so ``score`` after ``fit`` differs a little from the last epoch's ELBO.
    weight_floor : float in [0, 1], default 0.0
        Share of each facet's prior mass spread evenly over its clusters: pi_jk >= weight_floor / K_j.
    merge_scale : float or None, default None
        Factor on each lower facet's decoder rung; None: the paper's (MLP 0.1, conv 1).
    precision : {"auto", "float32", "bfloat16"}, default "auto"
        The ladder networks' arithmetic (the heads and probability terms stay float32).
        "auto": bfloat16 on a CPU that computes it natively (AVX-512 BF16 or AMX), else float32.
    device : str, default "auto"
        "auto" (CUDA if present, else CPU), "cpu" or "cuda[:i]".
    compile : bool or "auto", default "auto"
        Train with the loss compiled by ``torch.compile`` (on a GPU with CUDA graphs). "auto":
        on a GPU that Triton serves, for runs long enough to repay the compile, falling back to
        eager training with a warning where compiling fails; never on a CPU.
    seed : int, default 0
        Same seed, same data, same machine: same clusters.
    verbose : bool, default True
        Report progress: a bar on a terminal, one line per epoch elsewhere.

    Attributes
    ----------
    model_ : MultiFacetVAE
        The trained network.
    labels_ : ndarray of shape (N, J)
        The training inputs' clusters, one column per facet.
    input_shape_ : tuple of int
        The shape of one example.
    n_features_in_ : int
        Numbers per example.
    history_ : list of dict
        Per-epoch training metrics.
    cluster_weights_ : list of J arrays (K_j,)
        The mixture weights pi_j.
    n_clusters_ : tuple of int
        The clusters of each facet, "auto" resolved.
    precision_, likelihood_ : str
        What "auto" settled on.
    """

    def __init__(
        self,
        *,
        n_clusters: tuple[int | str, ...] | int | str = (25, 25),
        max_clusters: int = 25,
        latent_dims: tuple[int, ...] = (5, 5),
        hidden_dims: tuple[int, ...] | None = None,
        architecture: str = "auto",
        covariance: str = "full",
        learn_weights: bool = True,
        likelihood: str = "auto",
        likelihood_scale: float = 0.3,
        posterior: str = "exact",
        epochs: int = 100,
        batch_size: int = 128,
        lr: float = 5e-4,
        max_seconds: float | None = None,
        progressive: bool = True,
        stage_epochs: tuple[int, ...] | None = None,
        fade_steps: int | None = None,
        free_bits: float = 2.0,
        reseed_dead: bool = True,
        n_init: int = 1,
        refit_at_end: bool = True,
        weight_floor: float = 0.0,
        merge_scale: float | None = None,
        precision: str = "auto",
        device: str = "auto",
        compile: bool | str = "auto",
        seed: int = 0,
        verbose: bool = True,
    ):
        self.n_clusters = n_clusters
        self.max_clusters = max_clusters
        self.latent_dims = latent_dims
        self.hidden_dims = hidden_dims
        self.architecture = architecture
        self.covariance = covariance
        self.learn_weights = learn_weights
        self.likelihood = likelihood
        self.likelihood_scale = likelihood_scale
        self.posterior = posterior
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.max_seconds = max_seconds
        self.progressive = progressive
        self.stage_epochs = stage_epochs
        self.fade_steps = fade_steps
        self.free_bits = free_bits
        self.reseed_dead = reseed_dead
        self.n_init = n_init
        self.refit_at_end = refit_at_end
        self.weight_floor = weight_floor
        self.merge_scale = merge_scale
        self.precision = precision
        self.device = device
        self.compile = compile
        self.seed = seed
        self.verbose = verbose

    # --- configuration -------------------------------------------------------------
    def _facet_sizes(self) -> tuple[tuple[int | str, ...], tuple[int, ...]]:
        """(n_clusters, latent_dims), one entry per facet; n_clusters entries are ints or "auto"."""
        n_clusters = (self.n_clusters,) if isinstance(self.n_clusters, str) else _as_tuple("n_clusters", self.n_clusters)
        latent_dims = _as_tuple("latent_dims", self.latent_dims)
        one_value = is_int(self.n_clusters) or isinstance(self.n_clusters, str)
        if one_value != is_int(self.latent_dims):  # one value for every facet
            n_clusters, latent_dims = (t * max(len(n_clusters), len(latent_dims)) if len(t) == 1 else t
                                       for t in (n_clusters, latent_dims))
        if len(n_clusters) != len(latent_dims):
            raise ValueError(f"n_clusters and latent_dims need one entry per facet each; got {len(n_clusters)} and "
                             f"{len(latent_dims)} ({self.n_clusters!r} vs {self.latent_dims!r})")
        if any(isinstance(k, str) and k != "auto" for k in n_clusters):
            raise ValueError(f"n_clusters entries must be positive integers or 'auto', got {self.n_clusters!r}")
        if "auto" in n_clusters and not (is_int(self.max_clusters) and self.max_clusters >= 1):
            raise ValueError(f"max_clusters must be a positive integer, got {self.max_clusters!r}")
        return n_clusters, latent_dims

    def _auto_facets(self) -> tuple[int, ...]:
        """The facets whose number of clusters the end refit chooses."""
        return tuple(j for j, k in enumerate(self._facet_sizes()[0]) if k == "auto")

    def _model_config(self, input_shape: tuple[int, ...], precision: str, likelihood: str,
                      n_clusters: tuple[int, ...] | None = None) -> ModelConfig:
        """The network for inputs of ``input_shape``, with ``precision`` and ``likelihood`` resolved;
        ``n_clusters``: the counts of a fitted model (default: "auto" facets at ``max_clusters``)."""
        asked, latent_dims = self._facet_sizes()
        if n_clusters is None:
            n_clusters = tuple(self.max_clusters if k == "auto" else k for k in asked)
        elif len(n_clusters) != len(asked) or any(k != a if a != "auto" else not 1 <= k <= self.max_clusters
                                                  for k, a in zip(n_clusters, asked)):
            raise ValueError(f"{n_clusters} clusters per facet cannot come from n_clusters={self.n_clusters!r} "
                             f"(max_clusters={self.max_clusters!r})")
        input_shape = tuple(int(s) for s in input_shape)
        architecture = self._architecture(input_shape, len(n_clusters))
        if self.hidden_dims is not None:
            hidden_dims = _as_tuple("hidden_dims", self.hidden_dims)
        elif architecture == "conv":
            hidden_dims = tuple(64 * 2**j for j in range(len(n_clusters)))
        else:
            hidden_dims = tuple(int(w) for w in np.geomspace(500, 2000, len(n_clusters)).round()) \
                if len(n_clusters) > 1 else (500,)
        return ModelConfig(
            input_shape=input_shape, n_clusters=n_clusters, latent_dims=latent_dims, hidden_dims=hidden_dims,
            architecture=architecture, covariance=self.covariance, learn_weights=self.learn_weights,
            weight_floor=self.weight_floor, likelihood=likelihood, likelihood_scale=self.likelihood_scale,
            posterior=self.posterior, precision=precision,
            merge_scale=PAPER_MERGE_SCALE[architecture] if self.merge_scale is None else self.merge_scale,
        )

    def _architecture(self, input_shape: tuple[int, ...], n_facets: int) -> str:
        if self.architecture == "auto":
            return "conv" if input_shape[:1] == (3,) and conv_ladder_fits(input_shape, n_facets) else "mlp"
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {('auto', *ARCHITECTURES)}, got {self.architecture!r}")
        return self.architecture

    def _train_config(self, n_facets: int) -> TrainConfig:
        stage_epochs = None if self.stage_epochs is None else _as_tuple("stage_epochs", self.stage_epochs)
        if stage_epochs is not None:
            check_positive_ints("stage_epochs", stage_epochs, n_facets)
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, max_seconds=self.max_seconds,
            progressive=self.progressive, stage_epochs=stage_epochs, fade_steps=self.fade_steps,
            free_bits=self.free_bits, reseed_dead=self.reseed_dead, refit_at_end=self.refit_at_end,
            select_clusters=self._auto_facets(), n_init=self.n_init, seed=self.seed, compile=self.compile,
        )

    def _resolve_likelihood(self, x: torch.Tensor) -> str:
        """The likelihood for training inputs ``x`` ("auto" resolved); bounded ones need x in [0, 1]."""
        if self.likelihood not in ("auto", *LIKELIHOODS):
            raise ValueError(f"likelihood must be one of {('auto', *LIKELIHOODS)}, got {self.likelihood!r}")
        within = _within_unit_interval(x)
        if self.likelihood == "auto":
            return "bernoulli" if within else "gaussian"
        if self.likelihood in BOUNDED_LIKELIHOODS and not within:
            _refuse_range(x, self.likelihood)
        return self.likelihood

    # --- training ------------------------------------------------------------------
    def fit(self, X, y=None, *, run_dir: str | Path | RunFolder | None = None, resume: bool = False) -> "MFCVAE":
        """Train on X; ``y`` is ignored (unsupervised).

        With ``run_dir``, per-epoch metrics (metrics.csv, TensorBoard), a checkpoint at every
        epoch boundary (and at a Ctrl-C) and the final model are written there; an older run's
        files in it are removed when this run first writes. ``resume=True`` continues from the
        checkpoint; a larger ``epochs`` lengthens the last stage of the progressive schedule.
        Every parameter and X are checked before anything is trained or written.

        Under torchrun every process calls ``fit`` with the same X and trains data-parallel:
        each optimiser step takes ``batch_size`` examples per process, only rank 0 writes to
        ``run_dir``, and every process ends with the same model. When torchrun restarts the
        processes after a failure, a run folder whose checkpoint this launch wrote is resumed.
        """
        started = time.perf_counter()  # a max_seconds budget counts from here
        x = as_tensor(X)
        if len(x) < 2:  # a mixture fit needs two points even for one cluster
            raise ValueError("X has 1 sample: fit needs at least 2 samples")
        if not (isinstance(self.verbose, (bool, np.bool_)) or (is_int(self.verbose) and self.verbose >= 0)):
            raise ValueError(f"verbose must be true or false, got {self.verbose!r}")
        device = distributed.join(resolve_device(self.device))
        if resume and run_dir is None:
            raise ValueError("resume=True needs the run_dir holding the checkpoint")
        run = run_dir if isinstance(run_dir, RunFolder) or run_dir is None else RunFolder(run_dir)
        resume = resume or (run is not None and run.written_by_this_launch())
        # a resumed run keeps the arithmetic it started in, whatever "auto" picks here
        precision = self._check_resumable(run) if resume else resolve_precision(self.precision, device)
        likelihood = self._resolve_likelihood(x)
        model_cfg = self._model_config(tuple(x.shape[1:]), precision, likelihood)
        train_cfg = self._train_config(model_cfg.n_facets)
        if len(x) < max(model_cfg.n_clusters):
            raise ValueError(f"X has {len(x)} samples, fewer than the {max(model_cfg.n_clusters)} clusters asked for")
        if len(x) < 2 * distributed.world_size():
            raise ValueError(f"X has {len(x)} samples: {distributed.world_size()} processes need at least two each")
        warn_if_emulated(precision, device)

        callbacks: list[Callback] = []
        if distributed.is_main():  # the other ranks neither print nor write
            callbacks += [Progress()] if self.verbose else []
            callbacks += [MetricsCSV(run), TensorBoard(run)] if run is not None else []
        with seeded(self.seed, device), distributed.explain_failures():
            model = MultiFacetVAE(model_cfg).to(device)
            if likelihood == "gaussian":
                model.set_input_scaling(*input_moments(x))
            history = train(model, x, train_cfg, device, run=run, resume=resume, callbacks=callbacks,
                            metadata=_jsonable(self.get_params()), started=started)
        self.model_, self.input_shape_, self.history_ = model.eval(), tuple(x.shape[1:]), history
        self.n_features_in_ = int(np.prod(self.input_shape_))
        self.labels_ = self._predict(x, shared=True)
        if run is not None and distributed.is_main():
            self.save(run.path)
        distributed.barrier()  # the model is written before any rank goes on
        return self

    def _check_resumable(self, run: RunFolder) -> str:
        """Refuse a checkpoint whose parameters differ from this estimator's; return the precision
        its run trains in."""
        meta = run.read_checkpoint()[1]
        saved, mine = meta["estimator"], _jsonable(self.get_params())
        changed = sorted(k for k in saved.keys() | mine.keys()
                         if k not in RESUMABLE_CHANGES and _jsonable(saved.get(k)) != mine.get(k))
        if changed:
            raise ValueError(f"cannot resume {run.checkpoint}: these parameters differ from the checkpoint's: {changed}")
        return meta["precision"]

    # --- inference -----------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this MFCVAE is not fitted yet: call fit(X) or MFCVAE.load(path) first")

    def _inputs(self, X, name: str = "X") -> torch.Tensor:
        self._check_fitted()
        x = as_tensor(X, name=name, input_shape=self.input_shape_)
        if self.likelihood_ in BOUNDED_LIKELIHOODS and not _within_unit_interval(x):
            _refuse_range(x, self.likelihood_, name)
        return x

    @property
    def _device(self) -> torch.device:
        return next(self.model_.parameters()).device

    def _map(self, fn, x: torch.Tensor, shared: bool = False) -> list[np.ndarray]:
        """``fn`` over ``x`` batch by batch; ``shared``: every rank of a data-parallel run maps its
        share of the same ``x`` and gets all of the outputs."""
        with torch.no_grad():
            mapped = (distributed.map_shards if shared else map_batches)(fn, x, PREDICT_BATCH, self._device)
        return [t.numpy() for t in mapped]

    def _predict_proba(self, x: torch.Tensor, shared: bool = False) -> list[np.ndarray]:
        return self._map(lambda xb: [lq.exp() for lq in self.model_.cluster_log_posteriors(xb)], x, shared)

    def _predict(self, x: torch.Tensor, shared: bool = False) -> np.ndarray:
        assigned = self._map(lambda xb: [lq.argmax(1) for lq in self.model_.cluster_log_posteriors(xb)], x, shared)
        return np.stack(assigned, axis=1).astype(np.int64)

    def predict_proba(self, X) -> list[np.ndarray]:
        """q(c_j | x) for every facet: a list of J arrays (N, K_j) whose rows sum to 1."""
        return self._predict_proba(self._inputs(X))

    def predict(self, X) -> np.ndarray:
        """Cluster ids, shape (N, J): argmax_k q(c_j = k | x) per facet, z at the posterior mean."""
        return self._predict(self._inputs(X))

    def _latent_means(self, x: torch.Tensor) -> list[np.ndarray]:
        return self._map(lambda xb: [m for m, _ in self.model_.encode(xb)], x)

    def transform_facets(self, X) -> list[np.ndarray]:
        """Posterior means of z_j: a list of J arrays (N, d_j)."""
        return self._latent_means(self._inputs(X))

    def transform(self, X) -> np.ndarray:
        """Posterior means of every facet's latent side by side, shape (N, sum_j d_j): columns
        sum(d_0..d_{j-1}) to sum(d_0..d_j) hold facet j (``get_feature_names_out`` names them)."""
        return np.concatenate(self.transform_facets(X), axis=1)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of ``transform``'s columns: "facet{j}_z{i}"."""
        self._check_fitted()
        return np.array([f"facet{j}_z{i}" for j, d in enumerate(self.model_.cfg.latent_dims) for i in range(d)],
                        dtype=object)

    def _decode_mean(self, zs: list[torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return self.model_.decode_mean([z.to(self._device) for z in zs]).cpu().numpy()

    def reconstruct(self, X) -> np.ndarray:
        """Decode the posterior means: an array shaped like X, in X's units."""
        x = self._inputs(X)
        out = self._map(lambda xb: [self.model_.decode_mean([m for m, _ in self.model_.encode(xb)])], x)[0]
        return out.reshape(_shape_of(X))

    def compose(self, X_a, X_b, facet: int) -> np.ndarray:
        """X_a with facet ``facet``'s latent taken from X_b (row by row), decoded."""
        a, b = self._inputs(X_a, "X_a"), self._inputs(X_b, "X_b")
        if len(a) != len(b):
            raise ValueError(f"X_a and X_b must have the same number of samples, got {len(a)} and {len(b)}")
        self._check_facet(facet)
        za = self._latent_means(a)
        za[facet] = self._latent_means(b)[facet]
        parts = [self._decode_mean([torch.from_numpy(z[i:i + PREDICT_BATCH]) for z in za])
                 for i in range(0, len(a), PREDICT_BATCH)]
        return np.concatenate(parts).reshape(_shape_of(X_a))

    def sample(self, n: int, facet: int | None = None, cluster: int | None = None,
               temperature: float = 1.0, seed: int | None = None) -> np.ndarray:
        """n new inputs, shape (n, *input_shape_): every facet drawn from its prior at
        ``temperature``, facet ``facet`` from its cluster ``cluster`` (controlled generation)."""
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
            return self._decode_mean(self.model_.sample_latents(n, facet, cluster, temperature, generator))

    def score(self, X, y=None) -> float:
        """Mean ELBO per example (one reparameterised sample, seeded, so repeatable); ``y`` is ignored."""
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
        """The networks' arithmetic, "float32" or "bfloat16"."""
        self._check_fitted()
        return self.model_.cfg.precision

    @property
    def likelihood_(self) -> str:
        """The likelihood trained with ("auto" resolved)."""
        self._check_fitted()
        return self.model_.cfg.likelihood

    @property
    def n_clusters_(self) -> tuple[int, ...]:
        """The clusters of each facet ("auto" resolved by the end refit)."""
        self._check_fitted()
        return self.model_.cfg.n_clusters

    @property
    def cluster_weights_(self) -> list[np.ndarray]:
        """The mixture weights pi_j: a list of J arrays (K_j,)."""
        self._check_fitted()
        return [p.log_weights.exp().detach().cpu().numpy() for p in self.model_.priors]

    def _check_facet(self, facet: int) -> None:
        if not (is_int(facet) and 0 <= facet < self.model_.n_facets):
            raise ValueError(f"facet must be an integer in [0, {self.model_.n_facets}), got {facet!r}")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.device != "cpu"  # CUDA kernels need not repeat bit for bit
        return tags

    # --- persistence ---------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``path/model.safetensors`` (weights) and ``path/config.json`` (everything else)."""
        self._check_fitted()
        config = {"format": "mfcvae", "version": FORMAT_VERSION, "params": _jsonable(self.get_params()),
                  "input_shape": list(self.input_shape_), "n_clusters": list(self.n_clusters_),
                  "precision": self.precision_, "likelihood": self.likelihood_, "history": self.history_}
        write_model_dir(Path(path), self.model_.state_dict(), config)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "MFCVAE":
        """Load a model written by ``save`` (or a ``fit(run_dir=...)`` / ``mfcvae fit --out`` folder)."""
        state, config = read_model_dir(Path(path))
        if config.get("format") != "mfcvae":
            raise ValueError(f"{Path(path) / CONFIG_FILE} is not an mfcvae model config")
        if config.get("version") != FORMAT_VERSION:
            raise ValueError(f"{Path(path)} holds a model of format version {config.get('version')}; this mfcvae "
                             f"reads version {FORMAT_VERSION}: fit it again with this version")
        est = cls(**{**config["params"], "device": device})
        n_clusters = config.get("n_clusters")  # older files: none chosen, every count as asked
        model = MultiFacetVAE(est._model_config(tuple(config["input_shape"]), config["precision"],
                                                config["likelihood"], n_clusters and tuple(n_clusters)))
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


def _within_unit_interval(x: torch.Tensor) -> bool:
    """Whether stored inputs lie in [0, 1] (uint8 images always do: they are read as value / 255)."""
    if x.dtype == torch.uint8:
        return True
    low, high = value_range(x)
    return bool(low >= 0 and high <= 1)


def _refuse_range(x: torch.Tensor, likelihood: str, name: str = "X") -> None:
    low, high = value_range(x)
    hint = " (images stored as 0..255? divide by 255)" if high > 1 and low >= 0 else ""
    raise ValueError(f"{name} has values in [{low:g}, {high:g}] but likelihood={likelihood!r} needs them in [0, 1]"
                     f"{hint}; likelihood='gaussian' (or 'auto') models real-valued features")


def _shape_of(X) -> tuple[int, ...]:
    """The shape of validated inputs X as the caller gave them (a Dataset: its stored shape)."""
    return tuple(X.x.shape) if isinstance(X, Dataset) else tuple(np.shape(X))


def _as_tuple(name: str, value) -> tuple:
    if is_int(value):
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
