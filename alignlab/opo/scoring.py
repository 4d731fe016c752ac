"""Multiple-choice answers as probabilities over the options. A scorer owns how it asks (its prompt template and
how many option orders it needs) and answers ``scorer(conversations, options) -> [probabilities or None]``.

* :class:`LocalLetterScorer` reads a local model, not its text: the next-token distribution right after the
  assistant turn opens, restricted to the letters shown (``A`` and `` A`` both count). Asked once per cyclic
  order of the options, which cancels the model's preference for a letter.
* :class:`OptionLikelihoodScorer` scores each option's text as the assistant's answer by its log-likelihood
  (lm-evaluation-harness's multiple-choice method). The options are not listed in the prompt, so one order
  suffices; small models that cannot yet map content to a letter can still show what they know this way.
* :class:`EndpointLetterScorer` asks an OpenAI-compatible endpoint and parses the letter from its reply; a reply
  with no valid letter is a counted failure.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from alignlab.errors import ConfigError
from alignlab.logprobs import next_token_logprobs
from alignlab.models import single_token_ids
from alignlab.opo.prompting import PromptTemplate
from alignlab.opo.questions import LETTERS
from alignlab.padding import left_pad, mask_rows, pad_rows


class Scorer:
    """``template``: :class:`PromptTemplate` fields (config text); ``orders``: option orders asked per question
    (cyclic shifts; None: all of them)."""

    def __init__(self, template: dict[str, Any] | None = None, orders: int | None = None) -> None:
        self.template = PromptTemplate(**(template or {}))
        self.orders = orders

    def __call__(self, conversations: list[list[dict]], options: list[list[str]]) -> list[np.ndarray | None]:
        raise NotImplementedError

    @staticmethod
    def needs_local_model(node) -> bool:
        """Whether this scorer, configured by ``node``, reads the local model (``alignlab-opo-questions`` loads
        it only then)."""
        return False


class _LocalScorer(Scorer):
    @staticmethod
    def needs_local_model(node) -> bool:
        return True

    def __init__(self, loaded, batch_size: int = 8, template: dict[str, Any] | None = None,
                 orders: int | None = None) -> None:
        super().__init__(template, orders)
        self.model, self.tokenizer, self.batch_size = loaded.model, loaded.tokenizer, batch_size
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id

    def prompt_ids(self, conversation: list[dict]) -> list[int]:
        return self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)

    @torch.no_grad()
    def __call__(self, conversations: list[list[dict]], options: list[list[str]]) -> list[np.ndarray | None]:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.score(conversations, options, next(self.model.parameters()).device)
        finally:
            self.model.train(was_training)


class LocalLetterScorer(_LocalScorer):
    """``loaded``: a :class:`~alignlab.models.LoadedModel` (model and tokenizer)."""

    def __init__(self, loaded, batch_size: int = 8, template: dict[str, Any] | None = None,
                 orders: int | None = None) -> None:
        super().__init__(loaded, batch_size, template, orders)
        self.letter_ids = [single_token_ids(self.tokenizer, [letter]) for letter in LETTERS]

    def score(self, conversations, options, device) -> list[np.ndarray | None]:
        """Each question's letter probabilities, renormalised over its options' letters."""
        prompts = [self.prompt_ids(c) for c in conversations]
        most = max((len(o) for o in options), default=0)
        letters = next_token_logprobs(self.model, prompts, self.pad, self.letter_ids[:most], self.batch_size)
        return [torch.softmax(letters[i, : len(o)], dim=0).numpy() for i, o in enumerate(options)]


class OptionLikelihoodScorer(_LocalScorer):
    """Probabilities ∝ exp(log-likelihood of each option's text as the answer); ``normalize="mean"`` uses the
    per-token mean instead of the sum (less favour to short options)."""

    def __init__(self, loaded, batch_size: int = 8, template: dict[str, Any] | None = None, orders: int | None = 1,
                 normalize: str = "sum") -> None:
        super().__init__(loaded, batch_size, template, orders)
        if normalize not in ("sum", "mean"):
            raise ConfigError(f"scorer.normalize={normalize!r} is not 'sum' or 'mean'")
        self.normalize = normalize

    def score(self, conversations, options, device) -> list[np.ndarray | None]:
        prompts = [self.prompt_ids(c) for c in conversations]
        answers = [[self.tokenizer.encode(t, add_special_tokens=False) for t in texts] for texts in options]
        results: list[np.ndarray | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
        for start in range(0, len(order), self.batch_size):
            chunk = order[start: start + self.batch_size]
            totals = self.option_logps([prompts[i] for i in chunk], [answers[i] for i in chunk], device)
            for i, scores in zip(chunk, totals, strict=True):
                results[i] = torch.softmax(scores, dim=0).numpy()
        return results

    def option_logps(self, prompts: list[list[int]], answers: list[list[list[int]]], device) -> list[torch.Tensor]:
        """Per prompt, the log-likelihood of each of its answers (summed or averaged over the answer's tokens).

        The prompts (``B`` rows, left-padded to width ``P``) run once and keep their key/value cache; each answer
        (``R`` rows in all, right-padded to width ``L``) then continues its own prompt's cache. The prompt, most
        of every sequence, is computed once for all its options, and the output projection only at answer
        positions: the same numbers as scoring each prompt + answer alone, several times faster."""
        ids, mask = left_pad(prompts, self.pad)  # [B, P]
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                         logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]: each answer's first token
        owner = torch.tensor([b for b, texts in enumerate(answers) for _ in texts], device=device)  # [R]
        flat = [answer for texts in answers for answer in texts]
        width = max(len(a) for a in flat)
        cache = out.cache
        cache.batch_select_indices(owner)  # each answer row gets a copy of its prompt's cache
        continuation = pad_rows(flat, width, self.pad, left=False).to(device)  # [R, L]
        attention = torch.cat([mask.to(device)[owner], mask_rows(flat, width, left=False).to(device)], dim=1)
        logits = self.model(input_ids=continuation, attention_mask=attention, cache=cache).logits
        rest = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [R, L-1, V]: position t predicts token t+1
        scores: list[list[float]] = [[] for _ in prompts]
        for row, (b, answer) in enumerate(zip(owner.tolist(), flat, strict=True)):
            targets = torch.tensor(answer[1:], dtype=torch.long, device=rest.device)
            total = first[b, answer[0]] + rest[row, torch.arange(len(answer) - 1, device=rest.device), targets].sum()
            scores[b].append(total.item() / len(answer) if self.normalize == "mean" else total.item())
        return [torch.tensor(s) for s in scores]


class EndpointLetterScorer(Scorer):
    """Asks an OpenAI-compatible endpoint (:class:`~alignlab.judges.openai.ChatEndpoint`) and parses the letter.
    ``loaded``: the local model, whose tokenizer measures the rule budget."""

    _LETTER = re.compile(r"^\W*(?:(?:the\s+)?(?:correct\s+)?(?:answer|option)(?:\s+is)?\s*:?\s*\W*)?([A-H])\b",
                         re.IGNORECASE)

    def __init__(self, endpoint, template: dict[str, Any] | None = None, orders: int | None = None,
                 loaded=None) -> None:
        super().__init__(template, orders)
        self.endpoint = endpoint
        self.failures = 0

    def __call__(self, conversations: list[list[dict]], options: list[list[str]]) -> list[np.ndarray | None]:
        results: list[np.ndarray | None] = []
        for reply, shown in zip(self.endpoint.complete_all(conversations), options, strict=True):
            n = len(shown)
            match = self._LETTER.match(reply.strip()) if reply else None
            letter = match.group(1).upper() if match else None
            if letter is None or LETTERS.index(letter) >= n:
                self.failures += 1
                results.append(None)
                continue
            results.append(np.eye(n)[LETTERS.index(letter)])
        return results
