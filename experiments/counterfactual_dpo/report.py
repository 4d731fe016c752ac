"""Table and plot for the counterfactual DPO miniature, from the run folders that run.sh wrote.

    python experiments/counterfactual_dpo/report.py experiments/counterfactual_dpo/runs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def main(root: Path) -> None:
    runs = []
    for eval_file in sorted(root.glob("*/eval/eval.json")):
        metrics = json.loads(eval_file.read_text())
        if "behavior" in metrics:
            runs.append((eval_file.parent.parent.name, metrics))
    if not runs:
        sys.exit(f"no evaluated runs under {root}")
    lines = ["| run | behaviour | variant | held-out pair accuracy | base, plain prompt | base, eliciting prompt "
             "| trained, plain prompt | mean length (trained / base) | capability: correct (trained / base) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in runs:
        b, c = m["behavior"], m.get("capability", {})
        target = next(k for k in b if k.startswith("reference_") and k.endswith("/behavior_rate"))
        lines.append(f"| {name} | {b['behavior']} | {b['variant']} | {m.get('rewards/accuracies', float('nan')):.3f} | "
                     f"{b['reference/behavior_rate']:.2f} | {b[target]:.2f} | {b['policy/behavior_rate']:.2f} | "
                     f"{b['policy/mean_length']:.0f} / {b['reference/mean_length']:.0f} | "
                     f"{c.get('policy/correct', float('nan')):.2f} / {c.get('reference/correct', float('nan')):.2f} |")
    table = "\n".join(lines)
    (HERE / "results.md").write_text(table + "\n")
    print(table)

    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(runs)), 4.5))
    width = 0.27
    for i, (_, m) in enumerate(runs):
        b = m["behavior"]
        target = next(k for k in b if k.startswith("reference_") and k.endswith("/behavior_rate"))
        for j, (key, label, color) in enumerate([("reference/behavior_rate", "base, plain prompt", "#999999"),
                                                 ("policy/behavior_rate", "trained, plain prompt", "#1f77b4"),
                                                 (target, "base, eliciting prompt", "#2ca02c")]):
            ax.bar(i + (j - 1) * width, b[key], width, color=color, label=label if i == 0 else None)
    ax.set_xticks(range(len(runs)), [n.replace("_", "\n", 1) for n, _ in runs], fontsize=8)
    ax.set_ylabel("behaviour rate on held-out prompts")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Counterfactual DPO, SmolLM2-135M")
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=120)
    print(f"wrote {HERE / 'results.md'} and {HERE / 'results.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "runs"))
