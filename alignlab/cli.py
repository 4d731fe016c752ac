"""Console entry points: thin ``@hydra.main`` wrappers around plain functions.

Errors a user can fix (a bad row, a missing column, an unknown loss parameter) end the program with one line
naming the file, row or key, and exit code 2. ``ALIGNLAB_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from alignlab.errors import AlignlabError, ConfigError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("alignlab")
USER_ERRORS = (AlignlabError, InstantiationException)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def run_or_exit(fn: Callable[[DictConfig], object], cfg: DictConfig) -> object:
    """``fn(cfg)``; a user error ends a single run with one line and exit code 2. In a multirun it is raised
    instead, so that Hydra records the job as failed (see :mod:`alignlab.sweeps`) and runs the others."""
    from alignlab.sweeps import JobError, in_multirun

    try:
        return fn(cfg)
    except USER_ERRORS as e:
        cause = _root_cause(e)
        # A config value a target rejected is the user's to fix; anything else from inside a target is a bug.
        if os.environ.get("ALIGNLAB_DEBUG") or not isinstance(cause, (AlignlabError, ValueError, FileNotFoundError)):
            raise
        message = " ".join(str(cause).split())
        if in_multirun():
            raise JobError(message) from e
        print(f"alignlab: error: {message}", file=sys.stderr)
        sys.exit(2)


def sweep_value(metrics: dict[str, float], name: str) -> float | None:
    """The value a sweeper optimises. A metric no run logs would make every Optuna trial fail alike: say so."""
    if name not in metrics:
        from alignlab.sweeps import in_multirun

        message = f"optimized_metric={name!r} was not logged; logged: {', '.join(sorted(metrics))}"
        if in_multirun() and "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")):
            raise ConfigError(message)
        log.warning(message)
        return None
    return metrics[name]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _train(cfg: DictConfig) -> float | None:
    from alignlab.sweeps import ddp_ranks_run_this_job
    from alignlab.train import run_train

    with ddp_ranks_run_this_job():
        metrics, _ = run_or_exit(run_train, cfg)
    return sweep_value(metrics, cfg.optimized_metric)


def _entry(config_name: str, target: str) -> Callable[[], None]:
    """A console entry point: Hydra composes ``conf/<config_name>.yaml`` and ``target`` (``module:function``, imported
    only when the command runs) takes the config."""

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def main(cfg: DictConfig) -> None:
        module, _, function = target.partition(":")
        run_or_exit(getattr(importlib.import_module(module), function), cfg)

    return main


def train() -> None:
    _train()


evaluate = _entry("eval", "alignlab.evaluate:run_evaluate")
generate = _entry("generate", "alignlab.export_pairs:run_generate")
opo = _entry("opo", "alignlab.opo.evaluate:run_opo")
opo_questions = _entry("opo_questions", "alignlab.opo.make_questions:run_make_questions")


if __name__ == "__main__":
    train()
