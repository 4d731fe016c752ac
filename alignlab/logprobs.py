"""Sequence log-probabilities of responses given prompts: the one quantity every DPO-family loss needs.

``logp(y|x)`` is the sum of the response tokens' log-probabilities, prompt tokens masked (TRL's definition).
Two ways to compute it, with the same result up to float rounding:

* ``share_prompt=True`` (default): the prompt runs once, its KV cache is repeated for the chosen and the
  rejected response, and only the responses run on top of it; prompt+chosen and prompt+rejected would compute
  the prompt twice.
* ``share_prompt=False``: chosen and rejected each concatenated with their prompt in one ``[2B, P+R]`` forward,
  as TRL does. Needed with gradient checkpointing, which disables the KV cache in training.

Either way the output projection (a fifth of SmolLM2's parameters, and a ``[tokens, vocab]`` tensor) is applied
only at the positions that predict response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignlab.data.collate import PreferenceBatch


@dataclass
class PairLogps:
    """Summed response log-probs and response lengths, each ``Tensor[B]``."""

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor

    def averaged(self) -> PairLogps:
        """Per-token means instead of sums (TRL's IPO convention, SimPO's form)."""
        return PairLogps(self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1),
                         self.chosen_tokens, self.rejected_tokens)


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _project(causal_lm: nn.Module, hidden: Tensor) -> Tensor:
    """Hidden states ``[N, H]`` to fp32 logits ``[N, V]``, with the model's logit soft-capping or scale if any."""
    logits = causal_lm.get_output_embeddings()(hidden).float()
    config = causal_lm.config
    if getattr(config, "final_logit_softcapping", None):
        cap = config.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    return logits


def _positions(mask: Tensor) -> Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def pair_logps(model: nn.Module, batch: PreferenceBatch, share_prompt: bool = True) -> PairLogps:
    """Log-probs of ``batch``'s chosen and rejected responses under ``model`` (a causal LM, PEFT or not)."""
    causal_lm = _unwrap(model)
    decoder = causal_lm.get_decoder()
    batch_size, response_len = batch.chosen_ids.shape
    # Interleaved [c0, r0, c1, r1, ...] so that repeat_interleave(2) lines prompts up with their responses.
    responses = torch.stack([batch.chosen_ids, batch.rejected_ids], dim=1).flatten(0, 1)  # [2B, R]
    response_mask = torch.stack([batch.chosen_mask, batch.rejected_mask], dim=1).flatten(0, 1)
    prompt_mask2 = batch.prompt_mask.repeat_interleave(2, dim=0)  # [2B, P]
    full_mask = torch.cat([prompt_mask2, response_mask], dim=-1)  # [2B, P+R]

    if share_prompt:
        prompt_out = decoder(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
                             position_ids=_positions(batch.prompt_mask), use_cache=True)
        cache = prompt_out.cache
        cache.batch_repeat_interleave(2)
        prompt_len = batch.prompt_mask.sum(-1).repeat_interleave(2)  # [2B]
        response_positions = prompt_len[:, None] + torch.arange(response_len, device=responses.device)
        response_out = decoder(input_ids=responses, attention_mask=full_mask, position_ids=response_positions,
                               cache=cache, use_cache=True)
        last_prompt = prompt_out.last_hidden_state[:, -1:].repeat_interleave(2, dim=0)  # [2B, 1, H]
        predicting = torch.cat([last_prompt, response_out.last_hidden_state[:, :-1]], dim=1)  # [2B, R, H]
    else:
        input_ids = torch.cat([batch.prompt_ids.repeat_interleave(2, dim=0), responses], dim=-1)
        hidden = decoder(input_ids=input_ids, attention_mask=full_mask, position_ids=_positions(full_mask),
                         use_cache=False).last_hidden_state
        prompt_width = batch.prompt_ids.shape[1]
        predicting = hidden[:, prompt_width - 1: prompt_width - 1 + response_len]  # [2B, R, H]

    selected = response_mask.bool()
    token_logps = -F.cross_entropy(_project(causal_lm, predicting[selected]), responses[selected], reduction="none")
    rows = selected.nonzero()[:, 0]
    sums = torch.zeros(2 * batch_size, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    lengths = response_mask.sum(-1)
    return PairLogps(chosen=sums[0::2], rejected=sums[1::2], chosen_tokens=lengths[0::2], rejected_tokens=lengths[1::2])
