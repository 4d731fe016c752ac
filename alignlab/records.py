"""Per-prompt evaluation records: one row per prompt, arm and sample, kept by every evaluation that samples answers.

Aggregates (a win rate, a mean reward) cannot be paired across runs or given an interval afterwards; these rows
can. Every sampled evaluation (``alignlab-eval``, the periodic win-rate monitor, counterfactual behaviour rates,
OPO) writes them as JSONL under the run folder's ``records/`` (``records/<evaluation>.jsonl``), appending one
block per measurement; :mod:`alignlab.stats` and ``alignlab-compare`` compute means, bootstrap intervals over
prompts and paired differences from them.

A row's fields (missing values are ``None``; extra fields are allowed and kept):

* ``evaluation``: which measurement wrote it (``eval``, ``monitor``, ``behavior``, ``capability``, ``opo``);
* ``prompt_id``: a stable id of the prompt (its dataset location or its own ``id`` column), the same in every run
  that uses the same prompt set: the key two arms are paired on;
* ``prompt``: the question text; ``arm``: whose answer (``policy``, ``reference``, ``reference_encourage``, an OPO
  condition, ...); ``sample``: the sample's index for this prompt and arm (0 .. n_samples-1);
* ``step``, ``seed``: the training step of the policy that answered and the training run's seed (for
  ``alignlab-eval``: the evaluated run's final step and its seed, read from its folder; ``None`` for a bare
  ``save_pretrained`` folder); ``sampling_seed``: the seed the answers were drawn with (``sampling.seed``),
  which is the evaluation's own and may differ from the run's;
* ``answer``, ``length`` (new tokens, EOS excluded), ``finished`` (ended with EOS);
* ``reward`` and ``reward_parts`` (a dict) from a programmatic rater; ``measure`` from a behaviour measure;
  ``correct`` for a question with a known answer;
* ``verdict``: an evaluator's probability that this answer beats ``reference_answer`` (orders averaged);
  ``verdict_orders``: the probability in each order shown to the evaluator (``[answer first, answer second]``);
* ``reference_answer``, ``reference_length``: the answer it was compared with;
* ``log_ratio``: ``log pi(answer) - log pi_ref(answer)`` of a policy's own sample, whose mean estimates
  KL(policy || reference) per answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alignlab.data.sources import strict_jsonl

FIELDS = ("evaluation", "prompt_id", "prompt", "arm", "sample", "step", "seed", "sampling_seed", "answer", "length",
          "finished", "reward", "reward_parts", "measure", "correct", "verdict", "verdict_orders", "reference_answer",
          "reference_length", "log_ratio")


def record(**fields: Any) -> dict[str, Any]:
    """A row with every field of :data:`FIELDS` present (``None`` where not given), extra fields kept."""
    return {**{name: None for name in FIELDS}, **fields}


def records_path(run_dir: str | Path, evaluation: str) -> Path:
    return Path(run_dir) / "records" / f"{evaluation}.jsonl"


def append_records(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Append rows to a JSONL records file (created with its folder if needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_records(path: str | Path):
    """A records file (or a folder of them) as a pandas DataFrame, one row per record."""
    import pandas as pd

    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    rows = [row for file in files for _, row in strict_jsonl(file)]
    frame = pd.DataFrame(rows, columns=None if rows else list(FIELDS))
    for name in FIELDS:  # a compact file leaves out the fields that are None
        if name not in frame.columns:
            frame[name] = None
    return frame


class Recorder:
    """Writes a run's evaluation records: stamps each row with the run's seed, the seed its answers were sampled
    with, and the step it was measured at (``step`` here, unless :meth:`write` names one: the monitor measures
    at many steps, ``alignlab-eval`` at the evaluated run's last).

    ``run_dir=None`` keeps the rows in memory only (``rows``); otherwise they are appended to
    ``<run_dir>/records/<evaluation>.jsonl`` as each measurement ends, so an interrupted run keeps what it measured.
    ``compact=True`` leaves the fields that are ``None`` out of the written lines (``read_records`` restores them):
    files committed with an experiment stay small.
    """

    def __init__(self, run_dir: str | Path | None, seed: int | None = None, compact: bool = False,
                 step: int | None = None, sampling_seed: int | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed, self.compact, self.step, self.sampling_seed = seed, compact, step, sampling_seed
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def write(self, evaluation: str, rows: list[dict[str, Any]], step: int | None = None) -> Path | None:
        stamps = {"evaluation": evaluation, "step": self.step if step is None else step, "seed": self.seed,
                  "sampling_seed": self.sampling_seed}
        stamped = [record(**{**row, **stamps}) for row in rows]
        self.rows.setdefault(evaluation, []).extend(stamped)
        if self.run_dir is None:
            return None
        lines = [{k: v for k, v in row.items() if v is not None} for row in stamped] if self.compact else stamped
        return append_records(records_path(self.run_dir, evaluation), lines)
