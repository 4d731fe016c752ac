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
    offline runs sync later with ``wandb sync <run dir>/wandb``. ``group`` defaults to the sweep (its folder's
    last two parts, e.g. ``loss_beta/2026-11-30_18-40-01.123456``: one multirun = one group) or, outside a
    multirun, the run's parent folder; ``name`` to the run folder. Each job's overrides are added to ``tags``
    (``loss=ipo``, ``loss.beta=0.5``), so runs filter by them. :func:`alignlab.train.run_train` finishes the W&B
    run at the end of each job, so every job of a multirun gets its own run.
    """
    from alignlab.sweeps import in_multirun, job_overrides

    if mode not in MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r} is not one of {MODES}")
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    run_dir = Path(save_dir)
    if group is None:
        group = "/".join(run_dir.parent.parts[-2:]) if in_multirun() else run_dir.parent.name
    tags = list(dict.fromkeys([*(tags or []), *(o[:64] for o in job_overrides())]))  # W&B's tag limit: 64 chars
    return WandbLogger(project=project, entity=entity, group=group, name=name or run_dir.name, tags=tags,
                       save_dir=str(run_dir), mode=mode)


TABLE_COLUMNS = ("prompt_id", "arm", "sample", "step", "answer", "length", "finished", "reward", "verdict",
                 "reference_answer")


def log_records_table(loggers, key: str, rows: list[dict], step: int) -> None:
    """Per-prompt records as a W&B Table (``key``), for every W&B logger among ``loggers``; others keep the JSONL
    records only. Columns: :data:`TABLE_COLUMNS`."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and rows:
            logger.log_table(key=key, columns=list(TABLE_COLUMNS),
                             data=[[row.get(c) for c in TABLE_COLUMNS] for row in rows], step=step)
