"""OPO figures from the per-question records alone (``records/opo.jsonl`` and ``records/opo_edit.jsonl``).

``alignlab-opo`` writes its ``results.json`` with these functions and ``experiments/opo/report.py`` rebuilds its
tables from the committed records with them, so a number in a report and in a run folder has one definition.
Intervals are :func:`alignlab.stats.bootstrap_mean` over questions (the unit of resampling; the draws of the
random-rules condition are pooled per question first).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from alignlab.compare.per_prompt import markdown
from alignlab.stats import Interval, bootstrap_mean

MODEL = "model"  # the ``answerer`` of the evaluated model's rows; baselines are named as in BASELINES
SUBSETS = ("all", "copyable", "inference")  # inference: the correct option is not copyable from the gold rule


def frame(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)


def subset(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of questions in subset ``name`` of :data:`SUBSETS`."""
    if name == "all":
        return df
    return df[df["copyable"].astype(bool) == (name == "copyable")]


def interval(df: pd.DataFrame, metric: str = "correct", resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``{"mean", "ci95": [low, high], "n"}`` of ``metric`` over questions (NaN figures when there are none)."""
    if df.empty:
        return {"mean": math.nan, "ci95": [math.nan, math.nan], "n": 0}
    est: Interval = bootstrap_mean(df, metric, n_resamples=resamples, seed=seed)
    return {"mean": est.mean, "ci95": [est.low, est.high], "n": est.n}


def recall(df: pd.DataFrame) -> float:
    """Share of questions whose gold rules are all among the retrieved ones (the model's rows of one top-k arm,
    which hold ``gold`` and ``retrieved``)."""
    rows = df.drop_duplicates("prompt_id")
    return float(pd.Series([set(g) <= set(r) for g, r in zip(rows["gold"], rows["retrieved"], strict=True)]).mean())


def set_summary(rows: list[dict[str, Any]] | pd.DataFrame, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """For one question set: per condition (arm) and answerer, accuracy with its interval on all questions, the
    copyable ones and the inference ones; the accuracy of each draw (random rules); mean rules shown; and the
    retriever's recall@k for each top-k arm."""
    df = frame(rows)
    out: dict[str, Any] = {"conditions": {}, "recall": {}}
    for arm, by_arm in df.groupby("arm", sort=False):
        entry = out["conditions"][arm] = {}
        for answerer, group in by_arm.groupby("answerer", sort=False):
            entry[answerer] = {name: interval(subset(group, name), "correct", resamples, seed) for name in SUBSETS}
            if group["sample"].nunique() > 1:
                entry[answerer]["draws"] = [float(d["correct"].mean()) for _, d in group.groupby("sample")]
        model = by_arm[by_arm["answerer"] == MODEL]
        entry["mean_rules_shown"] = float(model["rules"].map(len).mean())
        if (by_arm["condition"] == "top").all():
            out["recall"][f"recall@{int(by_arm['k'].iloc[0])}"] = recall(model)
    return out


def edit_summary(rows: list[dict[str, Any]] | pd.DataFrame, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per answerer: the share of edited questions answered with the original key before the edit, with the
    edited key / still the original key after it, and ``followed``: the original key before and the edited key
    after (for a baseline, the product of the two probabilities), each with an interval over the edits."""
    df = frame(rows)
    before, after = df[df["phase"] == "before"], df[df["phase"] == "after"]
    out: dict[str, Any] = {"edits": int(df["prompt_id"].nunique())}
    for answerer in df["answerer"].unique():
        b, a = before[before["answerer"] == answerer], after[after["answerer"] == answerer]
        both = b[["prompt_id", "matches_old"]].merge(a[["prompt_id", "matches_new"]], on="prompt_id")
        both["followed"] = both["matches_old"] * both["matches_new"]
        out[answerer] = {"before_matches_old": interval(b, "matches_old", resamples, seed),
                         "after_matches_new": interval(a, "matches_new", resamples, seed),
                         "after_matches_old": interval(a, "matches_old", resamples, seed),
                         "followed": interval(both, "followed", resamples, seed)}
    return out


def cell(entry: dict[str, Any]) -> str:
    """``0.717 (0.60-0.82), n=60``."""
    if not entry["n"]:
        return "-"
    low, high = entry["ci95"]
    spread = f" ({low:.2f}-{high:.2f})" if not math.isnan(low) else ""
    return f"{entry['mean']:.3f}{spread}, n={entry['n']}"


def results_markdown(results: dict[str, Any]) -> str:
    """One run's tables: per set, accuracy by condition and answerer, all / copyable / inference questions."""
    lines = []
    for set_name, entry in results["sets"].items():
        rows = [[arm, answerer, *(cell(figures[s]) for s in SUBSETS), f"{by_answerer['mean_rules_shown']:.1f}"]
                for arm, by_answerer in entry["conditions"].items()
                for answerer, figures in by_answerer.items() if answerer != "mean_rules_shown"]
        lines += [f"### {set_name} ({entry['report']['questions']} questions, {entry['copyable']} copyable)", "",
                  markdown(["condition", "answerer", "all", "copyable", "inference", "rules shown"], rows)]
        if entry["recall"]:
            lines += ["", "Retriever: " + ", ".join(f"{k} {v:.3f}" for k, v in entry["recall"].items())]
        lines.append("")
    demo = results.get("edit_demonstration")
    if demo:
        lines += [f"Edit demonstration: {demo['edits']} edits, one per rule ({len(demo['rules_not_edited'])} rules "
                  "without an edit), each applied alone and undone.", "",
                  markdown(["condition", "answerer", "before: original key", "after: edited key", "after: original key",
                            "followed"],
                           [[c["condition"], answerer, cell(f["before_matches_old"]), cell(f["after_matches_new"]),
                             cell(f["after_matches_old"]), cell(f["followed"])]
                            for c in demo["conditions"] for answerer, f in c.items() if isinstance(f, dict)])]
        lines += ["", "Weights unchanged: " + ", ".join(f"{c['condition']} {c['weights_unchanged']}"
                                                        for c in demo["conditions"]), ""]
    return "\n".join(lines)
