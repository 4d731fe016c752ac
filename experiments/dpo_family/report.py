"""Tables and plot of the DPO-family reproduction, rebuilt from the committed per-prompt records alone.

    python experiments/dpo_family/report.py experiments/dpo_family/runs

Reads every evaluated run folder: ``config.yaml`` (loss, beta, seed), ``metrics.csv`` (h during training),
``eval/records/eval.jsonl`` (4 sampled answers per held-out question from the policy and from the reference, their
rater reward and parts, length, and the policy answer's log-ratio to the reference) and ``eval/records/pairs.jsonl``
(each held-out pair's margin and h). Runs are grouped by loss and beta, seeds pooled; writes results.md and
results.png next to this file (or to ``out``).

Intervals: 95% percentile bootstrap over questions (a question's samples and seeds pooled into its mean);
differences pair the same questions and carry a two-sided sign-flip permutation p-value (:mod:`alignlab.stats`).
They say how sure a difference is for the trained policies at hand, not over training runs: with two seeds, the
seed-to-seed spread is shown beside them (the per-seed column and table), not folded into the interval.
The reference's answers are sampled once with a fixed seed and cached, so every policy is paired with the same
reference answers, except that the first five runs (seed 0: sigmoid and IPO at both betas, hinge at 0.1) were
evaluated on an earlier machine whose cache differs from the committed ``reference_answers/`` in 5 of 400 answers
(last-bit differences of the arithmetic turning a few draws). Each difference pairs a run with the reference answers
its own evaluation read; the reference's own row is the first run's (in table order).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from alignlab.compare.per_prompt import expand_parts, interval_text, markdown, p_text, wall_time_lines
from alignlab.records import read_records
from alignlab.stats import (
    bootstrap_mean,
    interval_of_means,
    paired_difference,
    prompt_means,
    sign_flip_p_value,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
LOSS_ORDER = ["sigmoid", "ipo", "hinge"]


def with_wins(samples: pd.DataFrame) -> pd.DataFrame:
    """The policy's rows with ``win``: 1 when its answer's reward beats the reference answer of the same question
    and sample index, 0.5 on a tie, 0 when it loses."""
    policy = samples[samples["arm"] == "policy"]
    reference = samples[samples["arm"] == "reference"][["prompt_id", "sample", "reward"]]
    joined = policy.merge(reference, on=["prompt_id", "sample"], suffixes=("", "_reference"), validate="1:1")
    joined["win"] = np.sign(joined["reward"] - joined["reward_reference"]) / 2 + 0.5
    return joined


def training_h(metrics: pd.DataFrame, beta: float) -> pd.DataFrame:
    """h = margin / beta of every training batch (``train/rewards/margins`` is beta * h), by step."""
    frame = metrics.dropna(subset=["train/rewards/margins"])
    return pd.DataFrame({"step": frame["step"].astype(int), "h": frame["train/rewards/margins"] / beta})


def validation_h(metrics: pd.DataFrame, beta: float) -> pd.DataFrame:
    """h = margin / beta on the held-out pairs at each epoch's end (``val/rewards/margins``; the sanity check's
    step-0 row, before any update, left out), by epoch."""
    frame = metrics.dropna(subset=["val/rewards/margins"])
    frame = frame[frame["step"] > 0]
    return pd.DataFrame({"epoch": frame["epoch"].astype(int), "h": frame["val/rewards/margins"] / beta})


def load(root: Path) -> pd.DataFrame:
    """One row per evaluated run: name, loss, beta, seed, its record frames and its training h."""
    runs = []
    for eval_file in sorted(root.glob("*/eval/eval.json")):
        run = eval_file.parent.parent
        config = OmegaConf.load(run / "config.yaml")
        beta = float(config.loss.beta)
        metrics = pd.read_csv(run / "metrics.csv")
        samples = expand_parts(read_records(run / "eval" / "records" / "eval.jsonl"))  # reward_parts.<name> columns
        runs.append({"run": run.name, "loss": config.loss.name, "beta": beta, "seed": int(config.seed),
                     "samples": samples, "policy": with_wins(samples),
                     "reference": samples[samples["arm"] == "reference"],
                     "pairs": read_records(run / "eval" / "records" / "pairs.jsonl"),
                     "training_h": training_h(metrics, beta), "validation_h": validation_h(metrics, beta)})
    if not runs:
        sys.exit(f"no evaluated runs under {root}: run experiments/dpo_family/run.sh")
    frame = pd.DataFrame(runs)
    frame["loss_rank"] = frame["loss"].map(lambda name: LOSS_ORDER.index(name) if name in LOSS_ORDER else 99)
    return frame.sort_values(["loss_rank", "beta", "seed"])


def stacked(group: pd.DataFrame, column: str) -> pd.DataFrame:
    return pd.concat(list(group[column]), ignore_index=True)


def cell(estimate, signed: bool = False) -> str:
    return interval_text(estimate.mean, estimate.low, estimate.high, signed)


def diff_cell(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> str:
    d = paired_difference(a, b, metric)
    return f"{cell(d, signed=True)} ({p_text(d.p_value)})"


def win_cell(policy: pd.DataFrame) -> str:
    """Win rate over questions with its interval and the sign-flip p-value of its difference from 0.5."""
    means = prompt_means(policy, "win")["win"].to_numpy()
    return f"{cell(interval_of_means(means))} ({p_text(sign_flip_p_value(means - 0.5))})"


def seeds(group: pd.DataFrame) -> str:
    return ", ".join(map(str, group["seed"]))


def grouped(runs: pd.DataFrame):
    for (loss, beta), group in runs.groupby(["loss", "beta"], sort=False):
        yield loss, beta, group


def sample_lines(runs: pd.DataFrame) -> list[str]:
    reference = runs["reference"].iloc[0]
    header = ["loss", "beta", "seeds", "reward", "policy - reference", "per seed", "correct - reference",
              "concise bonus - reference", "win rate vs reference (p vs 0.5)", "KL to reference (nats/answer)",
              "mean tokens"]
    rows = [["reference (SmolLM2-135M-Instruct)", "-", "-", cell(bootstrap_mean(reference, "reward")), "-", "-",
             "-", "-", "-", "0", f"{reference['length'].mean():.1f}"]]
    for loss, beta, group in grouped(runs):
        policy, ref = stacked(group, "policy"), stacked(group, "reference")
        rows.append([loss, f"{beta:g}", seeds(group), cell(bootstrap_mean(policy, "reward")),
                     diff_cell(ref, policy, "reward"),
                     ", ".join(f"{paired_difference(r, p, 'reward').mean:+.3f}"
                               for r, p in zip(group["reference"], group["policy"], strict=True)),
                     diff_cell(ref, policy, "correct"),
                     diff_cell(ref, policy, "reward_parts.concise"), win_cell(policy),
                     cell(bootstrap_mean(policy, "log_ratio")), f"{policy['length'].mean():.1f}"])
    return ["", markdown(header, rows), ""]


def per_seed_lines(runs: pd.DataFrame) -> list[str]:
    header = ["loss", "beta", "seed", "policy - reference reward", "correct - reference", "concise bonus - reference",
              "win rate vs reference",
              "KL to reference", "mean tokens", "held-out pair accuracy", "held-out h",
              "held-out h after each epoch (metrics.csv)"]
    rows = []
    for _, run in runs.iterrows():
        policy, reference = run["policy"], run["reference"]
        rows.append([run["loss"], f"{run['beta']:g}", run["seed"], diff_cell(reference, policy, "reward"),
                     diff_cell(reference, policy, "correct"), diff_cell(reference, policy, "reward_parts.concise"),
                     win_cell(policy),
                     cell(bootstrap_mean(policy, "log_ratio")), f"{policy['length'].mean():.1f}",
                     f"{run['pairs']['ranked'].mean():.3f}", cell(bootstrap_mean(run["pairs"], "h")),
                     ", ".join(f"{h:.2f}" for h in run["validation_h"]["h"])])
    return ["", markdown(header, rows), ""]


def h_lines(runs: pd.DataFrame) -> list[str]:
    header = ["loss", "beta", "seeds", "held-out pair accuracy", "held-out h", "IPO's target 1/(2 beta)",
              "training h, mean over the last epoch's batches (per seed)"]
    rows = []
    for loss, beta, group in grouped(runs):
        pairs = stacked(group, "pairs")
        pairs["ranked"] = pairs["ranked"].astype(float)
        last_epoch = [h[h["step"] > h["step"].max() * 2 / 3]["h"].mean() for h in group["training_h"]]
        rows.append([loss, f"{beta:g}", seeds(group), cell(bootstrap_mean(pairs, "ranked")),
                     cell(bootstrap_mean(pairs, "h")), f"{1 / (2 * beta):g}" if loss == "ipo" else "-",
                     ", ".join(f"{v:.2f}" for v in last_epoch)])
    return ["", markdown(header, rows), ""]


def beta_lines(runs: pd.DataFrame) -> list[str]:
    """Each loss's adjacent betas compared on the same questions: does the smaller beta's extra KL buy reward? With
    three betas or more, also the smallest against the largest (the widest span, where a trade shows most)."""
    header = ["loss", "beta a -> beta b", "seeds", "KL b - a", "KL b - a, per seed", "reward b - a",
              "reward b - a, per seed", "correct b - a", "mean tokens a / b"]
    rows = []
    for loss, by_loss in runs.groupby("loss", sort=False):
        betas = sorted(by_loss["beta"].unique())
        spans = list(zip(betas, betas[1:], strict=False)) + ([(betas[0], betas[-1])] if len(betas) >= 3 else [])
        for a, b in spans:
            group_a, group_b = by_loss[by_loss["beta"] == a], by_loss[by_loss["beta"] == b]
            shared = sorted(set(group_a["seed"]) & set(group_b["seed"]))
            pa = stacked(group_a[group_a["seed"].isin(shared)], "policy")
            pb = stacked(group_b[group_b["seed"].isin(shared)], "policy")
            rows.append([loss, f"{a:g} -> {b:g}", ", ".join(map(str, shared)), diff_cell(pa, pb, "log_ratio"),
                         seed_differences(group_a, group_b, shared, "log_ratio"), diff_cell(pa, pb, "reward"),
                         seed_differences(group_a, group_b, shared, "reward"),
                         diff_cell(pa, pb, "correct"),
                         f"{pa['length'].mean():.1f} / {pb['length'].mean():.1f}"])
    return ["", markdown(header, rows), ""] if rows else ["", "(no loss has finished runs at two betas yet)", ""]


def seed_differences(group_a: pd.DataFrame, group_b: pd.DataFrame, seeds: list[int], metric: str) -> str:
    """Each seed's own mean of ``metric`` under b minus under a: whether the seeds agree with the pooled row."""
    def mean(group: pd.DataFrame, seed: int) -> float:
        return stacked(group[group["seed"] == seed], "policy")[metric].mean()
    return ", ".join(f"{mean(group_b, seed) - mean(group_a, seed):+.3g}" for seed in seeds)


def plot(runs: pd.DataFrame, out: Path) -> None:
    fig, (ax_h, ax_kl) = plt.subplots(1, 2, figsize=(12, 4.6))
    for loss, beta, group in grouped(runs):
        curves = pd.concat(list(group["training_h"])).groupby("step")["h"].mean()
        smooth = curves.rolling(5, min_periods=1).mean()
        line, = ax_h.plot(smooth.index, smooth.to_numpy(), label=f"{loss}, beta {beta:g}")
        if loss == "ipo":
            ax_h.axhline(1 / (2 * beta), color=line.get_color(), linestyle="--", linewidth=0.8)
        policy, ref = stacked(group, "policy"), stacked(group, "reference")
        kl, gain = bootstrap_mean(policy, "log_ratio"), paired_difference(ref, policy, "reward")
        ax_kl.errorbar(kl.mean, gain.mean, xerr=[[kl.mean - kl.low], [kl.high - kl.mean]],
                       yerr=[[gain.mean - gain.low], [gain.high - gain.mean]], fmt="o", color=line.get_color(),
                       capsize=3)
        ax_kl.annotate(f"{loss} {beta:g}", (kl.mean, gain.mean), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax_h.set_yscale("symlog", linthresh=1)
    ax_h.set_xlabel("training step")
    ax_h.set_ylabel("h = margin / beta (5-step mean, seeds averaged)")
    ax_h.set_title("h during training (dashed: IPO's target 1/(2 beta))")
    ax_h.legend(fontsize=7)
    ax_kl.axhline(0, color="grey", linewidth=0.8)
    ax_kl.set_xlabel("KL(policy || reference), nats per answer")
    ax_kl.set_ylabel("reward gain over the reference")
    ax_kl.set_title("Reward gain against KL, 95% intervals over questions")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(root: Path, out: Path = HERE) -> str:
    """Writes ``out/results.md`` (returned) and ``out/results.png``."""
    runs = load(root)
    n_questions = runs["reference"].iloc[0]["prompt_id"].nunique()
    lines = ["# DPO family reproduction: results", "",
             f"Generated by `python experiments/dpo_family/report.py {root}` from the committed records of {len(runs)} "
             f"runs; {n_questions} held-out questions. Intervals: 95% bootstrap over questions (samples and seeds "
             "pooled per question); differences are paired by question, with sign-flip p-values. The intervals are "
             "over questions for the policies trained, not over training runs: the per-seed values show the "
             "seed-to-seed spread.", "",
             "## Sampled answers against the reference's, rated by the program (alignlab/judges/rater.py)",
             *sample_lines(runs),
             "## Held-out pairs and h (the log-ratio margin; margin = beta * h)", *h_lines(runs),
             "## Beta: the KL each loss spends and the reward it buys (adjacent betas, and the smallest against the largest where three or more ran; same questions and seeds)",
             *beta_lines(runs), "## Per seed", *per_seed_lines(runs), *wall_time_lines(root)]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    plot(runs, out / "results.png")
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "runs")))
