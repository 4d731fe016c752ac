"""Tables and plot of the OPO miniature, rebuilt from the committed per-question records alone.

    python experiments/opo/report.py experiments/opo/runs

Reads ``<run>/records/opo.jsonl`` and ``opo_edit.jsonl`` of the runs in experiments/opo/runs.txt (bm25, dense,
letter) and run.sh's ``wall_times.txt``; writes results.md and results.png next to this file. Every interval is a
bootstrap over questions and every paired difference pairs the same questions (alignlab.stats); the definitions
of the accuracies are those of alignlab.opo.summary, which alignlab-opo's results.json uses too.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib
import pandas as pd

from alignlab.compare.per_prompt import wall_time_lines
from alignlab.opo.summary import MODEL, cell, edit_summary, interval, recall, subset
from alignlab.records import read_records
from alignlab.stats import paired_difference

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
SETS = {"human": "human-written", "generated": "generated (cloze)", "inference": "inference (human-written)"}
ANSWERERS = {MODEL: "SmolLM2 (likelihood)", "string_match": "string match", "word_overlap": "word overlap"}
RESAMPLES, SEED = 2000, 0


def load(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All answer rows (a ``label`` column: the condition with its retriever for top-k) and the edit rows."""
    answers, edits = [], []
    for run in ("bm25", "dense", "letter"):
        folder = root / run / "records"
        if (folder / "opo.jsonl").is_file():
            df = read_records(folder / "opo.jsonl").assign(run=run)
            answers.append(df)
        if (folder / "opo_edit.jsonl").is_file():
            edits.append(read_records(folder / "opo_edit.jsonl").assign(run=run))
    if not answers:
        sys.exit(f"no records under {root}/*/records: run experiments/opo/run.sh first")
    df = pd.concat(answers, ignore_index=True)
    short = df["retriever"].fillna("").str.replace("Retriever", "").str.lower()
    df["label"] = [f"{arm} ({r})" if r else arm for arm, r in zip(df["arm"], short, strict=True)]
    return df, pd.concat(edits, ignore_index=True) if edits else pd.DataFrame()


def labels(df: pd.DataFrame) -> list[str]:
    """Conditions in reading order: no rules, BM25 top-k, dense top-k, gold, random."""
    order = {"none": 0, "top": 1, "gold": 2, "random": 3}
    rows = df.drop_duplicates("label")
    rows = rows.assign(o=rows["condition"].map(order), r=rows["retriever"].fillna(""))
    return list(rows.sort_values(["o", "r", "k"])["label"])


def pick(df: pd.DataFrame, label: str, answerer: str = MODEL, name: str = "all") -> pd.DataFrame:
    return subset(df[(df["label"] == label) & (df["answerer"] == answerer)], name)


def accuracy(df: pd.DataFrame, label: str, answerer: str = MODEL, name: str = "all") -> dict:
    return interval(pick(df, label, answerer, name), "correct", RESAMPLES, SEED)


def accuracy_tables(df: pd.DataFrame) -> list[str]:
    lines = []
    for set_name, title in SETS.items():
        part = df[df["set"] == set_name]
        if part.empty:
            continue
        n, copyable = part["prompt_id"].nunique(), part.drop_duplicates("prompt_id")["copyable"].sum()
        lines += [f"### {title} questions ({n}; {copyable} copyable)", "",
                  "| condition | " + " | ".join(ANSWERERS.values()) + " |", "|---|---|---|---|"]
        for label in labels(part):
            lines.append(f"| {label} | " + " | ".join(cell(accuracy(part, label, a)) for a in ANSWERERS) + " |")
        lines.append("")
    return lines


def split_table(df: pd.DataFrame) -> list[str]:
    """Copyable vs inference questions, all three sets pooled."""
    lines = ["| condition | model, copyable | string match, copyable | model, inference | string match, inference "
             "| word overlap, inference |", "|---|---|---|---|---|---|"]
    for label in labels(df):
        cells = [accuracy(df, label, MODEL, "copyable"), accuracy(df, label, "string_match", "copyable"),
                 accuracy(df, label, MODEL, "inference"), accuracy(df, label, "string_match", "inference"),
                 accuracy(df, label, "word_overlap", "inference")]
        lines.append(f"| {label} | " + " | ".join(cell(c) for c in cells) + " |")
    return lines


def split_by_set_table(df: pd.DataFrame) -> list[str]:
    """The model and string match on each set's copyable and inference questions, for the main conditions."""
    chosen = ["no rules", "top-1 (bm25)", "top-1 (dense)", "gold rule (oracle)"]
    chosen = [label for label in chosen if label in set(df["label"])]
    lines = ["| set | subset | " + " | ".join(f"model, {c} | string match, {c}" for c in chosen)
             + " | word overlap, gold rule (oracle) |", "|---|---|" + "---|---|" * len(chosen) + "---|"]
    for set_name in SETS:
        part = df[df["set"] == set_name]
        for name in ("copyable", "inference"):
            if part.empty or subset(part, name).empty:
                continue
            cells = [cell(accuracy(part, label, answerer, name)) for label in chosen
                     for answerer in (MODEL, "string_match")]
            cells.append(cell(accuracy(part, "gold rule (oracle)", "word_overlap", name)))
            lines.append(f"| {set_name} | {name} | " + " | ".join(cells) + " |")
    return lines


def difference(a: pd.DataFrame, b: pd.DataFrame) -> str:
    d = paired_difference(a, b, "correct", n_resamples=RESAMPLES, seed=SEED)
    if not d.n:
        return "-"
    return f"{d.mean:+.3f} ({d.low:+.2f} to {d.high:+.2f}), p={d.p_value:.3g}, n={d.n}"


def paired_tables(df: pd.DataFrame) -> list[str]:
    """Rules vs no rules (the model) and the model vs string match, on the same questions."""
    chosen = [label for label in labels(df) if label != "no rules"]
    lines = ["Model with rules minus model without rules (same questions):", "",
             "| condition | all | copyable | inference |", "|---|---|---|---|"]
    for label in chosen:
        lines.append(f"| {label} | " + " | ".join(difference(pick(df, "no rules", MODEL, s), pick(df, label, MODEL, s))
                                                  for s in ("all", "copyable", "inference")) + " |")
    inference = df[df["set"] == "inference"]
    lines += ["", "The same on the inference set alone (75 questions written to need inference):", "",
              "| condition | model with rules minus without | model minus string match |", "|---|---|---|"]
    for label in chosen:
        lines.append(f"| {label} | {difference(pick(inference, 'no rules'), pick(inference, label))} | "
                     f"{difference(pick(inference, label, 'string_match'), pick(inference, label))} |")
    lines += ["", "Model minus string match, both shown the same rules (same questions):", "",
              "| condition | all | copyable | inference |", "|---|---|---|---|"]
    for label in chosen:
        lines.append(f"| {label} | " + " | ".join(
            difference(pick(df, label, "string_match", s), pick(df, label, MODEL, s))
            for s in ("all", "copyable", "inference")) + " |")
    return lines


def draws_table(df: pd.DataFrame) -> list[str]:
    lines = ["| set | answerer | mean of the draws (interval over questions) | each draw |", "|---|---|---|---|"]
    random_rows = df[df["condition"] == "random"]
    for set_name in SETS:
        for answerer in (MODEL, "string_match"):
            part = random_rows[(random_rows["set"] == set_name) & (random_rows["answerer"] == answerer)]
            if part.empty:
                continue
            each = ", ".join(f"{d['correct'].mean():.3f}" for _, d in part.groupby("sample"))
            lines.append(f"| {set_name} | {ANSWERERS[answerer]} | {cell(interval(part, 'correct', RESAMPLES, SEED))} "
                         f"| {each} |")
    return lines


def recall_table(df: pd.DataFrame) -> list[str]:
    top = df[(df["condition"] == "top") & (df["answerer"] == MODEL)]
    lines = ["| retriever | " + " | ".join(f"{s} recall@1/2/3/5" for s in SETS) + " |", "|---|---|---|---|"]
    for retriever, part in top.groupby("retriever"):
        cells = []
        for set_name in SETS:
            rows = part[part["set"] == set_name]
            cells.append(" / ".join(f"{recall(rows[rows['k'] == k]):.2f}" for k in sorted(rows["k"].unique())))
        lines.append(f"| {retriever.replace('Retriever', '')} | " + " | ".join(cells) + " |")
    return lines


def edit_tables(edits: pd.DataFrame) -> list[str]:
    if edits.empty:
        return []
    lines = ["| condition | answerer | before: original key | after: edited key | after: original key | followed |",
             "|---|---|---|---|---|---|"]
    for arm, part in edits.groupby("arm", sort=False):
        summary = edit_summary(part, RESAMPLES, SEED)
        for answerer in (MODEL, "string_match", "word_overlap"):
            if answerer in summary:
                f = summary[answerer]
                lines.append(f"| {arm} | {ANSWERERS[answerer]} | {cell(f['before_matches_old'])} | "
                             f"{cell(f['after_matches_new'])} | {cell(f['after_matches_old'])} | "
                             f"{cell(f['followed'])} |")
    model = edits[edits["answerer"] == MODEL]
    arms = list(model["arm"].unique())
    lines += ["", "Per rule, the model's answer before / after the edit (original key / edited key):", "",
              "| rule | question | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for (rule, question), part in model.groupby(["rule", "prompt_id"], sort=True):
        cells = []
        for arm in arms:
            b = part[(part["arm"] == arm) & (part["phase"] == "before")].iloc[0]
            a = part[(part["arm"] == arm) & (part["phase"] == "after")].iloc[0]
            cells.append(f"{b['choice']} / {a['choice']} ({b['old_answer']} / {b['new_answer']})")
        lines.append(f"| {rule} | {question} | " + " | ".join(cells) + " |")
    return lines


def letter_table(letter: pd.DataFrame) -> list[str]:
    if letter.empty:
        return []
    lines = ["| condition | human questions |", "|---|---|"]
    for label in labels(letter):
        lines.append(f"| {label} | {cell(accuracy(letter, label))} |")
    return lines


def main(root: Path) -> None:
    df, edits = load(root)
    likelihood, letter = df[df["run"] != "letter"], df[df["run"] == "letter"]
    random_rows = likelihood[likelihood["condition"] == "random"]
    lines = ["Rebuilt by `experiments/opo/report.py` from the per-question records under `experiments/opo/runs/*/records/`.",
             "Accuracy (95% bootstrap interval over questions), n = questions; a baseline's accuracy is its expected",
             "accuracy (a uniform pick among the options it ties on). Random rules: "
             f"{int(random_rows['k'].max()) if len(random_rows) else 0} rules, {random_rows['sample'].nunique()} draws "
             "pooled per question. \"followed\": the original key before the edit and the edited key after it.",
             "", "## Accuracy by question set", "", *accuracy_tables(likelihood),
             "## Copyable vs inference questions (all sets pooled)", "",
             "A question is copyable when its correct option appears word for word in its gold rule and no wrong option",
             "does (alignlab/opo/baselines.py); the rest need inference.", "", *split_table(likelihood), "",
             "By set:", "", *split_by_set_table(likelihood), "",
             "## Paired differences", "", *paired_tables(likelihood), "",
             "## Random-rule draws", "", *draws_table(likelihood), "",
             "## Retrieval", "", *recall_table(likelihood), "",
             "## Edit demonstration (one edit per rule, each applied alone)", "", *edit_tables(edits), ""]
    if not letter.empty:
        lines += ["## Letter-logit scoring (4 option orders averaged)", "", *letter_table(letter), ""]
    lines += wall_time_lines(root)
    table = "\n".join(lines)
    (HERE / "results.md").write_text(table)
    print(table)
    plot(likelihood, HERE / "results.png")
    print(f"wrote {HERE / 'results.md'} and {HERE / 'results.png'}")


def bar(ax, x, entries, width, colour, label):
    means = [e["mean"] for e in entries]
    errors = [[0 if math.isnan(e["ci95"][0]) else e["mean"] - e["ci95"][0] for e in entries],
              [0 if math.isnan(e["ci95"][1]) else e["ci95"][1] - e["mean"] for e in entries]]
    ax.bar(x, means, width, yerr=errors, capsize=2, color=colour, label=label)


def plot(df: pd.DataFrame, path: Path) -> None:
    panels = [(f"{SETS[s]} questions", df[df["set"] == s]) for s in SETS if (df["set"] == s).any()]
    panels += [("copyable questions (all sets)", subset(df, "copyable")),
               ("inference questions (all sets)", subset(df, "inference"))]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for ax, (title, part) in zip(axes[:, 0], panels, strict=True):
        names = labels(part)
        x = range(len(names))
        for offset, (answerer, colour) in zip((-0.27, 0, 0.27), ((MODEL, "#4c72b0"), ("string_match", "#dd8452"),
                                                                ("word_overlap", "#aaaaaa")), strict=True):
            entries = [accuracy(part, label, answerer) for label in names]
            bar(ax, [i + offset for i in x], entries, 0.27, colour, ANSWERERS[answerer])
        ax.axhline(0.25, color="black", linestyle=":", linewidth=1, label="chance")
        ax.set_xticks(list(x), names, rotation=25, ha="right", fontsize=8)
        ax.set_ylim(0, 1.2)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title} (n={part['prompt_id'].nunique()})", fontsize=10)
        ax.legend(fontsize=7, ncol=4, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "runs"))
