"""Tables and plots of the OAIF reproduction, rebuilt from the committed per-prompt records alone.

    python experiments/oaif/report.py experiments/oaif/runs
    python experiments/oaif/report.py experiments/oaif/earlier/smollm2_annotator/runs   # the first design

Reads, under the runs folder ROOT, for each seed found, ``online_seed<s>/records/monitor.jsonl`` and
``offline_seed<s>/records/monitor.jsonl`` (the win-rate monitor's answers: 64 held-out prompts x 3 samples per
measurement, each with the evaluator's verdict against the initial model's answer), ``pairs_seed<s>/pairs.jsonl``
(the initial model's labelled pairs), the length-control arms ``short_seed<s>`` and ``very_short_seed<s>`` where
they exist (with ``helpful_seed<s>``; their ``metrics.csv`` for the training answers' length),
each run's ``config.yaml`` (to name the annotator) and run.sh's ``wall_times.txt``; writes results.md,
results_curves.csv, results.png and, with length-control runs, results_length.png beside ROOT.

Every interval is a 95% percentile bootstrap over prompts (a prompt's samples and seeds pooled into its mean) and
every difference between arms pairs the same prompts, with a two-sided sign-flip permutation p-value
(:mod:`alignlab.stats`). The evaluator is the rule judge with the plain ``helpful`` instruction (correct, concise,
no filler, against each question's expected answer).
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
    ordered_trend,
    paired_difference,
    prompt_means,
    win_outcomes,
)
from alignlab.text import word_count

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
ARMS = {"online": "online (OAIF)", "offline": "offline (pairs from the initial model)"}
# The length-control arms in the order of the claim (shorter down the list).
LENGTH_ARMS = {"helpful": "helpful", "short": "helpful and short", "very_short": "helpful and very short"}
# What each arm's validation pairs are (metrics.csv ``val/``): offline reads pairs_val (sampled once from the
# initial model); online samples them from its current policy on the held-out prompts at each validation.
HELD_OUT_PAIRS = {"online": "held-out, sampled from the current policy",
                  "offline": "held-out, sampled once from the initial model"}
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
    # the online answer against the offline answer of the same seed, prompt and sample; p: a sign-flip test of the
    # per-prompt win rates minus 0.5 (does the head-to-head differ from a tie?)
    h = head_to_head(online, offline, evaluator)

    def row(name: str, h) -> list:
        lc = h.length_controlled
        return [name, interval_text(h.win_rate.mean, h.win_rate.low, h.win_rate.high), p_text(h.p_value),
                interval_text(lc.win_rate, lc.low, lc.high) if lc else "", h.pairs, h.win_rate.n]

    rows = [row("online vs offline" + (", seeds pooled" if len(found) > 1 else ""), h)]
    if len(found) > 1:
        rows += [row(f"seed {s}", head_to_head(online[online["run_seed"] == s], offline[offline["run_seed"] == s],
                                               evaluator)) for s in found]
    lines = [f"**Head to head at step {final}**: the evaluator compares the online run's answer with the offline "
             f"run's (same seed, same prompt, same sample index), {len(found)} seed(s) pooled"
             + (", then each seed alone (p not corrected for the several seeds)" if len(found) > 1 else "")
             + "; ties count half; p against 0.5 (sign-flip test of the per-prompt win rates)", "",
             markdown(["", "online win rate [95% CI]", "p", "length-controlled", "pairs", "prompts"], rows), ""]
    return lines, {"head_to_head": h, "p": h.p_value}


# --- does the offline arm over-fit its fixed pairs? ------------------------------------------------------------

def fit_lines(root: Path, found: list[int]) -> list[str]:
    """Per pass over the training prompts: each arm's DPO loss and pair accuracy on the pairs it trained on (the
    offline arm sees the same pairs every pass; the online arm fresh ones every step, so its training loss is
    already a loss on unseen pairs) and on its held-out pairs (``val/``, at the end of each pass: the offline arm's
    are the initial model's pairs on the held-out prompts, the online arm's are sampled from its current policy on
    them), from metrics.csv, averaged over seeds."""
    rows = []
    for arm in ARMS:
        for seed in found:
            metrics = pd.read_csv(root / f"{arm}_seed{seed}" / "metrics.csv")
            trained = metrics.dropna(subset=["train/loss"])
            for epoch, part in trained.groupby("epoch"):
                rows.append({"arm": arm, "seed": seed, "pass": int(epoch) + 1, "set": "trained on",
                             "loss": part["train/loss"].mean(), "accuracy": part["train/rewards/accuracies"].mean()})
            if "val/loss" in metrics:
                # a validation at step v follows the pass of the last update before it; the one at step 0
                # (policy = reference: log 2 by definition) is left out
                for _, r in metrics.dropna(subset=["val/loss"]).iterrows():
                    before = trained[trained["step"] < r["step"]]
                    if len(before):
                        rows.append({"arm": arm, "seed": seed, "pass": int(before["epoch"].max()) + 1,
                                     "set": HELD_OUT_PAIRS[arm], "loss": r["val/loss"],
                                     "accuracy": r["val/rewards/accuracies"]})
    df = pd.DataFrame(rows)
    if df.empty:
        return []
    table = []
    for (arm, which), part in df.groupby(["arm", "set"], sort=False):
        by_pass = part.groupby("pass")[["loss", "accuracy"]].mean()
        table += [[ARMS[arm], which, f"pass {p}", f"{r.loss:.3f}", f"{r.accuracy:.3f}"]
                  for p, r in by_pass.iterrows()]
    return ["**DPO loss and pair accuracy per pass** (from metrics.csv: mean over each pass's steps for the pairs "
            f"trained on, at the end of each pass for the held-out pairs; {len(found)} seed(s) averaged; before "
            "training every loss is log 2 = 0.693). The offline arm meets the same pairs every pass, so a training loss falling far "
            "below its held-out loss is it fitting those pairs; the online arm's pairs are new at every step",
            "", markdown(["arm", "pairs", "when", "loss", "accuracy"], table), ""]


def extra_arms(root: Path) -> dict[str, list[int]]:
    """Other finished online runs, ``<arm>_seed<s>`` beside online/offline (runs.txt section 2): arm -> seeds."""
    out: dict[str, list[int]] = {}
    for summary in sorted(root.glob("*_seed*/summary.json")):
        m = re.fullmatch(r"(.+)_seed(\d+)", summary.parent.name)
        if m and m.group(1) not in (*ARMS, *LENGTH_ARMS, "pairs") and (summary.parent / "records" / "monitor.jsonl").is_file():
            out.setdefault(m.group(1), []).append(int(m.group(2)))
    return out


def extra_arm_lines(root: Path, frames: dict[tuple[str, int], pd.DataFrame], final: int) -> list[str]:
    """Each extra arm at ``final`` against the initial model, and minus the DPO online arm of the same seeds,
    paired by prompt."""
    arms = extra_arms(root)
    if not arms:
        return ["(no other finished online arm in this folder)", ""]
    rows = []
    for arm, arm_seeds in arms.items():
        mine = pd.concat([monitor(root, arm, s) for s in arm_seeds], ignore_index=True)
        mine = mine[mine["step"] == final]
        online = [f[f["step"] == final] for (a, s), f in frames.items() if a == "online" and s in arm_seeds]
        online = pd.concat(online, ignore_index=True) if online else pd.DataFrame()
        cells = []
        for metric in ("win", "reward", "correct", "length"):
            iv = bootstrap_mean(mine, metric, RESAMPLES, SEED)
            d = paired_difference(online, mine, metric, RESAMPLES, SEED) if len(online) else None
            cells += [interval_text(iv.mean, iv.low, iv.high),
                      f"{interval_text(d.mean, d.low, d.high, signed=True)} ({p_text(d.p_value)})" if d else "-"]
        rows.append([arm, ", ".join(map(str, arm_seeds)), *cells])
    header = ["arm", "seeds", "win rate vs initial", "minus online (DPO)", "reward", "minus online", "correct",
              "minus online", "length", "minus online"]
    return [f"**Other online arms at step {final}** (paired by prompt with the online DPO arm of the same seeds)", "",
            markdown(header, rows), ""]


def annotator(root: Path, arm: str, seed: int) -> str:
    """The annotator a run was configured with, from its config.yaml: the judge's class and its settings (a judge
    inside another, as the word budget wraps one, in brackets)."""
    import yaml

    def describe(node: dict) -> str:
        def short(value) -> str:
            text = " ".join(str(value).split())
            return repr(text[:57] + "...") if len(text) > 60 else text

        settings = [f"{k}={short(v)}" for k, v in node.items() if not k.startswith("_") and not isinstance(v, dict)
                    and k not in ("batch_size", "device", "model")]
        inner = [describe(v) for v in node.values() if isinstance(v, dict) and "_target_" in v]
        return f"{node['_target_'].rsplit('.', 1)[-1]}({', '.join(settings + inner)})"

    return describe(yaml.safe_load((root / f"{arm}_seed{seed}" / "config.yaml").read_text())["judge"])


def length_seeds(root: Path) -> list[int]:
    """Seeds for which every length-control arm (``helpful_seed<s>``, ``short_seed<s>``, ``very_short_seed<s>``)
    has finished."""
    found = {int(m.group(1)) for p in root.glob("*_seed*") if (m := re.search(r"_seed(\d+)$", p.name))}
    return sorted(s for s in found if all((root / f"{arm}_seed{s}/summary.json").is_file() for arm in LENGTH_ARMS))


def training_lengths(root: Path, arm: str, seeds: list[int]) -> pd.DataFrame:
    """Mean length (tokens) of the answers each training step sampled, per step, epoch (pass over the prompts,
    from 0) and seed, from metrics.csv."""
    frames = []
    for seed in seeds:
        metrics = pd.read_csv(root / f"{arm}_seed{seed}" / "metrics.csv")
        part = metrics.dropna(subset=["train/online/mean_length"])[["step", "epoch", "train/online/mean_length"]]
        frames.append(part.rename(columns={"train/online/mean_length": "length"}).assign(seed=seed))
    return pd.concat(frames, ignore_index=True)


def length_control(root: Path) -> tuple[list[str], pd.DataFrame, dict]:
    """The length-control section: held-out answer length per instruction over training, the ordered trend at the
    end, paired steps between neighbouring instructions, and what each instruction costs in win rate."""
    found = length_seeds(root)
    if not found:
        return ["(no seed with finished helpful_seed<s>, short_seed<s> and very_short_seed<s> in this folder)", ""], \
            pd.DataFrame(), {}
    frames = {arm: pd.concat([monitor(root, arm, s) for s in found], ignore_index=True) for arm in LENGTH_ARMS}
    final = int(min(f["step"].max() for f in frames.values()))
    curve_rows = []
    for arm, frame in frames.items():
        for step, part in frame.groupby("step"):
            iv = bootstrap_mean(part, "length", RESAMPLES, SEED)
            curve_rows.append({"arm": arm, "step": int(step), "metric": "length", "mean": iv.mean, "low": iv.low,
                               "high": iv.high, "prompts": iv.n, "answers": len(part)})
    curve = pd.DataFrame(curve_rows)
    ends = {arm: f[f["step"] == final] for arm, f in frames.items()}
    rows = []
    for arm, part in ends.items():
        cells = [LENGTH_ARMS[arm], annotator(root, arm, found[0])]
        for metric in ("length", "win", "reward"):
            iv = bootstrap_mean(part, metric, RESAMPLES, SEED)
            cells.append(interval_text(iv.mean, iv.low, iv.high))
        lc = length_controlled_win_rate(part["verdict"], part["length"], part["reference_length"],
                                        part["prompt_id"], 1000, SEED)
        cells.append(interval_text(lc.win_rate, lc.low, lc.high))
        rows.append(cells)
    order = list(LENGTH_ARMS)
    steps = []
    for a, b in zip(order, order[1:], strict=False):
        d = paired_difference(ends[a], ends[b], "length", RESAMPLES, SEED)
        steps.append([f"{LENGTH_ARMS[b]} minus {LENGTH_ARMS[a]}", interval_text(d.mean, d.low, d.high, signed=True),
                      p_text(d.p_value), d.n])
    trend = ordered_trend([ends[a] for a in order], "length", RESAMPLES, SEED)
    steps.append(["trend: slope per instruction step (helpful -> short -> very short)",
                  interval_text(trend.mean, trend.low, trend.high, signed=True), p_text(trend.p_value), trend.n])
    seed_rows = []  # each seed alone: does its ordering hold, and with what spread?
    for seed in found:
        alone = {arm: part[part["seed"] == seed] for arm, part in ends.items()}
        cells = [str(seed)]
        for arm in order:
            iv = bootstrap_mean(alone[arm], "length", RESAMPLES, SEED)
            cells.append(interval_text(iv.mean, iv.low, iv.high))
        for a, b in zip(order, order[1:], strict=False):
            d = paired_difference(alone[a], alone[b], "length", RESAMPLES, SEED)
            cells.append(f"{interval_text(d.mean, d.low, d.high, signed=True)} ({p_text(d.p_value)})")
        seed_rows.append(cells)
    budget_rows = [[LENGTH_ARMS[arm], str(seed), f"{words.mean():.2f}", f"{(words > 8).mean():.3f}",
                    f"{(words > 20).mean():.3f}", len(words)]
                   for arm in order for seed in found
                   for words in [ends[arm][ends[arm]["seed"] == seed]["answer"].map(word_count)]]
    train = {arm: training_lengths(root, arm, found) for arm in LENGTH_ARMS}
    train_rows = []
    for arm, t in train.items():
        by_epoch = t.groupby("epoch")["length"].mean()
        train_rows.append([LENGTH_ARMS[arm], *(f"{v:.1f}" for v in by_epoch)])
    epochs = max(len(r) - 1 for r in train_rows)
    lines = [f"Seeds {', '.join(map(str, found))}; the annotator's instruction is the only difference between the "
             f"arms (same prompts, seeds, updates). Held-out answers at step {final} (64 prompts x 3 samples x "
             f"{len(found)} seed(s), pooled per prompt):", "",
             markdown(["instruction", "annotator (from config.yaml)", "length, tokens [95% CI]",
                       "win rate vs initial", "reward", "length-controlled win rate"], rows), "",
             f"**Held-out length, paired by prompt at step {final}** (steps between neighbouring instructions, and the "
             "ordered trend: each prompt's least-squares slope of its mean length over the three instructions in "
             "order, alignlab.stats.ordered_trend)", "",
             markdown(["", "tokens [95% CI]", "p (sign-flip)", "prompts"], steps), "",
             f"**Each seed alone**, held-out length at step {final} (tokens [95% CI] over its 64 prompts; paired "
             "steps with their sign-flip p, not corrected for the seeds)", "",
             markdown(["seed", *(LENGTH_ARMS[a] for a in order),
                       *(f"{LENGTH_ARMS[b]} minus {LENGTH_ARMS[a]}" for a, b in zip(order, order[1:], strict=False))],
                      seed_rows), "",
             f"**Held-out answers beyond the word budgets** at step {final} (words as the word-budget annotator counts "
             "them, alignlab.text.word_count; \"short\" penalises words beyond 20, \"very short\" beyond 8)", "",
             markdown(["instruction", "seed", "mean words", "share over 8 words", "share over 20 words", "answers"],
                      budget_rows), "",
             "**Length of the answers sampled for training**, mean per epoch (tokens; from each run's "
             f"`train/online/mean_length`, {len(found)} seed(s) averaged)", "",
             markdown(["instruction", *(f"epoch {e + 1}" for e in range(epochs))], train_rows), ""]
    return lines, curve, {"train": train, "final": final}


def plot_length(curve: pd.DataFrame, train: dict[str, pd.DataFrame], initial_length: float, out: Path) -> None:
    """results_length.png: held-out answer length per instruction at each measurement, with its interval as a
    band, beside the training answers' length per update (7-update running mean; thin lines: seeds)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    colours = dict(zip(LENGTH_ARMS, ("tab:blue", "tab:green", "tab:red"), strict=True))
    for arm, label in LENGTH_ARMS.items():
        part = from_initial(curve[curve["arm"] == arm].sort_values("step"), initial_length)
        axes[0].plot(part["step"], part["mean"], marker="o", color=colours[arm], label=label)
        axes[0].fill_between(part["step"], part["low"], part["high"], color=colours[arm], alpha=0.2)
        t = train[arm].groupby("step")["length"].mean().rolling(7, min_periods=1).mean()
        axes[1].plot(t.index, t.to_numpy(), color=colours[arm], label=label)
        for _, s in train[arm].groupby("seed"):
            axes[1].plot(s["step"], s["length"].rolling(7, min_periods=1).mean(), color=colours[arm], alpha=0.25,
                         lw=0.8)
    axes[0].axhline(initial_length, color="grey", lw=0.8, ls="--", label="initial model")
    axes[0].set_title("held-out answer length (tokens), 95% intervals over prompts", fontsize=10)
    axes[1].set_title("training answers' mean length (tokens; 7-step mean; thin: seeds)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("update")
    axes[0].legend(fontsize=8, title="annotator told", title_fontsize=8)
    fig.suptitle("OAIF length control on SmolLM2-135M: the annotator's instruction, pooled over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def initial_model(root: Path, found: list[int]) -> dict[str, float]:
    """The initial model's mean reward and length on the measured prompts (its answers are the same in every run:
    one fixed sampling seed, cached), and its win rate against itself, 0.5 by definition."""
    df = read_records(root / f"online_seed{found[0]}/records/monitor.jsonl")
    df = df[df["arm"] == "reference"]
    return {"win": 0.5, **{m: prompt_means(df, m)[m].mean() for m in ("reward", "length")}}


def from_initial(part: pd.DataFrame, initial: float) -> pd.DataFrame:
    """A curve's rows with a step-0 point at the initial model's value (before training every arm is the initial
    model: no interval there)."""
    start = pd.DataFrame([{"step": 0, "mean": initial, "low": initial, "high": initial}])
    return pd.concat([start, part[["step", "mean", "low", "high"]]], ignore_index=True)


def plot(table: pd.DataFrame, out: Path, initial: dict[str, float]) -> None:
    """results.png: win rate, reward and length of each arm's held-out answers over training, from the initial model
    at update 0, intervals as bands; thin lines: seeds."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (metric, title) in zip(axes, (("win", "win rate vs initial (evaluator)"), ("reward", "reward (rater)"),
                                          ("length", "answer length (tokens)")), strict=True):
        for arm, colour in (("online", "tab:blue"), ("offline", "tab:orange")):
            part = table[(table["metric"] == metric) & (table["arm"] == arm)].sort_values("step")
            curve = from_initial(part, initial[metric])
            ax.plot(curve["step"], curve["mean"], marker="o", color=colour, label=ARMS[arm])
            ax.fill_between(curve["step"], curve["low"], curve["high"], color=colour, alpha=0.2)
            for k in range(len(part["per_seed"].iloc[0]) if len(part) else 0):
                ax.plot([0, *part["step"]], [initial[metric], *(s[k] for s in part["per_seed"])], color=colour,
                        alpha=0.25, lw=1)
        ax.axhline(initial[metric], color="grey", lw=0.8, ls="--", label="initial model")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("update")
    axes[0].legend(fontsize=8)
    fig.suptitle("OAIF on SmolLM2-135M: pooled over seeds, 95% bootstrap intervals over 64 held-out prompts as "
                 "bands; thin lines: seeds; update 0 and dashed: the initial model", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(root: Path) -> None:
    found = seeds(root)
    if not found:
        sys.exit(f"no finished online_seed<s> and offline_seed<s> pair under {root}: run experiments/oaif/run.sh")
    out = root.parent
    evaluator = Evaluator(expected_answers())
    frames = {(arm, s): monitor(root, arm, s) for arm in ARMS for s in found}
    final = int(min(f["step"].max() for f in frames.values()))
    agreement_text, _ = agreement(root, found, evaluator)
    table = curves(frames)
    h2h_text, _ = head_to_head_lines(frames, final, evaluator, found)
    initial = initial_model(root, found)
    length_text, length_curve, length_parts = length_control(root)
    lines = ["# OAIF reproduction: results", "",
             f"Generated by `python experiments/oaif/report.py {root}` from the committed records; seeds "
             f"{', '.join(map(str, found))}. Annotator of both arms (from the runs' config.yaml): "
             f"`{annotator(root, 'online', found[0])}`. Intervals: 95% bootstrap over prompts.", "",
             "## Annotator and evaluator on the initial model's pairs", "", *agreement_text,
             "## Online vs offline", "",
             "The initial model on the same prompts and samples: reward {reward:.3f}, length {length:.1f} tokens "
             "(win rate 0.5 by definition).".format(**initial), "", *curve_lines(table), *paired_lines(frames, final),
             *h2h_text,
             *length_controlled_lines(frames, final), *fit_lines(root, found), "## Length control", "", *length_text,
             "## Other online arms", "",
             *extra_arm_lines(root, frames, final), *wall_time_lines(root)]
    (out / "results.md").write_text("\n".join(lines))
    table.drop(columns="per_seed").to_csv(out / "results_curves.csv", index=False)
    plot(table, out / "results.png", initial)
    if length_parts:
        plot_length(length_curve, length_parts["train"], initial["length"], out / "results_length.png")
        length_curve.to_csv(out / "results_length.csv", index=False)
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "runs"))
