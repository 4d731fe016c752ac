"""Tables and plot of the OAIF reproduction, rebuilt from the committed per-prompt records alone.

    python experiments/oaif/report.py experiments/oaif/runs

Reads, for each seed found, ``online_seed<s>/records/monitor.jsonl`` and ``offline_seed<s>/records/monitor.jsonl``
(the win-rate monitor's answers: 64 held-out prompts x 3 samples per measurement, each with the evaluator's verdict
against the initial model's answer), ``pairs_seed<s>/pairs.jsonl`` (the initial model's labelled pairs) and
run.sh's ``wall_times.txt``; writes results.md and results.png next to this file.

Every interval is a 95% percentile bootstrap over prompts (a prompt's samples and seeds pooled into its mean) and
every difference between the arms pairs the same prompts, with a two-sided sign-flip permutation p-value
(:mod:`alignlab.stats`). The evaluator is the rule judge with the plain ``helpful`` instruction (correct, concise,
no filler, against each question's expected answer), the annotator SmolLM2 as a pointwise Yes/No judge.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import matplotlib
import pandas as pd

from alignlab.compare.per_prompt import (
    head_to_head,
    interval_text,
    markdown,
    p_text,
    pair_answers,
    wall_time_lines,
)
from alignlab.data.offline import bundled_path
from alignlab.judges.base import Verdicts
from alignlab.judges.rater import is_correct
from alignlab.judges.rule import RuleJudge
from alignlab.records import read_records
from alignlab.stats import (
    bootstrap_mean,
    length_controlled_win_rate,
    paired_difference,
    prompt_means,
    sign_flip_p_value,
    win_outcomes,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
ARMS = {"online": "online (OAIF)", "offline": "offline (pairs from the initial model)"}
RESAMPLES, SEED = 2000, 0


def expected_answers() -> dict[str, str]:
    """Question text -> expected answer, from the bundled short_facts rows the prompts come from."""
    rows = [json.loads(line) for line in Path(bundled_path("short_facts")).read_text().splitlines() if line.strip()]
    return {row["prompt"]: str(row["answer"]) for row in rows}


class Evaluator:
    """The evaluator of the monitor (``RuleJudge('helpful')``), given each question's expected answer, which the
    records do not carry: looked up by question text (a question without one is an error, never a silent
    conciseness-only verdict)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.rule, self.answers = RuleJudge("helpful"), answers

    def meta(self, prompt: str) -> dict[str, str]:
        if prompt not in self.answers:
            raise KeyError(f"no expected answer for {prompt!r} in short_facts")
        return {"answer": self.answers[prompt]}

    def __call__(self, prompts, pairs, metas=None) -> Verdicts:
        return self.rule(prompts, pairs, [self.meta(p) for p in prompts])


def seeds(root: Path) -> list[int]:
    found = {int(m.group(1)) for p in root.glob("*_seed*") if (m := re.search(r"_seed(\d+)$", p.name))}
    return sorted(s for s in found if (root / f"online_seed{s}/summary.json").is_file()
                  and (root / f"offline_seed{s}/summary.json").is_file())


def monitor(root: Path, arm: str, seed: int) -> pd.DataFrame:
    df = read_records(root / f"{arm}_seed{seed}/records/monitor.jsonl")
    df = df[df["arm"] == "policy"].copy()
    df["win"] = win_outcomes(df["verdict"])
    return df.assign(run_arm=arm, run_seed=seed, seed=seed)  # head-to-head pairs answers by (seed, sample)


# --- annotator vs evaluator on the initial model's pairs --------------------------------------------------------

def agreement(root: Path, found: list[int], evaluator: Evaluator) -> tuple[list[str], dict]:
    rows = []
    for seed in found:
        for line in (root / f"pairs_seed{seed}/pairs.jsonl").read_text().splitlines():
            pair = json.loads(line)
            meta = evaluator.meta(pair["prompt"])
            chosen, rejected = pair["chosen"], pair["rejected"]
            # new tokens, the end-of-turn token of a finished answer left out (as the records count them)
            lc = len(pair["chosen_token_ids"]) - int(pair["chosen_finished"])
            lr = len(pair["rejected_token_ids"]) - int(pair["rejected_finished"])
            sc = evaluator.rule.score(pair["prompt"], chosen, meta)
            sr = evaluator.rule.score(pair["prompt"], rejected, meta)
            cc, cr = is_correct(chosen, meta["answer"], pair["prompt"]), is_correct(rejected, meta["answer"],
                                                                                    pair["prompt"])
            rows.append({
                "prompt_id": pair["prompt"], "seed": seed,
                # the evaluator's verdict on the annotator's order: 1 agrees, 0.5 tie, 0 disagrees
                "agree": 1.0 if sc > sr else 0.5 if sc == sr else 0.0,
                "evaluator_decided": float(sc != sr),
                "annotator_shorter": (float(lc < lr) if lc != lr else math.nan),
                "evaluator_shorter": (float((sc > sr) == (lc < lr)) if lc != lr and sc != sr else math.nan),
                "annotator_correct": (float(cc) if cc != cr else math.nan),  # pairs with one correct answer
                "one_correct": float(cc != cr),
            })
    df = pd.DataFrame(rows)
    measures = {
        "agree": "evaluator agrees with the annotator's label (ties half)",
        "evaluator_decided": "evaluator tells the two answers apart",
        "annotator_shorter": "annotator prefers the shorter answer (pairs of different length)",
        "evaluator_shorter": "evaluator prefers the shorter answer (pairs it decides, of different length)",
        "one_correct": "exactly one of the two answers is correct",
        "annotator_correct": "annotator prefers the correct one (pairs with exactly one correct)",
    }
    table, figures = [], {}
    for key, text in measures.items():
        part = df.dropna(subset=[key])
        iv = bootstrap_mean(part, key, RESAMPLES, SEED)
        figures[key] = iv
        table.append([text, interval_text(iv.mean, iv.low, iv.high), len(part), iv.n])
    lines = [f"{len(df)} pairs: the training prompts that gave a usable pair (two different, non-empty answers), "
             f"{len(found)} seed(s) of `pairs_seed<s>/pairs.jsonl`, {df['prompt_id'].nunique()} prompts.", "",
             markdown(["on the initial model's pairs", "share [95% CI]", "pairs", "prompts"], table), ""]
    return lines, figures


# --- win rate vs the initial model ------------------------------------------------------------------------------

def curves(frames: dict[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for arm in ARMS:
        pooled = pd.concat([f for (a, _), f in frames.items() if a == arm], ignore_index=True)
        for step, part in pooled.groupby("step"):
            for metric in ("win", "reward", "length"):
                iv = bootstrap_mean(part, metric, RESAMPLES, SEED)
                per_seed = [prompt_means(s, metric)[metric].mean() for _, s in part.groupby("run_seed")]
                rows.append({"arm": arm, "step": int(step), "metric": metric, "mean": iv.mean, "low": iv.low,
                             "high": iv.high, "prompts": iv.n, "answers": len(part), "per_seed": per_seed})
    return pd.DataFrame(rows)


def curve_lines(table: pd.DataFrame) -> list[str]:
    names = {"win": "win rate vs initial", "reward": "reward (rater)", "length": "answer length (tokens)"}
    out = []
    for metric, title in names.items():
        part = table[table["metric"] == metric]
        rows = [[ARMS[r.arm], r.step, interval_text(r.mean, r.low, r.high),
                 ", ".join(f"{v:.3f}" for v in r.per_seed), r.answers]
                for r in part.itertuples()]
        out += [f"**{title}** (pooled over seeds; per-seed means in seed order)", "",
                markdown(["arm", "step", "mean [95% CI]", "per seed", "answers"], rows), ""]
    return out


def final_answers(frames: dict[tuple[str, int], pd.DataFrame], arm: str, step: int) -> pd.DataFrame:
    """One arm's policy answers at ``step``, its seeds pooled."""
    part = pd.concat([f for (a, _), f in frames.items() if a == arm], ignore_index=True)
    return part[part["step"] == step]


def length_controlled_lines(frames: dict[tuple[str, int], pd.DataFrame], final: int) -> list[str]:
    rows = []
    for arm in ARMS:
        part = final_answers(frames, arm, final)
        lc = length_controlled_win_rate(part["verdict"], part["length"], part["reference_length"],
                                        part["prompt_id"], 1000, SEED)
        rows.append([ARMS[arm], interval_text(lc.raw, lc.raw_low, lc.raw_high),
                     interval_text(lc.win_rate, lc.low, lc.high), f"{lc.length_slope:+.2f}", lc.n_verdicts])
    return [f"**Length-controlled win rate vs initial at step {final}** (AlpacaEval 2's logistic adjustment, "
            "alignlab.stats.length_controlled_win_rate; the slope is the weight of the standardized length "
            "difference, negative when the evaluator favours shorter answers)", "",
            markdown(["arm", "raw [95% CI]", "length-controlled [95% CI]", "length slope", "verdicts"], rows), ""]


def paired_lines(frames: dict[tuple[str, int], pd.DataFrame], final: int) -> list[str]:
    online, offline = final_answers(frames, "online", final), final_answers(frames, "offline", final)
    rows = []
    for metric, title in (("win", "win rate vs initial"), ("reward", "reward"),
                          ("correct", "correct (the reward's +1 part)"), ("length", "length (tokens)")):
        d = paired_difference(offline, online, metric, RESAMPLES, SEED)
        rows.append([title, interval_text(d.mean, d.low, d.high, signed=True), p_text(d.p_value), d.n])
    return [f"**Online minus offline at step {final}**, paired by prompt (seeds and samples pooled per prompt)", "",
            markdown(["measure", "difference [95% CI]", "p (sign-flip)", "prompts"], rows), ""]


def head_to_head_lines(frames: dict[tuple[str, int], pd.DataFrame], final: int, evaluator: Evaluator,
                       found: list[int]) -> tuple[list[str], dict]:
    online, offline = final_answers(frames, "online", final), final_answers(frames, "offline", final)
    h = head_to_head(online, offline, evaluator)
    # Per prompt, the online answer's win outcome against the offline answer of the same seed and sample; a
    # sign-flip test of (outcome - 0.5) asks whether the head-to-head differs from a tie.
    pairs = pair_answers(online, offline)
    probs = evaluator(list(pairs["prompt"]), list(zip(pairs["answer_a"], pairs["answer_b"], strict=True))).prob_first
    per_prompt = pd.DataFrame({"prompt_id": pairs["prompt_id"], "w": win_outcomes(probs)}).groupby("prompt_id")["w"]
    p = sign_flip_p_value(per_prompt.mean().to_numpy() - 0.5, seed=SEED)
    lc = h.length_controlled
    rows = [["online vs offline", interval_text(h.win_rate.mean, h.win_rate.low, h.win_rate.high), p_text(p),
             interval_text(lc.win_rate, lc.low, lc.high) if lc else "", h.pairs, h.win_rate.n]]
    lines = [f"**Head to head at step {final}**: the evaluator compares the online run's answer with the offline "
             f"run's (same seed, same prompt, same sample index), seeds pooled ({len(found)}); ties count half; p "
             "against 0.5 (sign-flip test of the per-prompt win rates)", "",
             markdown(["", "online win rate [95% CI]", "p", "length-controlled", "pairs", "prompts"], rows), ""]
    return lines, {"head_to_head": h, "p": p}


def extra_arms(root: Path) -> dict[str, list[int]]:
    """Other finished online runs, ``<arm>_seed<s>`` beside online/offline (runs.txt section 2): arm -> seeds."""
    out: dict[str, list[int]] = {}
    for summary in sorted(root.glob("*_seed*/summary.json")):
        m = re.fullmatch(r"(.+)_seed(\d+)", summary.parent.name)
        if m and m.group(1) not in (*ARMS, "pairs") and (summary.parent / "records" / "monitor.jsonl").is_file():
            out.setdefault(m.group(1), []).append(int(m.group(2)))
    return out


def extra_arm_lines(root: Path, frames: dict[tuple[str, int], pd.DataFrame], final: int) -> list[str]:
    """Each extra arm at ``final`` against the initial model, and minus the DPO online arm of the same seeds,
    paired by prompt."""
    arms = extra_arms(root)
    if not arms:
        return ["(no extra online arm has finished yet: runs.txt section 2)", ""]
    rows = []
    for arm, arm_seeds in arms.items():
        mine = pd.concat([monitor(root, arm, s) for s in arm_seeds], ignore_index=True)
        mine = mine[mine["step"] == final]
        online = [f[f["step"] == final] for (a, s), f in frames.items() if a == "online" and s in arm_seeds]
        online = pd.concat(online, ignore_index=True) if online else pd.DataFrame()
        cells = []
        for metric in ("win", "reward", "length"):
            iv = bootstrap_mean(mine, metric, RESAMPLES, SEED)
            d = paired_difference(online, mine, metric, RESAMPLES, SEED) if len(online) else None
            cells += [interval_text(iv.mean, iv.low, iv.high),
                      f"{interval_text(d.mean, d.low, d.high, signed=True)} ({p_text(d.p_value)})" if d else "-"]
        rows.append([arm, ", ".join(map(str, arm_seeds)), *cells])
    header = ["arm", "seeds", "win rate vs initial", "minus online (DPO)", "reward", "minus online", "length",
              "minus online"]
    return [f"**Other online arms at step {final}** (paired by prompt with the online DPO arm of the same seeds)", "",
            markdown(header, rows), ""]


def initial_model(root: Path, found: list[int]) -> dict[str, float]:
    """The initial model's mean reward and length on the measured prompts (its answers are the same in every run:
    one fixed sampling seed, cached), and its win rate against itself, 0.5 by definition."""
    df = read_records(root / f"online_seed{found[0]}/records/monitor.jsonl")
    df = df[df["arm"] == "reference"]
    return {"win": 0.5, **{m: prompt_means(df, m)[m].mean() for m in ("reward", "length")}}


def plot(table: pd.DataFrame, out: Path, initial: dict[str, float]) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (metric, title) in zip(axes, (("win", "win rate vs initial (evaluator)"), ("reward", "reward (rater)"),
                                          ("length", "answer length (tokens)")), strict=True):
        for arm, colour in (("online", "tab:blue"), ("offline", "tab:orange")):
            part = table[(table["metric"] == metric) & (table["arm"] == arm)].sort_values("step")
            ax.errorbar(part["step"], part["mean"], yerr=[part["mean"] - part["low"], part["high"] - part["mean"]],
                        marker="o", capsize=3, color=colour, label=ARMS[arm])
            for k in range(len(part["per_seed"].iloc[0]) if len(part) else 0):
                ax.plot(part["step"], [s[k] for s in part["per_seed"]], color=colour, alpha=0.25, lw=1)
        ax.axhline(initial[metric], color="grey", lw=0.8, ls="--", label="initial model")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("update")
    axes[0].legend(fontsize=8)
    fig.suptitle("OAIF on SmolLM2-135M: pooled over seeds, 95% bootstrap intervals over 64 held-out prompts; "
                 "thin lines: seeds; dashed: the initial model", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(root: Path) -> None:
    found = seeds(root)
    if not found:
        sys.exit(f"no finished online_seed<s> and offline_seed<s> pair under {root}: run experiments/oaif/run.sh")
    evaluator = Evaluator(expected_answers())
    frames = {(arm, s): monitor(root, arm, s) for arm in ARMS for s in found}
    final = int(min(f["step"].max() for f in frames.values()))
    agreement_text, _ = agreement(root, found, evaluator)
    table = curves(frames)
    h2h_text, _ = head_to_head_lines(frames, final, evaluator, found)
    lines = ["# OAIF reproduction: results", "",
             f"Generated by `python experiments/oaif/report.py {root}` from the committed records; seeds "
             f"{', '.join(map(str, found))}. Intervals: 95% bootstrap over prompts.", "",
             "## Annotator and evaluator on the initial model's pairs", "", *agreement_text,
             "## Online vs offline", "",
             "The initial model on the same prompts and samples: reward {reward:.3f}, length {length:.1f} tokens "
             "(win rate 0.5 by definition).".format(**initial_model(root, found)), "", *curve_lines(table), *paired_lines(frames, final),
             *h2h_text,
             *length_controlled_lines(frames, final), "## Other online arms", "",
             *extra_arm_lines(root, frames, final), *wall_time_lines(root)]
    (HERE / "results.md").write_text("\n".join(lines))
    table.drop(columns="per_seed").to_csv(HERE / "results_curves.csv", index=False)
    plot(table, HERE / "results.png", initial_model(root, found))
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "runs"))
