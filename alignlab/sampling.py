"""Batched sampling from a causal LM, shared by evaluation, online pairs, counterfactual pairs and OPO."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finished: bool  # ended with EOS rather than at max_new_tokens


@torch.no_grad()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
             max_new_tokens: int = 64, temperature: float = 0.7, top_p: float = 1.0, batch_size: int = 16,
             seed: int | None = None, progress: str | None = None) -> list[Generation]:
    """Sample one continuation per prompt (token ids, already templated), with the KV cache, in left-padded batches.

    ``temperature=0`` decodes greedily. Prompts are sorted by length inside the call so batches pad little; the
    results come back in the input order. ``progress``: a label for a progress bar (prompts done, new tokens per
    second) on a terminal; None for none.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bar = tqdm(total=len(prompts), desc=progress, unit="prompt", disable=None if progress else True, leave=False)
    args = (model, tokenizer, prompts, max_new_tokens, temperature, top_p, batch_size, device, was_training, bar)
    if seed is None:
        return _generate(*args)
    # A seeded call leaves the caller's random state as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _generate(*args)


def _generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, batch_size, device, was_training, bar):
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    new_tokens, start_time = 0, time.perf_counter()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                attention[row, width - len(prompts[i]):] = 1
            sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else \
                dict(do_sample=False)
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, top_k=0,
                                 use_cache=True, **sampling)  # also when training turned it off for checkpointing
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
