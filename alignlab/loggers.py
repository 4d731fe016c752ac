"""Experiment loggers that need more than a ``_target_``: W&B with offline fallback and sweep grouping, per-prompt
records as W&B Tables, and the loggers of the commands that evaluate without training."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger, WandbLogger

from alignlab.errors import ConfigError
from alignlab.records import FIELDS, Recorder

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


def records_table(rows):
    """Per-prompt records (rows as :class:`alignlab.records.Recorder` keeps them, or a :func:`read_records`
    DataFrame) as a ``wandb.Table`` holding every field: the schema's (:data:`alignlab.records.FIELDS`) first,
    then any extra field a row carries, in order of first appearance, so nothing the JSONL file keeps is missing
    from the table. Dicts and lists (``reward_parts``, ``verdict_orders``, OPO's ``probs``) become JSON strings:
    a W&B column holds scalars. Mixed types are allowed, as ``correct`` is a bool in one evaluation and a float
    in another."""
    import pandas as pd
    import wandb

    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    columns = list(dict.fromkeys([*FIELDS, *(name for row in rows for name in row)]))
    data = [[_cell(row.get(name)) for name in columns] for row in rows]
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def _cell(value):
    """A table cell: a dict or list as its JSON text, anything else as it is."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list, tuple)) else value


def log_records_table(loggers, key: str, rows, step: int | None = None) -> None:
    """Per-prompt records as a W&B Table (``key``, see :func:`records_table`), for every W&B logger among
    ``loggers``; others keep the JSONL records only."""
    if len(rows) == 0:
        return
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_metrics({key: records_table(rows)}, step=step)


def log_recorder_tables(loggers, recorder: Recorder) -> None:
    """Every evaluation a :class:`Recorder` kept, as the W&B Table ``records/<evaluation>`` (the name of its
    JSONL file) at the recorder's step: what ``alignlab-eval`` (eval, pairs, behavior, capability) and
    ``alignlab-opo`` (opo, opo_edit) log."""
    for evaluation, rows in recorder.rows.items():
        log_records_table(loggers, f"records/{evaluation}", rows, recorder.step)


@contextmanager
def evaluation_loggers(cfg: DictConfig) -> Iterator[list[Logger]]:
    """The loggers of ``cfg.logger`` for a command that is not a training run (``alignlab-eval``,
    ``alignlab-opo``; none unless asked, e.g. ``logger=wandb``), built as training builds them, with the command's
    config as their hyperparameters. The W&B run is finished on leaving, even after an error, as
    :func:`alignlab.train.run_train` finishes its own: the next command (or a multirun's next job) starts its own
    run."""
    from hydra.utils import instantiate

    from alignlab.redaction import without_secrets

    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    try:
        for logger in loggers:
            logger.log_hyperparams(without_secrets(cfg))
        yield loggers
    finally:
        finish_wandb()


def finish_wandb() -> None:
    """Close the current W&B run, if any (and only if wandb was imported at all)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
