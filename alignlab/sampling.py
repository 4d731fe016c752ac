"""Sampling text from a causal LM: one settings value (:class:`Sampling`) and one function (:func:`generate`).

Every place that samples (online pairs, counterfactual pairs, the win-rate monitor, ``alignlab-eval``, the pair
export and OPO's question writer) takes a :class:`Sampling` built from a ``sampling:`` config node and calls
:func:`generate`, so a setting means the same everywhere and a faster backend serves all of them at once.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from alignlab.errors import ConfigError
from alignlab.padding import left_pad


@dataclass(frozen=True)
class Sampling:
    """How answers are sampled.

    Args:
        max_new_tokens: the cap on an answer's length; an answer that reaches it did not finish.
        temperature: 0 decodes greedily.
        top_p: nucleus sampling (1.0: the whole distribution).
        batch_size: prompts per forward batch; ``None`` samples every prompt of a call in one batch (online pairs:
            a training batch's prompts, twice each).
        seed: a seeded call samples the same answers whenever it is repeated and leaves the caller's random state
            alone; ``None`` draws from the global generator (online training: a new draw every step).
    """

    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int | None = 16
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"sampling.max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise ConfigError(f"sampling.temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p={self.top_p} must be in (0, 1]")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"sampling.batch_size={self.batch_size} must be at least 1 (or null)")

    def replace(self, **changes) -> Sampling:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finished: bool  # ended with EOS rather than at max_new_tokens


@torch.no_grad()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], sampling: Sampling,
             progress: str | None = None) -> list[Generation]:
    """One continuation per prompt (token ids, already templated), with the KV cache, in left-padded batches.

    Prompts are sorted by length inside the call so batches pad little; the results come back in the input order.
    ``progress``: a label for a progress bar (prompts done, new tokens per second) on a terminal; None for none.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bar = tqdm(total=len(prompts), desc=progress, unit="prompt", disable=None if progress else True, leave=False)
    args = (model, tokenizer, prompts, sampling, device, was_training, bar)
    if sampling.seed is None:
        return _generate(*args)
    # A seeded call leaves the caller's random state as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(sampling.seed)
        return _generate(*args)


def _generate(model, tokenizer, prompts, sampling: Sampling, device, was_training, bar):
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batch_size = sampling.batch_size or max(1, len(prompts))
    results: list[Generation | None] = [None] * len(prompts)
    new_tokens, start_time = 0, time.perf_counter()
    decoding = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p) \
        if sampling.temperature > 0 else dict(do_sample=False)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            input_ids, attention = left_pad([prompts[i] for i in chunk], pad)
            width = input_ids.shape[1]
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 max_new_tokens=sampling.max_new_tokens, eos_token_id=eos, pad_token_id=pad, top_k=0,
                                 use_cache=True, **decoding)  # also when training turned it off for checkpointing
            for row, i in enumerate(chunk):
                new = out[row, width:].tolist()
                finished = eos in new
                if finished:
                    new = new[: new.index(eos)]
                results[i] = Generation(tokenizer.decode(new, skip_special_tokens=True).strip(), new, finished)
                new_tokens += len(new)
            bar.update(len(chunk))
            bar.set_postfix_str(f"{new_tokens / (time.perf_counter() - start_time):.1f} tok/s", refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]
