"""Multiple-choice answers as probabilities over the option letters.

A local model is read, not asked: the next-token distribution right after the assistant turn opens, restricted to
the letters shown (``A`` and `` A`` both count), so there is no free text to parse. An OpenAI-compatible endpoint
is asked, and the letter is parsed from its reply; a reply with no valid letter is a counted failure.
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np
import torch

from alignlab.errors import ConfigError
from alignlab.opo.questions import LETTERS


class LetterScorer(Protocol):
    def __call__(self, conversations: list[list[dict]], num_options: list[int]) -> list[np.ndarray | None]:
        """Per conversation, probabilities over its ``num_options`` letters (``None``: no answer)."""


class LocalLetterScorer:
    """``loaded``: a :class:`~alignlab.models.LoadedModel` (model and tokenizer)."""

    def __init__(self, loaded, batch_size: int = 8) -> None:
        self.model, self.tokenizer, self.batch_size = loaded.model, loaded.tokenizer, batch_size
        self.letter_ids = [self._ids_of(letter) for letter in LETTERS]

    def _ids_of(self, letter: str) -> list[int]:
        ids = []
        for variant in (letter, " " + letter):
            encoded = self.tokenizer.encode(variant, add_special_tokens=False)
            if len(encoded) == 1:
                ids.append(encoded[0])
        if not ids:
            raise ConfigError(f"the tokenizer has no single token for the letter {letter!r}")
        return ids

    @torch.no_grad()
    def __call__(self, conversations: list[list[dict]], num_options: list[int]) -> list[np.ndarray | None]:
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False) for c in conversations]
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        was_training = self.model.training
        self.model.eval()
        results: list[np.ndarray | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start: start + self.batch_size]
                width = max(len(prompts[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):  # left padding: every prompt ends at the last position
                    ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                    mask[row, width - len(prompts[i]):] = 1
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                    logits_to_keep=1).logits[:, -1].float()
                logprobs = torch.log_softmax(logits, dim=-1).cpu()
                for row, i in enumerate(chunk):
                    letters = torch.stack([torch.logsumexp(logprobs[row, self.letter_ids[j]], dim=0)
                                           for j in range(num_options[i])])
                    results[i] = torch.softmax(letters, dim=0).numpy()
        finally:
            self.model.train(was_training)
        return results


class EndpointLetterScorer:
    """Asks an OpenAI-compatible endpoint (:class:`~alignlab.judges.openai.ChatEndpoint`) and parses the letter."""

    _LETTER = re.compile(r"^\W*(?:(?:the\s+)?(?:correct\s+)?(?:answer|option)(?:\s+is)?\s*:?\s*\W*)?([A-H])\b",
                         re.IGNORECASE)

    def __init__(self, endpoint, loaded=None) -> None:  # loaded: the local model, whose tokenizer sizes prompts
        self.endpoint = endpoint
        self.failures = 0

    def __call__(self, conversations: list[list[dict]], num_options: list[int]) -> list[np.ndarray | None]:
        results: list[np.ndarray | None] = []
        for reply, n in zip(self.endpoint.complete_all(conversations), num_options, strict=True):
            match = self._LETTER.match(reply.strip()) if reply else None
            letter = match.group(1).upper() if match else None
            if letter is None or LETTERS.index(letter) >= n:
                self.failures += 1
                results.append(None)
                continue
            results.append(np.eye(n)[LETTERS.index(letter)])
        return results
