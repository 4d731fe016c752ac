"""Plots of ``alignlab-compare`` that read at a glance: learning curves that start at step 0, win rates against
their 0.5 line, intervals as shaded bands, and labels made of the groups' values with the keys as legend title
(never a raw override string such as ``loss.beta=0.1,seed=2``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from alignlab.compare.runs import Run, group_key
from alignlab.compare.tables import final_and_best

CONTEXT = {"val": "validation", "train": "training", "eval": "evaluation", "samples": "sampled answers",
           "rewards": "implicit reward", "judge": "evaluator", "logps": "log-probability"}
WIN_LINE = {"color": "0.35", "linestyle": "--", "linewidth": 1}


def metric_label(metric: str) -> str:
    """``val/samples/win_rate`` -> ``win rate (validation, sampled answers)``."""
    *context, name = metric.split("/")
    words = name.replace("_", " ").replace(".", " ")
    where = ", ".join(CONTEXT.get(part, part.replace("_", " ")) for part in context)
    return f"{words} ({where})" if where else words


def is_win_rate(metric: str) -> bool:
    """A win rate, or an evaluator's probability of a win: 0.5 is "as good as what it was compared with"."""
    return "win_rate" in metric or metric == "verdict"


def file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")


def _varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose values differ between runs: what tells them apart."""
    keys = sorted({k for r in runs for k in r.params if k.startswith("overrides.")})
    return [k.removeprefix("overrides.") for k in keys if len({str(r.params.get(k)) for r in runs}) > 1]


def run_labels(runs: list[Run], by: list[str]) -> tuple[str, dict[str, list[Run]]]:
    """The legend title and each label's runs: the ``--by`` values, or without ``--by`` the values of the
    overrides that differ between runs (run names only when those do not tell the runs apart)."""
    keys = by or _varying_keys(runs)
    labelled: dict[str, list[Run]] = {}
    for run in runs:
        labelled.setdefault(", ".join(str(v) for v in group_key(run, keys)), []).append(run)
    if by or (keys and len(labelled) == len(runs)):
        return ", ".join(keys), labelled
    return "run", {run.name: [run] for run in runs}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Path, metric: str, legend_title: str, note: str, over_groups: bool = False) -> Path:
    """0.5 line for win rates, title, labels, legend and a note on what the band or bars mean; saved to path.
    ``over_groups``: the x axis is the groups (a bar chart), else the step (a curve, one line per group)."""
    if is_win_rate(metric):
        ax.axhline(0.5, **WIN_LINE, label="0.5 (as good as the reference)")
    title = metric_label(metric)
    ax.set_title(f"{title} by {legend_title}" if legend_title and legend_title != "run" else title, fontsize=10)
    ax.set_xlabel(legend_title if over_groups else "step")
    ax.set_ylabel(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=None if over_groups else legend_title, fontsize=7, title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, note, fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _anchor(ax, color, x: float, y: float, step0: float, label: str | None = None) -> None:
    """A hollow step-0 point known without a measurement, joined to the first measured point by a dotted line."""
    ax.plot([0, x], [step0, y], linestyle=":", color=color)
    ax.plot([0], [step0], marker="o", mfc="white", color=color, linestyle="none", label=label)


def plot(runs: list[Run], metrics: list[str], by: list[str], out_dir: Path) -> list[Path]:
    """Per metric: a learning curve (mean over the label's runs, band = ± std over them) where it was logged at
    several steps, and a bar chart of final values (error bar = std over runs)."""
    plt = _pyplot()
    legend_title, labelled = run_labels(runs, by)
    written = []
    for metric in metrics:
        curves = {label: [s for s in (r.values(metric) for r in group) if len(s) > 1]
                  for label, group in labelled.items()}
        if any(curves.values()):
            fig, ax = plt.subplots(figsize=(7, 4.2))
            banded, anchored = any(len(series) > 1 for series in curves.values()), False
            for label, series in sorted(curves.items()):
                if not series:
                    continue
                frame = pd.concat(series, axis=1)
                mean, std = frame.mean(axis=1).sort_index(), frame.std(axis=1).sort_index()
                (line,) = ax.plot(mean.index, mean.values, marker="." if len(mean) < 30 else None, label=label)
                if frame.shape[1] > 1:
                    ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2, color=line.get_color())
                if is_win_rate(metric) and 0 not in mean.index:  # the policy is the reference at step 0
                    _anchor(ax, line.get_color(), mean.index[0], mean.iloc[0], 0.5)
                    anchored = True
            ax.set_xlim(left=0)
            written.append(_finish(fig, ax, out_dir / f"curve_{file_name(metric)}.png", metric, legend_title,
                                   "; ".join([*(["band: ± std over runs (seeds)"] if banded else []),
                                              *(["hollow: step 0, where the policy is the reference model"]
                                                if anchored else [])])))
        finals = {label: pd.Series([final_and_best(r, metric)[0] for r in group]).dropna()
                  for label, group in sorted(labelled.items())}
        finals = {label: values for label, values in finals.items() if len(values)}
        if finals:
            fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(finals) + 2), 4.2))
            ax.bar(range(len(finals)), [v.mean() for v in finals.values()],
                   yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in finals.values()], capsize=4, color="#4c72b0")
            ax.set_xticks(range(len(finals)), list(finals), rotation=30, ha="right", fontsize=7)
            written.append(_finish(fig, ax, out_dir / f"bar_{file_name(metric)}.png", metric, legend_title,
                                   "final value; error bar: std over runs (seeds)", over_groups=True))
    return written


def plot_records(curves: dict[str, pd.DataFrame], finals: pd.DataFrame, metrics: list[str], by: list[str],
                 out_dir: Path, name: str, level: float, when: str = "each run's last step") -> list[Path]:
    """From per-prompt records: per metric a curve over steps (``curves[metric]``, from
    :func:`alignlab.compare.per_prompt.curve_table`) with its bootstrap interval as a band and its step-0 point,
    and a chart of each group's mean at the compared step with its interval (``finals``, from
    :func:`alignlab.compare.per_prompt.group_intervals`, measured at ``when``)."""
    plt = _pyplot()
    legend_title = ", ".join(by) or "run"
    band = f"{level:.0%} bootstrap interval over prompts"
    written = []
    for metric in metrics:
        curve = curves.get(metric)
        if curve is not None and (curve["source"] == "measured").any() and curve["step"].nunique() > 1:
            fig, ax = plt.subplots(figsize=(7, 4.2))
            for group, points in curve.groupby("group", sort=True):
                measured = points[points["source"] == "measured"]
                (line,) = ax.plot(measured["step"], measured["mean"], marker=".", label=", ".join(group))
                ax.fill_between(measured["step"], measured["low"], measured["high"], alpha=0.2,
                                color=line.get_color())
                for _, zero in points[points["source"] != "measured"].iterrows():
                    _anchor(ax, line.get_color(), measured["step"].iloc[0], measured["mean"].iloc[0], zero["mean"])
            ax.set_xlim(left=0)
            anchored = (curve["source"] != "measured").any()
            written.append(_finish(fig, ax, out_dir / f"curve_{name}_{file_name(metric)}.png", metric,
                                   legend_title, f"band: {band}" + ("; hollow: step 0, where the policy is the "
                                                                   "reference model" if anchored else "")))
        if not finals.empty and finals[f"{metric} mean"].notna().any():
            fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(finals) + 2), 4.2))
            means, lows, highs = (finals[f"{metric} {k}"].to_numpy(dtype=float) for k in ("mean", "low", "high"))
            errors = [[0 if math.isnan(lo) else m - lo for m, lo in zip(means, lows, strict=True)],
                      [0 if math.isnan(hi) else hi - m for m, hi in zip(means, highs, strict=True)]]
            ax.errorbar(range(len(finals)), means, yerr=errors, fmt="o", capsize=4, color="#4c72b0")
            ax.set_xticks(range(len(finals)), [", ".join(g) for g in finals["group"]], rotation=30, ha="right",
                          fontsize=7)
            written.append(_finish(fig, ax, out_dir / f"points_{name}_{file_name(metric)}.png", metric,
                                   legend_title, f"mean over prompts at {when}; error bar: {band}", over_groups=True))
    return written
