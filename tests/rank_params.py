"""A callback for the DDP tests: each rank writes the parameters it trains with, so a test can compare ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl


class RecordRankParams(pl.Callback):
    """``<run folder>/params-rank<global rank>.json``: loss name, beta and learning rate this rank trains with."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = {"loss": pl_module.loss.name, "loss.beta": pl_module.loss.beta,
                  "optimizer.lr": trainer.optimizers[0].defaults["lr"]}
        path = Path(trainer.default_root_dir) / f"params-rank{trainer.global_rank}.json"
        path.write_text(json.dumps(params))
