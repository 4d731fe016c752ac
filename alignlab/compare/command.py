"""The ``alignlab-compare`` command: the run table, the per-prompt statistics of ``--records`` and their plots, and
the head-to-head of two groups' answers under an evaluator."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from alignlab.compare import per_prompt
from alignlab.compare.plots import plot, plot_records
from alignlab.compare.runs import Run, load_local, load_wandb_offline, load_wandb_online, resolve_source
from alignlab.compare.tables import compare_table, to_markdown
from alignlab.errors import AlignlabError, ConfigError, DataError
from alignlab.judges.base import Judge

DEFAULT_METRICS = ("val/rewards/accuracies", "val/rewards/margins", "val/loss")


def compare(runs: list[Run], metrics: list[str] | None, by: list[str], out_dir: Path,
            plots: bool = True) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Table (written as Markdown and CSV) and plots for ``runs``; returns the table, the metrics it covers and
    the problems found (metrics or keys no run has)."""
    problems = []
    logged = set().union(*(r.metric_names() for r in runs)) if runs else set()
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in logged]
    for metric in [m for m in metrics if m not in logged]:
        close = sorted(m for m in logged if metric.split("/")[-1] in m)[:8]
        problems.append(f"metric {metric!r} was logged by no run" + (f" (similar: {', '.join(close)})" if close
                                                                       else ""))
    metrics = [m for m in metrics if m in logged]
    problems += unknown_keys(runs, by)
    table = compare_table(runs, metrics, by)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table, metrics, by)
    (out_dir / "comparison.md").write_text(markdown + "\n")
    table.to_csv(out_dir / "comparison.csv", index=False)
    if plots and metrics:
        plot(runs, metrics, by, out_dir)
    return table, metrics, problems


def unknown_keys(runs: list[Run], by: list[str]) -> list[str]:
    return [f"--by {key}: no run has this config key, choice or override" for key in by
            if all(r.param(key) is None for r in runs)]


def compare_records(runs: list[Run], evaluation: str, metrics: list[str], by: list[str], out_dir: Path,
                    arm: str = "policy", step: int | None = None, baseline: str | None = None,
                    length_controlled: bool = False, resampling: per_prompt.Resampling = per_prompt.Resampling(),
                    plots: bool = True) -> str:
    """Per-prompt statistics of ``records/<evaluation>.jsonl``: per group and metric the mean over prompts with
    its bootstrap interval; with ``baseline`` (``key=value``) paired differences against that group; with
    ``length_controlled`` raw and length-controlled win rates over the reference answer. Written as
    ``records_<evaluation>.md`` and CSVs in ``out_dir`` (with plots); returns the Markdown."""
    keys = by or ["run"]
    everything = per_prompt.load_records(runs, evaluation, by)
    for metric in metrics:
        everything = per_prompt.with_metric(everything, metric)
    chosen = per_prompt.at_step(per_prompt.of_arm(everything, arm), step)
    when = f"step {step}" if step is not None else "each run's last step"
    level = f"{resampling.level:.0%}"
    intervals = per_prompt.group_intervals(chosen, metrics, resampling)
    sections = [f"records/{evaluation}.jsonl, arm {arm}, {when}: mean [{level} interval] over prompts (bootstrap, "
                f"{resampling.n} resamples of prompts; a prompt's samples and seeds pooled), n = prompts",
                per_prompt.intervals_markdown(intervals, metrics, keys)]
    out_dir.mkdir(parents=True, exist_ok=True)
    intervals.to_csv(out_dir / f"records_{evaluation}.csv", index=False)
    if baseline is not None:
        paired = per_prompt.paired_table(chosen, metrics, per_prompt.parse_baseline(baseline, by), resampling)
        sections += [f"Against {baseline}: mean per-prompt difference [{level} interval] on the prompts both have; "
                     "p: two-sided paired sign-flip permutation test", per_prompt.paired_markdown(paired, metrics, by)]
        paired.to_csv(out_dir / f"records_{evaluation}_vs_baseline.csv", index=False)
    if length_controlled:
        lc = per_prompt.length_controlled_table(chosen, resampling)
        sections += ["Win rate over the reference answer (ties half) and length-controlled (a logistic model of the "
                     "verdict on tanh of the standardized length difference, read at zero difference, as "
                     f"AlpacaEval 2) [{level} interval]; length slope > 0: the evaluator favours the longer "
                     "answer", per_prompt.length_controlled_markdown(lc, keys)]
        lc.to_csv(out_dir / f"records_{evaluation}_length_controlled.csv", index=False)
    text = "\n\n".join(sections) + "\n"
    (out_dir / f"records_{evaluation}.md").write_text(text)
    if plots:
        curves = {m: per_prompt.curve_table(everything, m, arm, resampling) for m in metrics}
        plot_records(curves, intervals, metrics, keys, out_dir, evaluation, resampling.level, when)
    return text


def load_evaluator(name: str) -> Judge:
    """The judge of ``conf/judge/<name>.yaml``, composed as ``alignlab-eval`` composes its evaluator
    (``judge@evaluator=<name>`` in the eval config, so that interpolations such as ``${model.name_or_path}``
    resolve)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    from alignlab.cli import CONF_DIR

    available = sorted(p.stem for p in (Path(CONF_DIR) / "judge").glob("*.yaml"))
    if name not in available:
        raise ConfigError(f"--evaluator {name}: no such judge config (conf/judge/: {', '.join(available)})")
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return instantiate(compose(config_name="eval", overrides=[f"judge@evaluator={name}"]).evaluator)
    except (HydraException, OmegaConfBaseException) as e:  # a required value (model: ???), a failing constructor
        raise ConfigError(f"--evaluator {name}: {e}") from e


def compare_head_to_head(runs: list[Run], evaluation: str, groups: str, judge: Judge, out_dir: Path,
                         arm: str = "policy", step: int | None = None, prompts: str | Path | None = None,
                         resampling: per_prompt.Resampling = per_prompt.Resampling()) -> str:
    """``groups`` (``key=value_a,value_b``): group a's win rate over group b under ``judge``, from the answers of
    ``records/<evaluation>.jsonl`` on the same prompt, seed and sample index at ``step`` (default: the last step
    both measured), with the metadata the judge reads from ``prompts`` (a prompt file). Written as
    ``head_to_head.md`` and ``.csv`` in ``out_dir``; returns the Markdown."""
    key, value_a, value_b = per_prompt.parse_head_to_head(groups)
    records = per_prompt.of_arm(per_prompt.load_records(runs, evaluation, [key]), arm)
    a, b = (per_prompt.group_rows(records, key, value) for value in (value_a, value_b))
    a, b, step = per_prompt.at_common_step(a, b, step)
    shared = a[a["prompt_id"].isin(set(b["prompt_id"]))]
    if shared.empty:
        raise DataError(f"--head-to-head {groups}: {key}={value_a} ({a['prompt_id'].nunique()} prompts) and "
                        f"{key}={value_b} ({b['prompt_id'].nunique()} prompts) share no prompt id")
    metadata = per_prompt.PromptMetadata.read(prompts) if prompts is not None else None
    meta = per_prompt.judge_metadata(shared, metadata, per_prompt.meta_keys(judge))
    h = per_prompt.head_to_head(a, b, judge, resampling, meta)
    row = per_prompt.head_to_head_row(h, f"{key}={value_a}", f"{key}={value_b}", step)
    when = f"step {step}" if step is not None else "all answers (no steps recorded)"
    left_out = f"; {h.failures} pairs the evaluator could not decide left out" if h.failures else ""
    text = (f"Head to head, records/{evaluation}.jsonl, arm {arm}, {when}: {judge!r} compares {key}={value_a}'s "
            f"answer with {key}={value_b}'s on the same prompt, seed and sample index; {key}={value_a}'s win rate "
            "(ties half) over prompts with a bootstrap interval; p: two-sided sign-flip test of the per-prompt win "
            f"rates against 0.5; length-controlled as with --lc{left_out}\n\n"
            f"{per_prompt.head_to_head_markdown(row, resampling.level)}\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(out_dir / "head_to_head.csv", index=False)
    (out_dir / "head_to_head.md").write_text(text)
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from alignlab.compare import __doc__ as usage

    parser = argparse.ArgumentParser(prog="alignlab-compare", description=usage,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="run folders, multirun/sweep folders, or sweep names")
    parser.add_argument("--metrics", help=f"comma-separated (default: those of {', '.join(DEFAULT_METRICS)} logged)")
    parser.add_argument("--by", default="", help="comma-separated keys to group by: config groups (loss), config "
                                                  "values (loss.beta, data.variant) or overrides")
    parser.add_argument("--out", type=Path, help="folder for comparison.md/.csv and plots (default: "
                                                 "<the one source>/compare, else outputs/compare/<time>)")
    parser.add_argument("--root", type=Path, default=Path("outputs"), help="where sweep names are looked up")
    parser.add_argument("--wandb-dir", action="append", default=[], type=Path,
                        help="a folder holding W&B offline runs (offline-run-*), searched recursively")
    parser.add_argument("--wandb-project", help="entity/project of online W&B runs")
    parser.add_argument("--wandb-group", help="only this W&B group (a sweep)")
    parser.add_argument("--no-plots", action="store_true")
    records = parser.add_argument_group("per-prompt records (records/<evaluation>.jsonl in each run folder)")
    records.add_argument("--records", metavar="EVALUATION", help="eval, monitor, behavior, ...: compare its records")
    records.add_argument("--metric", help="comma-separated record fields (reward, length, finished, correct, "
                                           "measure, reward_parts.<name>) or win_rate (from verdict, ties half); "
                                           "default reward (with --head-to-head: only when given)")
    records.add_argument("--arm", default="policy", help="whose answers (default policy)")
    records.add_argument("--step", type=int, help="the step to compare (default: each run's last; with "
                                                   "--head-to-head, the last both groups measured)")
    records.add_argument("--baseline", metavar="KEY=VALUE", help="paired differences against this --by group")
    records.add_argument("--lc", action="store_true", help="raw and length-controlled win rates from verdicts")
    records.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of prompts")
    records.add_argument("--head-to-head", metavar="KEY=VALUE_A,VALUE_B",
                         help="the evaluator compares the two groups' answers directly: A's win rate over B "
                              "(--records names whose answers, default eval)")
    records.add_argument("--evaluator", default="rule", help="for --head-to-head: a judge of conf/judge/ "
                                                             "(default rule)")
    records.add_argument("--prompts", help="for --head-to-head: the prompt file (JSONL, JSON, CSV, Parquet) whose "
                                           "rows give what the evaluator reads, e.g. the expected answer")
    records.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    return parser.parse_args(argv)


def load_runs(args: argparse.Namespace) -> tuple[list[Run], list[str]]:
    runs, problems = load_local(args.sources, args.root)
    for folder in args.wandb_dir:
        for run_dir in sorted(folder.rglob("offline-run-*")):
            try:
                runs.append(load_wandb_offline(run_dir))
            except (ValueError, OSError) as e:
                problems.append(f"{run_dir}: {e}")
    if args.wandb_project:
        runs.extend(load_wandb_online(args.wandb_project, args.wandb_group))
    return runs, problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs, problems = load_runs(args)
    if not runs:
        print("alignlab-compare: no runs found" + "".join(f"\n  {p}" for p in problems), file=sys.stderr)
        return 2
    by = [k for k in args.by.split(",") if k]
    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else None
    out_dir = args.out or (Path(resolve_source(args.sources[0], args.root)) / "compare" if len(args.sources) == 1
                           else args.root / "compare" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    covered: list[str] = []
    if (args.records is None and args.head_to_head is None) or metrics is not None:  # else only when asked for
        _, covered, more = compare(runs, metrics, by, out_dir, plots=not args.no_plots)
        problems += more
        print((out_dir / "comparison.md").read_text(), end="")
    resampling = per_prompt.Resampling(args.resamples, 0, args.level)
    try:
        if args.records is not None and (args.head_to_head is None or args.metric is not None):
            problems += [] if metrics is not None else unknown_keys(runs, by)
            print(("\n" if covered else "") + compare_records(
                runs, args.records, [m for m in (args.metric or "reward").split(",") if m], by, out_dir, args.arm,
                args.step, args.baseline, args.lc, resampling, plots=not args.no_plots), end="")
            covered.append(args.records)
        if args.head_to_head is not None:
            judge = load_evaluator(args.evaluator)
            print(("\n" if covered else "") + compare_head_to_head(
                runs, args.records or "eval", args.head_to_head, judge, out_dir, args.arm, args.step, args.prompts,
                resampling), end="")
            covered.append("head to head")
    except AlignlabError as e:
        print(f"alignlab-compare: {e}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"alignlab-compare: note: {problem}", file=sys.stderr)
    print(f"{len(runs)} runs; tables and plots in {out_dir}")
    return 0 if covered else 2
