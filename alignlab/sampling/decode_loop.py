"""alignlab's decode loop: the model's own forward, one token at a time, over a pre-allocated KV cache.

It computes what Hugging Face ``generate`` computes, operation for operation where it matters (the same left-padded
batch, position ids, attention mask and ``logits_to_keep=1`` forward; the same argmax, or temperature, nucleus
filter and softmax), so greedy decoding gives the same tokens, and sampling draws from the same distribution
(tests/test_sampling.py checks both; a seeded call repeats, but its draws are not ``generate``'s: see :func:`draw`).

What it leaves out is what the profile of ``generate`` put outside the model's matrix products (SmolLM2-135M fp32,
8 chat prompts, 1 thread, torch.profiler, self CPU time per decode step; the machine shared with other jobs):
of about 270 ms, 143 ms were the 211 ``aten::mm`` calls of 8 rows each (the output head alone 41 ms), 15 ms
``exponential_`` (``torch.multinomial`` draws one exponential number per vocabulary entry and row), 10 ms
``aten::cat`` (124 calls: the ``DynamicCache`` copying every layer's keys and values, and the growing mask and
ids), 8 ms attention, and the prompt's prefill about 48 ms per step when spread over 24 steps. So:

* the KV cache is a transformers ``StaticCache`` sized to prompt + answer once and written in place;
* the next token is drawn with one uniform number per row (:func:`draw`);
* a prompt that several rows share (online pairs sample each prompt twice: ``[p0, p0, p1, p1, ...]``) is prefilled
  once and its cache rows copied, which halves the prefill of a pair batch;
* the attention mask and the output are allocated once; no logits-processor list, no stopping-criteria objects,
  no re-built model kwargs run per step.

The matrix products stay, and they bound what any loop over this forward can gain: with 8 rows, MKL's fp32
``sgemm`` reaches about a third of the rate a large product reaches and half the bandwidth a single-row product
reaches (``benchmarks/bench_sampling.py`` prints their cost next to the bandwidth and FLOP limits);
:mod:`alignlab.sampling.packed` runs this same loop with other kernels for them. Rows that have
ended are not dropped from the batch for the same reason: a product with 2 to 8 rows costs about what one with 8
costs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from transformers import StaticCache

if TYPE_CHECKING:
    from alignlab.sampling.settings import Sampling


# One decode step: (tokens [B], their position ids [B, 1], their cache slot) -> next-token logits [B, V].
Step = Callable[[Tensor, Tensor, int], Tensor]
# Builds the batch's decode step once its prompts are in the cache: (model, cache, mask [B, W + T]) -> Step.
StepFactory = Callable[[nn.Module, StaticCache, Tensor], Step]


def model_step(model: nn.Module, cache: StaticCache, mask: Tensor) -> Step:
    """The decode step as the model's own forward computes it (``logits_to_keep=1``), writing ``cache``."""

    def step(tokens: Tensor, positions: Tensor, slot: int) -> Tensor:
        return model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, cache=cache,
                     use_cache=True, logits_to_keep=1).logits[:, -1]

    return step


@torch.no_grad()
def sample_batch(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, sampling: Sampling, eos: int,
                 pad: int, decoder: StepFactory = model_step) -> Tensor:
    """New tokens ``[B, T]`` after left-padded ``input_ids`` ``[B, W]``, ``T <= sampling.max_new_tokens``; rows
    that ended hold ``pad`` after their EOS, and the loop stops when every row has ended.

    The prompts are prefilled by the model's forward; ``decoder`` builds what computes each decode step after it
    (:mod:`alignlab.sampling.fused` passes its own)."""
    batch, width = input_ids.shape
    steps = sampling.max_new_tokens
    cache = StaticCache(config=model.config, max_cache_len=width + steps)
    mask = attention_mask.new_ones(batch, width + steps)  # the answer's slots; causality hides the future ones
    mask[:, :width] = attention_mask
    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # as generate numbers them
    logits = prefill(model, input_ids, mask, positions, cache)
    out = input_ids.new_full((batch, steps), pad)
    unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    next_position = positions[:, -1:] + 1
    decode = None
    for step in range(steps):
        if step < sampling.min_new_tokens:
            logits[:, eos] = float("-inf")
        tokens = next_tokens(logits, sampling).masked_fill(~unfinished, pad)
        out[:, step] = tokens
        unfinished &= tokens != eos
        if step + 1 == steps or not unfinished.any():
            return out[:, : step + 1]
        decode = decode or decoder(model, cache, mask)
        logits = decode(tokens, next_position + step, width + step)
    raise AssertionError("unreachable: the loop returns at its last step")


def prefill(model: nn.Module, input_ids: Tensor, mask: Tensor, positions: Tensor, cache: StaticCache) -> Tensor:
    """Fill ``cache`` with the prompts and return their last-position logits ``[B, V]``.

    Rows with the same prompt (ids and padding) are computed once, in order of first appearance, and the cache
    rows copied to every row that shares them.
    """
    width = input_ids.shape[1]
    rows = torch.cat([input_ids, mask[:, :width]], dim=1).tolist()
    groups: dict[tuple[int, ...], int] = {}
    owner = [groups.setdefault(tuple(row), len(groups)) for row in rows]  # each row's group
    if len(groups) == len(rows):
        return model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                     logits_to_keep=1).logits[:, -1]
    take = torch.tensor([owner.index(g) for g in range(len(groups))], device=input_ids.device)
    logits = model(input_ids=input_ids[take], attention_mask=mask[take], position_ids=positions[take], cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    owner_index = torch.tensor(owner, device=input_ids.device)
    cache.reorder_cache(owner_index)
    return logits[owner_index]


def next_tokens(logits: Tensor, sampling: Sampling) -> Tensor:
    """Each row's next token ``[B]`` from its last-position logits ``[B, V]``: the argmax, or a draw from the
    tempered, nucleus-filtered softmax (the distribution ``generate`` draws from)."""
    scores = logits.float()
    if sampling.temperature == 0:
        return scores.argmax(-1)
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_p < 1.0:
        scores = nucleus(scores, sampling.top_p)
    return draw(scores.softmax(-1))


def draw(probs: Tensor) -> Tensor:
    """One token per row of ``probs`` ``[B, V]`` by inverting the cumulative distribution: one uniform number per
    row. ``torch.multinomial`` (what ``generate`` calls) draws one exponential number per vocabulary entry instead,
    which the profile put at 7 % of a SmolLM2 decode step. The sum runs in float64, so even a token of probability
    1e-9 keeps its share; a token of probability 0 is never drawn (its step in the sum is flat)."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)


def nucleus(scores: Tensor, top_p: float) -> Tensor:
    """``scores`` ``[B, V]`` with every token outside the smallest set holding ``top_p`` of the probability set to
    -inf (the most likely token always stays): transformers' ``TopPLogitsWarper``, the same operations."""
    ascending, order = torch.sort(scores, descending=False)
    remove = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
