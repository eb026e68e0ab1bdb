"""A wall-clock budget for ``fit`` (the estimator's ``max_seconds``).

The clock starts when ``fit`` starts, so set-up and the mixture initialisation count; the
training loop gets what they leave, less what is kept back for the end refit. Loop time is
accumulated across a resumed run's sessions.
"""

from __future__ import annotations

import time
import warnings


class TimeBudget:
    """``max_seconds`` counted from ``started`` (a ``time.perf_counter()`` reading); None: no limit."""

    def __init__(self, max_seconds: float | None, started: float | None = None):
        self.max_seconds = max_seconds
        self.started = time.perf_counter() if started is None else started
        self.loop_seconds: float | None = None  # what the training loop may take, once planned
        self.elapsed = 0.0  # loop seconds spent before this session's ``start``
        self._since: float | None = None

    @property
    def limited(self) -> bool:
        return self.max_seconds is not None

    def plan_loop(self, reserve: float) -> None:
        """Give the training loop what is left of the budget, less ``reserve`` seconds for work after it."""
        if not self.limited:
            return
        self.loop_seconds = self.max_seconds - reserve - (time.perf_counter() - self.started)
        if self.loop_seconds <= 0:
            kept = f" less {reserve:.1f} s kept for the end refit" if reserve > 0 else ""
            warnings.warn(f"set-up and initialisation took the whole max_seconds={self.max_seconds}{kept}; "
                          "training one mini-batch only", stacklevel=3)

    def start(self) -> None:
        """The training loop starts (or resumes) in this process."""
        self._since = time.perf_counter()

    def fresh(self) -> "TimeBudget":
        """The same plan with no loop time spent: for another start of ``n_init``."""
        out = TimeBudget(self.max_seconds, self.started)
        out.loop_seconds = self.loop_seconds
        return out

    def pause(self) -> None:
        """The training loop stops in this process until the next ``start``."""
        self.elapsed, self._since = self.spent(), None

    def spent(self) -> float:
        """Seconds the training loop has run, earlier sessions of a resumed run included."""
        return self.elapsed + (0.0 if self._since is None else time.perf_counter() - self._since)

    def fraction(self, spent: float | None = None) -> float | None:
        """The share of the loop's time spent (capped at 1), or None without a budget; ``spent``:
        the loop seconds to count (default: this process's clock)."""
        if self.loop_seconds is None:
            return None
        spent = self.spent() if spent is None else spent
        return 1.0 if self.loop_seconds <= 0 else min(spent / self.loop_seconds, 1.0)

    def state(self) -> dict:
        return {"loop_seconds": self.loop_seconds, "elapsed": self.spent()}

    def load_state(self, state: dict) -> None:
        self.loop_seconds, self.elapsed = state["loop_seconds"], state["elapsed"]
