"""The run table of ``alignlab-compare``: per group and metric, the final value (last logged) and the best (max,
or min for losses, KL and lengths), as mean ± std over the group's runs (seeds)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from alignlab.compare.per_prompt import markdown
from alignlab.compare.runs import Run, group_key

LOWER_IS_BETTER = ("loss", "kl", "length", "perplexity", "ppl", "nll")


def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def final_and_best(run: Run, metric: str) -> tuple[float, float]:
    values = run.values(metric).dropna()
    if values.empty:
        return math.nan, math.nan
    best = values.min() if lower_is_better(metric) else values.max()
    return float(values.iloc[-1]), float(best)


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
    rows = []
    for _, row in table.iterrows():
        cells = [str(row[k]) for k in keys] + [str(row["n"]), row["status"]]
        cells += [_cell(row[f"{m} final mean"], row[f"{m} final std"], row[f"{m} final n"], row["n"]) for m in metrics]
        cells += [_cell(row[f"{m} best mean"], row[f"{m} best std"], row[f"{m} best n"], row["n"]) for m in best_cols]
        rows.append(cells)
    return markdown(header, rows)
