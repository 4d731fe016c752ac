"""OmegaConf resolvers the configs use, registered once when :mod:`alignlab` is imported."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def _bundled(name: str) -> str:
    from alignlab.data.offline import bundled_path

    return bundled_path(name)


def _opo_data(name: str) -> str:
    from importlib.resources import files

    return str(files("alignlab.opo") / "bundled" / f"{name}.jsonl")


def _sqlite_url(path: str) -> str:
    from alignlab.sweeps import sqlite_url

    return sqlite_url(path)


def _optuna_trials_left(storage: str, study_name: str, total: int) -> int:
    from alignlab.sweeps import trials_left

    return trials_left(storage, study_name, total)


def _optuna_sampler_seed(storage: str, study_name: str, seed: int) -> int:
    from alignlab.sweeps import sampler_seed

    return sampler_seed(storage, study_name, seed)


def _precision_for(accelerator: str) -> str:
    """``${precision_for:${.accelerator}}``: bf16 mixed precision on accelerators, 32-bit on CPU, where bf16 is
    hundreds of times slower (``auto``: whichever the machine has)."""
    if accelerator == "auto":
        import torch

        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return "32-true" if accelerator == "cpu" else "bf16-mixed"


def _or_default(value: Any, default: Any) -> Any:
    """``${or_default:${paths.output_dir},<default>}``: the value unless it is null (``oc.select`` keeps a null)."""
    return default if value is None else value


RESOLVERS = {"bundled": _bundled, "opo_data": _opo_data, "sqlite_url": _sqlite_url, "optuna_trials_left": _optuna_trials_left,
             "optuna_sampler_seed": _optuna_sampler_seed, "or_default": _or_default,
             "precision_for": _precision_for}


def register_resolvers() -> None:
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)

