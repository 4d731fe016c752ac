"""Experiment loggers that need more than a ``_target_``: W&B with offline fallback and sweep grouping."""

from __future__ import annotations

import os
from pathlib import Path

from pytorch_lightning.loggers import WandbLogger

from alignlab.errors import ConfigError

MODES = ("auto", "online", "offline", "disabled")


def wandb_logger(project: str, save_dir: str, entity: str | None = None, group: str | None = None,
                 name: str | None = None, tags: list[str] | None = None, mode: str = "auto") -> WandbLogger:
    """A Lightning ``WandbLogger`` that works without a network.

    ``mode=auto`` logs online when ``WANDB_API_KEY`` is set (or ``WANDB_MODE`` says so) and offline otherwise;
    offline runs sync later with ``wandb sync <run dir>/wandb``. ``group`` defaults to the run's parent folder
    (one multirun = one group) and ``name`` to the run folder. :func:`alignlab.train.run_train` finishes the
    W&B run at the end of each job, so every job of a multirun gets its own run.
    """
    if mode not in MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r} is not one of {MODES}")
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    run_dir = Path(save_dir)
    return WandbLogger(project=project, entity=entity, group=group or run_dir.parent.name,
                       name=name or run_dir.name, tags=list(tags or []), save_dir=str(run_dir), mode=mode)
