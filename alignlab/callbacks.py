"""Callbacks shared by every objective."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class ThroughputMonitor(pl.Callback):
    """Logs ``train/tokens_per_sec``: training tokens (prompt counted once per response, no padding) per second.

    The count is the one TRL's DPOTrainer reports, so the figure compares with it directly.
    """

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self._start
        if elapsed > 0 and hasattr(batch, "num_tokens"):
            pl_module.log("train/tokens_per_sec", batch.num_tokens / elapsed, on_step=True, on_epoch=False,
                          batch_size=len(batch), prog_bar=True)
