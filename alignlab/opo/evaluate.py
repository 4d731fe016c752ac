"""``run_opo(cfg)``: the plain function behind ``alignlab-opo``.

For each question set and condition (no rules; the top-k retrieved rules for each k; the gold rules, an oracle;
k random rules, drawn ``random_draws`` times with different seeds), every question is asked once per cyclic order
of its options and the letter probabilities are mapped back to the options and averaged, which cancels a model's
preference for a letter. Next to the model, the no-model baselines of :mod:`.baselines` answer from exactly the
rules the model was shown. Every answer is a row of ``records/opo.jsonl`` (:mod:`alignlab.records`: prompt id =
question id, arm = condition, ``answerer`` = model or baseline), and every figure of ``results.json`` is computed
from those rows (:mod:`.summary`): accuracy with a bootstrap interval over questions, separately for questions
that copying answers and those that need inference, and the retriever's recall@k. The edit demonstration edits one
rule at a time, asks that rule's question again with the same weights, restores the rule, and records each answer
in ``records/opo_edit.jsonl``. With ``logger=wandb`` both are also W&B Tables (``records/opo``,
``records/opo_edit``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from alignlab.data.sources import strict_jsonl
from alignlab.errors import ConfigError, DataError
from alignlab.loggers import evaluation_loggers, log_recorder_tables
from alignlab.opo.baselines import BASELINES, copyable
from alignlab.opo.memory import Rule, RuleMemory
from alignlab.opo.prompting import PromptTemplate, messages, pack_rules
from alignlab.opo.questions import LETTERS, MCQuestion, load_questions
from alignlab.opo.retrievers import Retriever
from alignlab.opo.summary import MODEL, edit_summary, results_markdown, set_summary
from alignlab.records import Recorder, records_path
from alignlab.redaction import without_secrets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Condition:
    """Which rules a question is shown: ``none``, ``top`` (k retrieved), ``gold`` or ``random`` (k, draw
    ``draw``: each draw is its own seeded sample of rules per question)."""

    kind: str
    k: int = 0
    draw: int = 0

    @property
    def name(self) -> str:
        return {"none": "no rules", "gold": "gold rule (oracle)"}.get(self.kind, f"{self.kind}-{self.k}")


def _no_rules(evaluator: OPOEvaluator, condition: Condition, question: MCQuestion) -> list[Rule]:
    return []


def _top_rules(evaluator: OPOEvaluator, condition: Condition, question: MCQuestion) -> list[Rule]:
    """The retriever's ``k`` best for the question, within the metadata filter."""
    return [rule for rule, _ in evaluator.retriever.search(question.query(), condition.k, evaluator.where(question))]


def _gold_rules(evaluator: OPOEvaluator, condition: Condition, question: MCQuestion) -> list[Rule]:
    """The rules the question was written from (the oracle)."""
    return [evaluator.memory[i] for i in question.rule_ids if i in evaluator.memory]


def _random_rules(evaluator: OPOEvaluator, condition: Condition, question: MCQuestion) -> list[Rule]:
    """``k`` rules drawn by (seed, draw, question): the same draw for a question in every run."""
    digest = hashlib.sha256(f"{evaluator.seed}:{condition.draw}:{question.id}".encode()).digest()
    rules = evaluator.memory.rules
    return random.Random(digest).sample(rules, min(condition.k, len(rules)))


# condition kind -> (evaluator, condition, question) -> the rules shown
RULE_PICKERS: dict[str, Callable[[OPOEvaluator, Condition, MCQuestion], list[Rule]]] = {
    "none": _no_rules, "top": _top_rules, "gold": _gold_rules, "random": _random_rules}
KINDS = tuple(RULE_PICKERS)


def conditions(ks: list[int], random_k: int, kinds: list[str] = KINDS, random_draws: int = 1) -> list[Condition]:
    """The conditions of ``kinds`` (``top`` once per k, ``random`` once per draw), in a fixed order."""
    if unknown := set(kinds) - set(KINDS):
        raise ConfigError(f"conditions: {sorted(unknown)} are not among {list(KINDS)}")
    if random_draws < 1:
        raise ConfigError(f"random_draws={random_draws}: at least one draw of random rules is needed")
    chosen = [Condition("none"), *(Condition("top", k) for k in ks), Condition("gold"),
              *(Condition("random", random_k, draw) for draw in range(random_draws))]
    return [c for c in chosen if c.kind in kinds]


class OPOEvaluator:
    """Asks questions under conditions. ``scorer`` (:mod:`alignlab.opo.scoring`) holds the prompt template and the
    number of option orders, and gives probabilities over the options; ``tokenizer`` measures the rule budget;
    ``baselines`` (names in :data:`~alignlab.opo.baselines.BASELINES`) answer from the same packed rules."""

    def __init__(self, memory: RuleMemory, retriever: Retriever, scorer, tokenizer, budget_tokens: int = 256,
                 filter_key: str | None = None, seed: int = 0, baselines: list[str] = ()) -> None:
        if unknown := [b for b in baselines if b not in BASELINES]:
            raise ConfigError(f"baselines: {unknown} are not among {sorted(BASELINES)}")
        self.memory, self.retriever, self.scorer, self.tokenizer = memory, retriever, scorer, tokenizer
        self.template: PromptTemplate = scorer.template
        self.budget_tokens, self.filter_key, self.seed = budget_tokens, filter_key, seed
        self.baselines = list(baselines)
        self._answered: dict[str, np.ndarray | None] = {}  # prompt -> the scorer's probabilities (score_unique)

    def where(self, question: MCQuestion) -> dict[str, Any] | None:
        """Metadata filter from the question (e.g. its ``location``), which also admits rules valid everywhere."""
        if not self.filter_key or self.filter_key not in question.meta:
            return None
        return {self.filter_key: [question.meta[self.filter_key], "everywhere"]}

    def rules_for(self, condition: Condition, question: MCQuestion) -> list[Rule]:
        """The rules shown with ``question`` under ``condition``, in the order they are packed."""
        if condition.kind not in RULE_PICKERS:
            raise ConfigError(f"condition kind {condition.kind!r} is not among {list(RULE_PICKERS)}")
        return RULE_PICKERS[condition.kind](self, condition, question)

    def score_unique(self, conversations: list[list[dict]], shown: list[list[str]]) -> list[np.ndarray | None]:
        """The scorer's answers, asking each distinct (conversation, options) once per run: conditions often show
        the same rules (top-1 and the gold rule; the edit demonstration's questions before the edit), and a
        prompt's answer does not change within a run. The key is the whole prompt, rules' text included, so an
        edited rule is a new prompt."""
        keys = [json.dumps([c, s]) for c, s in zip(conversations, shown, strict=True)]
        todo = {key: i for i, key in enumerate(keys) if key not in self._answered}
        if todo:
            new = self.scorer([conversations[i] for i in todo.values()], [shown[i] for i in todo.values()])
            self._answered.update(zip(todo, new, strict=True))
        return [self._answered[key] for key in keys]

    def ask(self, questions: list[MCQuestion], rules: list[list[Rule]]) -> list[dict[str, Any]]:
        """Per question: the model's option probabilities averaged over orders, its choice, the probability it
        gave the correct option, the rules offered (``offered``, best first) and those of them that fit the token
        budget and were shown (``rules``), and each baseline's probabilities from the rules shown."""
        conversations, shown_options, index, shown_rules = [], [], [], []
        for qi, (question, candidates) in enumerate(zip(questions, rules, strict=True)):
            packed = pack_rules(self.tokenizer, candidates, self.budget_tokens, self.template)
            shown_rules.append(packed)
            n = len(question.options)
            for shift in range(min(self.scorer.orders or n, n)):
                order = [(j + shift) % n for j in range(n)]  # shown position j holds original option order[j]
                shown = [question.options[o] for o in order]
                conversations.append(messages(question.question, shown, packed, self.template))
                shown_options.append(shown)
                index.append((qi, order))
        probabilities = self.score_unique(conversations, shown_options)
        totals = [np.zeros(len(q.options)) for q in questions]
        counts = [0] * len(questions)
        for (qi, order), probs in zip(index, probabilities, strict=True):
            if probs is not None:
                totals[qi][order] += probs
                counts[qi] += 1
        return [self.answer(q, total / count if count else None, count, packed, offered)
                for q, total, count, packed, offered in zip(questions, totals, counts, shown_rules, rules,
                                                           strict=True)]

    def answer(self, question: MCQuestion, probs: np.ndarray | None, orders: int, packed: list[Rule],
               offered: list[Rule]) -> dict:
        """One question's answer (see :meth:`ask`); the baselines read the text of the rules shown."""
        choice = int(np.argmax(probs)) if probs is not None else None
        text = "\n".join(r.text for r in packed)
        baselines = {}
        for name in self.baselines:
            p = BASELINES[name](question.options, text)
            baselines[name] = {"probs": [round(float(x), 4) for x in p],
                               "p_correct": round(float(p[question.answer]), 4)}
        return {"id": question.id, "choice": None if choice is None else LETTERS[choice],
                "correct": choice == question.answer,
                "probs": None if probs is None else [round(float(p), 4) for p in probs],
                "p_correct": None if probs is None else round(float(probs[question.answer]), 4),
                "rules": [r.id for r in packed], "offered": [r.id for r in offered], "answered_orders": orders,
                "baselines": baselines}

    def evaluate(self, questions: list[MCQuestion], condition: Condition) -> list[dict[str, Any]]:
        return self.ask(questions, [self.rules_for(condition, q) for q in questions])


def answer_rows(set_name: str, questions: list[MCQuestion], condition: Condition, answers: list[dict[str, Any]],
                flags: dict[str, bool], retriever: str) -> list[dict]:
    """Record rows for one condition: per question, one for the model (``correct`` 1 or 0 from its choice) and
    one per baseline (``correct`` = the probability of the correct option: the expected accuracy of a uniform
    pick among the options it ties on). The model's row also holds what both saw: the question, its key, the gold
    rules, ``retrieved`` (the ids the retriever returned, top-k conditions) and ``rules`` (those that fit the
    token budget and were shown)."""
    rows = []
    for question, a in zip(questions, answers, strict=True):
        common = {"prompt_id": question.id, "arm": condition.name, "sample": condition.draw, "set": set_name,
                  "condition": condition.kind, "k": condition.k, "copyable": flags[question.id],
                  "retriever": retriever if condition.kind == "top" else None}
        choice = None if a["choice"] is None else question.options[LETTERS.index(a["choice"])]
        rows.append({**common, "answerer": MODEL, "prompt": question.question, "key": question.letter,
                     "choice": a["choice"], "answer": choice, "correct": float(a["correct"]),
                     "p_correct": a["p_correct"], "probs": a["probs"], "gold": question.rule_ids,
                     "rules": a["rules"], "retrieved": a["offered"] if condition.kind == "top" else None})
        for name, b in a["baselines"].items():
            rows.append({**common, "answerer": name, "correct": b["p_correct"], "p_correct": b["p_correct"],
                         "probs": b["probs"]})
    return rows


def parameters_digest(model: torch.nn.Module) -> str:
    """A hash of every weight: the edit demonstration shows it unchanged."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_edits(path: str | Path, memory: RuleMemory, questions: dict[str, MCQuestion]) -> list[dict[str, Any]]:
    """Rows ``{"id": rule, "text": new text, "question_id": ..., "new_answer": letter}``, at most one per rule,
    checked against the memory and the questions (errors name the file and line)."""
    edits, seen = [], {}
    for where, row in strict_jsonl(path):
        for key in ("id", "text", "question_id", "new_answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{where}: missing or empty '{key}'")
        if row["id"] not in memory:
            raise DataError(f"{where}: rule {row['id']!r} is not in the memory")
        if row["id"] in seen:
            raise DataError(f"{where}: rule {row['id']!r} is already edited at {seen[row['id']]}; one edit per rule")
        question = questions.get(row["question_id"])
        if question is None:
            raise DataError(f"{where}: question {row['question_id']!r} is not among the questions")
        if row["id"] not in question.rule_ids:
            raise DataError(f"{where}: question {row['question_id']!r} is not about rule {row['id']!r}")
        letter = row["new_answer"].strip().upper()
        if letter not in LETTERS[: len(question.options)]:
            raise DataError(f"{where}: new_answer {row['new_answer']!r} is not among the question's option letters")
        if letter == question.letter:
            raise DataError(f"{where}: new_answer {letter} is the question's answer already; an edit must change it")
        seen[row["id"]] = where
        edits.append({**row, "new_answer": letter})
    return edits


def edit_demonstration(evaluator: OPOEvaluator, edits: list[dict[str, Any]], questions: dict[str, MCQuestion],
                       condition: Condition, model: torch.nn.Module | None) -> dict[str, Any]:
    """Ask each edited rule's question before and after its edit (the memory only, one rule at a time, the rest
    of the memory as it was; weights untouched), restoring the rule after each. Returns the record rows (one per
    edit, phase and answerer) and whether the weights' hash stayed the same."""
    asked = [questions[e["question_id"]] for e in edits]
    before = evaluator.evaluate(asked, condition)
    weights_before = parameters_digest(model) if model is not None else None
    after = []
    for edit, question in zip(edits, asked, strict=True):
        original = evaluator.memory[edit["id"]].text
        evaluator.memory.edit(edit["id"], edit["text"])
        try:
            after += evaluator.evaluate([question], condition)
        finally:
            evaluator.memory.edit(edit["id"], original)
    rows = []
    for edit, question, b, a in zip(edits, asked, before, after, strict=True):
        for phase, answer in (("before", b), ("after", a)):
            rows += edit_rows(edit, question, condition, phase, answer)
    return {"rows": rows, "weights_unchanged": None if model is None else parameters_digest(model) == weights_before}


def edit_rows(edit: dict[str, Any], question: MCQuestion, condition: Condition, phase: str,
              answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's and each baseline's answer to an edited rule's question, in one phase (before/after the
    edit). ``matches_old``/``matches_new``: the probability of the original / edited key (1 or 0 for the model's
    choice); ``correct`` is the one in force in this phase."""
    old, new = question.answer, LETTERS.index(edit["new_answer"])
    common = {"prompt_id": question.id, "prompt": question.question, "arm": condition.name, "phase": phase,
              "rule": edit["id"], "old_answer": question.letter, "new_answer": edit["new_answer"],
              "rules": answer["rules"]}
    choice = answer["choice"]
    probs = {MODEL: None if choice is None else np.eye(len(question.options))[LETTERS.index(choice)]}
    probs |= {name: np.asarray(b["probs"]) for name, b in answer["baselines"].items()}
    rows = []
    for answerer, p in probs.items():
        matches_old = 0.0 if p is None else float(p[old])
        matches_new = 0.0 if p is None else float(p[new])
        rows.append({**common, "answerer": answerer, "choice": choice if answerer == MODEL else None,
                     "matches_old": matches_old, "matches_new": matches_new,
                     "correct": matches_new if phase == "after" else matches_old})
    return rows


def run_opo(cfg: DictConfig) -> dict[str, Any]:
    from alignlab.train import prepare_output_dir

    output_dir = prepare_output_dir(cfg)
    OmegaConf.save(OmegaConf.create(without_secrets(cfg)), output_dir / "config.yaml")
    for evaluation in ("opo", "opo_edit"):  # an unfinished earlier attempt in this folder: start its records anew
        records_path(output_dir, evaluation).unlink(missing_ok=True)
    recorder = Recorder(output_dir, cfg.seed, compact=True)
    loaded = instantiate(cfg.model)
    memory = RuleMemory.load(cfg.memory)
    retriever = instantiate(cfg.opo.retriever, _partial_=True)(memory=memory)
    scorer = instantiate(cfg.opo.scorer, _partial_=True, _convert_="all")(loaded=loaded)
    evaluator = OPOEvaluator(memory, retriever, scorer, loaded.tokenizer, cfg.budget_tokens, cfg.get("filter_key"),
                             cfg.seed, list(cfg.get("baselines") or []))
    retriever_name = type(retriever).__name__
    known = {r.id for r in memory}
    results: dict[str, Any] = {"memory": cfg.memory, "rules": len(memory), "retriever": retriever_name,
                               "scorer": type(scorer).__name__, "model": loaded.name, "sets": {}}
    all_questions: dict[str, MCQuestion] = {}
    for set_name, path in cfg.questions.items():
        if path is None:
            continue
        questions, report = load_questions(path, known, cfg.on_bad_row)
        if report["skipped"]:
            log.warning("%s: %d bad question rows skipped (see results.json)", path, report["skipped"])
        all_questions.update({q.id: q for q in questions})
        flags = {q.id: copyable(q, memory) for q in questions}
        for condition in conditions(list(cfg.ks), cfg.random_k, list(cfg.conditions), cfg.get("random_draws", 1)):
            answers = evaluator.evaluate(questions, condition)
            recorder.write("opo", answer_rows(set_name, questions, condition, answers, flags, retriever_name))
            log.info("%s / %s%s: accuracy %.3f", set_name, condition.name,
                     f" (draw {condition.draw})" if condition.kind == "random" else "",
                     np.mean([a["correct"] for a in answers]))
        results["sets"][set_name] = {"report": report, "copyable": sum(flags.values())}
    rows = recorder.rows.get("opo", [])
    for set_name, entry in results["sets"].items():
        entry.update(set_summary([r for r in rows if r["set"] == set_name], cfg.bootstrap, cfg.seed))
    if cfg.get("edits"):
        edits = load_edits(cfg.edits, memory, all_questions)
        demos = []
        for condition in (Condition("top", cfg.edit_k), Condition("gold")):
            demo = edit_demonstration(evaluator, edits, all_questions, condition, getattr(loaded, "model", None))
            recorder.write("opo_edit", demo["rows"])
            demos.append({"condition": condition.name, "weights_unchanged": demo["weights_unchanged"],
                          **edit_summary(demo["rows"], cfg.bootstrap, cfg.seed)})
        results["edit_demonstration"] = {"edits": len(edits), "rules_edited": sorted({e["id"] for e in edits}),
                                         "rules_not_edited": sorted(known - {e["id"] for e in edits}),
                                         "conditions": demos}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    (output_dir / "results.md").write_text(results_markdown(results))
    with evaluation_loggers(cfg) as loggers:  # logger=wandb: the records as W&B Tables too
        log_recorder_tables(loggers, recorder)
    print(results_markdown(results))
    print(f"run directory: {output_dir}")
    return results
