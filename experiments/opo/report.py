"""Table and plot for the OPO miniature, from the results.json files that run.sh wrote.

    python experiments/opo/report.py experiments/opo/runs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def cell(condition: dict) -> str:
    low, high = condition["ci95"]
    return f"{condition['accuracy']:.3f} ({low:.2f}-{high:.2f})"


def main(root: Path) -> None:
    runs = {name: json.loads((root / f"likelihood_{name}" / "results.json").read_text()) for name in ("bm25", "dense")
            if (root / f"likelihood_{name}" / "results.json").is_file()}
    if "bm25" not in runs:
        sys.exit(f"no {root}/likelihood_bm25/results.json: run experiments/opo/run.sh first")
    sets = list(runs["bm25"]["sets"])
    counts = " / ".join(f"{s}: {runs['bm25']['sets'][s]['report']['questions']}" for s in sets)
    lines = [f"Option-likelihood scoring. Accuracy (95% bootstrap interval); questions {counts}.", "",
             "| condition | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    rows: dict[str, list[str]] = {}
    for retriever, results in runs.items():
        for s in sets:
            for name, condition in results["sets"][s]["conditions"].items():
                label = f"{name} ({retriever})" if name.startswith("top") else name
                rows.setdefault(label, []).append(cell(condition))
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows.items()]
    lines += ["", "| retriever | " + " | ".join(f"{s} recall@k" for s in sets) + " |", "|---|" + "---|" * len(sets)]
    for retriever, results in runs.items():
        lines.append(f"| {retriever} | " + " | ".join(
            ", ".join(f"{k.split('@')[1]}: {v:.2f}" for k, v in results["sets"][s]["recall"].items()) for s in sets)
            + " |")
    for demo in runs["bm25"].get("edit_demonstration", []):
        lines += ["", f"Edit demonstration, {demo['condition']}: {demo['edits']} rules edited in the memory, weights "
                  f"unchanged: {demo['weights_unchanged']}. Before: {demo['before_matches_old']:.2f} of the answers "
                  f"match the original rule. After: {demo['after_matches_new']:.2f} match the edited rule, "
                  f"{demo['after_matches_old']:.2f} still the original.", "",
                  "| rule | question | answer before the edit (key) | answer after (new key) |", "|---|---|---|---|"]
        lines += [f"| {r['rule']} | {r['question']} | {r['before']} ({r['old_answer']}) | {r['after']} "
                  f"({r['new_answer']}) |" for r in demo["rows"]]
    letter = root / "letter_bm25" / "results.json"
    if letter.is_file():
        check = json.loads(letter.read_text())
        lines += ["", "Letter-logit scoring (4 option orders averaged), BM25:", "",
                  "| condition | " + " | ".join(check["sets"]) + " |", "|---|" + "---|" * len(check["sets"])]
        names = next(iter(check["sets"].values()))["conditions"]
        lines += [f"| {name} | " + " | ".join(cell(e["conditions"][name]) for e in check["sets"].values()) + " |"
                  for name in names]
    table = "\n".join(lines)
    (HERE / "results.md").write_text(table + "\n")
    print(table)

    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.5), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        labels, values, errors = [], [], []
        for retriever, results in runs.items():
            for name, c in results["sets"][s]["conditions"].items():
                if retriever == "dense" and not name.startswith("top"):
                    continue
                labels.append(f"{name} ({retriever})" if name.startswith("top") else name)
                values.append(c["accuracy"])
                errors.append([c["accuracy"] - c["ci95"][0], c["ci95"][1] - c["accuracy"]])
        colours = ["#999999" if not label.startswith("top") else "#4c72b0" if "bm25" in label else "#dd8452"
                   for label in labels]
        ax.bar(range(len(labels)), values, yerr=list(zip(*errors, strict=True)), capsize=3, color=colours)
        ax.axhline(0.25, color="black", linestyle=":", linewidth=1, label="chance")
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{s} questions")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=120)
    print(f"wrote {HERE / 'results.md'} and {HERE / 'results.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "runs"))
