"""What the training loop tells the outside world: progress, metrics files, TensorBoard.

A callback gets the trainer at the start and end of the loop, after every mini-batch and
after every epoch (with the epoch's row of metrics); it reads, it never changes training.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from .runs import RunFolder


class Callback:
    def on_train_begin(self, trainer) -> None: ...
    def on_batch_end(self, trainer, sums: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer, row: dict) -> None: ...
    def on_train_end(self, trainer) -> None: ...
    def message(self, text: str) -> None: ...


def _summary(sums: dict[str, float], n_facets: int) -> str:
    n = sums["n"]
    kl = "/".join(f"{sums[f'kl_{j}'] / n:.2f}" for j in range(n_facets))
    return f"elbo {sums['elbo'] / n:.1f}, rec {sums['reconstruction'] / n:.1f}, kl {kl}"


class Progress(Callback):
    """A progress bar on a terminal; elsewhere (CI logs, files, nohup) one line per epoch."""

    def __init__(self, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.interactive = self.stream.isatty()
        self.bar: tqdm | None = None

    def _limit(self, trainer) -> str:
        return f"/{trainer.cfg.epochs}" if not trainer.budget.limited else f", {trainer.cfg.max_seconds:g} s"

    def on_train_begin(self, trainer) -> None:
        if self.interactive:  # the bar follows the position, so under a time budget it fills with the time
            self.bar = tqdm(total=trainer.total_steps, initial=trainer.position, unit="batch", dynamic_ncols=True,
                            file=self.stream)

    def on_batch_end(self, trainer, sums: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.set_description(f"epoch {trainer.epoch + 1}{self._limit(trainer)}", refresh=False)
        self.bar.update(trainer.position - self.bar.n)
        if trainer.progress.done % 10 == 1:
            self.bar.set_postfix_str(_summary(sums, trainer.model.n_facets))

    def on_epoch_end(self, trainer, row: dict) -> None:
        if self.bar is None:
            print(f"epoch {row['epoch']}{self._limit(trainer)}: {_summary({**row, 'n': 1}, trainer.model.n_facets)}, "
                  f"{row['seconds']:.1f} s", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def on_train_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsCSV(Callback):
    """Appends each epoch's row to the run folder's metrics.csv."""

    def __init__(self, run: RunFolder):
        self.run = run

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.run.append_metrics(row)


class TensorBoard(Callback):
    """Each epoch's metrics as TensorBoard scalars in the run folder (when tensorboard is installed)."""

    def __init__(self, run: RunFolder):
        self.run, self.writer, self.available = run, None, True

    def on_epoch_end(self, trainer, row: dict) -> None:
        if self.writer is None and self.available:
            self.writer = self.run.tensorboard_writer()
            self.available = self.writer is not None
        if self.writer is None:
            return
        for key, value in row.items():
            self.writer.add_scalar(key, value, row["epoch"])

    def on_train_end(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
