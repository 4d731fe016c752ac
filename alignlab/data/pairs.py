"""From raw preference rows to token ids, the way TRL's DPOTrainer builds them.

A row is either plain text (``prompt``, ``chosen``, ``rejected`` strings) or conversational (lists of
``{role, content}`` messages, with an explicit ``prompt`` or with the prompt as the shared prefix of ``chosen``
and ``rejected``, as TRL accepts them). Tokenization follows TRL: the prompt and prompt+completion are tokenized
separately and the completion is what follows their common prefix; conversations go through the tokenizer's
chat template (so the completion ends with the template's end-of-turn tokens), plain completions get EOS appended.

Length limits, stated once: a prompt longer than ``max_prompt_length`` keeps its **last** tokens (the question's
end and the generation prompt survive) or is skipped or rejected, by ``overlong_prompt``; a completion longer than
``max_response_length`` keeps its **first** tokens. Both are counted and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from alignlab.errors import ConfigError, DataError

Messages = list[dict[str, str]]


class BadRow(ValueError):
    """A row that cannot become a preference pair; the message is the reason (counted by reason)."""


@dataclass(frozen=True)
class PreferencePair:
    """A pair as text or messages, before tokenization. ``prompt`` is a string or a message list."""

    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages
    meta: dict[str, Any]


@dataclass(frozen=True)
class TokenizedPair:
    example_id: int
    where: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)  # the row's other columns (e.g. a reference answer)

    @property
    def prompt_id(self) -> str:
        """The row's own ``prompt_id`` column, else where it was read (``file:line``): what records key on."""
        return self.meta.get("prompt_id") or self.where


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of a tokenizer's vocabulary: token ids stored with a dataset are valid only under it."""
    import hashlib
    import json

    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
    return hashlib.sha256(vocabulary.encode()).hexdigest()[:16]


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _text_of(value: str | Messages) -> str:
    return value if isinstance(value, str) else "".join(str(m.get("content") or "") for m in value)


def parse_row(row: dict[str, Any], prompt_key: str = "prompt", chosen_key: str = "chosen",
              rejected_key: str = "rejected") -> PreferencePair:
    """Validate one row and return it as a :class:`PreferencePair`; raise :class:`BadRow` with the reason."""
    for key in (chosen_key, rejected_key):
        if key not in row or row[key] is None:
            raise BadRow(f"missing '{key}'")
    chosen, rejected, prompt = row[chosen_key], row[rejected_key], row.get(prompt_key)

    if isinstance(chosen, dict):  # a single message
        chosen = [chosen]
    if isinstance(rejected, dict):
        rejected = [rejected]
    for key, value in ((chosen_key, chosen), (rejected_key, rejected)):
        if not (isinstance(value, str) or _is_messages(value)):
            raise BadRow(f"'{key}' is neither text nor a list of {{role, content}} messages")
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise BadRow(f"'{chosen_key}' and '{rejected_key}' mix text and messages")

    if prompt is None:
        if isinstance(chosen, str):
            raise BadRow(f"missing '{prompt_key}'")
        shared = 0  # implicit prompt: the common prefix of the two conversations
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not prompt:
            raise BadRow("no shared prompt messages between 'chosen' and 'rejected'")
    elif isinstance(prompt, dict):
        prompt = [prompt]
    if not (isinstance(prompt, str) or _is_messages(prompt)):
        raise BadRow(f"'{prompt_key}' is neither text nor a list of messages")

    if not _text_of(prompt).strip():
        raise BadRow("empty prompt")
    if not _text_of(chosen).strip():
        raise BadRow("empty chosen response")
    if not _text_of(rejected).strip():
        raise BadRow("empty rejected response")
    if chosen == rejected:
        raise BadRow("chosen and rejected are identical")
    meta = {k: v for k, v in row.items() if k not in (prompt_key, chosen_key, rejected_key)}
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, meta=meta)


def as_messages(prompt: str | Messages, system_prompt: str | None = None) -> Messages:
    """A plain prompt as a one-turn user conversation, with an optional system message first."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PairTokenizer:
    """Tokenizes :class:`PreferencePair`s into prompt / chosen / rejected ids, TRL's way.

    Args:
        tokenizer: the policy's tokenizer.
        chat_template: render plain-text rows as a user turn and an assistant turn with the chat template
            (conversational rows always use it). Off: prompt and completion are concatenated as raw text.
        system_prompt: a system message added to prompts that have none; ``None`` leaves the template's own
            default (SmolLM2's template inserts "You are a helpful AI assistant named SmolLM...").
        max_prompt_length, max_response_length: token limits (see the module docstring for the rule).
        overlong_prompt: ``truncate`` (keep the prompt's end), ``skip`` or ``error``.
    """

    OVERLONG = ("truncate", "skip", "error")

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat_template: bool = True,
                 system_prompt: str | None = None, max_prompt_length: int = 256, max_response_length: int = 256,
                 overlong_prompt: str = "truncate") -> None:
        if overlong_prompt not in self.OVERLONG:
            raise ConfigError(f"data.prompts.overlong_prompt={overlong_prompt!r} is not one of {self.OVERLONG}")
        if chat_template and tokenizer.chat_template is None:
            raise ConfigError("data.prompts.chat_template=true but the tokenizer has no chat template; set it to false")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.max_prompt_length = max_prompt_length
        self.max_response_length = max_response_length
        self.overlong_prompt = overlong_prompt
        self.truncated_prompts = 0
        self.truncated_responses = 0

    def prompt_ids(self, prompt: str | Messages) -> list[int]:
        """The ids a generator is fed for this prompt (with the generation prompt)."""
        if self.chat_template or isinstance(prompt, list):
            return self._template(as_messages(prompt, self.system_prompt), add_generation_prompt=True)
        return self.tokenizer(prompt)["input_ids"]

    def _template(self, messages: Messages, add_generation_prompt: bool = False) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                 add_generation_prompt=add_generation_prompt)
        return list(out["input_ids"])

    def _full_ids(self, prompt: str | Messages, completion: str | Messages) -> list[int]:
        if self.chat_template or isinstance(prompt, list):
            reply = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
            return self._template(as_messages(prompt, self.system_prompt) + reply)
        eos = self.tokenizer.eos_token
        text = completion if completion.endswith(eos) else completion + eos
        return self.tokenizer(prompt + text)["input_ids"]

    def fit_prompt(self, prompt_ids: list[int], where: str) -> list[int]:
        """The over-long-prompt rule, stated once: keep the last ``max_prompt_length`` tokens (counted), skip the
        row (:class:`BadRow`) or stop the run naming it (``overlong_prompt``)."""
        if len(prompt_ids) <= self.max_prompt_length:
            return prompt_ids
        reason = f"prompt longer than max_prompt_length={self.max_prompt_length} ({len(prompt_ids)} tokens)"
        if self.overlong_prompt == "error":
            raise DataError(f"{where}: {reason} (data.prompts.overlong_prompt=error)")
        if self.overlong_prompt == "skip":
            raise BadRow(reason)
        self.truncated_prompts += 1
        return prompt_ids[-self.max_prompt_length:]

    def __call__(self, pair: PreferencePair, example_id: int, where: str) -> TokenizedPair:
        prompt_ids = self.prompt_ids(pair.prompt)
        chosen_full = self._full_ids(pair.prompt, pair.chosen)
        rejected_full = self._full_ids(pair.prompt, pair.rejected)
        split = min(_common_prefix(prompt_ids, chosen_full), _common_prefix(prompt_ids, rejected_full))
        prompt_ids, chosen_ids, rejected_ids = prompt_ids[:split], chosen_full[split:], rejected_full[split:]
        if not chosen_ids or not rejected_ids:
            raise BadRow("a response is empty after tokenization")
        prompt_ids = self.fit_prompt(prompt_ids, where)
        if max(len(chosen_ids), len(rejected_ids)) > self.max_response_length:
            self.truncated_responses += 1
            chosen_ids = chosen_ids[: self.max_response_length]
            rejected_ids = rejected_ids[: self.max_response_length]
        if chosen_ids == rejected_ids:
            raise BadRow("chosen and rejected are identical after truncation")
        return TokenizedPair(example_id, where, prompt_ids, chosen_ids, rejected_ids,
                             {**pair.meta, "prompt": pair.prompt})
