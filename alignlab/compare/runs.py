"""Runs for ``alignlab-compare`` from every source: local run folders (and the sweeps above them), W&B runs online
through the public API, and W&B offline runs from their ``.wandb`` files.

A run folder holds ``metrics.csv``, ``config.yaml``, ``run_info.json``, ``summary.json``, ``eval/eval.json`` and
``records/*.jsonl`` (per-prompt evaluation records, :mod:`alignlab.records`); a folder with none of the logs (a job
killed at start) is named and left out; one killed mid-run counts with what it logged, marked ``unfinished``. A
sweep folder's ``sweep_summary.json`` adds the jobs that failed before they logged anything.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from alignlab.run_dir import flatten as flatten_config

SKIP_DIRS = {"policy", "checkpoints", "wandb", "eval", ".jobs", ".submitit", ".hydra"}


@dataclass
class Run:
    """One run from any source. ``history`` has a ``step`` column and one column per metric logged over steps;
    ``final`` holds metrics that exist once (evaluation results, W&B summaries)."""

    name: str
    source: str
    params: dict[str, Any] = field(default_factory=dict)  # flat: "loss.beta" -> 0.1, "choices.loss" -> "ipo"
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"step": []}))
    final: dict[str, float] = field(default_factory=dict)
    status: str = "finished"  # finished | unfinished | failed
    folder: Path | None = None  # the run folder (its records/ live there); None for W&B runs

    def param(self, key: str) -> Any:
        """A run's value for ``--by key``: its config-group choice, else the config value (a group's ``name`` when
        the value is a whole group), else a ``key=value`` override or W&B tag."""
        for candidate in (f"choices.{key}", key, f"{key}.name", f"overrides.{key}"):
            if candidate in self.params:
                return self.params[candidate]
        return None

    def metric_names(self) -> set[str]:
        return {c for c in self.history.columns if c != "step"} | set(self.final)

    def values(self, metric: str) -> pd.Series:
        if metric in self.history.columns:
            return self.history.loc[self.history[metric].notna(), ["step", metric]].set_index("step")[metric]
        if metric in self.final:
            return pd.Series([self.final[metric]], index=[None], dtype=float)
        return pd.Series(dtype=float)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """:func:`alignlab.run_dir.flatten`, keeping scalars and lists of scalars: a run's parameters, not its lists of
    records."""
    return {key: value for key, value in flatten_config(data, prefix).items()
            if _is_scalar(value) or (isinstance(value, list) and all(_is_scalar(v) for v in value))}


def _overrides_as_params(overrides: list[str]) -> dict[str, str]:
    params = {}
    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if sep:
            params[f"overrides.{key}"] = value
    return params


def _numeric(flat: dict[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k.replace('.', '/')}": float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


# --- local run folders -----------------------------------------------------------------------------------------

def read_metrics_csv(path: Path) -> pd.DataFrame:
    """Lightning's CSV log, one row per step (last value wins). A line cut off by a killed job is dropped."""
    frame = pd.read_csv(path, on_bad_lines="skip")
    if "step" not in frame.columns or frame.empty:
        return pd.DataFrame({"step": []})
    frame = frame.drop(columns=[c for c in ("epoch",) if c in frame.columns])
    return frame.groupby("step", sort=True).last().reset_index()


def load_run_folder(folder: Path) -> Run | str:
    """A run from its folder, or the reason it cannot be one."""
    metrics_csv = folder / "metrics.csv"
    eval_json = folder / "eval" / "eval.json"
    if not metrics_csv.is_file() and not eval_json.is_file() and not any((folder / "records").glob("*.jsonl")):
        return f"{folder}: nothing logged (no metrics.csv): killed before its first step?"
    run = Run(name=folder.name, source=str(folder), folder=folder)
    if (folder / "config.yaml").is_file():
        run.params.update(flatten(yaml.safe_load((folder / "config.yaml").read_text()) or {}))
    if (folder / "run_info.json").is_file():
        info = json.loads((folder / "run_info.json").read_text())
        run.params.update({f"choices.{k}": v for k, v in info.get("choices", {}).items()})
        run.params.update(_overrides_as_params(info.get("overrides", [])))
    if metrics_csv.is_file():
        run.history = read_metrics_csv(metrics_csv)
    if eval_json.is_file():
        run.final.update(_numeric(flatten(json.loads(eval_json.read_text())), "eval"))
    if (folder / "error.txt").is_file():
        run.status = "failed"
    elif not (folder / "summary.json").is_file():
        run.status = "unfinished"
    return run


def find_run_folders(root: Path) -> list[Path]:
    """``root`` if it is a run folder, else every run folder below it."""
    if (root / "config.yaml").is_file() or (root / "metrics.csv").is_file():
        return [root]
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIP_DIRS):
        found.extend(find_run_folders(child))
    return found


def failed_jobs(root: Path) -> list[Run]:
    """Jobs a sweep summary records as failed whose folders hold no log (they failed before training)."""
    runs = []
    for summary in [root / "sweep_summary.json", *root.glob("*/sweep_summary.json")]:
        if not summary.is_file():
            continue
        for record in json.loads(summary.read_text()).get("records", []):
            run_dir = Path(record.get("run_dir", ""))
            if record.get("status") == "failed" and not (run_dir / "metrics.csv").is_file():
                run = Run(name=run_dir.name or f"job {record['num']}", source=str(summary), status="failed")
                run.params.update(_overrides_as_params(record.get("overrides", [])))
                run.params["error"] = record.get("error", "")
                runs.append(run)
    return runs


def resolve_source(name: str, root: Path) -> Path:
    """A path as given, or a sweep name: the latest launch under ``<root>/sweeps/<name>``."""
    path = Path(name)
    if path.is_file():  # a file of a run folder (metrics.csv, summary.json): its folder
        return path.parent
    if path.exists():
        return path
    launches = sorted(p for p in (root / "sweeps" / name).glob("*") if p.is_dir())
    if not launches:
        raise SystemExit(f"alignlab-compare: {name!r} is neither a folder nor a sweep under {root / 'sweeps'}")
    return launches[-1]


def load_local(sources: list[str], root: Path) -> tuple[list[Run], list[str]]:
    runs, problems = [], []
    for source in sources:
        folder = resolve_source(source, root)
        folders = find_run_folders(folder)
        if not folders:
            problems.append(f"{folder}: no run folders found")
        for run_folder in folders:
            loaded = load_run_folder(run_folder)
            (runs if isinstance(loaded, Run) else problems).append(loaded)
        runs.extend(failed_jobs(folder))
    return runs, problems


# --- W&B -------------------------------------------------------------------------------------------------------

def read_wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B ``.wandb`` file: a 7-byte header, then LevelDB's log format (32 KiB blocks of
    chunks, each ``crc32 | length (2 bytes) | type``; types 1 full, 2 first, 3 middle, 4 last)."""
    data, block, records, pending = path.read_bytes(), 32768, [], b""
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path}: not a W&B run file")
    position = 7
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:  # block trailer padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position: position + 7])
        chunk = data[position + 7: position + 7 + length]
        position += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
        elif kind == 0 and length == 0:  # zero padding up to the end of a block
            position += block - position % block
    return records


def load_wandb_offline(run_dir: Path) -> Run:
    """A W&B offline run (``offline-run-*`` folder) from its ``.wandb`` file: config, tags, history, summary."""
    from wandb.proto import wandb_internal_pb2

    (file,) = run_dir.glob("*.wandb")
    run, rows, summary = Run(name=run_dir.name, source=str(run_dir)), [], {}
    for raw in read_wandb_records(file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.name = record.run.display_name or run.name
            run.params.update(_overrides_as_params(list(record.run.tags)))
            run.params["wandb.group"] = record.run.run_group
        elif kind == "config":
            for item in record.config.update:
                key = item.key or ".".join(item.nested_key)
                run.params.update(flatten(json.loads(item.value_json), key))
        elif kind == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
        elif kind == "exit":
            run.status = "finished" if record.exit.exit_code == 0 else "failed"
        elif kind == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): i.value_json for i in record.summary.update})
    if not any(r for r in rows):
        run.status = "unfinished" if run.status == "finished" else run.status
    run.history = _history_frame(rows)
    return run


def _history_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({"step": []})
    frame = pd.DataFrame(rows)
    step = "trainer/global_step" if "trainer/global_step" in frame.columns else "_step"
    frame = frame.rename(columns={step: "step"})
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("_") or c in ("epoch",)])
    frame = frame.apply(pd.to_numeric, errors="coerce")
    return frame.groupby("step", sort=True).last().reset_index()


def load_wandb_online(project: str, group: str | None = None) -> list[Run]:
    """Runs of a W&B project (``entity/project``) through the public API, optionally one group (one sweep)."""
    import wandb

    api_runs = wandb.Api().runs(project, filters={"group": group} if group else None)
    runs = []
    for api_run in api_runs:
        run = Run(name=api_run.name, source=api_run.url,
                  status={"finished": "finished", "running": "unfinished"}.get(api_run.state, "failed"))
        run.params.update(flatten(dict(api_run.config)))
        run.params.update(_overrides_as_params(list(api_run.tags)))
        run.params["wandb.group"] = api_run.group
        run.history = _history_frame(list(api_run.scan_history()))
        runs.append(run)
    return runs


def group_key(run: Run, by: list[str]) -> tuple:
    """The run's values for the ``--by`` keys (``-`` where it has none): the group it belongs to."""
    return tuple("-" if run.param(k) is None else run.param(k) for k in by)
