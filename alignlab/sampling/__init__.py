"""Sampling text from a causal LM: one settings value (:class:`Sampling`), one function (:func:`generate`) and
the engines behind it (:data:`BACKENDS`).

Every place that samples (online pairs, counterfactual pairs, the win-rate monitor, ``alignlab-eval``, the pair
export and OPO's question writer) takes a :class:`Sampling` built from a ``sampling:`` config node and calls
:func:`generate`, so a setting means the same everywhere and a faster backend serves all of them at once.

Backends (``sampling.backend``, see :mod:`alignlab.sampling.backends`):

* ``hf`` (the default): Hugging Face ``model.generate``, the reference;
* ``loop`` (``sampling.backend=loop``): alignlab's decode loop over the model's forward
  (:mod:`alignlab.sampling.decode_loop`): ``generate``'s tokens under greedy decoding and its distribution under
  sampling, with a static KV cache, one prefill per distinct prompt and one random number per row and step;
* ``packed`` (``sampling.backend=packed``, CPU): the decode loop with every linear layer's weight pre-packed for
  oneDNN for the batch's row count (:mod:`alignlab.sampling.packed`), packed anew for every batch, so it always
  samples from the current weights;
* ``fused`` (``sampling.backend=fused``, CPU, Llama architecture): the decode loop with the model's prefill and
  alignlab's own decode step (:mod:`alignlab.sampling.fused`): query, key and value one product, gate and up one
  product, residual adds in the products' kernel, a few batched products for
  attention; weights read from the model (LoRA merged) and packed for every batch.

A new engine is one entry in :data:`BACKENDS`: a callable ``(model, prompts, sampling, eos, pad, progress) ->``
each prompt's new token ids (through EOS when it ended). A vLLM backend, for instance, would be one class holding
an ``LLM`` engine per model, and would need:

* **weights synced before every call.** Online training changes the policy every step; an engine holds its own
  copy of the weights, so the class must load ``model.state_dict()`` into it (``load_weights``) before sampling,
  and check it did (compare a fingerprint of a few tensors). TRL's users found that a vLLM engine put to sleep
  between steps and woken up silently kept the weights it had, and sampled from a stale policy;
* the prompts as token ids (``TokensPrompt(prompt_token_ids=...)``) and ``SamplingParams(max_tokens=
  max_new_tokens, temperature, top_p, top_k=-1, stop_token_ids=[eos])``, returning ``output.token_ids`` plus
  ``eos`` where ``finish_reason == "stop"``, so that :func:`generate` decodes and flags them as for the others;
* seeds per request derived from ``sampling.seed`` (its sampler never reads torch's generator, so a seeded call
  repeats and the caller's random state is untouched either way);
* to be registered with the same tests: tokens equal to ``hf``'s under greedy decoding, the same first-token
  distribution under sampling (tests/test_sampling.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from alignlab.progress import log_generation_progress
from alignlab.sampling.backends import BACKENDS
from alignlab.sampling.settings import Sampling

__all__ = ["BACKENDS", "Generation", "Sampling", "generate"]


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finished: bool  # ended with EOS rather than at max_new_tokens


@torch.no_grad()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], sampling: Sampling,
             progress: str | None = None) -> list[Generation]:
    """One continuation per prompt (token ids, already templated), sampled by ``sampling.backend``.

    Results come back in the input order. ``progress``: a label for a progress bar (prompts done, new tokens per
    second) on a terminal and, when stdout is not one, a line per batch of a sampling that takes several
    (:func:`alignlab.progress.log_generation_progress`); None for neither.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    bar = tqdm(total=len(prompts), desc=progress, unit="prompt", disable=None if progress else True, leave=False)
    report = _progress(bar, progress, len(prompts))
    try:
        if sampling.seed is None:
            rows = BACKENDS[sampling.backend](model, prompts, sampling, eos, pad, report)
        else:  # a seeded call leaves the caller's random state as it was
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(sampling.seed)
                rows = BACKENDS[sampling.backend](model, prompts, sampling, eos, pad, report)
    finally:
        bar.close()
        model.train(was_training)
    return [_generation(tokenizer, row, eos) for row in rows]


def _generation(tokenizer: PreTrainedTokenizerBase, new: list[int], eos: int) -> Generation:
    """An answer from its new token ids: cut before the first EOS (``finished``), decoded without special tokens."""
    finished = eos in new
    if finished:
        new = new[: new.index(eos)]
    return Generation(tokenizer.decode(new, skip_special_tokens=True).strip(), new, finished)


def _progress(bar, label: str | None, prompts: int):
    """The backends' ``progress(prompts_done, new_tokens)``, called as batches finish: advances ``bar``, shows new
    tokens per second and, under a label, logs a line per batch for output that is not a terminal, unless the
    first batch held all ``prompts`` (its end is the next line anyway)."""
    start, tokens, done, calls = time.perf_counter(), [0], [0], [0]

    def report(prompts_done: int, new_tokens: int) -> None:
        tokens[0] += new_tokens
        done[0] += prompts_done
        calls[0] += 1
        elapsed = time.perf_counter() - start
        bar.update(prompts_done)
        bar.set_postfix_str(f"{tokens[0] / elapsed:.1f} tok/s", refresh=False)
        if label and not (calls[0] == 1 and done[0] >= prompts):
            log_generation_progress(label, done[0], prompts, tokens[0], elapsed)

    return report
