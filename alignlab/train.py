"""``run_train(cfg) -> (metrics, objects)``: the plain function behind ``alignlab-train``.

Tests and notebooks call it with a composed config; the CLI is a thin Hydra wrapper (:mod:`alignlab.cli`).
Every run writes, under its own folder: the composed ``config.yaml``, ``run_info.json`` (overrides, group
choices, machine and versions), ``metrics.csv``, ``data_report.json``,
``checkpoints/last.ckpt``, the final policy (``policy/``, loadable with ``from_pretrained``) and
``summary.json`` with the final metrics.
"""

from __future__ import annotations

import json
import logging
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from alignlab.environment import environment
from alignlab.errors import ConfigError
from alignlab.loggers import finish_wandb
from alignlab.redaction import without_secrets
from alignlab.reference import Reference
from alignlab.run_dir import check_folder_is_free, check_resume_matches, keep_earlier
from alignlab.sweeps import group_choices, in_multirun, job_overrides

log = logging.getLogger(__name__)
# The run folder already holds config.yaml when the CSV logger starts: that is expected, not a warning.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


def default_output_dir(root: str = "outputs") -> Path:
    """A fresh run folder with a sub-second timestamp, for runs started outside Hydra."""
    return Path(root) / "runs" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S.%f")


def prepare_output_dir(cfg: DictConfig) -> Path:
    """Fill ``paths.output_dir`` and create it: in a multirun, the job's own folder under the sweep's root (which
    is ``paths.output_dir`` when given, see ``conf/hydra/default.yaml``); else ``paths.output_dir``, Hydra's run
    folder under the CLI, or a new timestamped one."""
    output_dir = cfg.paths.get("output_dir")
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    elif output_dir is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            output_dir = HydraConfig.get().runtime.output_dir
        except ValueError:  # not under @hydra.main
            output_dir = default_output_dir(cfg.paths.get("root", "outputs"))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def start_run_folder(cfg: DictConfig, output_dir: Path, ckpt: str | None) -> None:
    """Before anything is written: the folder must be new or hold the run being resumed, with the same config
    (:mod:`alignlab.run_dir`). Then ``config.yaml`` and ``run_info.json``. Rank 0 only: other DDP ranks start
    when rank 0 has written them."""
    if rank_zero_only.rank != 0:
        return
    plain = without_secrets(cfg)
    check_folder_is_free(output_dir, ckpt)
    if ckpt is not None:
        check_resume_matches(ckpt, plain, bool(cfg.get("resume_allow_changes")))
        keep_earlier(output_dir)  # before any logger opens metrics.csv
    OmegaConf.save(OmegaConf.create(plain), output_dir / "config.yaml")
    write_run_info(output_dir)


def write_run_info(output_dir: Path) -> None:
    """``run_info.json``: the command-line overrides and config-group choices that made this run, which
    ``alignlab-compare --by`` groups on (the resolved config.yaml no longer says which group file was chosen),
    and the machine and software it ran on (:func:`alignlab.environment.environment`)."""
    info = {"overrides": job_overrides(), "choices": group_choices(), "started": datetime.now().isoformat(),
            "environment": environment()}
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2))


def resolve_ckpt(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}")
    return str(path)


def build_reference(loaded, loss) -> Reference | None:
    """The reference the loss and model call for: none for a reference-free loss, the disabled adapter of a LoRA
    policy, else a frozen copy of the initial policy."""
    if not loss.needs_reference:
        return None
    if loaded.has_adapter:
        return Reference.disabled_adapter_of(loaded.model)
    return Reference.frozen_copy_of(loaded.model)


def build_module(cfg: DictConfig, loaded, loss):
    """The PreferenceModule for this objective, with the reference its loss and model call for."""
    # Objects go to the partial, not through instantiate: Hydra would keep them in its merged config.
    module_factory = instantiate(cfg.objective.module, _partial_=True)
    return module_factory(
        policy=loaded.model,
        loss=loss,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        reference=build_reference(loaded, loss),
    )


def build_trainer(cfg: DictConfig, output_dir: Path, extra_callbacks: list[pl.Callback] = ()) -> pl.Trainer:
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += list(extra_callbacks)
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=str(output_dir))


def run_train(cfg: DictConfig, callbacks: list[pl.Callback] = ()) -> tuple[dict[str, float], dict[str, Any]]:
    """Train the configured policy; returns the final metrics and the objects that produced them.

    ``callbacks``: Lightning callbacks added to the configured ones (a benchmark's timer, a notebook's probe)."""
    output_dir = prepare_output_dir(cfg)
    ckpt = resolve_ckpt(cfg.get("ckpt_path"), output_dir)
    start_run_folder(cfg, output_dir, ckpt)
    pl.seed_everything(cfg.seed, workers=True)

    loaded = instantiate(cfg.model)
    loss = instantiate(cfg.loss)
    datamodule = instantiate(cfg.data, _partial_=True)(tokenizer=loaded.tokenizer)
    module = build_module(cfg, loaded, loss)
    trainer = build_trainer(cfg, output_dir, callbacks)
    log.info("policy %s, %s, output %s", loaded.name, loss, output_dir)

    try:
        hyperparameters = {**without_secrets(cfg), "choices": group_choices(),
                           "overrides": job_overrides()}
        for logger in trainer.loggers:  # W&B's run config: what alignlab-compare and the W&B UI group runs by
            logger.log_hyperparams(hyperparameters)
        if cfg.get("validate_before_training") and ckpt is None:
            trainer.validate(module, datamodule=datamodule, verbose=False)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if module.last_validated_step != trainer.global_step and datamodule.num_val_examples:
            # Stopped mid-epoch (max_steps): validate the final policy too.
            trainer.validate(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if trainer.is_global_zero:
            (output_dir / "data_report.json").write_text(json.dumps(datamodule.report, indent=2))
            if cfg.get("save_policy"):
                loaded.model.save_pretrained(output_dir / "policy")
                loaded.tokenizer.save_pretrained(output_dir / "policy")
            summary = {"output_dir": str(output_dir), "objective": cfg.objective.name, "loss": repr(loss),
                       "global_step": trainer.global_step, "metrics": metrics}
            (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    finally:
        finish_wandb()  # the next job of a multirun starts its own W&B run

    shown = {k: metrics[k] for k in ("train/loss", "val/loss", "val/rewards/accuracies", "val/rewards/margins")
             if k in metrics}
    if trainer.is_global_zero:  # every DDP rank gets here
        print(f"done: step {trainer.global_step}, " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
              + f"; run directory: {output_dir}")
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule, "model": loaded,
                     "output_dir": output_dir}


