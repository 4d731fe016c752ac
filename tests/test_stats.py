"""Statistics over per-prompt records (:mod:`alignlab.stats`) and their use in ``alignlab-compare``.

Expected numbers come from hand derivations (stated in each test) or from an independent computation (normal
theory, a plain loop over prompts); synthetic data is drawn with fixed seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alignlab.compare import Run, head_to_head, main, plot, plot_records
from alignlab.compare.per_prompt import (
    Resampling,
    curve_table,
    group_intervals,
    interval_text,
    wall_time_lines,
    with_metric,
)
from alignlab.judges.base import Verdicts
from alignlab.records import append_records, record, records_path
from alignlab.stats import (
    bootstrap_mean,
    length_controlled_win_rate,
    ordered_trend,
    paired_difference,
    prompt_means,
    sign_flip_p_value,
    win_rate,
)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# --- win rates and means over prompts --------------------------------------------------------------------------

def test_win_rate_counts_ties_half_and_leaves_out_missing_verdicts():
    assert win_rate([0.9, 0.5, 0.1, None]) == pytest.approx((1 + 0.5 + 0) / 3)
    assert win_rate([1.0, 0.75, 0.5, 0.0]) == pytest.approx(2.5 / 4)
    assert np.isnan(win_rate([None]))


def test_prompt_means_pool_samples_and_seeds_and_the_mean_weights_prompts_equally():
    rows = pd.DataFrame({"prompt_id": ["p0", "p0", "p0", "p1"], "seed": [0, 0, 1, 0], "sample": [0, 1, 0, 0],
                         "reward": [1.0, 2.0, 3.0, 10.0]})
    means = prompt_means(rows, "reward").set_index("prompt_id")
    assert means.loc["p0", "reward"] == 2.0 and means.loc["p0", "rows"] == 3
    assert means.loc["p1", "reward"] == 10.0 and means.loc["p1", "rows"] == 1
    estimate = bootstrap_mean(rows, "reward", n_resamples=200)
    assert estimate.mean == 6.0 and estimate.n == 2  # (2 + 10) / 2, not the row mean 4
    assert 2.0 <= estimate.low <= estimate.high <= 10.0


def clustered(n_prompts: int, samples: int, mean: float, rng) -> pd.DataFrame:
    """Rewards with a per-prompt effect (sd 1) and per-sample noise (sd 0.5)."""
    effect = rng.normal(mean, 1.0, n_prompts)
    return pd.DataFrame({"prompt_id": np.repeat(np.arange(n_prompts), samples),
                         "reward": np.repeat(effect, samples) + rng.normal(0, 0.5, n_prompts * samples)})


def test_bootstrap_interval_matches_normal_theory_on_a_large_sample():
    rows = clustered(2000, 4, 1.0, np.random.default_rng(0))
    estimate = bootstrap_mean(rows, "reward", n_resamples=2000, seed=1)
    assert estimate.low < 1.0 < estimate.high and estimate.n == 2000
    # Independent: the per-prompt means' standard error, 1.96 of them on each side.
    means = rows.groupby("prompt_id")["reward"].mean()
    half_width = 1.96 * means.std(ddof=1) / np.sqrt(len(means))
    assert (estimate.high - estimate.low) / 2 == pytest.approx(half_width, rel=0.1)


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    hits = [(e.low <= 0.0 <= e.high) for e in (bootstrap_mean(clustered(60, 3, 0.0, rng), "reward",
                                                               n_resamples=400, seed=i) for i in range(200))]
    assert 0.88 <= np.mean(hits) <= 0.99  # 200 trials: sd of the coverage about 0.016


# --- paired differences ----------------------------------------------------------------------------------------

def test_paired_difference_of_an_exact_shift_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"prompt_id": np.repeat([f"p{i}" for i in range(12)], 3), "reward": rng.normal(size=36)})
    b = a.assign(reward=a["reward"] + 0.3)
    a = pd.concat([a, pd.DataFrame({"prompt_id": ["only_a1", "only_a2"], "reward": [5.0, 6.0]})])
    b = pd.concat([b, pd.DataFrame({"prompt_id": ["only_b"], "reward": [-9.0]})])
    d = paired_difference(a, b, "reward")
    assert d.mean == pytest.approx(0.3) and d.low == pytest.approx(0.3) and d.high == pytest.approx(0.3)
    assert (d.n, d.only_a, d.only_b) == (12, 2, 1)
    # Exact sign-flip test (2^12 = 4096 flips): only "no flip" and "all flipped" reach |mean| >= 0.3.
    assert d.p_value == pytest.approx(2 / 2**12)


def test_sign_flip_p_value_is_one_for_balanced_differences_and_large_for_null_data():
    assert sign_flip_p_value(np.array([1.0, -1.0] * 6)) == pytest.approx(1.0)  # observed mean 0: every flip ties
    rng = np.random.default_rng(5)
    a = clustered(80, 2, 0.0, rng)
    b = a.assign(reward=a["reward"] + rng.normal(0, 0.5, len(a)))  # same prompts, no effect
    assert paired_difference(a, b, "reward").p_value > 0.1
    assert paired_difference(a, b.assign(reward=b["reward"] + 0.5), "reward").p_value < 0.001


def test_ordered_trend_is_the_mean_per_prompt_slope_over_the_arms_order():
    """Three arms on the same 10 prompts; arm k's answers are the prompt's base length minus 5k (two samples each,
    +-1 around it): every prompt's least-squares slope over ranks 0, 1, 2 is exactly -5, so the interval has zero
    width and only the all-same-sign flips reach it (p = 2 / 2^10). Reversed order: +5. A prompt one arm lacks is
    left out and counted; two arms reduce to the paired difference."""
    rng = np.random.default_rng(1)
    base = rng.integers(20, 60, 10)
    arms = [pd.DataFrame({"prompt_id": np.repeat([f"p{i}" for i in range(10)], 2),
                          "length": np.repeat(base - 5.0 * k, 2) + np.tile([-1.0, 1.0], 10)}) for k in range(3)]
    arms[2] = pd.concat([arms[2], pd.DataFrame({"prompt_id": ["extra"], "length": [99.0]})])
    t = ordered_trend(arms, "length")
    assert (t.mean, t.low, t.high) == pytest.approx((-5.0, -5.0, -5.0))
    assert t.p_value == pytest.approx(2 / 2**10) and (t.n, t.only_a) == (10, 1)
    assert ordered_trend(arms[::-1], "length").mean == pytest.approx(5.0)
    two = ordered_trend(arms[:2], "length")
    assert two.mean == pytest.approx(paired_difference(arms[0], arms[1], "length").mean)
    noise = [a.assign(length=rng.normal(40, 10, len(a))) for a in arms]
    assert ordered_trend(noise, "length").p_value > 0.05
    with pytest.raises(ValueError, match="two arms"):
        ordered_trend(arms[:1], "length")


# --- length-controlled win rate --------------------------------------------------------------------------------

def length_driven(n: int, slope: float, quality: float, rng, longer_by: float = 60.0):
    """Verdicts drawn from logit P(a wins) = quality + slope * tanh(standardized length difference)."""
    length_a = rng.normal(200 + longer_by, 60, n).round()
    length_b = rng.normal(200, 60, n).round()
    delta = length_a - length_b
    p = sigmoid(quality + slope * np.tanh(delta / delta.std()))
    return (rng.random(n) < p).astype(float), length_a, length_b


def test_length_controlled_win_rate_is_even_when_length_explains_the_verdicts():
    verdicts, length_a, length_b = length_driven(3000, slope=3.0, quality=0.0, rng=np.random.default_rng(0),
                                                 longer_by=100.0)
    lc = length_controlled_win_rate(verdicts, length_a, length_b, n_resamples=200)
    assert lc.raw > 0.7  # a's answers are longer, so they win raw...
    assert lc.win_rate == pytest.approx(0.5, abs=0.03)  # ...and not at equal length
    assert lc.low < 0.5 < lc.high and lc.raw_low > 0.65
    assert lc.length_slope == pytest.approx(3.0, rel=0.2) and lc.n == lc.n_verdicts == 3000


def test_length_controlled_win_rate_keeps_a_real_effect():
    verdicts, length_a, length_b = length_driven(3000, slope=2.0, quality=1.0, rng=np.random.default_rng(1))
    lc = length_controlled_win_rate(verdicts, length_a, length_b, n_resamples=200)
    assert lc.win_rate == pytest.approx(sigmoid(1.0), abs=0.04)  # 0.731: the effect at equal length
    assert lc.low > 0.65 and lc.raw > lc.win_rate
    verdicts, length_a, length_b = length_driven(3000, slope=0.0, quality=1.5, rng=np.random.default_rng(2))
    lc = length_controlled_win_rate(verdicts, length_a, length_b, n_resamples=200)
    assert lc.win_rate == pytest.approx(lc.raw, abs=0.02) == pytest.approx(sigmoid(1.5), abs=0.03)


def test_length_controlled_win_rate_equals_the_raw_one_when_lengths_never_differ():
    verdicts = [1.0, 1.0, 0.5, 0.0, 1.0]  # intercept-only logistic model: sigmoid(b0) = mean outcome
    lc = length_controlled_win_rate(verdicts, [10] * 5, [10] * 5, n_resamples=100)
    assert lc.win_rate == pytest.approx(3.5 / 5, abs=1e-4) and lc.raw == pytest.approx(0.7)


def test_length_controlled_win_rate_stays_finite_when_length_separates_wins_exactly():
    delta = np.arange(-50, 51)
    verdicts = np.where(delta > 0, 1.0, np.where(delta == 0, 0.5, 0.0))  # the longer answer always wins
    lc = length_controlled_win_rate(verdicts, 100 + delta, np.full(len(delta), 100), n_resamples=100)
    assert lc.raw == pytest.approx(0.5) and lc.win_rate == pytest.approx(0.5, abs=1e-3)
    assert np.isfinite(lc.length_slope) and lc.length_slope > 0


def test_length_controlled_bootstrap_resamples_prompts_not_rows():
    verdicts, length_a, length_b = length_driven(300, slope=1.0, quality=0.5, rng=np.random.default_rng(4))
    one = length_controlled_win_rate(verdicts, length_a, length_b, prompt_ids=np.arange(300), n_resamples=200)
    # Each prompt's row three times: the same prompts, each weighing the same, so the same fit and interval.
    three = length_controlled_win_rate(np.repeat(verdicts, 3), np.repeat(length_a, 3), np.repeat(length_b, 3),
                                       prompt_ids=np.repeat(np.arange(300), 3), n_resamples=200)
    assert three.n == 300 and three.n_verdicts == 900
    for field in ("win_rate", "low", "high", "raw", "raw_low", "raw_high"):
        assert getattr(three, field) == pytest.approx(getattr(one, field), abs=1e-3)


# --- alignlab-compare over records -----------------------------------------------------------------------------

def write_run(folder: Path, objective: str, seed: int, rows: list[dict], evaluation: str = "eval") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"seed: {seed}\n")
    (folder / "run_info.json").write_text(json.dumps({"choices": {"objective": objective},
                                                      "overrides": [f"objective={objective}", f"seed={seed}"]}))
    (folder / "summary.json").write_text("{}")
    append_records(records_path(folder, evaluation), [record(evaluation=evaluation, seed=seed, **r) for r in rows])
    return folder


def shifted_runs(root: Path, prompts: int = 20, shift: float = 0.3) -> dict[str, list[float]]:
    """dpo and oaif runs, two seeds each, 2 samples per prompt; every oaif reward is the dpo one + ``shift``."""
    rng = np.random.default_rng(0)
    rewards: dict[str, list[float]] = {"dpo": [], "oaif": []}
    for seed in (0, 1):
        base = rng.normal(size=(prompts, 2))
        for objective, offset in (("dpo", 0.0), ("oaif", shift)):
            rows = [{"prompt_id": f"p{i}", "arm": "policy", "sample": s, "step": 100, "reward": base[i, s] + offset}
                    for i in range(prompts) for s in range(2)]
            write_run(root / f"{objective}_{seed}", objective, seed, rows)
            rewards[objective] += [r["reward"] for r in rows]
    return rewards


def test_compare_records_prints_intervals_and_paired_differences(tmp_path, capsys):
    rewards = shifted_runs(tmp_path / "runs")
    code = main([str(tmp_path / "runs"), "--records", "eval", "--metric", "reward", "--by", "objective",
                 "--baseline", "objective=dpo", "--out", str(tmp_path / "cmp"), "--resamples", "500"])
    out, err = capsys.readouterr()
    assert code == 0, err
    table = pd.read_csv(tmp_path / "cmp" / "records_eval.csv")
    for objective, values in rewards.items():  # equal rows per prompt: the mean of prompt means = the row mean
        row = table[table["group"] == str((objective,))].iloc[0]
        assert row["reward mean"] == pytest.approx(np.mean(values)) and row["reward n"] == 20 and row["runs"] == 2
        assert row["reward low"] < row["reward mean"] < row["reward high"]
        assert f"| {objective} | 2 | {row['reward mean']:.3g} [{row['reward low']:.3g}, " in out
    assert "| oaif | dpo | +0.3 [0.3, 0.3] p<0.001 (n=20) |" in out
    paired = pd.read_csv(tmp_path / "cmp" / "records_eval_vs_baseline.csv").iloc[0]
    # Exact p = 2 / 2^20; 2^20 flips exceed the 9999 drawn, whose p-value cannot fall below 1 / 10000.
    assert 1e-4 <= paired["reward p"] < 1e-3
    assert (tmp_path / "cmp" / "points_eval_reward.png").stat().st_size > 0


def test_compare_records_length_controlled(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for objective, longer_by in (("dpo", 0.0), ("oaif", 80.0)):
        verdicts, length, reference_length = length_driven(400, 3.0, 0.0, rng, longer_by)
        rows = [{"prompt_id": f"p{i}", "arm": "policy", "sample": 0, "step": 10, "verdict": v, "length": a,
                 "reference_length": b}
                for i, (v, a, b) in enumerate(zip(verdicts, length, reference_length, strict=True))]
        write_run(tmp_path / "runs" / objective, objective, 0, rows)
    code = main([str(tmp_path / "runs"), "--records", "eval", "--metric", "win_rate", "--by", "objective", "--lc",
                 "--out", str(tmp_path / "cmp"), "--resamples", "200", "--no-plots"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lc = pd.read_csv(tmp_path / "cmp" / "records_eval_length_controlled.csv").set_index("group")
    oaif = lc.loc[str(("oaif",))]
    assert oaif["lc raw"] > 0.75 and oaif["lc low"] < 0.5 < oaif["lc high"]  # wins by length alone
    assert "length-controlled" in out and "| oaif |" in out


def test_compare_records_names_what_is_missing(tmp_path, capsys):
    shifted_runs(tmp_path / "runs", prompts=3)
    assert main([str(tmp_path / "runs"), "--records", "eval", "--metric", "nope", "--out", str(tmp_path / "c"),
                 "--no-plots"]) == 2
    assert "--metric nope: no record has a value for it (fields with values: " in capsys.readouterr().err
    assert main([str(tmp_path / "runs"), "--records", "eval", "--by", "objective", "--baseline", "loss=ipo",
                 "--out", str(tmp_path / "c"), "--no-plots"]) == 2
    assert "--baseline loss=ipo: expected KEY=VALUE with KEY one of --by (objective)" in capsys.readouterr().err
    assert main([str(tmp_path / "runs"), "--records", "monitor", "--out", str(tmp_path / "c")]) == 2
    assert "no run has records/monitor.jsonl" in capsys.readouterr().err


# --- plots -----------------------------------------------------------------------------------------------------

@pytest.fixture
def kept_figures(monkeypatch):
    """Figures the plot functions make, kept open (they close them after saving) for the test to inspect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    close = plt.close
    close("all")
    monkeypatch.setattr(plt, "close", lambda *args: None)
    yield lambda: [plt.figure(n) for n in plt.get_fignums()]
    close("all")


def texts(ax) -> dict:
    legend = ax.get_legend()
    return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
            "legend title": legend.get_title().get_text() if legend else None}


def has_half_line(ax) -> bool:
    return any(list(line.get_ydata()) == [0.5, 0.5] and line.get_linestyle() == "--" for line in ax.get_lines())


def test_curves_from_metrics_have_readable_labels_a_step_zero_point_and_the_half_line(tmp_path, kept_figures):
    runs = [Run(name=f"loss={loss},seed=0", source="x", params={"overrides.loss": loss, "overrides.seed": "0"},
                history=pd.DataFrame({"step": [10, 20, 30], "val/samples/win_rate": [0.55, 0.6, win]}))
            for loss, win in (("sigmoid", 0.7), ("ipo", 0.65))]
    written = plot(runs, ["val/samples/win_rate"], [], tmp_path)
    assert [p.name for p in written] == ["curve_val_samples_win_rate.png", "bar_val_samples_win_rate.png"]
    assert all(p.stat().st_size > 0 for p in written)
    curve = kept_figures()[0].axes[0]
    assert texts(curve) == {"title": "win rate (validation, sampled answers) by loss", "xlabel": "step",
                            "ylabel": "win rate (validation, sampled answers)",
                            "legend": ["ipo", "sigmoid", "0.5 (as good as the reference)"], "legend title": "loss"}
    assert has_half_line(curve)
    assert any(list(line.get_xdata()) == [0] and list(line.get_ydata()) == [0.5] for line in curve.get_lines())
    assert curve.get_xlim()[0] == 0


def records_over_steps() -> pd.DataFrame:
    """Two objectives, rewards measured at steps 10 and 20 on 8 prompts, plus the reference arm's answers."""
    rows = []
    for objective, gain in (("dpo", 0.1), ("oaif", 0.2)):
        for step in (10, 20):
            for i in range(8):
                rows.append({"prompt_id": f"p{i}", "arm": "policy", "step": step, "reward": i / 8 + gain * step / 10,
                             "verdict": 0.9 if i % 2 else 0.2, "run": objective, "group": (objective,)})
                rows.append({"prompt_id": f"p{i}", "arm": "reference", "step": step, "reward": i / 8,
                             "verdict": None, "run": objective, "group": (objective,)})
    return pd.DataFrame(rows)


def test_records_curve_bands_intervals_and_starts_from_the_reference_at_step_zero(tmp_path, kept_figures):
    frame = with_metric(with_metric(records_over_steps(), "reward"), "win_rate")
    resampling = Resampling(200)
    curves = {m: curve_table(frame, m, "policy", resampling) for m in ("reward", "win_rate")}
    zero = curves["reward"][curves["reward"]["step"] == 0].set_index("source")
    assert zero.loc["reference arm", "mean"].tolist() == pytest.approx([np.mean(np.arange(8) / 8)] * 2)
    assert (curves["win_rate"].query("step == 0")["source"] == "policy = reference").all()
    finals = group_intervals(frame[(frame["arm"] == "policy") & (frame["step"] == 20)], ["reward", "win_rate"],
                             resampling)
    written = plot_records(curves, finals, ["reward", "win_rate"], ["objective"], tmp_path, "monitor", 0.95)
    assert [p.name for p in written] == ["curve_monitor_reward.png", "points_monitor_reward.png",
                                         "curve_monitor_win_rate.png", "points_monitor_win_rate.png"]
    reward_curve, reward_points, win_curve, win_points = (f.axes[0] for f in kept_figures())
    assert texts(reward_curve)["legend"] == ["dpo", "oaif"] and texts(reward_curve)["title"] == "reward by objective"
    assert len(reward_curve.collections) == 2  # one band per group
    assert any(list(line.get_xdata()) == [0] for line in reward_curve.get_lines())  # the step-0 point
    assert not has_half_line(reward_curve) and has_half_line(win_curve) and has_half_line(win_points)
    assert [t.get_text() for t in reward_points.get_xticklabels()] == ["dpo", "oaif"]
    assert texts(win_points)["xlabel"] == "objective" and texts(win_points)["title"] == "win rate by objective"
    assert not any("=" in t for ax in (reward_curve, win_curve, win_points) for t in texts(ax)["legend"][:2])


# --- head to head ----------------------------------------------------------------------------------------------

class LongerAnswerJudge:
    """Prefers the longer answer (a tie at equal length); cannot tell when an answer is '?'."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, pairs, metas=None):
        self.calls.append((prompts, pairs, metas))
        return Verdicts([None if "?" in (a, b) else 1.0 if len(a) > len(b) else 0.5 if len(a) == len(b) else 0.0
                         for a, b in pairs])


def answers(lengths: dict[str, list[int]]) -> pd.DataFrame:
    return pd.DataFrame([record(prompt_id=pid, prompt=f"question {pid}", arm="policy", sample=s, seed=0,
                                answer="?" if n == 0 else "x" * n, length=n)
                         for pid, ns in lengths.items() for s, n in enumerate(ns)])


def test_head_to_head_pairs_shared_prompts_and_counts_ties_half():
    # p_i: a's answer 10 + i long, b's 5 + 2i: a longer for i < 5 (5 wins), equal at i = 5, shorter after.
    a = answers({**{f"p{i}": [10 + i] for i in range(10)}, "p10": [0], "only_a": [3]})
    b = answers({**{f"p{i}": [5 + 2 * i] for i in range(10)}, "p10": [4], "only_b": [3]})
    a = pd.concat([a, answers({"p0": [99]}).assign(sample=1)])  # a second sample that b cannot be paired with
    judge = LongerAnswerJudge()
    result = head_to_head(a, b, judge, Resampling(500))
    assert result.win_rate.mean == pytest.approx((5 + 0.5) / 10) and result.win_rate.n == 10
    assert result.win_rate.low < 0.55 < result.win_rate.high
    assert (result.pairs, result.failures, result.only_a, result.only_b) == (11, 1, 1, 1)
    prompts, pairs, metas = judge.calls[0]
    assert prompts[0] == "question p0" and pairs[0] == ("x" * 10, "x" * 5) and metas[0] == {"prompt_id": "p0"}
    assert result.length_controlled is not None and result.length_controlled.length_slope > 0


def test_wall_times_keep_a_reruns_time_and_the_logs_other_lines(tmp_path):
    assert wall_time_lines(tmp_path) == []
    (tmp_path / "wall_times.txt").write_text("== a: 120 s\n== b: 60 s\n== a: 180 s\n== run.sh, all runs it started: 240 s\n")
    text = "\n".join(wall_time_lines(tmp_path))
    assert "| a | 3.0 |" in text and "| b | 1.0 |" in text and "| total of the runs above | 4.0 |" in text
    assert "| a | 2.0 |" not in text and "- run.sh, all runs it started: 240 s" in text


# --- alignlab-compare --head-to-head ---------------------------------------------------------------------------

def right_and_wrong_runs(root: Path, prompts: int = 12) -> Path:
    """An oaif and a dpo run answering ``prompts`` questions "What is i plus 10?" (2 samples each) at steps 10 and
    20, the same answers of the same length but dpo's wrong at step 20 (one too many); oaif alone also measured step
    30, wrongly. The questions' file (no id column, so records carry ``questions.jsonl:<line>``) holds the expected
    answers; the last two records use another id, so that those prompts are found by their text."""
    root.mkdir(parents=True, exist_ok=True)
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps({"prompt": f"What is {i} plus 10?", "answer": str(i + 10)}) + "\n"
                                 for i in range(1, prompts + 1)))
    for objective, step_and_error in (("oaif", ((10, 0), (20, 0), (30, 1))), ("dpo", ((10, 0), (20, 1)))):
        rows = [{"prompt_id": f"questions.jsonl:{i}" if i <= prompts - 2 else f"elsewhere row {i}",
                 "prompt": f"What is {i} plus 10?", "arm": "policy", "sample": s, "step": step,
                 "answer": f"It is {i + 10 + error}.", "length": 4}
                for step, error in step_and_error for i in range(1, prompts + 1) for s in range(2)]
        write_run(root / "runs" / objective, objective, 0, rows)
    return questions


def test_head_to_head_gives_the_right_answers_every_win(tmp_path, capsys):
    # At step 20 (the last both measured) the rule judge scores oaif's answer 1 + 0.5 and dpo's 0.5 on every pair:
    # win rate 1 with no spread ([1, 1]); p: 12 per-prompt differences of +0.5, 2^12 sign flips, 2 as extreme:
    # p = 2 / 4096. Length-controlled: every pair won at equal length, so 1 too.
    questions = right_and_wrong_runs(tmp_path)
    runs, out = str(tmp_path / "runs"), tmp_path / "cmp"
    code = main([runs, "--head-to-head", "objective=oaif,dpo", "--prompts", str(questions), "--out", str(out),
                 "--resamples", "200"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    row = pd.read_csv(out / "head_to_head.csv").iloc[0]
    assert (row["a"], row["b"], row["step"]) == ("objective=oaif", "objective=dpo", 20)
    assert (row["win_rate"], row["low"], row["high"], row["lc win_rate"]) == (1, 1, 1, 1)
    assert row["p"] == pytest.approx(2 / 4096) and (row["pairs"], row["prompts"], row["failures"]) == (24, 12, 0)
    assert "| objective=oaif vs objective=dpo | 1 [1, 1] | p<0.001 | 1 [1, 1] | 24 | 12 |" in printed
    assert "step 20" in printed and (out / "head_to_head.md").read_text() in printed
    assert not (out / "comparison.md").exists()  # the run table only when --metrics asks for it

    swapped = main([runs, "--head-to-head", "objective=dpo,oaif", "--prompts", str(questions), "--out", str(out),
                    "--resamples", "200"])
    assert swapped == 0
    row = pd.read_csv(out / "head_to_head.csv").iloc[0]
    assert (row["win_rate"], row["low"], row["high"], row["pairs"]) == (0, 0, 0, 24)
    # At step 10 both are right: every pair a tie.
    assert main([runs, "--head-to-head", "objective=oaif,dpo", "--step", "10", "--prompts", str(questions),
                 "--out", str(out), "--resamples", "200"]) == 0
    assert pd.read_csv(out / "head_to_head.csv").iloc[0]["win_rate"] == 0.5


def test_head_to_head_names_an_unknown_evaluator_a_missing_group_and_missing_metadata(tmp_path, capsys):
    questions = right_and_wrong_runs(tmp_path)
    common = [str(tmp_path / "runs"), "--out", str(tmp_path / "cmp"), "--resamples", "200"]
    assert main([*common, "--head-to-head", "objective=oaif,dpo", "--evaluator", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--evaluator nope: no such judge config (conf/judge/: " in err and "rule" in err
    assert main([*common, "--head-to-head", "objective=oaif,ipo", "--prompts", str(questions)]) == 2
    assert "no records of a run with objective=ipo (values: dpo, oaif)" in capsys.readouterr().err
    assert main([*common, "--head-to-head", "objective=oaif"]) == 2
    assert "--head-to-head objective=oaif: expected KEY=VALUE_A,VALUE_B" in capsys.readouterr().err
    assert main([*common, "--head-to-head", "objective=oaif,dpo"]) == 2  # no --prompts: no expected answers
    assert "prompt questions.jsonl:1: the evaluator needs its 'answer'; give --prompts FILE" in capsys.readouterr().err
    questions.write_text(questions.read_text().splitlines()[0] + "\n")  # only the first question left
    assert main([*common, "--head-to-head", "objective=oaif,dpo", "--prompts", str(questions)]) == 2
    assert (f"prompt questions.jsonl:2: the evaluator needs its 'answer'; --prompts {questions} has no row for it"
            in capsys.readouterr().err)


def test_interval_text_writes_cancelled_rounding_as_zero():
    assert interval_text(3.47e-18, -0.0286, 0.0286, signed=True) == "+0 [-0.0286, 0.0286]"
    assert interval_text(0.7114, 0.6561, 0.7663) == "0.711 [0.656, 0.766]"
    assert interval_text(-1.77, -3.02, -0.628, signed=True) == "-1.77 [-3.02, -0.628]"
