"""Per-prompt statistics for ``alignlab-compare``: group means with bootstrap intervals, paired differences against
a baseline group, raw and length-controlled win rates, and a head-to-head between two runs' answers.

All of it reads the runs' ``records/<evaluation>.jsonl`` (:mod:`alignlab.records`), one row per prompt, arm and
sample, and computes with :mod:`alignlab.stats`, whose unit of resampling is the prompt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alignlab.compare.runs import Run, group_key
from alignlab.errors import ConfigError, DataError
from alignlab.judges.base import Judge
from alignlab.records import records_path
from alignlab.stats import (
    Interval,
    LengthControlled,
    bootstrap_mean,
    length_controlled_win_rate,
    paired_difference,
    win_outcomes,
)

WIN_RATE = "win_rate"  # derived from ``verdict``: win 1, tie 0.5, loss 0


@dataclass(frozen=True)
class Resampling:
    """How intervals are drawn: ``n`` bootstrap resamples of prompts, ``seed``, confidence ``level``."""

    n: int = 2000
    seed: int = 0
    level: float = 0.95


# --- reading ---------------------------------------------------------------------------------------------------

def expand_parts(frame: pd.DataFrame) -> pd.DataFrame:
    """``reward_parts`` dicts as ``reward_parts.<name>`` columns, so each part is a metric of its own."""
    if "reward_parts" not in frame.columns or not frame["reward_parts"].map(lambda v: isinstance(v, dict)).any():
        return frame
    parts = pd.json_normalize([v if isinstance(v, dict) else {} for v in frame["reward_parts"]])
    return pd.concat([frame.reset_index(drop=True), parts.add_prefix("reward_parts.")], axis=1)


def load_records(runs: list[Run], evaluation: str, by: list[str]) -> pd.DataFrame:
    """Every run's ``records/<evaluation>.jsonl`` as one frame, with the run's folder (``run``) and its ``--by``
    values (its name when ``by`` is empty) as a tuple of strings (``group``)."""
    from alignlab.records import read_records

    frames = []
    for run in runs:
        path = records_path(run.folder, evaluation) if run.folder is not None else None
        if path is None or not path.is_file():
            continue
        frame = expand_parts(read_records(path))
        frame["run"] = str(run.folder)
        frame["group"] = [tuple(str(v) for v in (group_key(run, by) if by else (run.name,)))] * len(frame)
        frames.append(frame)
    if not frames:
        raise DataError(f"--records {evaluation}: no run has records/{evaluation}.jsonl")
    return pd.concat(frames, ignore_index=True)


def with_metric(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``frame`` with ``metric`` as a float column (``win_rate`` derived from ``verdict``), or a DataError naming
    the fields the records do have."""
    source = "verdict" if metric == WIN_RATE else metric
    values = pd.to_numeric(frame[source], errors="coerce") if source in frame.columns else None
    if values is None or values.isna().all():
        numeric = sorted(c for c in frame.columns if c not in ("sample", "step", "seed")
                         and pd.to_numeric(frame[c], errors="coerce").notna().any())
        raise DataError(f"--metric {metric}: no record has a value for it (fields with values: "
                        f"{', '.join([*numeric, WIN_RATE] if 'verdict' in numeric else numeric)})")
    frame = frame.copy()
    frame[metric] = win_outcomes(values.to_numpy()) if metric == WIN_RATE else values.astype(float)
    return frame


def at_step(frame: pd.DataFrame, step: int | None) -> pd.DataFrame:
    """Rows measured at ``step``, or (``None``) at each run's last measured step."""
    steps = pd.to_numeric(frame["step"], errors="coerce")
    if step is not None:
        return frame[steps == step]
    last = steps.groupby(frame["run"]).transform("max")
    return frame[(steps == last) | last.isna()]


def of_arm(frame: pd.DataFrame, arm: str) -> pd.DataFrame:
    rows = frame[frame["arm"] == arm]
    if rows.empty:
        raise DataError(f"--arm {arm}: no record of that arm (arms: {', '.join(map(str, frame['arm'].unique()))})")
    return rows


# --- tables ----------------------------------------------------------------------------------------------------

def group_intervals(frame: pd.DataFrame, metrics: list[str], resampling: Resampling) -> pd.DataFrame:
    """One row per group: runs, prompts and, per metric, the mean over prompts with its interval and ``n``."""
    rows = []
    for group, rows_of_group in frame.groupby("group", sort=True):
        row: dict[str, Any] = {"group": group, "runs": rows_of_group["run"].nunique(),
                               "prompts": rows_of_group["prompt_id"].nunique()}
        for metric in metrics:
            estimate = bootstrap_mean(rows_of_group, metric, resampling.n, resampling.seed, resampling.level)
            row.update({f"{metric} mean": estimate.mean, f"{metric} low": estimate.low,
                        f"{metric} high": estimate.high, f"{metric} n": estimate.n})
        rows.append(row)
    return pd.DataFrame(rows)


def parse_baseline(text: str, by: list[str]) -> tuple[int, str]:
    """``key=value`` of ``--baseline`` as (position of key in ``--by``, value)."""
    key, sep, value = text.partition("=")
    if not sep or key not in by:
        raise ConfigError(f"--baseline {text}: expected KEY=VALUE with KEY one of --by ({', '.join(by) or 'none'})")
    return by.index(key), value


def paired_table(frame: pd.DataFrame, metrics: list[str], baseline: tuple[int, str],
                 resampling: Resampling) -> pd.DataFrame:
    """Each group against the baseline group that differs from it only in the baseline key: per metric, the
    mean per-prompt difference (group minus baseline) with its interval, p-value and pairing counts."""
    position, value = baseline
    groups = dict(tuple(frame.groupby("group", sort=True)))
    if not any(g[position] == value for g in groups):
        values = sorted({g[position] for g in groups})
        raise ConfigError(f"--baseline: no group has the value {value!r} (values: {', '.join(values)})")
    rows = []
    for group, rows_of_group in groups.items():
        reference = (*group[:position], value, *group[position + 1:])
        if group[position] == value or reference not in groups:
            continue
        row: dict[str, Any] = {"group": group, "baseline": reference}
        for metric in metrics:
            d = paired_difference(groups[reference], rows_of_group, metric, resampling.n, resampling.seed,
                                  resampling.level)
            row.update({f"{metric} diff": d.mean, f"{metric} low": d.low, f"{metric} high": d.high,
                        f"{metric} p": d.p_value, f"{metric} n": d.n, f"{metric} only baseline": d.only_a,
                        f"{metric} only this": d.only_b})
        rows.append(row)
    return pd.DataFrame(rows)


def length_controlled_table(frame: pd.DataFrame, resampling: Resampling) -> pd.DataFrame:
    """Per group: the raw and length-controlled win rate of the answers over their ``reference_answer`` (from
    ``verdict``, ``length`` and ``reference_length``), with intervals over prompts."""
    missing = [c for c in ("verdict", "length", "reference_length") if c not in frame.columns
               or pd.to_numeric(frame[c], errors="coerce").isna().all()]
    if missing:
        raise DataError(f"--lc: the records have no {', '.join(missing)}")
    rows = []
    for group, g in frame.groupby("group", sort=True):
        lc = length_controlled_win_rate(pd.to_numeric(g["verdict"], errors="coerce").to_numpy(),
                                        pd.to_numeric(g["length"], errors="coerce").to_numpy(),
                                        pd.to_numeric(g["reference_length"], errors="coerce").to_numpy(),
                                        g["prompt_id"].to_numpy(), resampling.n, resampling.seed, resampling.level)
        rows.append({"group": group, **{f"lc {k}": v for k, v in vars(lc).items()}})
    return pd.DataFrame(rows)


def curve_table(frame: pd.DataFrame, metric: str, arm: str, resampling: Resampling) -> pd.DataFrame:
    """Per group and step: mean with interval over prompts of ``arm``'s rows (``frame``: every arm and step).

    When a group has no row at step 0, its step-0 point is added where it is known without a measurement: the
    policy at step 0 is the reference model, so a win rate over the reference is 0.5 there, and any other
    metric is the ``reference`` arm's (every step pooled). ``source`` says which."""
    rows = []
    for group, g in frame.groupby("group", sort=True):
        mine = g[g["arm"] == arm]
        steps = pd.to_numeric(mine["step"], errors="coerce")
        for step in sorted(steps.dropna().unique()):
            e = bootstrap_mean(mine[steps == step], metric, resampling.n, resampling.seed, resampling.level)
            rows.append({"group": group, "step": step, **vars(e), "source": "measured"})
        if 0 in set(steps):
            continue
        reference = g[g["arm"] == "reference"]
        if metric == WIN_RATE:
            rows.append({"group": group, "step": 0, "mean": 0.5, "low": 0.5, "high": 0.5, "n": 0,
                         "source": "policy = reference"})
        elif arm != "reference" and reference[metric].notna().any():
            e = bootstrap_mean(reference, metric, resampling.n, resampling.seed, resampling.level)
            rows.append({"group": group, "step": 0, **vars(e), "source": "reference arm"})
    columns = ["group", "step", "mean", "low", "high", "n", "source"]
    return pd.DataFrame(rows, columns=columns).sort_values(["group", "step"], kind="stable")


# --- head to head ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadToHead:
    """Run a's win rate over run b under one evaluator (ties half), over the prompts both answered.

    ``pairs`` answers compared (failures: the evaluator could not tell, left out); ``only_a``/``only_b``: prompts
    one run has and the other lacks. ``length_controlled`` is None when the records carry no lengths."""

    win_rate: Interval
    length_controlled: LengthControlled | None
    pairs: int
    failures: int
    only_a: int
    only_b: int


def pair_answers(records_a: pd.DataFrame, records_b: pd.DataFrame) -> pd.DataFrame:
    """On each prompt both have, a's and b's answers paired in (seed, sample) order, as many as the fewer has;
    columns ``prompt_id``, ``prompt``, ``answer_a``, ``answer_b``, ``length_a``, ``length_b``."""
    def ordered(records: pd.DataFrame) -> pd.DataFrame:
        rows = records.dropna(subset=["answer"]).sort_values(["prompt_id", "seed", "sample"], kind="stable")
        return rows.assign(k=rows.groupby("prompt_id").cumcount())[["prompt_id", "k", "prompt", "answer", "length"]]

    merged = ordered(records_a).merge(ordered(records_b).drop(columns="prompt"), on=["prompt_id", "k"],
                                      suffixes=("_a", "_b"))
    return merged.drop(columns="k").reset_index(drop=True)


def head_to_head(records_a: pd.DataFrame, records_b: pd.DataFrame, judge: Judge,
                 resampling: Resampling = Resampling()) -> HeadToHead:
    """Ask ``judge`` (the :mod:`alignlab.judges.base` contract) which of two runs' answers is better on the
    prompts both have, a's answer first (a judge that scores both orders averages them itself).

    The win rate counts ties half and is a mean over prompts (a prompt's pairs pooled) with a bootstrap interval
    resampling prompts; with lengths in the records, the length-controlled win rate comes with it."""
    pairs = pair_answers(records_a, records_b)
    ids_a, ids_b = set(records_a["prompt_id"]), set(records_b["prompt_id"])
    prompts = ["" if p is None or (isinstance(p, float) and math.isnan(p)) else str(p) for p in pairs["prompt"]]
    verdicts = judge(prompts, list(zip(pairs["answer_a"], pairs["answer_b"], strict=True)),
                     [{"prompt_id": pid} for pid in pairs["prompt_id"]]).prob_first
    probs = np.array([math.nan if v is None else float(v) for v in verdicts])
    outcomes = pd.DataFrame({"prompt_id": pairs["prompt_id"], WIN_RATE: win_outcomes(probs)})
    rate = bootstrap_mean(outcomes, WIN_RATE, resampling.n, resampling.seed, resampling.level)
    lengths = pairs[["length_a", "length_b"]].apply(pd.to_numeric, errors="coerce")
    lc = None
    if lengths.notna().all(axis=1).any():
        lc = length_controlled_win_rate(probs, lengths["length_a"].to_numpy(), lengths["length_b"].to_numpy(),
                                        pairs["prompt_id"].to_numpy(), resampling.n, resampling.seed,
                                        resampling.level)
    return HeadToHead(rate, lc, len(pairs), int(np.isnan(probs).sum()), len(ids_a - ids_b), len(ids_b - ids_a))


# --- Markdown --------------------------------------------------------------------------------------------------

def interval_text(mean: float, low: float, high: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "-"
    text = f"{mean:+.3g}" if signed else f"{mean:.3g}"
    return text + ("" if math.isnan(low) else f" [{low:.3g}, {high:.3g}]")


def p_text(p: float) -> str:
    return "-" if math.isnan(p) else f"p={p:.2g}" if p >= 0.001 else "p<0.001"


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


def intervals_markdown(table: pd.DataFrame, metrics: list[str], by: list[str]) -> str:
    rows = [[*r["group"], r["runs"], *(f"{interval_text(r[f'{m} mean'], r[f'{m} low'], r[f'{m} high'])} "
                                       f"(n={r[f'{m} n']})" for m in metrics)] for _, r in table.iterrows()]
    return markdown([*by, "runs", *metrics], rows)


def paired_markdown(table: pd.DataFrame, metrics: list[str], by: list[str]) -> str:
    def cell(r: pd.Series, m: str) -> str:
        only = f", only one side: {r[f'{m} only baseline']} + {r[f'{m} only this']}" \
            if r[f"{m} only baseline"] or r[f"{m} only this"] else ""
        return (f"{interval_text(r[f'{m} diff'], r[f'{m} low'], r[f'{m} high'], signed=True)} {p_text(r[f'{m} p'])}"
                f" (n={r[f'{m} n']}{only})")

    rows = [[*r["group"], ", ".join(r["baseline"]), *(cell(r, m) for m in metrics)] for _, r in table.iterrows()]
    return markdown([*by, "vs", *(f"{m} difference" for m in metrics)], rows)


def length_controlled_markdown(table: pd.DataFrame, by: list[str]) -> str:
    rows = [[*r["group"], interval_text(r["lc raw"], r["lc raw_low"], r["lc raw_high"]),
             interval_text(r["lc win_rate"], r["lc low"], r["lc high"]), f"{r['lc length_slope']:+.2f}",
             r["lc n"]] for _, r in table.iterrows()]
    return markdown([*by, "win rate", "length-controlled", "length slope", "prompts"], rows)


def wall_time_lines(root: Path) -> list[str]:
    """A Markdown section of the minutes each run took, from a reproduction's ``run.sh`` log ``<root>/wall_times.txt``
    (lines ``== <run>: <seconds> s``; a rerun's time replaces an interrupted one's), followed by the log's other
    lines (a whole script's time, the load it ran under) as they are; empty when there is no log."""
    file = Path(root) / "wall_times.txt"
    if not file.is_file():
        return []
    times, notes = {}, []
    for line in file.read_text().splitlines():
        if m := re.match(r"== (\S+): (\d+) s$", line):
            times[m.group(1)] = int(m.group(2))
        elif line.strip():
            notes.append(f"- {line.removeprefix('== ')}")
    rows = [[name, f"{seconds / 60:.1f}"] for name, seconds in times.items()]
    rows.append(["total of the runs above", f"{sum(times.values()) / 60:.1f}"])
    explained = ["The log's other lines, as written (an \"all runs it started\" line is the time of one invocation "
                 "of run.sh, which may have resumed after runs an earlier one finished):", "", *notes, ""]
    return ["## Wall times (run.sh, `wall_times.txt`)", "", markdown(["run", "minutes"], rows), "",
            *(explained if notes else [])]
