"""``run_opo(cfg)``: the plain function behind ``alignlab-opo``.

For each question set and condition (no rules; the top-k retrieved rules for each k; the gold rules, an oracle;
k random rules), every question is asked once per cyclic order of its options and the letter probabilities are
mapped back to the options and averaged, which cancels a model's preference for a letter. Accuracy comes with a
bootstrap 95% interval. The retriever's recall@k is reported per set. The edit demonstration changes rules in the
memory, asks the affected questions again with the same weights, and reports how many answers followed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from alignlab.data.sources import strict_jsonl
from alignlab.errors import ConfigError, DataError
from alignlab.opo.memory import Rule, RuleMemory
from alignlab.opo.prompting import PromptTemplate, messages, pack_rules
from alignlab.opo.questions import LETTERS, MCQuestion, load_questions
from alignlab.opo.retrievers import Retriever
from alignlab.redaction import without_secrets

log = logging.getLogger(__name__)


@dataclass
class Condition:
    """Which rules a question is shown: ``none``, ``top`` (k retrieved), ``gold`` or ``random`` (k)."""

    kind: str
    k: int = 0

    @property
    def name(self) -> str:
        return {"none": "no rules", "gold": "gold rule (oracle)"}.get(self.kind, f"{self.kind}-{self.k}")


KINDS = ("none", "top", "gold", "random")


def conditions(ks: list[int], random_k: int, kinds: list[str] = KINDS) -> list[Condition]:
    """The conditions of ``kinds`` (``top`` once per k), in a fixed order."""
    if unknown := set(kinds) - set(KINDS):
        raise ConfigError(f"conditions: {sorted(unknown)} are not among {list(KINDS)}")
    chosen = [Condition("none"), *(Condition("top", k) for k in ks), Condition("gold"), Condition("random", random_k)]
    return [c for c in chosen if c.kind in kinds]


class OPOEvaluator:
    """Asks questions under conditions. ``scorer`` (:mod:`alignlab.opo.scoring`) holds the prompt template and the
    number of option orders, and gives probabilities over the options; ``tokenizer`` measures the rule budget."""

    def __init__(self, memory: RuleMemory, retriever: Retriever, scorer, tokenizer, budget_tokens: int = 256,
                 filter_key: str | None = None, seed: int = 0) -> None:
        self.memory, self.retriever, self.scorer, self.tokenizer = memory, retriever, scorer, tokenizer
        self.template: PromptTemplate = scorer.template
        self.budget_tokens, self.filter_key, self.seed = budget_tokens, filter_key, seed

    def where(self, question: MCQuestion) -> dict[str, Any] | None:
        """Metadata filter from the question (e.g. its ``location``), which also admits rules valid everywhere."""
        if not self.filter_key or self.filter_key not in question.meta:
            return None
        return {self.filter_key: [question.meta[self.filter_key], "everywhere"]}

    def rules_for(self, condition: Condition, question: MCQuestion) -> list[Rule]:
        if condition.kind == "none":
            return []
        if condition.kind == "top":
            return [rule for rule, _ in self.retriever.search(question.query(), condition.k, self.where(question))]
        if condition.kind == "gold":
            return [self.memory[i] for i in question.rule_ids if i in self.memory]
        if condition.kind == "random":
            digest = hashlib.sha256(f"{self.seed}:{question.id}".encode()).digest()
            rules = self.memory.rules
            return random.Random(digest).sample(rules, min(condition.k, len(rules)))
        raise ConfigError(f"unknown condition {condition.kind!r}")

    def ask(self, questions: list[MCQuestion], rules: list[list[Rule]]) -> list[dict[str, Any]]:
        """Per question: option probabilities averaged over orders, the chosen option, and the rules shown."""
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
        probabilities = self.scorer(conversations, shown_options)
        totals = [np.zeros(len(q.options)) for q in questions]
        counts = [0] * len(questions)
        for (qi, order), probs in zip(index, probabilities, strict=True):
            if probs is not None:
                totals[qi][order] += probs
                counts[qi] += 1
        results = []
        for question, total, count, packed in zip(questions, totals, counts, shown_rules, strict=True):
            probs = total / count if count else None
            choice = int(np.argmax(probs)) if probs is not None else None
            results.append({"id": question.id, "choice": None if choice is None else LETTERS[choice],
                            "correct": choice == question.answer, "probs": None if probs is None else
                            [round(float(p), 4) for p in probs], "rules": [r.id for r in packed],
                            "answered_orders": count})
        return results

    def evaluate(self, questions: list[MCQuestion], condition: Condition) -> list[dict[str, Any]]:
        return self.ask(questions, [self.rules_for(condition, q) for q in questions])


def bootstrap_interval(correct: list[bool], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``correct``."""
    values = np.asarray(correct, dtype=np.float64)
    if not len(values):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def recall_at_k(retriever: Retriever, questions: list[MCQuestion], k: int, where_of) -> float:
    """Share of questions whose gold rules are all among the top ``k`` retrieved."""
    hits = [set(q.rule_ids) <= {r.id for r, _ in retriever.search(q.query(), k, where_of(q))} for q in questions]
    return float(np.mean(hits))


def parameters_digest(model: torch.nn.Module) -> str:
    """A hash of every weight: the edit demonstration shows it unchanged."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_edits(path: str | Path, memory: RuleMemory, questions: dict[str, MCQuestion]) -> list[dict[str, Any]]:
    """Rows ``{"id": rule, "text": new text, "question_id": ..., "new_answer": letter}``, checked against the memory
    and the questions (errors name the file and line)."""
    edits = []
    for where, row in strict_jsonl(path):
        for key in ("id", "text", "question_id", "new_answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{where}: missing or empty '{key}'")
        if row["id"] not in memory:
            raise DataError(f"{where}: rule {row['id']!r} is not in the memory")
        question = questions.get(row["question_id"])
        if question is None:
            raise DataError(f"{where}: question {row['question_id']!r} is not among the questions")
        letter = row["new_answer"].strip().upper()
        if letter not in LETTERS[: len(question.options)]:
            raise DataError(f"{where}: new_answer {row['new_answer']!r} is not among the question's option letters")
        edits.append({**row, "new_answer": letter})
    return edits


def edit_demonstration(evaluator: OPOEvaluator, edits: list[dict[str, Any]], questions: dict[str, MCQuestion],
                       condition: Condition, model: torch.nn.Module | None) -> dict[str, Any]:
    """Ask each edited rule's question before and after the edit (memory only; weights untouched), then restore."""
    asked = [questions[e["question_id"]] for e in edits]
    before = evaluator.evaluate(asked, condition)
    weights_before = parameters_digest(model) if model is not None else None
    originals = {}
    for edit in edits:
        originals[edit["id"]] = evaluator.memory[edit["id"]].text
        evaluator.memory.edit(edit["id"], edit["text"])
    try:
        after = evaluator.evaluate(asked, condition)
    finally:
        for rule_id, text in originals.items():
            evaluator.memory.edit(rule_id, text)
    rows = []
    for edit, question, b, a in zip(edits, asked, before, after, strict=True):
        rows.append({"rule": edit["id"], "question": question.id, "old_answer": question.letter,
                     "new_answer": edit["new_answer"], "before": b["choice"], "after": a["choice"],
                     "rules_shown_after": a["rules"]})
    n = len(rows)
    return {"condition": condition.name, "edits": n,
            "before_matches_old": sum(r["before"] == r["old_answer"] for r in rows) / max(1, n),
            "after_matches_new": sum(r["after"] == r["new_answer"] for r in rows) / max(1, n),
            "after_matches_old": sum(r["after"] == r["old_answer"] for r in rows) / max(1, n),
            "weights_unchanged": None if model is None else parameters_digest(model) == weights_before,
            "rows": rows}


def run_opo(cfg: DictConfig) -> dict[str, Any]:
    from alignlab.train import prepare_output_dir

    output_dir = prepare_output_dir(cfg)
    OmegaConf.save(OmegaConf.create(without_secrets(cfg)), output_dir / "config.yaml")
    loaded = instantiate(cfg.model)
    memory = RuleMemory.load(cfg.memory)
    retriever = instantiate(cfg.opo.retriever, _partial_=True)(memory=memory)
    scorer = instantiate(cfg.opo.scorer, _partial_=True, _convert_="all")(loaded=loaded)
    evaluator = OPOEvaluator(memory, retriever, scorer, loaded.tokenizer, cfg.budget_tokens, cfg.get("filter_key"),
                             cfg.seed)
    known = {r.id for r in memory}
    results: dict[str, Any] = {"memory": cfg.memory, "rules": len(memory), "retriever": type(retriever).__name__,
                               "scorer": type(scorer).__name__, "model": loaded.name, "sets": {}}
    predictions = []
    all_questions: dict[str, MCQuestion] = {}
    for set_name, path in cfg.questions.items():
        if path is None:
            continue
        questions, report = load_questions(path, known, cfg.on_bad_row)
        if report["skipped"]:
            log.warning("%s: %d bad question rows skipped (see results.json)", path, report["skipped"])
        all_questions.update({q.id: q for q in questions})
        entry: dict[str, Any] = {"report": report, "recall": {}, "conditions": {}}
        for k in cfg.ks:
            entry["recall"][f"recall@{k}"] = recall_at_k(retriever, questions, k, evaluator.where)
        for condition in conditions(list(cfg.ks), cfg.random_k, list(cfg.conditions)):
            answers = evaluator.evaluate(questions, condition)
            correct = [a["correct"] for a in answers]
            low, high = bootstrap_interval(correct, cfg.bootstrap, cfg.seed)
            entry["conditions"][condition.name] = {
                "accuracy": float(np.mean(correct)), "ci95": [low, high], "questions": len(correct),
                "unanswered": sum(a["choice"] is None for a in answers),
                "mean_rules_shown": float(np.mean([len(a["rules"]) for a in answers]))}
            predictions += [{"set": set_name, "condition": condition.name, **a} for a in answers]
            log.info("%s / %s: accuracy %.3f [%.3f, %.3f]", set_name, condition.name, np.mean(correct), low, high)
        results["sets"][set_name] = entry
    if cfg.get("edits"):
        edits = load_edits(cfg.edits, memory, all_questions)
        results["edit_demonstration"] = [
            edit_demonstration(evaluator, edits, all_questions, condition, getattr(loaded, "model", None))
            for condition in (Condition("top", cfg.edit_k), Condition("gold"))]
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    with (output_dir / "predictions.jsonl").open("w") as f:
        f.writelines(json.dumps(p) + "\n" for p in predictions)
    (output_dir / "results.md").write_text(results_markdown(results))
    plot_results(results, output_dir / "results.png")
    print(results_markdown(results))
    print(f"run directory: {output_dir}")
    return results


def results_markdown(results: dict[str, Any]) -> str:
    lines = []
    for set_name, entry in results["sets"].items():
        lines += [f"### {set_name} ({entry['report']['questions']} questions)", "",
                  "| condition | accuracy | 95% CI | rules shown (mean) |", "|---|---|---|---|"]
        for name, c in entry["conditions"].items():
            lines.append(f"| {name} | {c['accuracy']:.3f} | {c['ci95'][0]:.3f}-{c['ci95'][1]:.3f} | "
                         f"{c['mean_rules_shown']:.1f} |")
        lines += ["", "Retriever: " + ", ".join(f"{k} {v:.3f}" for k, v in entry["recall"].items()), ""]
    for demo in results.get("edit_demonstration", []):
        lines += [f"Edit demonstration ({demo['condition']}, {demo['edits']} edited rules, weights unchanged: "
                  f"{demo['weights_unchanged']}): before the edit {demo['before_matches_old']:.2f} of answers match "
                  f"the old rule; after it {demo['after_matches_new']:.2f} match the new rule "
                  f"({demo['after_matches_old']:.2f} still the old).", ""]
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results["sets"].items())
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.2), squeeze=False)
    for ax, (set_name, entry) in zip(axes[0], sets, strict=True):
        names = list(entry["conditions"])
        acc = [entry["conditions"][n]["accuracy"] for n in names]
        err = np.array([[a - entry["conditions"][n]["ci95"][0], entry["conditions"][n]["ci95"][1] - a]
                        for n, a in zip(names, acc, strict=True)]).T
        ax.bar(range(len(names)), acc, yerr=err, capsize=4, color="#4c72b0")
        ax.axhline(0.25, color="grey", linestyle=":", linewidth=1, label="chance (4 options)")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{set_name} questions")
        ax.set_ylabel("accuracy (95% bootstrap CI)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
