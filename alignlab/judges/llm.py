"""A local causal LM as annotator, read from the probabilities of its answer tokens (no text parsing).

* :class:`PointwiseLLMJudge` asks, for each answer alone, whether it is good, and compares ``log P(yes) - log
  P(no)`` of the two answers. SmolLM2-135M ranks obvious pairs this way (7 of 8 in the project's check).
* :class:`PairwiseLLMJudge` shows both answers and reads ``P(first)`` from the option letters, in **both** orders,
  and averages, which cancels position bias; whether the two orders agree is reported as position consistency.
  (SmolLM2-135M always picks the first shown: both orders then disagree and the average is near 0.5.)

* :class:`InstructionLikelihoodJudge` asks nothing: it reads how much an instruction raises the likelihood of each
  answer, ``log p(answer | instruction, question) - log p(answer | neutral instruction, question)``, and prefers
  the answer the instruction favours more. A model too small to judge an answer when asked can still follow an
  instruction when it writes (SmolLM2-135M answers briefly when told to), and this reads that ability.

Templates are config text with ``{prompt}``, ``{answer}`` / ``{first}``, ``{second}`` fields, so the
annotator's criterion is set from config like the paper's instructions.
"""

from __future__ import annotations

import math
from typing import Any

from alignlab.errors import ConfigError
from alignlab.judges.base import Verdicts
from alignlab.logprobs import next_token_logprobs, sequence_logps
from alignlab.models import LoadedModel, load_pretrained, resolve_device, single_token_ids

POINTWISE = ("Here is a question and an answer.\n\nQuestion: {prompt}\n\nAnswer: {answer}\n\n"
             "Is this answer correct, helpful and concise? Reply with Yes or No.")
PAIRWISE = ("Which answer to the question is better: correct, helpful and concise?\n\nQuestion: {prompt}\n\n"
            "Answer A: {first}\n\nAnswer B: {second}\n\nReply with A or B.")


class _LocalJudge:
    def __init__(self, model: str | LoadedModel, template: str, choices: tuple[list[str], list[str]],
                 batch_size: int = 8, max_length: int = 1024, dtype: str = "float32", device: str = "auto") -> None:
        self.loaded = model if isinstance(model, LoadedModel) else load_pretrained(model, dtype=dtype)
        self.device = resolve_device(device)  # where it computes (online pairs overlap it with sampling elsewhere)
        self.loaded.model.to(self.device).eval().requires_grad_(False)
        self.template = template
        self.positive = single_token_ids(self.loaded.tokenizer, choices[0])
        self.negative = single_token_ids(self.loaded.tokenizer, choices[1])
        self.batch_size, self.max_length = batch_size, max_length

    def __repr__(self) -> str:  # the class says the mode: pointwise or pairwise
        return f"{type(self).__name__}(model={self.loaded.name!r})"

    def log_odds(self, texts: list[str]) -> list[float]:
        """``log P(positive) - log P(negative)`` of the next token after each rendered judge prompt (its last
        ``max_length`` tokens)."""
        tok = self.loaded.tokenizer
        rows = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                        return_dict=True)["input_ids"][-self.max_length:] for t in texts]
        logprobs = next_token_logprobs(self.loaded.model, rows, tok.pad_token_id, [self.positive, self.negative],
                                       self.batch_size)  # [N, 2]
        return (logprobs[:, 0] - logprobs[:, 1]).tolist()


class PointwiseLLMJudge(_LocalJudge):
    def __init__(self, model: str | LoadedModel, template: str = POINTWISE, yes: tuple[str, ...] = ("Yes", "yes"),
                 no: tuple[str, ...] = ("No", "no"), **kwargs: Any) -> None:
        super().__init__(model, template, (list(yes), list(no)), **kwargs)

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        texts = [self.template.format(prompt=p, answer=a) for p, (a, _) in zip(prompts, pairs, strict=True)]
        texts += [self.template.format(prompt=p, answer=b) for p, (_, b) in zip(prompts, pairs, strict=True)]
        scores = self.log_odds(texts)
        n = len(prompts)
        return Verdicts([1 / (1 + math.exp(scores[n + i] - scores[i])) for i in range(n)])


class PairwiseLLMJudge(_LocalJudge):
    def __init__(self, model: str | LoadedModel, template: str = PAIRWISE, first: tuple[str, ...] = ("A",),
                 second: tuple[str, ...] = ("B",), **kwargs: Any) -> None:
        super().__init__(model, template, (list(first), list(second)), **kwargs)

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        shown = [self.template.format(prompt=p, first=a, second=b) for p, (a, b) in zip(prompts, pairs, strict=True)]
        swapped = [self.template.format(prompt=p, first=b, second=a) for p, (a, b) in zip(prompts, pairs, strict=True)]
        scores = self.log_odds(shown + swapped)
        n = len(prompts)
        probs, consistent, orders = [], [], []
        for i in range(n):
            p_shown = 1 / (1 + math.exp(-scores[i]))  # P(a better | a shown first)
            p_swapped = 1 / (1 + math.exp(scores[n + i]))  # P(a better | a shown second)
            probs.append((p_shown + p_swapped) / 2)
            consistent.append((p_shown > 0.5) == (p_swapped > 0.5))
            orders.append((p_shown, p_swapped))
        return Verdicts(probs, consistent, orders=orders)


class InstructionLikelihoodJudge:
    """An annotator whose criterion is an instruction the model is *given*, read from likelihoods.

    For a question ``x`` and answer ``y``, ``score(y) = log p(y | [system: instruction, user: x]) - log p(y |
    [system: baseline, user: x])``, summed over the answer's tokens (no end-of-turn token: sampled answers may have
    been cut). Between two answers, ``P(a better) = sigmoid((score(a) - score(b)) / temperature)``. An instruction
    to be brief lowers every further token of a long answer, so it prefers the shorter one; an instruction with no
    length term leaves length to the answers' content. The baseline instruction should have the same form as the
    instruction (a system message), so that the ratio measures the instruction and not the presence of a system
    message.

    Args:
        model: a model name (``load_pretrained``) or a loaded model; frozen here.
        instruction: the system message that states the criterion (``"Answer in one short sentence."``).
        baseline: the neutral system message the instruction is measured against.
        temperature: scales the score difference into a probability (1: a nat of difference is odds of e).
    """

    def __init__(self, model: str | LoadedModel, instruction: str,
                 baseline: str = "Always answer the user's question.", temperature: float = 1.0,
                 batch_size: int = 8, dtype: str = "float32", device: str = "auto") -> None:
        if temperature <= 0:
            raise ConfigError(f"judge.temperature={temperature} must be > 0")
        self.loaded = model if isinstance(model, LoadedModel) else load_pretrained(model, dtype=dtype)
        self.device = resolve_device(device)
        self.loaded.model.to(self.device).eval().requires_grad_(False)
        self.instruction, self.baseline, self.temperature = instruction, baseline, temperature
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"InstructionLikelihoodJudge(model={self.loaded.name!r}, instruction={self.instruction!r})"

    def _prompt_ids(self, system: str, prompt: str) -> list[int]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        out = self.loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        return list(out["input_ids"])  # never cut: the instruction is at its start

    def scores(self, prompts: list[str], answers: list[str]) -> list[float | None]:
        """``score(answer)`` of each (question, answer); None for an empty answer."""
        tok = self.loaded.tokenizer
        ids = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
        told = [self._prompt_ids(self.instruction, p) for p in prompts]
        plain = [self._prompt_ids(self.baseline, p) for p in prompts]
        model, pad = self.loaded.model, tok.pad_token_id
        a = sequence_logps(model, told, ids, pad, self.batch_size)
        b = sequence_logps(model, plain, ids, pad, self.batch_size)
        return [None if x is None else x - y for x, y in zip(a, b, strict=True)]

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        n = len(prompts)
        scores = self.scores(list(prompts) * 2, [a for a, _ in pairs] + [b for _, b in pairs])
        probs: list[float | None] = []
        for i in range(n):
            sa, sb = scores[i], scores[n + i]
            # the logistic function as tanh: no overflow when two long answers' scores differ by hundreds of nats
            probs.append(None if sa is None or sb is None else 0.5 + 0.5 * math.tanh((sa - sb) / (2 * self.temperature)))
        return Verdicts(probs)
