"""Helpers for the online DDP test, built from config in each rank's process: a judge that labels nothing on rank 1,
and a callback that writes each rank's trained weights, so a test can check that the replicas stayed equal."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch

from alignlab.judges.base import Verdicts


class TiesOnRankOne:
    """Prefers the answer with fewer letters 'e'; on rank 1 every pair is a tie, so that rank drops all its pairs."""

    def __call__(self, prompts, pairs, metas=None) -> Verdicts:
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            return Verdicts([0.5] * len(pairs))
        probs = []
        for a, b in pairs:
            ea, eb = a.count("e"), b.count("e")
            probs.append(1.0 if ea < eb else 0.0 if ea > eb else 0.5)
        return Verdicts(probs)


class RecordRankWeights(pl.Callback):
    """``<run folder>/weights-rank<rank>.json``: the sum of every trained parameter and this rank's step count,
    at the start and at the end of training."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = self.weight_sum(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"initial": self.initial, "final": self.weight_sum(pl_module), "step": trainer.global_step,
                  "updates": pl_module.updates}
        path = Path(trainer.default_root_dir) / f"weights-rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))

    @staticmethod
    def weight_sum(pl_module) -> float:
        return float(sum(p.detach().double().sum() for p in pl_module.policy.parameters() if p.requires_grad))
