"""Scalable evaluation: multiple-choice questions generated from rules, then a checking pass.

Generators (``conf/question_generator/``):

* :class:`TemplateQuestionGenerator`: cloze questions from a rule's concrete values (a number with its unit, a
  colour, a weekday): the value is blanked, and the distractors are values of the same kind the rule does not
  contain. No model needed; every question is verifiable by construction.
* :class:`LLMQuestionGenerator`: a local model or an OpenAI-compatible endpoint writes a question as JSON from
  a prompt that is config text.

The checking pass keeps a question only if it is well formed (a question, distinct options, an answer letter among
them), does not print its answer in the stem, and exactly one option is consistent with the rule: the keyed
option's content words and numbers all occur in the rule and no other option's do. An optional checker model,
shown the rule, must also choose the keyed option. The report says how many were kept and why the rest were not.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from alignlab.errors import DataError
from alignlab.opo.memory import Rule, RuleMemory
from alignlab.opo.prompting import messages
from alignlab.opo.questions import LETTERS, MCQuestion, parse_question, save_questions
from alignlab.opo.retrievers import tokenize
from alignlab.sampling import Sampling, generate

log = logging.getLogger(__name__)

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "grey", "brown"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_NUMBER = re.compile(r"\b(\d+)(?:\s+([a-z]+(?:\.[a-z]\.)?))?", re.IGNORECASE)


@dataclass
class Draft:
    """A generator's output for one rule: a question, or the raw text that failed to become one."""

    rule: Rule
    question: MCQuestion | None
    raw: str = ""
    problem: str | None = None


def _value_slots(text: str) -> list[tuple[str, list[str]]]:
    """(value as written, candidate distractors of the same kind) for each blankable value in ``text``."""
    slots = []
    for match in _NUMBER.finditer(text):
        number, unit = int(match.group(1)), match.group(2) or ""
        variants = {number + 1, number + 2, max(1, number - 1), number * 2, max(1, number // 2), number + 5,
                    number * 3} - {number}
        if unit.lower() in ("a.m.", "p.m."):  # clock hours stay clock hours
            variants = {(v - 1) % 12 + 1 for v in (number + 1, number + 2, number - 1, number - 2, number + 4)}
            variants.discard(number)
        variants = sorted(variants)
        suffix = f" {unit}" if unit else ""
        slots.append((match.group(0), [f"{v}{suffix}" for v in variants]))
    for word in re.findall(r"\b\w+\b", text):
        day, plural = (word[:-1], "s") if word.endswith("s") else (word, "")
        if word.lower() in COLOURS:
            slots.append((word, [c for c in COLOURS if c != word.lower()]))
        elif day in WEEKDAYS:
            slots.append((word, [d + plural for d in WEEKDAYS if d != day]))
    return slots


class TemplateQuestionGenerator:
    def __init__(self, per_rule: int = 1, num_options: int = 4, seed: int = 0,
                 stem: str = 'Under the town\'s rules, what belongs in the blank? "{cloze}"', loaded=None) -> None:
        self.per_rule, self.num_options, self.seed, self.stem = per_rule, num_options, seed, stem

    @staticmethod
    def needs_local_model(node: DictConfig) -> bool:
        return False

    def __call__(self, rules: list[Rule]) -> list[Draft]:
        drafts = []
        for rule in rules:
            rng = random.Random(f"{self.seed}:{rule.id}")
            slots = _value_slots(rule.text)
            if not slots:
                drafts.append(Draft(rule, None, rule.text, "no value to ask about"))
                continue
            for n, (value, candidates) in enumerate(rng.sample(slots, min(self.per_rule, len(slots)))):
                present = set(tokenize(rule.text))
                distractors = [c for c in candidates if not set(tokenize(c)) <= present]
                distractors = rng.sample(distractors, min(self.num_options - 1, len(distractors)))
                options = [value, *distractors]
                rng.shuffle(options)
                cloze = rule.text.replace(value, "____", 1)
                row = {"id": f"G-{rule.id}-{n + 1}", "question": self.stem.format(cloze=cloze), "options": options,
                       "answer": LETTERS[options.index(value)], "rule_ids": [rule.id], "source": "template"}
                drafts.append(_draft_from_row(rule, row, json.dumps(row)))
        return drafts


GENERATION_PROMPT = (
    "Here is a rule of a town:\n{rule}\n\nWrite one multiple-choice question that can only be answered by knowing "
    "this rule, with 4 short options of which exactly one is correct according to the rule. Reply with JSON only: "
    '{{"question": "...", "options": ["...", "...", "...", "..."], "answer": "<letter of the correct option>"}}')


class LLMQuestionGenerator:
    """``endpoint``: a :class:`~alignlab.judges.openai.ChatEndpoint`; without one, ``loaded`` (the local model)
    writes the questions by sampling with ``sampling`` (a :class:`~alignlab.sampling.Sampling`)."""

    def __init__(self, prompt: str = GENERATION_PROMPT, endpoint=None, loaded=None,
                 sampling: Sampling | None = None) -> None:
        if endpoint is None and loaded is None:
            raise DataError("LLMQuestionGenerator needs an endpoint or a local model")
        self.prompt, self.endpoint, self.loaded = prompt, endpoint, loaded
        self.sampling = sampling or Sampling(max_new_tokens=200, temperature=0.0, seed=0)

    @staticmethod
    def needs_local_model(node: DictConfig) -> bool:
        return node.get("endpoint") is None

    def _replies(self, rules: list[Rule]) -> list[str | None]:
        conversations = [[{"role": "user", "content": self.prompt.format(rule=r.text)}] for r in rules]
        if self.endpoint is not None:
            return self.endpoint.complete_all(conversations)
        tokenizer = self.loaded.tokenizer
        ids = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
               for c in conversations]
        return [g.text for g in generate(self.loaded.model, tokenizer, ids, self.sampling,
                                         progress="writing questions")]

    def __call__(self, rules: list[Rule]) -> list[Draft]:
        drafts = []
        for rule, reply in zip(rules, self._replies(rules), strict=True):
            if reply is None:
                drafts.append(Draft(rule, None, "", "no reply"))
                continue
            match = re.search(r"\{.*\}", reply, re.DOTALL)
            try:
                row = json.loads(match.group(0)) if match else None
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                drafts.append(Draft(rule, None, reply, "reply is not a JSON object"))
                continue
            row = {**row, "id": f"L-{rule.id}", "rule_ids": [rule.id], "source": "llm"}
            drafts.append(_draft_from_row(rule, row, reply))
        return drafts


def _draft_from_row(rule: Rule, row: dict[str, Any], raw: str) -> Draft:
    try:
        return Draft(rule, parse_question(row, f"generated from {rule.id}"), raw)
    except DataError as e:
        return Draft(rule, None, raw, f"malformed: {str(e).split(': ', 1)[-1]}")


def _content(text: str) -> set[str]:
    return set(tokenize(text))


def check(question: MCQuestion, rule: Rule) -> str | None:
    """Why ``question`` fails the checking pass against its gold ``rule``, or None when it passes."""
    answer = question.options[question.answer]
    if answer.lower() in question.question.lower().replace("____", ""):
        return "the stem gives the answer away"
    rule_words = _content(rule.text)
    fits = [bool(_content(o)) and _content(o) <= rule_words for o in question.options]
    if not fits[question.answer]:
        return "the keyed option is not supported by the rule"
    if sum(fits) > 1:
        return "more than one option is consistent with the rule"
    return None


def check_all(drafts: list[Draft], checker=None, min_probability: float = 0.5) -> tuple[list[MCQuestion],
                                                                                      dict[str, Any]]:
    """Keep the drafts that pass :func:`check` (and the checker model, when given); count the reasons."""
    reasons: Counter[str] = Counter()
    passed: list[tuple[MCQuestion, Rule]] = []
    for draft in drafts:
        problem = draft.problem or check(draft.question, draft.rule)
        if problem:
            reasons[problem.split(":")[0] if problem.startswith("malformed") else problem] += 1
        else:
            passed.append((draft.question, draft.rule))
    kept = [q for q, _ in passed]
    if checker is not None and passed:
        conversations = [messages(q.question, q.options, [rule], checker.template) for q, rule in passed]
        probabilities = checker(conversations, [q.options for q, _ in passed])
        kept = []
        for (question, _), probs in zip(passed, probabilities, strict=True):
            if probs is None or probs[question.answer] < min_probability:
                reasons["the checker model, shown the rule, did not choose the keyed option"] += 1
            else:
                kept.append(question)
    report = {"generated": len(drafts), "kept": len(kept), "dropped": dict(reasons)}
    return kept, report


def needs_local_model(cfg: DictConfig) -> bool:
    """A local model is loaded only if the generator or the checker, as configured, asks for one: each class says
    so through a static ``needs_local_model(node)``; a class that does not say gets the model (``loaded``)."""
    for node in (cfg.opo_questions.generator, cfg.opo_questions.get("checker")):
        if node is None:
            continue
        ask = getattr(get_class(node._target_), "needs_local_model", None)
        if ask is None or ask(node):
            return True
    return False


def run_make_questions(cfg: DictConfig) -> dict[str, Any]:
    from alignlab.train import prepare_output_dir

    output_dir = prepare_output_dir(cfg)
    memory = RuleMemory.load(cfg.memory)
    loaded = instantiate(cfg.model) if needs_local_model(cfg) else None
    generator = instantiate(cfg.opo_questions.generator, _partial_=True)(loaded=loaded)
    checker = instantiate(cfg.opo_questions.checker, _partial_=True)(loaded=loaded) if cfg.opo_questions.get("checker") is not None else None
    drafts = generator(memory.rules)
    kept, report = check_all(drafts, checker)
    output = Path(cfg.output) if cfg.get("output") else output_dir / "questions.jsonl"
    output.parent.mkdir(parents=True, exist_ok=True)
    save_questions(kept, output)
    report.update({"memory": cfg.memory, "output": str(output),
                   "rejected_examples": [{"rule": d.rule.id, "problem": d.problem or check(d.question, d.rule),
                                          "raw": d.raw[:300]} for d in drafts
                                         if d.problem or check(d.question, d.rule)][:20]})
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    dropped = ", ".join(f"{n} {reason}" for reason, n in report["dropped"].items()) or "none"
    print(f"questions: {report['generated']} generated, {report['kept']} kept ({dropped} dropped) -> {output}")
    return report
