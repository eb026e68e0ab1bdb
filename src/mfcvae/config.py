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

from .runtime import PRECISIONS

PRESET_DIR = Path(__file__).parent / "presets"

COVARIANCES = ("diag", "full")
LIKELIHOODS = ("bernoulli", "gaussian", "sigmoid_gaussian")
POSTERIORS = ("exact", "mc")
ARCHITECTURES = ("mlp", "conv")


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
    """The network, every value resolved (the estimator fills it in; nothing here has a default):
    one entry per facet in n_clusters, latent_dims and hidden_dims (the width of each MLP rung,
    or the channels of each conv block). The architecture fixes the activation and batch-norm:
    MLP relu without batch-norm, conv elu with batch-norm, as the paper has them."""

    input_shape: tuple[int, ...]
    n_clusters: tuple[int, ...]
    latent_dims: tuple[int, ...]
    hidden_dims: tuple[int, ...]
    architecture: str
    covariance: str
    learn_weights: bool
    weight_floor: float
    likelihood: str
    likelihood_scale: float
    posterior: str
    merge_scale: float  # the factor on each lower facet's decoder rung
    precision: str  # the networks' arithmetic; the probability terms stay float32

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
        _check_choice("precision", self.precision, PRECISIONS)
        _check_bool("learn_weights", self.learn_weights)
        check_real("likelihood_scale", self.likelihood_scale, 0, low_open=True)
        check_real("weight_floor", self.weight_floor, 0)
        if not self.weight_floor <= 1:
            raise ValueError(f"weight_floor must be in [0, 1], got {self.weight_floor!r}")
        check_real("merge_scale", self.merge_scale, 0, low_open=True)

    @property
    def n_facets(self) -> int:
        return len(self.n_clusters)

    @property
    def activation(self) -> str:
        return "elu" if self.architecture == "conv" else "relu"

    @property
    def batch_norm(self) -> bool:
        return self.architecture == "conv"


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation, every value resolved (nothing here has a default): Adam on mini-batches,
    the progressive schedule, the recipe beyond the paper (free_bits, reseed_dead, refit_at_end)
    and the time budget. ``stage_epochs`` None: equal stages; ``fade_steps`` None: half a stage.
    ``select_clusters``: the facets whose number of clusters the end refit chooses. ``n_init``:
    starts from different seeds, the best by ELBO trained on (``train.best_start``).
    ``compile``: True, False or "auto" (see ``runtime.compile_mode``)."""

    epochs: int
    batch_size: int
    lr: float
    max_seconds: float | None
    progressive: bool
    stage_epochs: tuple[int, ...] | None
    fade_steps: int | None
    free_bits: float
    reseed_dead: bool
    refit_at_end: bool
    select_clusters: tuple[int, ...]
    n_init: int
    seed: int
    compile: bool | str

    def __post_init__(self) -> None:
        _numpy_scalars_to_python(self)
        check_positive_ints("epochs", (self.epochs,))
        if self.max_seconds is not None:
            check_real("max_seconds", self.max_seconds, 0, low_open=True)
        check_positive_ints("batch_size", (self.batch_size,))
        check_real("lr", self.lr, 0, low_open=True)
        _check_bool("progressive", self.progressive)
        _check_bool("reseed_dead", self.reseed_dead)
        _check_bool("refit_at_end", self.refit_at_end)
        if self.select_clusters and not self.refit_at_end:
            raise ValueError("n_clusters='auto' needs refit_at_end=True: the end refit chooses the number of clusters")
        if self.compile != "auto" and (isinstance(self.compile, str) or self.compile not in (True, False)):
            raise ValueError(f"compile must be true, false or 'auto', got {self.compile!r}")
        check_real("free_bits", self.free_bits, 0)
        _check_count("seed", self.seed)
        check_positive_ints("n_init", (self.n_init,))
        if self.stage_epochs is not None:
            check_positive_ints("stage_epochs", self.stage_epochs)
        if self.fade_steps is not None:
            _check_count("fade_steps", self.fade_steps)


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
