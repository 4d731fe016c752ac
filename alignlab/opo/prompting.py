"""Prompts for OPO: retrieved rules packed in rank order under a token budget, in a template that is config text."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from alignlab.opo.memory import Rule
from alignlab.opo.questions import LETTERS


@dataclass
class PromptTemplate:
    """How a question is asked. ``{rules}`` (in ``system`` or ``user``) becomes ``rules_block`` holding the packed
    rule lines, or nothing when no rule is shown; ``system: None`` keeps the chat template's default system prompt.
    ``user`` holds ``{question}`` and, for letter answers, ``{options}`` (lettered lines)."""

    system: str | None = None
    user: str = "{rules}Question: {question}\n{options}\nAnswer with the letter of the correct option."
    rules_block: str = "Rules:\n{rules}\n\n"
    rule: str = "- {text}"
    option: str = "{letter}. {text}"
    rule_separator: str = "\n"


def pack_rules(tokenizer: PreTrainedTokenizerBase, rules: list[Rule], budget: int,
               template: PromptTemplate) -> list[Rule]:
    """The longest prefix of ``rules`` (best first) whose rendered lines fit in ``budget`` tokens of ``tokenizer``
    (the evaluated model's). Stopping at the first rule that does not fit keeps the retriever's order meaningful."""
    packed, used = [], 0
    for rule in rules:
        cost = len(tokenizer(template.rule.format(text=rule.text) + template.rule_separator,
                             add_special_tokens=False)["input_ids"])
        if used + cost > budget:
            break
        packed.append(rule)
        used += cost
    return packed


def messages(question: str, options: list[str], rules: list[Rule], template: PromptTemplate) -> list[dict]:
    """Chat messages for one question with its options in the order shown."""
    lines = template.rule_separator.join(template.rule.format(text=r.text) for r in rules)
    block = template.rules_block.format(rules=lines) if rules else ""
    lettered = "\n".join(template.option.format(letter=LETTERS[i], text=o) for i, o in enumerate(options))
    user = template.user.format(rules=block, question=question, options=lettered)
    system = template.system.format(rules=block) if template.system is not None else None
    return ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": user}]
