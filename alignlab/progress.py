"""Progress lines for output that goes to a file: ``make train > log`` shows no progress bar, so without these
lines nothing would appear between the model summary and the final line.

One line every ``every_n_steps`` optimizer steps (step, loss, tokens/s, elapsed, ETA) and, from the sampling
code, one per generation batch of a sampling that takes several batches. Both go to the ``alignlab.progress``
logger (under the CLI: stdout and the run's log file), from rank 0 only, and only when stdout is not a terminal,
unless forced on or off.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from alignlab.errors import ConfigError

log = logging.getLogger(__name__)


def progress_wanted(enabled: bool | str | None = "auto") -> bool:
    """``"auto"`` (or ``None``): only when stdout is not a terminal, where the progress bar shows nothing useful;
    ``True``/``False`` force it."""
    if enabled is None or enabled == "auto":
        isatty = getattr(sys.stdout, "isatty", None)
        return not (isatty is not None and isatty())
    if isinstance(enabled, bool):
        return enabled
    raise ConfigError(f"callbacks.progress.enabled must be auto, true or false, got {enabled!r}")


def clock(seconds: float) -> str:
    """``3725.4`` -> ``"1:02:05"``; an unknown duration is ``"?"``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def eta(done: float, total: float, elapsed: float) -> float:
    """Seconds left at the mean pace so far; ``inf`` when nothing is done or the total is unknown."""
    if done <= 0 or not math.isfinite(total):
        return math.inf
    return elapsed / done * max(total - done, 0)


def training_line(step: int, total: float, loss: float | None, tokens_per_sec: float | None, elapsed: float,
                  seconds_left: float) -> str:
    """``step 20/100 | loss 0.6931 | 92 tokens/s | elapsed 0:01:05 | ETA 0:04:20``."""
    parts = [f"step {step}/{int(total) if math.isfinite(total) else '?'}"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if tokens_per_sec is not None:
        parts.append(f"{tokens_per_sec:.0f} tokens/s")
    parts += [f"elapsed {clock(elapsed)}", f"ETA {clock(seconds_left)}"]
    return " | ".join(parts)


class ProgressLog(pl.Callback):
    """Logs :func:`training_line` every ``every_n_steps`` optimizer steps and at the last one.

    Tokens/s counts the training tokens of rank 0's batches since the previous line (``PreferenceBatch.num_tokens``,
    as ``ThroughputMonitor`` does) times the number of ranks. The ETA is the mean pace since this fit started
    (a resumed run counts from its checkpoint's step).
    """

    def __init__(self, every_n_steps: int = 10, enabled: bool | str = "auto") -> None:
        if every_n_steps < 1:
            raise ConfigError(f"callbacks.progress.every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.active = progress_wanted(enabled)
        self._start = self._since = 0.0
        self._first_step = self._logged_step = 0
        self._tokens = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._since = time.perf_counter()
        self._first_step = self._logged_step = trainer.global_step
        self._tokens = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not (self.active and trainer.is_global_zero):
            return
        self._tokens += int(getattr(batch, "num_tokens", 0))
        step, total = trainer.global_step, self.total_steps(trainer)
        if step == self._logged_step or (step % self.every_n_steps and step != total):
            return
        now = time.perf_counter()
        window = now - self._since
        tokens_per_sec = self._tokens * trainer.world_size / window if self._tokens and window > 0 else None
        loss = trainer.callback_metrics.get("train/loss")
        elapsed = now - self._start
        log.info(training_line(step, total, None if loss is None else float(loss), tokens_per_sec, elapsed,
                               eta(step - self._first_step, total - self._first_step, elapsed)))
        self._since, self._tokens, self._logged_step = now, 0, step

    @staticmethod
    def total_steps(trainer: pl.Trainer) -> float:
        """The step the fit ends at: ``max_steps`` when set, else what the epochs and batches come to."""
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        return float(trainer.estimated_stepping_batches)


def log_generation_progress(label: str, done: int, total: int, new_tokens: int, elapsed: float,
                            enabled: bool | str | None = "auto") -> str | None:
    """For sampling code: call after each generation batch of a sampling of ``total`` prompts.

    ``done`` prompts, ``new_tokens`` generated and ``elapsed`` seconds so far (all counted since the sampling
    started). Logs and returns ``generation <label>: 64/192 prompts | 250 new tokens/s | elapsed 0:00:40 | ETA
    0:01:20`` on rank 0 when stdout is not a terminal (or ``enabled`` forces it). Returns ``None`` when nothing is
    logged.
    """
    if rank_zero_only.rank != 0 or not progress_wanted(enabled):
        return None
    rate = f"{new_tokens / elapsed:.0f} new tokens/s" if elapsed > 0 else "? new tokens/s"
    line = (f"generation {label}: {done}/{total} prompts | {rate} | elapsed {clock(elapsed)} | "
            f"ETA {clock(eta(done, total, elapsed))}")
    log.info(line)
    return line
