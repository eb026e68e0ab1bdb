"""Typed, validated configuration: what the network is (ModelConfig) and how it is
trained (TrainConfig), plus the YAML presets that fill in an estimator's parameters.

Validation lives here so that a wrong value fails with a message naming it before any
work starts.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .ladder import PAPER_MERGE_SCALE

PRESET_DIR = Path(__file__).parent / "presets"

COVARIANCES = ("diag", "full")
LIKELIHOODS = ("bernoulli", "gaussian")
POSTERIORS = ("exact", "mc")
ARCHITECTURES = ("mlp", "conv")
ACTIVATIONS = ("relu", "elu")
INITS = ("gmm", "random")
LR_SCHEDULES = ("constant", "cosine")
REFIT_STARTS = ("kmeans", "spectral")
PRECISIONS = ("float32", "bfloat16")


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: 1e-3 is a float (plain YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.\d*(?:[eE][-+]?\d+)?|\d[\d_]*[eE][-+]?\d+|\.\d+(?:[eE][-+]?\d+)?"
               r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> object:
    """Parse YAML; ``1e-3`` is a number and ``None`` means null, as a Python user expects."""
    value = yaml.load(text, Loader=_Loader)
    return None if value == "None" else value


def check_real(name: str, value: object, low: float | None = None, low_open: bool = False) -> None:
    """A finite real number (not a bool), at least (or, with ``low_open``, above) ``low``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if isinstance(value, str) or value not in (True, False):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def is_int(value: object) -> bool:
    """An integer, numpy's included; not a bool, though Python counts bools as ints, nor a float."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_count(name: str, value: object) -> None:
    """A whole number >= 0 (a seed, a count of epochs)."""
    if not (is_int(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def check_positive_ints(name: str, values: tuple, length: int | None = None) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name} must hold positive integers, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name} needs one entry per facet ({length}), got {len(values)}: {values!r}")


def _numpy_scalars_to_python(config: object) -> None:
    """A frozen config's numpy scalars (a seed from np.arange, a rate read from an array) as Python
    numbers, so that they pass the checks below and reach torch and JSON as the numbers they are."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, np.generic):
            object.__setattr__(config, field.name, value.item())


@dataclass(frozen=True)
class ModelConfig:
    """The network: one entry per facet in n_clusters, latent_dims and hidden_dims (the
    width of each MLP rung, or the channels of each conv block)."""

    input_shape: tuple[int, ...]
    n_clusters: tuple[int, ...]
    latent_dims: tuple[int, ...]
    hidden_dims: tuple[int, ...]
    covariance: str = "diag"
    learn_weights: bool = True
    weight_floor: float = 0.0
    likelihood: str = "bernoulli"
    likelihood_scale: float = 0.3
    posterior: str = "exact"
    architecture: str = "mlp"
    activation: str = "relu"
    batch_norm: bool = False
    merge_scale: float | None = None  # None: the paper's for the architecture (see ladder.py)
    precision: str = "float32"  # the networks' arithmetic; the probability terms stay float32

    def __post_init__(self) -> None:
        _numpy_scalars_to_python(self)
        if len(self.n_clusters) == 0:
            raise ValueError("n_clusters must name at least one facet")
        check_positive_ints("n_clusters", self.n_clusters)
        check_positive_ints("latent_dims", self.latent_dims, len(self.n_clusters))
        check_positive_ints("hidden_dims", self.hidden_dims, len(self.n_clusters))
        check_positive_ints("input_shape", self.input_shape)
        _check_choice("covariance", self.covariance, COVARIANCES)
        _check_choice("likelihood", self.likelihood, LIKELIHOODS)
        _check_choice("posterior", self.posterior, POSTERIORS)
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_bool("batch_norm", self.batch_norm)
        _check_bool("learn_weights", self.learn_weights)
        check_real("likelihood_scale", self.likelihood_scale, 0, low_open=True)
        check_real("weight_floor", self.weight_floor, 0)
        if not self.weight_floor <= 1:
            raise ValueError(f"weight_floor must be in [0, 1], got {self.weight_floor!r}")
        if self.merge_scale is None:
            object.__setattr__(self, "merge_scale", PAPER_MERGE_SCALE[self.architecture])
        check_real("merge_scale", self.merge_scale, 0, low_open=True)

    @property
    def n_facets(self) -> int:
        return len(self.n_clusters)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: Adam, mini-batches, progressive schedule, prior initialisation.

    Stage lengths and the fade-in default to fractions of the run (equal stages, each
    facet fading in over ``fade_fraction`` of its stage); ``stage_epochs`` and
    ``fade_steps`` give them in absolute epochs / mini-batches, as the paper's presets do.
    With ``max_seconds`` the run is a wall-clock budget: the schedule is laid over the time
    instead of the mini-batches, and the run ends at the deadline or after ``epochs``.
    ``compile``: train with the loss compiled by torch.compile: True, False or "auto" (the
    trainer decides, from the device and the run's length; see ``train.compile_mode``).
    """

    epochs: int
    batch_size: int
    lr: float
    lr_schedule: str = "constant"
    lr_decay_start: float = 0.0
    progressive: bool = True
    stage_epochs: tuple[int, ...] | None = None
    fade_steps: int | None = None
    fade_fraction: float = 0.5
    init: str = "gmm"
    init_variances: bool = False
    pretrain_epochs: int = 0
    refit_on_stage: bool = False
    refit_at_end: bool = False
    refit_every: int = 0
    refit_start: str = "spectral"
    reseed_dead: bool = False
    free_bits: float = 0.0
    max_seconds: float | None = None
    seed: int = 0
    compile: bool | str = False

    def __post_init__(self) -> None:
        _numpy_scalars_to_python(self)
        check_positive_ints("epochs", (self.epochs,))
        if self.max_seconds is not None:
            check_real("max_seconds", self.max_seconds, 0, low_open=True)
        check_positive_ints("batch_size", (self.batch_size,))
        check_real("lr", self.lr, 0, low_open=True)
        _check_bool("progressive", self.progressive)
        _check_bool("refit_on_stage", self.refit_on_stage)
        _check_bool("refit_at_end", self.refit_at_end)
        _check_count("refit_every", self.refit_every)
        _check_bool("reseed_dead", self.reseed_dead)
        _check_bool("init_variances", self.init_variances)
        if self.compile != "auto" and (isinstance(self.compile, str) or self.compile not in (True, False)):
            raise ValueError(f"compile must be true, false or 'auto', got {self.compile!r}")
        check_real("fade_fraction", self.fade_fraction)
        check_real("free_bits", self.free_bits)
        _check_count("seed", self.seed)
        if self.stage_epochs is not None:
            check_positive_ints("stage_epochs", self.stage_epochs)
        if self.fade_steps is not None:
            _check_count("fade_steps", self.fade_steps)
        if not 0 <= self.fade_fraction <= 1:
            raise ValueError(f"fade_fraction must be in [0, 1], got {self.fade_fraction!r}")
        _check_choice("init", self.init, INITS)
        _check_choice("refit_start", self.refit_start, REFIT_STARTS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_real("lr_decay_start", self.lr_decay_start)
        if not 0 <= self.lr_decay_start < 1:
            raise ValueError(f"lr_decay_start must be in [0, 1), got {self.lr_decay_start!r}")
        _check_count("pretrain_epochs", self.pretrain_epochs)
        if not self.free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0, got {self.free_bits!r}")


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    return {p.stem: yaml_load(p.read_text()).get("description", "") for p in sorted(PRESET_DIR.glob("*.yaml"))}


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return path


def load_preset(name: str) -> dict:
    """The estimator parameters of a named preset (without its description and data options)."""
    return read_config(preset_path(name))[0]


def read_config(path: str | Path) -> tuple[dict, dict]:
    """(estimator parameters, data options) from a YAML file. The optional ``data`` mapping
    holds options for reading the data (e.g. ``config: 1`` for 3DShapes, ``test_fraction``)."""
    path = Path(path)
    try:
        params = yaml_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read config file {path}: {err}") from err
    if not isinstance(params, dict):
        raise ValueError(f"config file {path} must hold a mapping of parameter names to values")
    params.pop("description", None)
    data = params.pop("data", None) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: 'data' must be a mapping of data options, got {data!r}")
    return params, data
