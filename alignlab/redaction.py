"""Secrets (API keys) kept out of everything a run writes or sends; the run itself keeps them in memory.

Nothing here imports the rest of alignlab, so any module may import it.
"""

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
