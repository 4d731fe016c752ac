"""Tables and plot of the counterfactual DPO reproduction, rebuilt from the committed per-prompt records alone.

    python experiments/counterfactual_dpo/report.py experiments/counterfactual_dpo/runs

Reads every evaluated run folder (``<run>/eval/records/behavior.jsonl``, ``capability.jsonl``, ``eval.json`` and the
run's ``config.yaml``), groups runs by behaviour, variant and control system prompt (seeds pooled), and writes
results.md and results.png next to this file.

Behaviour rates are on the 100 held-out prompts, one answer per prompt, arm and seed: the trained policy and the
base model on the training prompt, and the base model on the prompt that elicits the behaviour (its instruction;
for instruction negation, the prompt without the instruction to ignore). Intervals: 95% percentile bootstrap over
prompts (a prompt's seeds pooled into its mean); differences pair the same prompts and carry a two-sided sign-flip
permutation p-value (:mod:`alignlab.stats`). They are over prompts for the policies trained, not over training
runs: each seed's own rate is shown beside them. The capability check pairs the policy with the base model on the same
302 true/false statement pairs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import pandas as pd
from omegaconf import OmegaConf

from alignlab.compare.per_prompt import interval_text, markdown, p_text, wall_time_lines
from alignlab.records import read_records
from alignlab.stats import bootstrap_mean, paired_difference

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
VARIANT_ORDER = ["enc", "dis", "contrastive", "instruction_negation"]
DESIGN_ORDER = ["neutral", "default"]  # then the ablations that mix the two


def load(root: Path) -> pd.DataFrame:
    """One row per evaluated run: its name, group keys, seed, eval.json and its two record frames."""
    runs = []
    for eval_file in sorted(root.glob("*/eval/eval.json")):
        run = eval_file.parent.parent
        config = OmegaConf.load(run / "config.yaml")
        metrics = json.loads(eval_file.read_text())
        runs.append({"run": run.name, "behavior": metrics["behavior"]["behavior"],
                     "variant": metrics["behavior"]["variant"], "seed": int(config.seed),
                     "control": design(config),
                     "pair_accuracy": metrics.get("rewards/accuracies"), "metrics": metrics,
                     "behavior_records": read_records(run / "eval" / "records" / "behavior.jsonl"),
                     "capability_records": read_records(run / "eval" / "records" / "capability.jsonl")})
    if not runs:
        sys.exit(f"no evaluated runs under {root}: run experiments/counterfactual_dpo/run.sh")
    frame = pd.DataFrame(runs)
    frame["variant_rank"] = frame["variant"].map(VARIANT_ORDER.index)
    frame["design_rank"] = frame["control"].map(lambda c: DESIGN_ORDER.index(c) if c in DESIGN_ORDER else 2)
    return frame.sort_values(["design_rank", "control", "behavior", "variant_rank", "seed"])


def design(config) -> str:
    """Which system prompt the run trained on and sampled its control answers under: ``neutral`` or ``default``
    (SmolLM2's own) when the two agree, else e.g. ``neutral prompt, default answers`` (the ablations)."""
    def name(system_prompt) -> str:
        return "neutral" if system_prompt else "default"
    prompt = config.data.prompts.system_prompt
    answers = config.data.get("control_system_prompt", prompt)  # runs from before the key share the prompt's
    return name(prompt) if name(prompt) == name(answers) else f"{name(prompt)} prompt, {name(answers)} answers"


def groups(runs: pd.DataFrame):
    for (control, behavior, variant), group in runs.groupby(["control", "behavior", "variant"], sort=False):
        yield control, behavior, variant, group


def arm(group: pd.DataFrame, evaluation: str, name: str) -> pd.DataFrame:
    """The records of one arm, every seed of the group stacked (bootstrap_mean pools a prompt's seeds)."""
    frames = [f[f["arm"] == name] for f in group[f"{evaluation}_records"]]
    return pd.concat(frames, ignore_index=True)


def elicited_arm(records: pd.DataFrame) -> str:
    return next(a for a in records["arm"].unique() if a.startswith("reference_"))


def cell(estimate, signed: bool = False) -> str:
    return interval_text(estimate.mean, estimate.low, estimate.high, signed)


def diff_cell(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> str:
    d = paired_difference(a, b, metric)
    return f"{cell(d, signed=True)} ({p_text(d.p_value)})"


def claim(pooled, seed_differences: list[float], tests: int) -> str:
    """The rule by which the README claims a move: the pooled paired interval excludes zero, every seed's own
    difference has the pooled sign, and the p-value is below 0.05 / ``tests`` (Bonferroni over the table's rows).
    Says which part fails otherwise."""
    failed = []
    if pooled.low <= 0 <= pooled.high:
        failed.append("interval holds 0")
    if pooled.mean != 0 and any(d * pooled.mean <= 0 for d in seed_differences):
        failed.append("not every seed shares its sign")
    if len(seed_differences) < 2:
        failed.append("one seed")
    if pooled.p_value >= 0.05 / tests:
        failed.append(f"p >= 0.05/{tests}")
    return "yes" if not failed else "no: " + ", ".join(failed)


def behavior_lines(runs: pd.DataFrame, control: str) -> tuple[list[str], list[dict]]:
    header = ["behaviour", "variant", "seeds", "held-out pair accuracy", "base, training prompt",
              "base, eliciting prompt", "trained, training prompt", "trained - base", "trained - base eliciting",
              "mean tokens trained / base", "trained, per seed", "ended before the cap, trained / base",
              "claimed (trained - base)"]
    rows, bars, moves = [], [], []
    for group_control, behavior, variant, group in groups(runs):
        if group_control != control:
            continue
        trained = arm(group, "behavior", "policy")
        base = arm(group, "behavior", "reference")
        told = arm(group, "behavior", elicited_arm(group["behavior_records"].iloc[0]))
        estimates = [bootstrap_mean(x, "measure") for x in (base, told, trained)]
        accuracy = group["pair_accuracy"].dropna()
        rows.append([behavior, variant, ", ".join(map(str, group["seed"])),
                     f"{accuracy.mean():.3f}" if len(accuracy) else "-", *(cell(e) for e in estimates),
                     diff_cell(base, trained, "measure"), diff_cell(told, trained, "measure"),
                     f"{trained['length'].mean():.0f} / {base['length'].mean():.0f}",
                     ", ".join(f"{rate(records, 'policy'):.2f}" for records in group["behavior_records"]),
                     f"{trained['finished'].mean():.2f} / {base['finished'].mean():.2f}"])
        moves.append((paired_difference(base, trained, "measure"),
                      [rate(records, "policy") - rate(records, "reference") for records in group["behavior_records"]]))
        bars.append({"label": f"{behavior}\n{variant}", "estimates": estimates})
    for row, (pooled, seed_differences) in zip(rows, moves, strict=True):
        row.append(claim(pooled, seed_differences, len(rows)))
    return ["", markdown(header, rows), ""] if rows else [], bars


def per_seed_lines(runs: pd.DataFrame) -> list[str]:
    """Every run alone: the figures a single seed gives, beside which the pooled rows are read."""
    header = ["behaviour", "variant", "control", "seed", "trained, training prompt", "trained - base",
              "trained - base eliciting", "mean tokens trained", "held-out pair accuracy", "capability, trained - base"]
    rows = []
    for run in runs.itertuples():
        records, capability = run.behavior_records, run.capability_records
        trained, base = records[records["arm"] == "policy"], records[records["arm"] == "reference"]
        told = records[records["arm"] == elicited_arm(records)]
        rows.append([run.behavior, run.variant, run.control, run.seed, cell(bootstrap_mean(trained, "measure")),
                     diff_cell(base, trained, "measure"), diff_cell(told, trained, "measure"),
                     f"{trained['length'].mean():.0f}",
                     f"{run.pair_accuracy:.3f}" if run.pair_accuracy is not None else "-",
                     diff_cell(capability[capability["arm"] == "reference"], capability[capability["arm"] == "policy"],
                               "correct")])
    return ["", markdown(header, rows), ""]


def capability_lines(runs: pd.DataFrame) -> list[str]:
    header = ["behaviour", "variant", "control", "seeds", "trained: share true > false", "base", "trained - base",
              "mean log-prob margin trained / base"]
    rows = []
    for control, behavior, variant, group in groups(runs):
        trained, base = arm(group, "capability", "policy"), arm(group, "capability", "reference")
        rows.append([behavior, variant, control, ", ".join(map(str, group["seed"])),
                     cell(bootstrap_mean(trained, "correct")), cell(bootstrap_mean(base, "correct")),
                     diff_cell(base, trained, "correct"),
                     f"{trained['margin'].mean():.2f} / {base['margin'].mean():.2f}"])
    # Every run against its own base arm, averaged per question: whether this training costs capability at all,
    # a loss too small for one configuration's interval to resolve.
    trained, base = arm(runs, "capability", "policy"), arm(runs, "capability", "reference")
    rows.append(["every run", "-", "-", f"{len(runs)} runs", cell(bootstrap_mean(trained, "correct")),
                 cell(bootstrap_mean(base, "correct")), diff_cell(base, trained, "correct"),
                 f"{trained['margin'].mean():.2f} / {base['margin'].mean():.2f}"])
    return ["", markdown(header, rows), ""]


def confound_lines(runs: pd.DataFrame) -> list[str]:
    """Every control design other than the neutral one (the default system prompt for both the prompt trained on
    and the control answers, or for one of them) beside the neutral design's runs of the same behaviour, variant
    and seeds: trained rates, their paired difference pooled and per seed, and whether it is claimed by the rule of
    ``claim``."""
    header = ["behaviour", "variant", "control design", "seeds", "trained, neutral design", "trained, this design",
              "this - neutral", "this - neutral, per seed", "base on the prompt trained on", "claimed (this - neutral)"]
    rows, moves = [], []
    for control, behavior, variant, group in groups(runs[runs["control"] != "neutral"]):
        neutral = runs[(runs["control"] == "neutral") & (runs["behavior"] == behavior) &
                       (runs["variant"] == variant) & runs["seed"].isin(group["seed"])]
        group = group[group["seed"].isin(neutral["seed"])]
        if group.empty:
            continue
        a, b = arm(neutral, "behavior", "policy"), arm(group, "behavior", "policy")
        per_seed = [rate(group[group["seed"] == seed]["behavior_records"].iloc[0], "policy")
                    - rate(neutral[neutral["seed"] == seed]["behavior_records"].iloc[0], "policy")
                    for seed in group["seed"]]
        rows.append([behavior, variant, control, ", ".join(map(str, group["seed"])),
                     cell(bootstrap_mean(a, "measure")), cell(bootstrap_mean(b, "measure")), diff_cell(a, b, "measure"),
                     ", ".join(f"{d:+.2f}" for d in per_seed),
                     cell(bootstrap_mean(arm(group, "behavior", "reference"), "measure"))])
        moves.append((paired_difference(a, b, "measure"), per_seed))
    for row, (pooled, seed_differences) in zip(rows, moves, strict=True):
        row.append(claim(pooled, seed_differences, len(rows)))
    return ["", markdown(header, rows), ""] if rows else ["", "(no confound-check run has finished yet)", ""]


def rate(records: pd.DataFrame, name: str) -> float:
    """One arm's behaviour rate in one run's behaviour records."""
    return records[records["arm"] == name]["measure"].mean()


def same_answer_lines(runs: pd.DataFrame) -> list[str]:
    """The base model's held-out answers, which every seed of a configuration samples with the same sampling seed:
    how many of a later seed's are identical to the first seed's, prompt by prompt. They differ only where the
    arithmetic differs (another machine, another library build) and turns a draw; seed 0's came from a machine whose
    cache was lost, so this is how far the seeds' base answers, and the training answers sampled the same way,
    can differ."""
    header = ["behaviour", "variant", "control", "arm", "seeds", "identical answers", "differing: mean length a / b"]
    rows = []
    for control, behavior, variant, group in groups(runs):
        first, *later = list(group.itertuples())
        base_arms = [a for a in first.behavior_records["arm"].unique() if a != "policy"]
        for other in later:
            for name in base_arms:
                a, b = (r[r["arm"] == name].set_index(["prompt_id", "sample"])
                        for r in (first.behavior_records, other.behavior_records))
                joined = a.merge(b, left_index=True, right_index=True, how="inner", suffixes=("_a", "_b"))
                differing = joined[joined["answer_a"] != joined["answer_b"]]
                lengths = (f"{differing['length_a'].mean():.1f} / {differing['length_b'].mean():.1f}"
                           if len(differing) else "-")
                rows.append([behavior, variant, control, name, f"{first.seed}, {other.seed}",
                             f"{len(joined) - len(differing)} of {len(joined)}", lengths])
    return ["", markdown(header, rows), ""] if rows else ["", "(no configuration has two seeds yet)", ""]


def plot(bars: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(bars)), 4.5))
    width = 0.27
    styles = [("base, training prompt", "#999999"), ("trained, training prompt", "#1f77b4"),
              ("base, eliciting prompt", "#2ca02c")]
    for i, bar in enumerate(bars):
        base, told, trained = bar["estimates"]
        for j, (estimate, (label, color)) in enumerate(zip((base, trained, told), styles, strict=True)):
            low, high = estimate.mean - estimate.low, estimate.high - estimate.mean
            ax.bar(i + (j - 1) * width, estimate.mean, width, color=color, label=label if i == 0 else None,
                   yerr=[[max(low, 0)], [max(high, 0)]], capsize=3)
    ax.set_xticks(range(len(bars)), [b["label"] for b in bars], fontsize=8)
    ax.set_ylabel("share of held-out answers showing the behaviour")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Counterfactual DPO on SmolLM2-135M: 100 held-out prompts, 95% intervals")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(root: Path, out: Path = HERE) -> str:
    """Writes ``out/results.md`` (returned) and ``out/results.png``."""
    runs = load(root)
    behavior_text, bars = behavior_lines(runs, "neutral")
    lines = ["# Counterfactual DPO reproduction: results", "",
             f"Generated by `python experiments/counterfactual_dpo/report.py {root}` from the committed records of "
             f"{len(runs)} runs. Intervals: 95% bootstrap over prompts (seeds pooled per prompt); differences are "
             "paired by prompt, with sign-flip p-values. The intervals are over prompts for the policies trained, not "
             "over training runs: the per-seed column shows the seed-to-seed spread. A move of the behaviour rate "
             "is claimed where the pooled paired interval excludes zero, every seed's own difference has its sign "
             "(two seeds at least) and p is below 0.05 divided by the table's rows (Bonferroni).", "",
             "## Behaviour rate on the held-out prompts (control: neutral system prompt)", *behavior_text,
             "## The system-prompt confound: SmolLM2's default system prompt instead of the neutral one, for the "
             "prompt trained on and the control answers, or for one of them", *confound_lines(runs),
             "## Capability: true vs false statements of the same form (302 short_facts questions)",
             *capability_lines(runs),
             "## Per seed", *per_seed_lines(runs),
             "## The base model's answers: the same in every seed? (same sampling seed, possibly another machine)",
             *same_answer_lines(runs), *wall_time_lines(root)]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    if bars:
        plot(bars, out / "results.png")
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "runs")))
