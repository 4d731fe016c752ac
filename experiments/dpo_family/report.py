"""Table and plot for the DPO-family miniature, from the run folders that run.sh wrote.

    python experiments/dpo_family/report.py experiments/dpo_family/runs

Reads each run's config.yaml (loss, beta), metrics.csv (training curves) and eval/eval.json (held-out pairs and
sampled answers), writes results.md and results.png next to this file, and prints the table.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

HERE = Path(__file__).parent


def load_run(run: Path) -> dict | None:
    eval_file = run / "eval" / "eval.json"
    if not eval_file.is_file():
        print(f"skipping {run}: no eval/eval.json", file=sys.stderr)
        return None
    config = yaml.safe_load((run / "config.yaml").read_text())
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    beta = float(config["loss"]["beta"])
    steps = [(int(r["step"]), float(r["train/rewards/margins"]) / beta) for r in rows if r.get("train/rewards/margins")]
    return {"run": run, "loss": config["loss"]["name"], "beta": beta, "eval": json.loads(eval_file.read_text()),
            "h_by_step": steps}


def smooth(values: list[float], window: int = 5) -> list[float]:
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


def main(root: Path) -> None:
    runs = [r for r in (load_run(p.parent) for p in sorted(root.glob("multirun/*/*/*/config.yaml"))) if r]
    runs.sort(key=lambda r: (r["loss"], r["beta"]))
    if not runs:
        sys.exit(f"no evaluated runs under {root}")
    reference = runs[0]["eval"]["samples"]
    header = ("| loss | beta | held-out pair accuracy | margin | reward of samples | correct | concise | filler "
              "| mean length (tokens) | KL to reference (nats) | win rate vs reference | final mean h |")
    lines = [header, "|---" * (header.count("|") - 1) + "|",
             f"| reference (SmolLM2-135M-Instruct) | - | - | - | {reference['reference/reward']:.3f} | "
             f"{reference['reference/correct']:.2f} | {reference['reference/concise']:.2f} | "
             f"{reference['reference/filler']:.2f} | {reference['reference/mean_length']:.1f} | 0 | - | - |"]
    for r in runs:
        e, s = r["eval"], r["eval"]["samples"]
        final_h = sum(h for _, h in r["h_by_step"][-5:]) / max(1, len(r["h_by_step"][-5:]))
        lines.append(f"| {r['loss']} | {r['beta']} | {e['rewards/accuracies']:.3f} | {e['rewards/margins']:.2f} | "
                     f"{s['policy/reward']:.3f} | {s['policy/correct']:.2f} | {s['policy/concise']:.2f} | "
                     f"{s['policy/filler']:.2f} | {s['policy/mean_length']:.1f} | {s['policy/kl_to_reference']:.2f} | "
                     f"{s['win_rate_vs_reference']:.3f} | {final_h:.2f} |")
    table = "\n".join(lines)
    (HERE / "results.md").write_text(table + "\n")
    print(table)

    fig, (ax_h, ax_kl) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        steps, hs = zip(*r["h_by_step"], strict=True)
        line, = ax_h.plot(steps, smooth(list(hs)), label=f"{r['loss']} beta={r['beta']}")
        if r["loss"] == "ipo":
            ax_h.axhline(1 / (2 * r["beta"]), color=line.get_color(), linestyle=":", linewidth=1)
        s = r["eval"]["samples"]
        ax_kl.scatter(s["policy/kl_to_reference"], s["policy/reward"], color=line.get_color(), s=40)
        ax_kl.annotate(f"{r['loss']} {r['beta']}", (s["policy/kl_to_reference"], s["policy/reward"]), fontsize=8)
    ax_kl.scatter(0, reference["reference/reward"], color="black", marker="x", s=60)
    ax_kl.annotate("reference", (0, reference["reference/reward"]), fontsize=8)
    ax_h.set(xlabel="training step", ylabel="mean h = margin / beta (train batches, 5-step mean)",
             title="log-ratio difference h; dotted: IPO target 1/(2 beta)")
    ax_h.legend(fontsize=8)
    ax_kl.set(xlabel="KL(policy || reference) per answer, nats", ylabel="programmatic reward of sampled answers",
              title="reward vs KL on held-out prompts")
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=120)
    print(f"wrote {HERE / 'results.md'} and {HERE / 'results.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "runs"))
