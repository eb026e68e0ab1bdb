"""The progressive-training schedule (after pro-VLAE, as the paper's authors run it).

Stage 0 trains only the top facet (J-1); stage s switches on facet J-1-s. A facet that is
not yet on has decoder-rung weight alpha_j = 0 and KL weight gamma_j = 0; during its stage
both rise linearly from 0 to 1 over ``fade_steps`` mini-batches, then stay 1. The same
number serves as alpha_j and gamma_j, so ``weights(step)`` returns one vector.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .config import TrainConfig

FADE_FRACTION = 0.5  # without fade_steps, a facet fades in over this share of its stage


@dataclass(frozen=True)
class ProgressiveSchedule:
    n_facets: int
    stage_starts: tuple[int, ...]  # first mini-batch of stage s, s = 0..J-1 (stage_starts[0] == 0)
    fade_steps: int
    enabled: bool = True

    def facet_of_stage(self, stage: int) -> int:
        return self.n_facets - 1 - stage

    def stage(self, step: int) -> int:
        """Index of the stage that mini-batch ``step`` belongs to."""
        return max(s for s, start in enumerate(self.stage_starts) if step >= start)

    def weights(self, step: int) -> torch.Tensor:
        """alpha_j = gamma_j for every facet at mini-batch ``step``, shape (J,)."""
        w = torch.ones(self.n_facets)
        if not self.enabled:
            return w
        for stage, start in enumerate(self.stage_starts[1:], start=1):
            if self.fade_steps == 0:
                value = float(step >= start)
            else:
                value = min(max((step - start) / self.fade_steps, 0.0), 1.0)
            w[self.facet_of_stage(stage)] = value
        return w

    @classmethod
    def from_config(cls, cfg: TrainConfig, n_facets: int, steps_per_epoch: int) -> "ProgressiveSchedule":
        if not cfg.progressive:
            return cls(n_facets, tuple([0] * n_facets), 0, enabled=False)
        total = cfg.epochs * steps_per_epoch
        if cfg.stage_epochs is not None:
            if len(cfg.stage_epochs) != n_facets:
                raise ValueError(f"stage_epochs needs one entry per facet ({n_facets}), got {cfg.stage_epochs!r}")
            # The stages (and fade_steps) describe a run of sum(stage_epochs) epochs; a run of
            # another length gets the same schedule stretched or squeezed to fit.
            scale = cfg.epochs / sum(cfg.stage_epochs)
            boundaries = [round(sum(cfg.stage_epochs[:s]) * scale * steps_per_epoch) for s in range(n_facets + 1)]
        else:  # equal shares of the run's mini-batches, so even a 1-epoch run passes every stage
            scale = 1.0
            boundaries = [s * total // n_facets for s in range(n_facets + 1)]
        shortest_later_stage = min((b1 - b0 for b0, b1 in zip(boundaries[1:-1], boundaries[2:])), default=0)
        if cfg.fade_steps is None:
            fade = round(FADE_FRACTION * shortest_later_stage)
        else:
            fade = round(cfg.fade_steps * scale)
            if n_facets > 1 and fade > shortest_later_stage:
                # A preset's fade length assumes its data set's size; on less data a facet
                # would still be fading in when the run ends.
                warnings.warn(f"fade_steps={fade} mini-batches is longer than a stage of this run "
                              f"({shortest_later_stage}); the fade-in is cut to the stage length", stacklevel=2)
                fade = shortest_later_stage
        return cls(n_facets, tuple(boundaries[:-1]), fade)
