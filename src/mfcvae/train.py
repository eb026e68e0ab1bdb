"""Training: ``train`` runs the whole procedure, ``Trainer`` the loop of epochs and mini-batches.

    train(model, x, cfg, ...)
      initialise_priors            the paper's mixture initialisation (mixtures.py)
      best_start                   with n_init > 1: that many short starts, the best by ELBO goes on
      Trainer.run                  epochs until cfg.epochs or the time budget:
        between epochs               re-seed dead clusters (reseed_dead)
        every mini-batch             schedule weights -> loss -> Adam step -> callbacks
        every epoch                  history row -> callbacks (progress, metrics.csv, TensorBoard)
                                     -> checkpoint in the run folder
      refit_priors                 the end refit (refit_at_end), else fresh batch-norm statistics

``Trainer`` owns everything that changes while a model trains (optimiser, counters, RNG,
history, budget) and writes all of it to one checkpoint, so a resumed run continues exactly.

Data-parallel (under torchrun), every rank runs this same procedure: each optimiser step takes
one global mini-batch of ``batch_size`` examples per rank from the epoch's shared shuffled
order, DistributedDataParallel averages the gradients, and one small all-reduce per step sums
the ELBO terms and makes the ranks agree on the clock and on a Ctrl-C. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .batches import epoch_order, part, step_bounds, to_model_input
from .budget import TimeBudget
from .callbacks import Callback
from .config import TrainConfig
from .mixtures import GMM_MAX_POINTS, REFIT_MAX_POINTS, SPECTRAL_COST_RATIO, cluster_candidates, \
    initialise_priors, recalibrate_batch_norm, refit_priors, reseed_dead_clusters
from .model import MultiFacetVAE
from .runs import RunFolder
from .runtime import compile_mode
from .schedule import ProgressiveSchedule
from .serialization import optimizer_from_tensors, optimizer_to_tensors

START_SHARE = 0.1  # the share of the run each of n_init starts trains before the best one goes on
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
    return loss, torch.cat([totals, *per_facet]).detach()


class BatchLoss(nn.Module):
    """``batch_loss`` as a module, the form DistributedDataParallel and torch.compile wrap."""

    def __init__(self, model: MultiFacetVAE, free_bits: float):
        super().__init__()
        self.model, self.free_bits = model, free_bits

    def forward(self, xb: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_loss(self.model, xb, weights, self.free_bits)


def data_fingerprint(x: torch.Tensor) -> str:
    """A cheap identity of a training set (its shape and 256 examples spread over it), so that
    a resumed run can tell it is given other data."""
    picks = torch.linspace(0, len(x) - 1, min(len(x), 256)).long()
    digest = hashlib.sha1(str((tuple(x.shape), x.dtype)).encode())
    digest.update(x[picks].contiguous().numpy().tobytes())
    return digest.hexdigest()


def adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel (CPU and CUDA): the same update in one pass over the weights."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def train(model: MultiFacetVAE, x: torch.Tensor, cfg: TrainConfig, device: torch.device, *,
          run: RunFolder | None = None, resume: bool = False, callbacks: Sequence[Callback] = (),
          metadata: dict | None = None, started: float | None = None) -> list[dict]:
    """Train ``model`` on ``x`` (stored inputs, uint8 or float32) and return the per-epoch history.

    ``run``: the folder for checkpoints (every epoch, and at a Ctrl-C); ``resume``: continue from
    its checkpoint. ``metadata`` (the estimator's parameters) is stored in every checkpoint.
    ``started``: the ``time.perf_counter()`` reading the time budget counts from (default: now).
    """
    budget = TimeBudget(cfg.max_seconds, started)
    starts = cfg.n_init > 1 and not resume  # the run folder and callbacks go to the chosen start
    trainer = Trainer(model, cfg, len(x), device, budget, run=None if starts else run,
                      callbacks=() if starts else callbacks, metadata=metadata, data_id=data_fingerprint(x))
    if resume:
        trainer.load_state(*run.read_checkpoint())
        run.adopt()
    else:
        fit_started = time.perf_counter()
        initialise_priors(model, x, cfg.batch_size, cfg.seed, device)
        initial_fit = time.perf_counter() - fit_started
        candidates = sum(len(cluster_candidates(model.priors[j].n_clusters)) for j in cfg.select_clusters)
        reserve = refit_cost(initial_fit, len(x), candidates / model.n_facets) if cfg.refit_at_end else 0.0
        budget.plan_loop(reserve=reserve + (cfg.n_init - 1) * initial_fit)  # the other starts' initial fits
        if budget.limited:  # every rank takes rank 0's plan, shared by the starts' loops
            loop = float(distributed.broadcast_value(torch.tensor(budget.loop_seconds)))
            budget.loop_seconds = loop / (1 + (cfg.n_init - 1) * START_SHARE)
        if distributed.rank() > 0:  # the other ranks draw their own noise for the reparameterisation
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, distributed.rank()]).generate_state(1)[0]))
        if starts:
            trainer = best_start(trainer, x, cfg, device, callbacks)
            trainer.attach(run, callbacks)
    trainer.run(x)
    if trainer.model is not model:  # another start was chosen: the caller's model takes its weights
        model.load_state_dict(trainer.model.state_dict())
    if cfg.refit_at_end:
        refit_priors(model, x, cfg.batch_size, cfg.seed, device, select=cfg.select_clusters)
    else:
        recalibrate_batch_norm(model, x, cfg.batch_size, device, cfg.seed)
    return trainer.history


def best_start(first: "Trainer", x: torch.Tensor, cfg: TrainConfig, device: torch.device,
               callbacks: Sequence[Callback] = ()) -> "Trainer":
    """``cfg.n_init`` starts, ``first`` and others from seeds drawn from ``cfg.seed`` (weights,
    mixture initialisation, shuffling), each trained for START_SHARE of the run (whole epochs); the
    one whose last epoch has the highest mean ELBO is returned to train on. ``callbacks`` hear of
    each start's ELBO."""
    until = max(1, round(START_SHARE * first.total_steps))
    seeds = np.random.SeedSequence(cfg.seed).generate_state(cfg.n_init - 1)
    best: tuple[float, Trainer] | None = None
    for i in range(cfg.n_init):
        trainer = first if i == 0 else first.another_start(int(seeds[i - 1]) % 2**31, x)
        trainer.run(x, until=until)
        elbo = trainer.history[-1]["elbo"]  # agreed by every rank of a data-parallel run
        for callback in callbacks:
            callback.message(f"start {i + 1} of {cfg.n_init}: ELBO {elbo:.2f} after {trainer.epoch} epoch(s)")
        if best is None or elbo > best[0]:
            best = (elbo, trainer)
    return best[1]


def refit_cost(initial_fit_seconds: float, n: int, candidate_fits: float = 0.0) -> float:
    """The seconds the end refit is expected to take, from the initial fit's: it encodes and fits
    more inputs, and its spectral start costs a multiple of the initial fit besides. Choosing
    numbers of clusters adds ``candidate_fits`` mixtures, counted in initial fits (a candidate
    costs about what the initial fit spends on one facet)."""
    return initial_fit_seconds * (min(n, REFIT_MAX_POINTS) / min(n, GMM_MAX_POINTS) + SPECTRAL_COST_RATIO
                                  + candidate_fits)


@dataclasses.dataclass
class EpochProgress:
    """Where the current epoch stands, so that a checkpoint can be taken in the middle of it."""

    order: torch.Tensor  # this epoch's shuffled example indices
    done: int = 0  # mini-batches of it already trained
    sums: dict[str, float] = dataclasses.field(default_factory=dict)  # running ELBO-term sums
    seconds: float = 0.0
    reseeded: dict[str, int] = dataclasses.field(default_factory=dict)  # reseed_dead's work as it began


class Trainer:
    def __init__(self, model: MultiFacetVAE, cfg: TrainConfig, n_samples: int, device: torch.device,
                 budget: TimeBudget, *, run: RunFolder | None = None, callbacks: Sequence[Callback] = (),
                 metadata: dict | None = None, data_id: str = ""):
        self.model, self.cfg, self.device, self.budget, self.run_folder = model, cfg, device, budget, run
        self.n_samples = n_samples
        self.callbacks = list(callbacks)
        self.metadata = metadata or {}  # stored in every checkpoint
        self.data_id = data_id  # the training data's fingerprint, checked on resume
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.steps_per_epoch = len(step_bounds(n_samples, cfg.batch_size, self.world_size))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.schedule = ProgressiveSchedule.from_config(cfg, model.n_facets, self.steps_per_epoch)
        self.optimizer = adam(model, cfg.lr)
        self._sum_names = sum_names(model.n_facets)
        self.loss: nn.Module = BatchLoss(model, cfg.free_bits)
        if self.world_size > 1:  # one process has no gradients to average: DDP would only copy them
            self.loss = DistributedDataParallel(self.loss, device_ids=[device.index] if device.type == "cuda" else None)
        mode = compile_mode(cfg.compile, device, self.total_steps, cfg.max_seconds, self.world_size > 1)
        self._compiled_loss = None if mode is None else torch.compile(self.loss, mode=mode)
        self._compile_pending = mode is not None  # until the first compiled step, which compiles
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.step, self.history = 0, 0, []
        self.progress: EpochProgress | None = None  # set while an epoch is under way
        self._ctrl_c = False  # this process was sent Ctrl-C
        self._any_ctrl_c = False  # data-parallel: a rank was, as of the last step's all-reduce
        self._clock = budget.elapsed  # loop seconds spent, as the ranks agreed at the last step
        self._saved_step: int | None = None  # the step of the checkpoint last written

    # --- where the run stands ------------------------------------------------------
    @property
    def position(self) -> int:
        """How far through the run we are, in mini-batches of the planned ``epochs``: the step,
        or with a time budget the share of it spent, whichever is further. The progressive
        schedule follows it, so under a budget every stage gets its share of the time."""
        fraction = self.budget.fraction(self._clock if self.world_size > 1 else None)
        return self.step if fraction is None else max(self.step, int(fraction * self.total_steps))

    @property
    def _stopping(self) -> bool:
        """Whether a Ctrl-C asks every rank to stop after the current mini-batch."""
        return self._ctrl_c if self.world_size == 1 else self._any_ctrl_c

    @property
    def finished(self) -> bool:
        return self.step > 0 and self.position >= self.total_steps

    # --- the starts of n_init ------------------------------------------------------
    def another_start(self, seed: int, x: torch.Tensor) -> "Trainer":
        """A fresh start of this run from ``seed``: new weights (the input scaling kept), a mixture
        initialisation and a shuffle order drawn from it; its own copy of the time budget, no run
        folder or callbacks."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            model = MultiFacetVAE(self.model.cfg).to(self.device)
        model.input_shift.copy_(self.model.input_shift)
        model.input_scale.copy_(self.model.input_scale)
        initialise_priors(model, x, self.cfg.batch_size, seed, self.device)
        trainer = Trainer(model, self.cfg, self.n_samples, self.device, self.budget.fresh(), metadata=self.metadata,
                          data_id=self.data_id)
        trainer.shuffle.manual_seed(seed)  # its state goes into checkpoints, so a resumed run goes on alike
        return trainer

    def attach(self, run: RunFolder | None, callbacks: Sequence[Callback]) -> None:
        """Give the chosen start the run folder and the callbacks, which hear of its epochs so far."""
        self.run_folder, self.callbacks = run, list(callbacks)
        for row in self.history:
            self._notify("on_epoch_end", row)

    # --- the loop ------------------------------------------------------------------
    def run(self, x: torch.Tensor, until: int | None = None) -> list[dict]:
        """Train until ``cfg.epochs`` epochs are done or the time budget is spent, or with ``until``
        to the first epoch's end at or past that position; returns the per-epoch history (a run
        stopped by its deadline ends with a partial epoch).

        Ctrl-C finishes the mini-batch in flight, writes a checkpoint of exactly that point
        (with a run folder) and raises KeyboardInterrupt, whose message says what there is to
        resume; a second Ctrl-C stops at once.
        """
        self.budget.start()
        self._notify("on_train_begin")
        try:
            with self._deferred_ctrl_c():
                while not self.finished and (until is None or self.position < until):
                    row = self._train_epoch(x)
                    self.epoch += 1
                    self.history.append(row)
                    self._notify("on_epoch_end", row)
                    self._save_checkpoint()
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            # no gradients left behind: compiled on a GPU they live in the CUDA graphs' memory,
            # which the next compiled run in this process overwrites
            self.optimizer.zero_grad(set_to_none=True)
            self.budget.pause()
            self._notify("on_train_end")
        return self.history

    def _train_epoch(self, x: torch.Tensor) -> dict:
        if self.progress is None:  # a fresh epoch (a checkpoint may hold one under way)
            reseeded = self._reseed_dead(x)
            self.progress = EpochProgress(epoch_order(x, self.shuffle), reseeded=reseeded)
        progress, start = self.progress, time.perf_counter()
        for lo, hi in step_bounds(len(x), self.cfg.batch_size, self.world_size)[progress.done:]:
            mine = progress.order[lo:hi][part(hi - lo, self.world_size, self.rank)]
            self._train_step(to_model_input(x[mine], self.device))
            self._notify("on_batch_end", progress.sums)
            if self._stopping:
                progress.seconds += time.perf_counter() - start
                raise KeyboardInterrupt
            if self.finished:  # the deadline (an epoch's last mini-batch ends the run anyway)
                break
        n = progress.sums["n"]
        row = {k: v / n for k, v in progress.sums.items() if k != "n"}
        row.update(epoch=self.epoch + 1, step=self.step, seconds=progress.seconds + time.perf_counter() - start)
        row.update(progress.reseeded)
        row.update({f"weight_{j}": w for j, w in enumerate(self.schedule.weights(self.position).tolist())})
        self.progress = None
        distributed.broadcast_state(self.model, buffers_only=True)  # batch-norm statistics: rank 0's
        return row

    def _train_step(self, xb: torch.Tensor) -> None:
        """One Adam step on mini-batch ``xb``, the global batch's ELBO terms added to the epoch's sums."""
        self.loss.train()
        loss, device_sums = self._batch_loss(xb, self.schedule.weights(self.position).to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sums, n = self._agree(device_sums, len(xb))  # read once backward is queued: the device works meanwhile
        if not math.isfinite(sums[0]):
            raise FloatingPointError(f"the loss became {sums[0] / n} at epoch {self.epoch + 1}, step "
                                     f"{self.step}; try a smaller lr or check the inputs")
        self.optimizer.step()
        self.step += 1
        progress = self.progress
        progress.done += 1
        for name, value in zip(self._sum_names, sums, strict=True):
            progress.sums[name] = progress.sums.get(name, 0.0) + value
        progress.sums["n"] = progress.sums.get("n", 0) + n

    def _agree(self, device_sums: torch.Tensor, n: int) -> tuple[list[float], int]:
        """The step's ELBO-term sums and example count over every rank, read to the CPU. Data-
        parallel, the same all-reduce gives every rank rank 0's clock and any rank's Ctrl-C."""
        if self.world_size == 1:
            return device_sums.tolist(), n
        extra = torch.tensor([n, self._ctrl_c, self.budget.spent() if self.rank == 0 else 0.0],
                             dtype=torch.float64, device=device_sums.device)
        totals = distributed.all_reduce_sum(torch.cat([device_sums.double(), extra])).tolist()
        *sums, n, stops, self._clock = totals
        self._any_ctrl_c = stops > 0
        return sums, int(n)

    def _batch_loss(self, xb: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_loss``, compiled for mini-batches of ``batch_size`` when training compiles (an
        epoch's last one, of another size, runs eagerly rather than compile a second graph).
        With compile="auto", a first compile that fails warns and leaves training eager."""
        if self._compiled_loss is None or len(xb) != self.cfg.batch_size:
            return self.loss(xb, weights)
        if self._compile_pending:
            self._message("compiling the loss")
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are spent
        try:
            out = self._compiled_loss(xb, weights)
        except Exception as err:
            if not (self._compile_pending and self.cfg.compile == "auto"):
                raise
            warnings.warn(f"compile='auto': torch.compile failed ({type(err).__name__}: {err}); training "
                          "eagerly (compile=False skips the attempt)", RuntimeWarning, stacklevel=2)
            self._compiled_loss = None
            out = self.loss(xb, weights)
        self._compile_pending = False
        return out

    def _reseed_dead(self, x: torch.Tensor) -> dict[str, int]:
        """With ``reseed_dead``, as an epoch after the first starts: re-seed the dead clusters of
        the facets switched on; the count per facet goes into the epoch's row."""
        if not self.cfg.reseed_dead:
            return {}
        weights = self.schedule.weights(self.position).tolist()
        facets = [j for j, w in enumerate(weights) if w > 0] if self.epoch > 0 else []
        counts = dict.fromkeys(range(self.model.n_facets), 0)
        if facets:
            rng = np.random.default_rng([self.cfg.seed, self.epoch])
            counts.update(zip(facets, reseed_dead_clusters(self.model, x, facets, self.cfg.batch_size, rng,
                                                           self.device)))
        return {f"reseeded_{j}": n for j, n in counts.items()}

    # --- callbacks and Ctrl-C ------------------------------------------------------
    def _notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def _message(self, text: str) -> None:
        for callback in self.callbacks:
            callback.message(text)

    @contextlib.contextmanager
    def _deferred_ctrl_c(self) -> Iterator[None]:
        """Turn the first SIGINT into a request to stop after the current mini-batch."""
        self._ctrl_c = False
        if threading.current_thread() is not threading.main_thread():  # signals need the main thread
            yield
            return

        def request_stop(signum, frame):
            self._ctrl_c = True
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts right away
            self._message("Ctrl-C: stopping after this mini-batch (press again to stop at once)")

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _interrupted(self) -> KeyboardInterrupt:
        """The KeyboardInterrupt to raise after a Ctrl-C, saying what there is to resume. Only a
        deferred Ctrl-C stops between mini-batches, where the state is consistent enough to save."""
        if self.run_folder is None:
            return KeyboardInterrupt()
        if self._stopping:
            self._save_checkpoint()
        if self._saved_step is None:
            older = f" (the checkpoint in {self.run_folder.path} is an earlier run's)" \
                if self.run_folder.checkpoint.exists() else ""
            return KeyboardInterrupt(f"interrupted before the first checkpoint: nothing to resume{older}")
        return KeyboardInterrupt(f"interrupted: {self.run_folder.checkpoint} holds step {self._saved_step}; "
                                 "fit again with resume=True to continue")

    # --- checkpoints ---------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        """Write the checkpoint (rank 0; every rank takes part, as each adds its RNG states)."""
        if self.run_folder is not None:
            state = self.state()
            if self.rank == 0:
                self.run_folder.write_checkpoint(*state)
            self._saved_step = self.step

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything a resumed run needs: (tensors, JSON metadata) for one safetensors file. The
        RNG states are every rank's, one row each."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim_tensors, optim_meta = optimizer_to_tensors(self.optimizer)
        tensors.update(optim_tensors)
        tensors["rng.torch"] = torch.stack(distributed.all_gather(torch.get_rng_state()))
        tensors["rng.shuffle"] = self.shuffle.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.stack(distributed.all_gather(torch.cuda.get_rng_state(self.device)))
        meta = {"epoch": self.epoch, "planned_epochs": self.cfg.epochs, "step": self.step, "history": self.history,
                "optimizer": optim_meta, "schedule": dataclasses.asdict(self.schedule), "estimator": self.metadata,
                "progress": None, "data": self.data_id, "budget": self.budget.state(),
                "precision": self.model.cfg.precision, "world_size": self.world_size, "launch": distributed.launch_id()}
        if self.progress is not None:  # a checkpoint in the middle of an epoch
            tensors["progress.order"] = self.progress.order
            meta["progress"] = {"done": self.progress.done, "sums": self.progress.sums,
                                "seconds": self.progress.seconds, "reseeded": self.progress.reseeded}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Continue from ``state()``'s output; refuses other data or an ``epochs`` the run cannot take."""
        if meta["data"] and self.data_id and meta["data"] != self.data_id:
            raise ValueError("cannot resume: the checkpoint was trained on other data (a resumed run must see the "
                             "same examples, in the same order)")
        if meta.get("world_size", 1) != self.world_size:
            raise ValueError(f"cannot resume: the checkpoint was trained by {meta.get('world_size', 1)} process(es) and "
                             f"this run has {self.world_size} (the global mini-batch would change); resume with "
                             f"{meta.get('world_size', 1)}")
        trained_for = meta["planned_epochs"]
        if self.cfg.epochs < meta["epoch"]:
            raise ValueError(f"epochs={self.cfg.epochs} is fewer than the {meta['epoch']} the checkpoint has done")
        if meta["budget"]["loop_seconds"] is not None and self.cfg.epochs != trained_for:
            raise ValueError(f"epochs cannot change on resume of a run with a time budget (max_seconds="
                             f"{self.cfg.max_seconds:g}): its progress is the share of the time spent, not of the "
                             f"epochs; resume with epochs={trained_for}")
        # The run keeps the schedule it started with: more epochs lengthen the last stage.
        saved = meta["schedule"]
        schedule = ProgressiveSchedule(saved["n_facets"], tuple(saved["stage_starts"]), saved["fade_steps"],
                                       saved["enabled"])
        if schedule.enabled and schedule.stage_starts[-1] >= self.total_steps:
            raise ValueError(f"epochs={self.cfg.epochs} ends before this run's last stage starts "
                             f"(epoch {schedule.stage_starts[-1] // self.steps_per_epoch + 1}); ask for more epochs")
        self.schedule = schedule
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        torch.set_rng_state(_rank_row(tensors["rng.torch"], self.rank))
        self.shuffle.set_state(tensors["rng.shuffle"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(_rank_row(tensors["rng.cuda"], self.rank), self.device)
        self.epoch, self.step, self.history = meta["epoch"], meta["step"], meta["history"]
        self._saved_step = self.step
        if meta["progress"] is not None:
            self.progress = EpochProgress(tensors["progress.order"], **meta["progress"])
        self.budget.load_state(meta["budget"])
        self._clock = self.budget.elapsed


def _rank_row(states: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's RNG state from a checkpoint's (ranks, bytes) rows (a single row: written by one process)."""
    return states[rank].clone() if states.ndim == 2 else states  # set_rng_state reads from the storage's start
