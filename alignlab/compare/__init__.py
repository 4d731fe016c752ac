"""``alignlab-compare``: one table (and plots) of chosen metrics over runs, grouped by any config value, and how
sure each difference is from the runs' per-prompt records.

    alignlab-compare outputs/sweeps/loss_beta/2026-11-30_18-40-01.123456 --by loss,loss.beta
    alignlab-compare loss_beta --metrics val/rewards/accuracies,eval/samples/policy/mean_length --by loss
    alignlab-compare runs/a runs/b --wandb-dir runs/c/wandb          # W&B offline runs too
    alignlab-compare --wandb-project me/alignlab --wandb-group loss_beta/2026-11-30_18-40-01.123456 --by loss
    alignlab-compare objectives --records eval --metric reward,length --by objective    # mean [95% CI], n
    alignlab-compare objectives --records eval --metric reward --by objective --baseline objective=dpo --lc

Sources: run folders (``metrics.csv``, ``config.yaml``, ``run_info.json``, ``summary.json``, ``eval/eval.json``,
``records/*.jsonl``); any folder above them (a multirun or sweep folder: its ``sweep_summary.json`` adds the jobs
that failed); a sweep name (its latest launch under ``outputs/sweeps/NAME``); W&B runs, online through the public
API or offline from their ``.wandb`` files. A run folder with nothing logged (a job killed at start) is named and
left out; one killed mid-run counts with what it logged, marked ``unfinished``.

Per group and metric the run table gives the final value (last logged) and the best (max, or min for losses, KL
and lengths), as mean ± std over the group's runs (seeds): ``comparison.md``/``.csv``, a learning-curve PNG per
metric logged over steps, and a bar chart per metric.

With ``--records EVALUATION`` (``records/<evaluation>.jsonl``, one row per prompt, arm and sample): per group and
``--metric``, the mean over prompts with a bootstrap interval that resamples prompts (a prompt's samples and seeds
pooled) and ``n`` prompts; ``--baseline key=value``: each group's paired per-prompt difference from that group,
with interval and sign-flip permutation p-value; ``--lc``: raw and length-controlled win rates over the
reference answer from the evaluator's verdicts. Written as ``records_<evaluation>.md`` and CSVs, with a curve
over steps (interval as band, step-0 point) and a chart of each group's mean with its interval.

With ``--head-to-head KEY=VALUE_A,VALUE_B``: an evaluator (``--evaluator``, a judge of ``conf/judge/``, default
``rule``) compares group A's answers with group B's on the same prompt, seed and sample index at the last step both
measured (or ``--step``), from ``records/<--records, default eval>.jsonl``: A's win rate (ties half) with a bootstrap
interval over prompts, a sign-flip p-value against 0.5, the length-controlled win rate, pairs and prompts, written
as ``head_to_head.md``/``.csv``. What the evaluator reads about a prompt (the rule judge: its expected answer) comes
from ``--prompts FILE``, its rows matched by the records' prompt id (the ``id`` column, else ``file:line``), else by
prompt text.

    alignlab-compare objectives --head-to-head objective=oaif,dpo --prompts alignlab/data/bundled/short_facts.jsonl
"""

from alignlab.compare.command import (
    DEFAULT_METRICS,
    compare,
    compare_head_to_head,
    compare_records,
    load_evaluator,
    main,
    parse_args,
)
from alignlab.compare.per_prompt import (
    HeadToHead,
    PromptMetadata,
    Resampling,
    head_to_head,
    load_records,
    pair_answers,
)
from alignlab.compare.plots import metric_label, plot, plot_records, run_labels
from alignlab.compare.runs import (
    Run,
    failed_jobs,
    find_run_folders,
    flatten,
    group_key,
    load_local,
    load_run_folder,
    load_wandb_offline,
    load_wandb_online,
    read_metrics_csv,
    read_wandb_records,
    resolve_source,
)
from alignlab.compare.tables import (
    LOWER_IS_BETTER,
    compare_table,
    final_and_best,
    lower_is_better,
    to_markdown,
)

__all__ = ["DEFAULT_METRICS", "LOWER_IS_BETTER", "HeadToHead", "PromptMetadata", "Resampling", "Run", "cli",
           "compare", "compare_head_to_head", "compare_records", "compare_table", "failed_jobs", "final_and_best",
           "find_run_folders", "flatten", "group_key", "head_to_head", "load_evaluator", "load_local",
           "load_records", "load_run_folder", "load_wandb_offline",
           "load_wandb_online", "lower_is_better", "main", "metric_label", "pair_answers", "parse_args", "plot",
           "plot_records", "read_metrics_csv", "read_wandb_records", "resolve_source", "run_labels",
           "to_markdown"]


def cli() -> None:
    import sys

    sys.exit(main())
