"""OmegaConf resolvers the configs use (registered once on import), and secrets kept out of what runs write."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

SECRET_KEYS = frozenset({"api_key"})


def without_secrets(config: Any, resolve: bool = True) -> Any:
    """A plain copy of a config (resolved unless told otherwise) with every secret (a key in SECRET_KEYS) set to
    None, and secrets in override strings (``hydra.overrides``) redacted.

    For whatever a run writes or sends (config.yaml, logger hyperparameters, rows' provenance): the run itself keeps
    the key, and a config read back falls back to the environment (``OPENAI_API_KEY``), as a null key does.
    """
    if isinstance(config, DictConfig | ListConfig):
        config = OmegaConf.to_container(config, resolve=resolve)
    if isinstance(config, dict):
        return {k: None if k in SECRET_KEYS else without_secrets(v, resolve) for k, v in config.items()}
    if isinstance(config, list):
        return [without_secrets(v, resolve) for v in config]
    return override_without_secret(config) if isinstance(config, str) else config


def override_without_secret(override: str) -> str:
    """``judge.api_key=sk-...`` -> ``judge.api_key=<redacted>``; any other override unchanged."""
    key, sep, _ = override.partition("=")
    return f"{key}=<redacted>" if sep and key.lstrip("+~").rsplit(".", 1)[-1] in SECRET_KEYS else override


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


def _or_default(value: Any, default: Any) -> Any:
    """``${or_default:${paths.output_dir},<default>}``: the value unless it is null (``oc.select`` keeps a null)."""
    return default if value is None else value


RESOLVERS = {"bundled": _bundled, "opo_data": _opo_data, "sqlite_url": _sqlite_url, "optuna_trials_left": _optuna_trials_left,
             "optuna_sampler_seed": _optuna_sampler_seed, "or_default": _or_default}


def register_resolvers() -> None:
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()
