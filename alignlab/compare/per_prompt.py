"""Per-prompt statistics for ``alignlab-compare``: group means with bootstrap intervals, paired differences against
a baseline group, raw and length-controlled win rates, and a head-to-head between two runs' answers.

All of it reads the runs' ``records/<evaluation>.jsonl`` (:mod:`alignlab.records`), one row per prompt, arm and
sample, and computes with :mod:`alignlab.stats`, whose unit of resampling is the prompt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    prompt_means,
    sign_flip_p_value,
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

    ``p_value``: two-sided sign-flip test of the per-prompt win rates minus 0.5 (does a differ from a tie?).
    ``pairs`` answers compared (failures: the evaluator could not tell, left out); ``only_a``/``only_b``: prompts
    one run has and the other lacks. ``length_controlled`` is None when the records carry no lengths."""

    win_rate: Interval
    p_value: float
    length_controlled: LengthControlled | None
    pairs: int
    failures: int
    only_a: int
    only_b: int


def pair_answers(records_a: pd.DataFrame, records_b: pd.DataFrame) -> pd.DataFrame:
    """a's and b's answers on the same prompt, seed and sample index (several runs of a side with the same seed:
    paired in order, as many as the fewer has); columns ``prompt_id``, ``seed``, ``sample``, ``prompt``,
    ``answer_a``, ``answer_b``, ``length_a``, ``length_b``."""
    keys = ["prompt_id", "seed", "sample"]

    def ordered(records: pd.DataFrame) -> pd.DataFrame:
        rows = records.dropna(subset=["answer"]).copy()
        for key in ("seed", "sample"):  # numeric, so that None and NaN pair alike on both sides
            rows[key] = pd.to_numeric(rows[key], errors="coerce")
        rows = rows.sort_values(keys, kind="stable")
        return rows.assign(k=rows.groupby(keys, dropna=False).cumcount())[[*keys, "k", "prompt", "answer", "length"]]

    merged = ordered(records_a).merge(ordered(records_b).drop(columns="prompt"), on=[*keys, "k"],
                                      suffixes=("_a", "_b"))
    return merged.drop(columns="k").reset_index(drop=True)


def head_to_head(records_a: pd.DataFrame, records_b: pd.DataFrame, judge: Judge,
                 resampling: Resampling = Resampling(),
                 meta: Mapping[str, dict[str, Any]] | None = None) -> HeadToHead:
    """Ask ``judge`` (the :mod:`alignlab.judges.base` contract) which of two runs' answers is better on the
    prompts both have, a's answer first (a judge that scores both orders averages them itself). ``meta``: per
    prompt id, what the judge reads besides the answers (e.g. the expected answer), see :func:`judge_metadata`.

    The win rate counts ties half and is a mean over prompts (a prompt's pairs pooled) with a bootstrap interval
    resampling prompts; with lengths in the records, the length-controlled win rate comes with it."""
    pairs = pair_answers(records_a, records_b)
    ids_a, ids_b = set(records_a["prompt_id"]), set(records_b["prompt_id"])
    if pairs.empty:
        raise DataError(f"no answers to compare: the two sides share {len(ids_a & ids_b)} prompts but no answer on "
                        "the same prompt, seed and sample index")
    meta = meta or {}
    prompts = ["" if p is None or (isinstance(p, float) and math.isnan(p)) else str(p) for p in pairs["prompt"]]
    verdicts = judge(prompts, list(zip(pairs["answer_a"], pairs["answer_b"], strict=True)),
                     [{**meta.get(pid, {}), "prompt_id": pid} for pid in pairs["prompt_id"]]).prob_first
    probs = np.array([math.nan if v is None else float(v) for v in verdicts])
    outcomes = pd.DataFrame({"prompt_id": pairs["prompt_id"], WIN_RATE: win_outcomes(probs)})
    rate = bootstrap_mean(outcomes, WIN_RATE, resampling.n, resampling.seed, resampling.level)
    p = sign_flip_p_value(prompt_means(outcomes, WIN_RATE)[WIN_RATE].to_numpy() - 0.5, seed=resampling.seed)
    lengths = pairs[["length_a", "length_b"]].apply(pd.to_numeric, errors="coerce")
    lc = None
    if lengths.notna().all(axis=1).any():
        lc = length_controlled_win_rate(probs, lengths["length_a"].to_numpy(), lengths["length_b"].to_numpy(),
                                        pairs["prompt_id"].to_numpy(), resampling.n, resampling.seed,
                                        resampling.level)
    return HeadToHead(rate, p, lc, len(pairs), int(np.isnan(probs).sum()), len(ids_a - ids_b), len(ids_b - ids_a))


def parse_head_to_head(text: str) -> tuple[str, str, str]:
    """``key=value_a,value_b`` of ``--head-to-head`` as (key, value_a, value_b)."""
    key, _, values = text.partition("=")
    sides = values.split(",")
    if not key or len(sides) != 2 or not all(sides):
        raise ConfigError(f"--head-to-head {text}: expected KEY=VALUE_A,VALUE_B (e.g. objective=oaif,dpo)")
    return key, sides[0], sides[1]


def group_rows(frame: pd.DataFrame, key: str, value: str) -> pd.DataFrame:
    """The rows of the runs whose ``key`` is ``value`` (``frame`` read by :func:`load_records` with ``by=[key]``)."""
    rows = frame[frame["group"] == (value,)]
    if rows.empty:
        values = sorted({g[0] for g in frame["group"]})
        raise DataError(f"--head-to-head: no records of a run with {key}={value} (values: {', '.join(values)})")
    return rows


def at_common_step(a: pd.DataFrame, b: pd.DataFrame,
                   step: int | None) -> tuple[pd.DataFrame, pd.DataFrame, int | None]:
    """a's and b's rows at ``step``, or (``None``) at the last step both measured; records without steps are
    kept whole. Returns the rows and the step."""
    steps_a, steps_b = (pd.to_numeric(x["step"], errors="coerce") for x in (a, b))
    if step is None and steps_a.isna().all() and steps_b.isna().all():
        return a, b, None
    common = set(steps_a.dropna()) & set(steps_b.dropna())
    if step is None and not common:
        raise DataError(f"--head-to-head: no step that both sides measured (steps: {sorted(set(steps_a.dropna()))}"
                        f" and {sorted(set(steps_b.dropna()))}); choose one with --step")
    chosen = step if step is not None else int(max(common))
    if chosen not in common:
        raise DataError(f"--step {chosen}: not measured by both sides (steps: {sorted(set(steps_a.dropna()))} and "
                        f"{sorted(set(steps_b.dropna()))})")
    return a[steps_a == chosen], b[steps_b == chosen], chosen


@dataclass(frozen=True)
class PromptMetadata:
    """The rows of a prompt file (``--prompts``), by stable prompt id and by question text: what a judge reads
    about each prompt (its expected answer, ...)."""

    source: str
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_text: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> PromptMetadata:
        """Any file or hub dataset a :class:`~alignlab.data.prompt_set.PromptSet` reads, every row kept (no split);
        ids as the records compute them (:func:`~alignlab.data.prompt_set.stable_prompt_id`)."""
        from alignlab.data.prompt_set import PromptSet, question_text, stable_prompt_id

        def parse(record) -> tuple[str, str | None, dict[str, Any]]:
            prompt = record.row.get("prompt")
            return stable_prompt_id(record), question_text(prompt) if prompt else None, record.row

        train, val = PromptSet(str(path), val_fraction=0, on_bad_row="error").read(parse, {})
        rows = train + val
        return cls(str(path), {pid: row for pid, _, row in rows},
                   {text: row for _, text, row in rows if text is not None})

    def find(self, prompt_id: str, prompt: Any) -> dict[str, Any] | None:
        """The row of this prompt: by its id, else by its text."""
        return self.by_id.get(str(prompt_id)) or self.by_text.get(prompt if isinstance(prompt, str) else None)


def meta_keys(judge: Judge) -> list[str]:
    """The prompt metadata a judge reads: its ``answer_key`` (rule, reference similarity) and that of the judge it
    wraps (word budget)."""
    own = getattr(judge, "answer_key", None)
    inner = getattr(judge, "judge", None)
    return ([own] if isinstance(own, str) else []) + (meta_keys(inner) if inner is not None else [])


def judge_metadata(records: pd.DataFrame, prompts: PromptMetadata | None,
                   keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per prompt id of ``records``, its row of ``prompts`` (matched by id, else by text); a DataError naming the
    prompt and the key when the judge needs a key (``keys``) that prompt has no value for."""
    found = {}
    for pid, text in records[["prompt_id", "prompt"]].drop_duplicates("prompt_id").itertuples(index=False):
        row = prompts.find(pid, text) if prompts is not None else None
        for key in keys:
            if row is None or row.get(key) in (None, ""):
                where = ("give --prompts FILE with that column" if prompts is None else
                         f"--prompts {prompts.source} has no row for it (by id or by text)" if row is None else
                         f"its row in --prompts {prompts.source} has none")
                raise DataError(f"prompt {pid}: the evaluator needs its {key!r}; {where}")
        found[pid] = row or {}
    return found


def head_to_head_row(h: HeadToHead, name_a: str, name_b: str, step: int | None) -> dict[str, Any]:
    """One head-to-head as a flat row (``head_to_head.csv``): the groups, the step, A's win rate with its interval,
    p, the length-controlled win rate, pairs and prompts."""
    lc = h.length_controlled
    return {"a": name_a, "b": name_b, "step": step, "win_rate": h.win_rate.mean, "low": h.win_rate.low,
            "high": h.win_rate.high, "p": h.p_value, "lc win_rate": lc.win_rate if lc else math.nan,
            "lc low": lc.low if lc else math.nan, "lc high": lc.high if lc else math.nan, "pairs": h.pairs,
            "prompts": h.win_rate.n, "failures": h.failures, "only_a": h.only_a, "only_b": h.only_b}


def head_to_head_markdown(row: dict[str, Any], level: float) -> str:
    """A :func:`head_to_head_row` as the Markdown table ``alignlab-compare`` prints."""
    header = ["", f"win rate [{level:.0%} interval]", "p (vs 0.5)", "length-controlled", "pairs", "prompts"]
    return markdown(header, [[f"{row['a']} vs {row['b']}", interval_text(row["win_rate"], row["low"], row["high"]),
                              p_text(row["p"]), interval_text(row["lc win_rate"], row["lc low"], row["lc high"]),
                              row["pairs"], row["prompts"]]])


# --- Markdown --------------------------------------------------------------------------------------------------

def interval_text(mean: float, low: float, high: float, signed: bool = False) -> str:
    """``0.711 [0.656, 0.766]`` (3 significant digits; ``signed``: ``+0.0104 [...]``). A mean within 1e-12 of zero,
    the rounding left by averaging differences that cancel, is written 0."""
    if math.isnan(mean):
        return "-"
    mean = 0.0 if abs(mean) < 1e-12 else mean
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
