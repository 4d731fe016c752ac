"""``alignlab-compare``: one table (and plots) of chosen metrics over runs, grouped by any config value.

    alignlab-compare outputs/sweeps/loss_beta/2026-11-30_18-40-01.123456 --by loss,loss.beta
    alignlab-compare loss_beta --metrics val/rewards/accuracies,eval/samples/policy/mean_length --by loss
    alignlab-compare runs/a runs/b --wandb-dir runs/c/wandb          # W&B offline runs too
    alignlab-compare --wandb-project me/alignlab --wandb-group loss_beta/2026-11-30_18-40-01.123456 --by loss

Sources: run folders (``metrics.csv``, ``config.yaml``, ``run_info.json``, ``summary.json``, ``eval/eval.json``);
any folder above them (a multirun or sweep folder: its ``sweep_summary.json`` adds the jobs that failed); a sweep
name (its latest launch under ``outputs/sweeps/NAME``); W&B runs, online through the public API or offline from
their ``.wandb`` files. A run folder with nothing logged (a job killed at start) is named and left out; one killed
mid-run counts with what it logged, marked ``unfinished``.

Per group and metric the table gives the final value (last logged) and the best (max, or min for losses, KL and
lengths), as mean ± std over the group's runs (seeds). Output: the table on stdout, ``comparison.md`` and
``comparison.csv``, a learning-curve PNG per metric logged over steps, and a bar chart per metric.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

DEFAULT_METRICS = ("val/rewards/accuracies", "val/rewards/margins", "val/loss")
LOWER_IS_BETTER = ("loss", "kl", "length", "perplexity", "ppl", "nll")
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
    """Nested dicts to dotted keys; lists of scalars kept; anything else (lists of records) left out."""
    flat: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif _is_scalar(data) or (isinstance(data, list) and all(_is_scalar(v) for v in data)):
        flat[prefix] = data
    return flat


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
    if not metrics_csv.is_file() and not eval_json.is_file():
        return f"{folder}: nothing logged (no metrics.csv): killed before its first step?"
    run = Run(name=folder.name, source=str(folder))
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


# --- table and plots -------------------------------------------------------------------------------------------

def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def final_and_best(run: Run, metric: str) -> tuple[float, float]:
    values = run.values(metric).dropna()
    if values.empty:
        return math.nan, math.nan
    best = values.min() if lower_is_better(metric) else values.max()
    return float(values.iloc[-1]), float(best)


def group_key(run: Run, by: list[str]) -> tuple:
    return tuple("-" if run.param(k) is None else run.param(k) for k in by)


def compare_table(runs: list[Run], metrics: list[str], by: list[str]) -> pd.DataFrame:
    """One row per group (per run when ``by`` is empty): ``n`` and, per metric, final and best mean and std."""
    keyed: dict[tuple, list[Run]] = {}
    for run in runs:
        keyed.setdefault(group_key(run, by) if by else (run.name,), []).append(run)
    rows = []
    for key in sorted(keyed, key=lambda k: tuple(str(v) for v in k)):
        group = keyed[key]
        row: dict[str, Any] = dict(zip(by or ["run"], key, strict=True))
        row["n"] = len(group)
        statuses = sorted({r.status for r in group} - {"finished"})
        row["status"] = ",".join(statuses) if statuses else "finished"
        for metric in metrics:
            pairs = [final_and_best(r, metric) for r in group]
            for i, kind in enumerate(("final", "best")):
                values = pd.Series([p[i] for p in pairs]).dropna()
                row[f"{metric} {kind} mean"] = values.mean() if len(values) else math.nan
                row[f"{metric} {kind} std"] = values.std(ddof=1) if len(values) > 1 else math.nan
                row[f"{metric} {kind} n"] = len(values)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean: float, std: float, n: int, size: int) -> str:
    if math.isnan(mean):
        return "-"
    text = f"{mean:.4g}" + (f" ± {std:.2g}" if not math.isnan(std) else "")
    return text + (f" ({n} of {size})" if n < size else "")


def to_markdown(table: pd.DataFrame, metrics: list[str], by: list[str]) -> str:
    keys = by or ["run"]
    best_cols = [m for m in metrics if not table.empty and
                 (table[f"{m} best mean"].fillna(0) != table[f"{m} final mean"].fillna(0)).any()]
    header = [*keys, "n", "status", *(f"{m} (final)" for m in metrics), *(f"{m} (best)" for m in best_cols)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row[k]) for k in keys] + [str(row["n"]), row["status"]]
        cells += [_cell(row[f"{m} final mean"], row[f"{m} final std"], row[f"{m} final n"], row["n"]) for m in metrics]
        cells += [_cell(row[f"{m} best mean"], row[f"{m} best std"], row[f"{m} best n"], row["n"]) for m in best_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")


def plot(runs: list[Run], metrics: list[str], by: list[str], out_dir: Path) -> list[Path]:
    """A learning curve (mean over the group's runs, band = ± std) per metric logged at several steps, and a bar
    chart of final values per group (error bar = std over runs) per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keyed: dict[str, list[Run]] = {}
    for run in runs:
        label = ", ".join(f"{k}={v}" for k, v in zip(by, group_key(run, by), strict=True)) if by else run.name
        keyed.setdefault(label, []).append(run)
    written = []
    for metric in metrics:
        curves = {label: [r.values(metric) for r in group] for label, group in keyed.items()}
        if any(len(s) > 1 for series in curves.values() for s in series):
            fig, ax = plt.subplots(figsize=(7, 4.2))
            for label, series in sorted(curves.items()):
                frame = pd.concat([s for s in series if len(s) > 1], axis=1) if any(len(s) > 1 for s in series) \
                    else None
                if frame is None:
                    continue
                mean, std = frame.mean(axis=1).sort_index(), frame.std(axis=1).sort_index()
                ax.plot(mean.index, mean.values, marker="." if len(mean) < 30 else None, label=label)
                if frame.shape[1] > 1:
                    ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2)
            ax.set_xlabel("step")
            ax.set_ylabel(metric)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            written.append(out_dir / f"curve_{_file_name(metric)}.png")
            fig.savefig(written[-1], dpi=120)
            plt.close(fig)
        finals = {label: pd.Series([final_and_best(r, metric)[0] for r in group]).dropna()
                  for label, group in sorted(keyed.items())}
        finals = {label: values for label, values in finals.items() if len(values)}
        if finals:
            fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(finals) + 2), 4.2))
            labels = list(finals)
            ax.bar(range(len(labels)), [v.mean() for v in finals.values()],
                   yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in finals.values()], capsize=4, color="#4c72b0")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel(f"{metric} (final)")
            ax.grid(axis="y", alpha=0.3)
            fig.tight_layout()
            written.append(out_dir / f"bar_{_file_name(metric)}.png")
            fig.savefig(written[-1], dpi=120)
            plt.close(fig)
    return written


# --- command line ----------------------------------------------------------------------------------------------

def compare(runs: list[Run], metrics: list[str] | None, by: list[str], out_dir: Path,
            plots: bool = True) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Table (written as Markdown and CSV) and plots for ``runs``; returns the table, the metrics it covers and
    the problems found (metrics or keys no run has)."""
    problems = []
    logged = set().union(*(r.metric_names() for r in runs)) if runs else set()
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in logged]
    for metric in [m for m in metrics if m not in logged]:
        close = sorted(m for m in logged if metric.split("/")[-1] in m)[:8]
        problems.append(f"metric {metric!r} was logged by no run" + (f" (similar: {', '.join(close)})" if close
                                                                       else ""))
    metrics = [m for m in metrics if m in logged]
    for key in by:
        if all(r.param(key) is None for r in runs):
            problems.append(f"--by {key}: no run has this config key, choice or override")
    table = compare_table(runs, metrics, by)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table, metrics, by)
    (out_dir / "comparison.md").write_text(markdown + "\n")
    table.to_csv(out_dir / "comparison.csv", index=False)
    if plots and metrics:
        plot(runs, metrics, by, out_dir)
    return table, metrics, problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alignlab-compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="run folders, multirun/sweep folders, or sweep names")
    parser.add_argument("--metrics", help=f"comma-separated (default: those of {', '.join(DEFAULT_METRICS)} logged)")
    parser.add_argument("--by", default="", help="comma-separated keys to group by: config groups (loss), config "
                                                  "values (loss.beta, data.variant) or overrides")
    parser.add_argument("--out", type=Path, help="folder for comparison.md/.csv and plots (default: "
                                                 "<the one source>/compare, else outputs/compare/<time>)")
    parser.add_argument("--root", type=Path, default=Path("outputs"), help="where sweep names are looked up")
    parser.add_argument("--wandb-dir", action="append", default=[], type=Path,
                        help="a folder holding W&B offline runs (offline-run-*), searched recursively")
    parser.add_argument("--wandb-project", help="entity/project of online W&B runs")
    parser.add_argument("--wandb-group", help="only this W&B group (a sweep)")
    parser.add_argument("--no-plots", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs, problems = load_local(args.sources, args.root)
    for folder in args.wandb_dir:
        for run_dir in sorted(folder.rglob("offline-run-*")):
            try:
                runs.append(load_wandb_offline(run_dir))
            except (ValueError, OSError) as e:
                problems.append(f"{run_dir}: {e}")
    if args.wandb_project:
        runs.extend(load_wandb_online(args.wandb_project, args.wandb_group))
    if not runs:
        print("alignlab-compare: no runs found" + "".join(f"\n  {p}" for p in problems), file=sys.stderr)
        return 2
    by = [k for k in args.by.split(",") if k]
    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else None
    out_dir = args.out or (Path(resolve_source(args.sources[0], args.root)) / "compare" if len(args.sources) == 1
                           else args.root / "compare" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    _, covered, more = compare(runs, metrics, by, out_dir, plots=not args.no_plots)
    problems += more
    print((out_dir / "comparison.md").read_text(), end="")
    for problem in problems:
        print(f"alignlab-compare: note: {problem}", file=sys.stderr)
    print(f"{len(runs)} runs; table and plots in {out_dir}")
    return 0 if covered else 2


def cli() -> None:
    sys.exit(main())
