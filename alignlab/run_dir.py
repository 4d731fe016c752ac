"""Run folders hold one run each: a new run refuses a folder that holds another run's results, and a resumed run
must be the run that wrote its checkpoint.

A resumed run appends to the folder of the run it continues (or starts a new one): if its model, data, loss or
optimizer differed, metrics.csv and the checkpoints would mix two runs under one name and nothing would say so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from alignlab.errors import ConfigError

log = logging.getLogger(__name__)

# What a finished or running training leaves in its folder; Hydra's own log file is not a result.
RESULTS = ("config.yaml", "metrics.csv", "summary.json", "checkpoints", "policy")
# The keys that say what a run trains, from what, towards what. The rest (trainer.max_steps, devices, paths,
# loggers, callbacks) may change when a run is resumed, on another machine or for longer.
RUN_KEYS = ("seed", "model", "data", "objective", "loss", "judge", "behavior", "optimizer", "scheduler",
            "trainer.precision", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val")
# Inside RUN_KEYS, settings of speed or memory only.
SPEED_KEYS = frozenset({"data.num_workers", "data.eval_batch_size", "objective.module.keep_gradients"})
# Fields added after runs were saved, by their last key component, with the value an absent one meant: a run
# saved before the field existed resumes under a config that holds it at that value.
ADDED_FIELDS = {"min_new_tokens": 0}


def results_in(folder: Path) -> list[str]:
    """The names of run results already in ``folder`` (an empty folder is no result)."""
    found = []
    for name in RESULTS:
        path = folder / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return found


def checkpoint_run_folder(ckpt: Path) -> Path:
    """The folder of the run that wrote ``ckpt``: checkpoints live in ``<run folder>/checkpoints/``."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def check_folder_is_free(output_dir: Path, ckpt: str | None) -> None:
    """A run writes into a folder holding results only to resume the run whose checkpoint is there."""
    found = results_in(output_dir)
    if not found:
        return
    if ckpt is not None and checkpoint_run_folder(Path(ckpt)).resolve() == output_dir.resolve():
        return
    reason = (f"ckpt_path={ckpt} is another run's checkpoint" if ckpt is not None
              else "only resuming it (ckpt_path=last) may write there")
    raise ConfigError(f"paths.output_dir={output_dir} already holds another run's results ({', '.join(found)}); "
                      f"{reason}. Choose a new paths.output_dir")


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"beta": 0.1}}`` -> ``{"loss.beta": 0.1}``; lists stay values."""
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def run_defining(config: dict[str, Any]) -> dict[str, Any]:
    """The RUN_KEYS part of a plain (resolved) config, flattened."""
    flat = flatten(config)
    return {key: value for key, value in flat.items() if key not in SPEED_KEYS
            and any(key == run_key or key.startswith(run_key + ".") for run_key in RUN_KEYS)}


def changed_keys(saved: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for each run-defining key that differs, in the new config's order."""
    before, after = run_defining(saved), run_defining(new)
    for key in after:
        field = key.rpartition(".")[2]
        if key not in before and field in ADDED_FIELDS:
            before[key] = ADDED_FIELDS[field]
    missing = object()
    keys = list(after) + [key for key in before if key not in after]
    return [(key, before.get(key, "<absent>"), after.get(key, "<absent>")) for key in keys
            if before.get(key, missing) != after.get(key, missing)]


def check_resume_matches(ckpt: str, new: dict[str, Any], allow_changes: bool) -> None:
    """Resuming from ``ckpt``: the config.yaml of the run that wrote it must agree with ``new`` (a plain resolved
    config) on every run-defining key, unless ``resume_allow_changes=true``."""
    saved_path = checkpoint_run_folder(Path(ckpt)) / "config.yaml"
    if not saved_path.is_file():
        log.warning("ckpt_path=%s: no config.yaml beside it, so the resumed config is not checked", ckpt)
        return
    changes = changed_keys(yaml.safe_load(saved_path.read_text()) or {}, new)
    if not changes:
        return
    key, before, after = changes[0]
    more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
    message = (f"ckpt_path={ckpt}: {key}={after!r} but the run that wrote it had {key}={before!r}{more} "
               f"({saved_path})")
    if not allow_changes:
        raise ConfigError(f"{message}; set resume_allow_changes=true to resume with the change")
    log.warning("%s; resuming anyway (resume_allow_changes=true)", message)


def keep_earlier(output_dir: Path, names: tuple[str, ...] = ("metrics.csv", "config.yaml")) -> None:
    """Resuming into the same folder: the new run would overwrite these files, so keep each as
    ``<stem>.before-resume-<n><suffix>``, one ``n`` for all of them."""
    present = [name for name in names if (output_dir / name).exists()]
    if not present:
        return
    n = 1
    while any((output_dir / f"{Path(name).stem}.before-resume-{n}{Path(name).suffix}").exists() for name in names):
        n += 1
    for name in present:
        (output_dir / name).rename(output_dir / f"{Path(name).stem}.before-resume-{n}{Path(name).suffix}")
