"""Sequence log-probabilities of responses given prompts: the one quantity every DPO-family loss needs.

``logp(y|x)`` is the sum of the response tokens' log-probabilities, prompt tokens masked (TRL's definition).
Three layouts of the forward pass, with the same result up to float rounding:

* ``packed`` (default): one row per prompt, ``[prompt | chosen | rejected]``, with a block attention mask so each
  response sees the prompt and itself but not the other response, and position ids restarting after the prompt.
  The prompt is computed once, and a row pads only to the longest prompt+responses of the batch instead of
  padding every response to the longest response.
* ``shared_prompt``: the prompt runs once, its KV cache is repeated for each response.
* ``concatenated``: prompt+chosen and prompt+rejected as separate rows of one ``[2B, P+R]`` forward, as TRL does.

In every layout the output projection (a fifth of SmolLM2's parameters, and a ``[tokens, vocab]`` tensor) is
applied only at the positions that predict response tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignlab.data.collate import PreferenceBatch
from alignlab.padding import left_pad, mask_rows, pad_rows


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


def unwrap(model: nn.Module) -> nn.Module:
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


def _packed_inputs(prompt_ids: Tensor, prompt_mask: Tensor, responses: Tensor, response_mask: Tensor,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Rows ``[prompt | response_1 | ... | response_k]`` and what the forward and the gather need.

    Returns ``input_ids [B, T]``, ``position_ids [B, T]``, an additive attention mask ``[B, 1, T, T]`` and, for
    every real response token in ``responses[response_mask]`` order, the (row, column) of the hidden state that
    predicts it.
    """
    batch, prompt_width = prompt_ids.shape
    per_prompt = responses.shape[0] // batch
    prompt_lengths = prompt_mask.sum(-1).tolist()
    response_lengths = response_mask.sum(-1).tolist()
    rows, predict_rows, predict_cols = [], [], []
    for i in range(batch):
        p = prompt_lengths[i]
        ids = prompt_ids[i, prompt_width - p:].tolist()
        positions, segments = list(range(p)), [0] * p
        for j in range(per_prompt):
            r = i * per_prompt + j
            length, start = response_lengths[r], len(ids)
            ids += responses[r, :length].tolist()
            positions += range(p, p + length)
            segments += [j + 1] * length
            if length:  # token 0 is predicted by the prompt's end
                predict_cols += [p - 1, *range(start, start + length - 1)]
                predict_rows += [i] * length
        rows.append((ids, positions, segments))
    width = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.zeros((batch, width), dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    segment = torch.full((batch, width), -1, dtype=torch.long)
    for i, (ids, positions, segments) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        position_ids[i, : len(ids)] = torch.tensor(positions)
        segment[i, : len(ids)] = torch.tensor(segments)
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves: no all-masked row
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return input_ids, position_ids, mask, torch.tensor(predict_rows), torch.tensor(predict_cols)


def _packed_hidden(causal_lm: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, responses: Tensor,
                   response_mask: Tensor) -> Tensor:
    """One row per prompt, ``[prompt | response_1 | ... | response_k]``, each response attending to the prompt and
    itself: the prompt is computed once and no row is padded to the longest response k times over."""
    dtype = next(causal_lm.parameters()).dtype
    input_ids, position_ids, mask, rows, cols = (t.to(responses.device) for t in _packed_inputs(
        prompt_ids, prompt_mask, responses, response_mask, dtype))
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                     use_cache=False).last_hidden_state
    return hidden[rows, cols]


def _shared_prompt_hidden(causal_lm: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, responses: Tensor,
                          response_mask: Tensor) -> Tensor:
    """The prompt once through the model, its KV cache repeated for the k responses."""
    decoder = causal_lm.get_decoder()
    per_prompt = responses.shape[0] // prompt_ids.shape[0]
    prompt_mask_k = prompt_mask.repeat_interleave(per_prompt, dim=0)  # [B*k, P]
    prompt_out = decoder(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=_positions(prompt_mask),
                         use_cache=True)
    cache = prompt_out.cache
    cache.batch_repeat_interleave(per_prompt)
    response_positions = prompt_mask_k.sum(-1)[:, None] + torch.arange(responses.shape[1], device=responses.device)
    response_out = decoder(input_ids=responses, attention_mask=torch.cat([prompt_mask_k, response_mask], dim=-1),
                           position_ids=response_positions, cache=cache, use_cache=True)
    last_prompt = prompt_out.last_hidden_state[:, -1:].repeat_interleave(per_prompt, dim=0)  # [B*k, 1, H]
    return torch.cat([last_prompt, response_out.last_hidden_state[:, :-1]], dim=1)[response_mask.bool()]


def _concatenated_hidden(causal_lm: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, responses: Tensor,
                         response_mask: Tensor) -> Tensor:
    """Prompt and response side by side in each of the B*k rows: TRL's layout, the plainest."""
    per_prompt = responses.shape[0] // prompt_ids.shape[0]
    full_mask = torch.cat([prompt_mask.repeat_interleave(per_prompt, dim=0), response_mask], dim=-1)  # [B*k, P+R]
    input_ids = torch.cat([prompt_ids.repeat_interleave(per_prompt, dim=0), responses], dim=-1)
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=full_mask,
                                     position_ids=_positions(full_mask), use_cache=False).last_hidden_state
    prompt_width = prompt_ids.shape[1]
    return hidden[:, prompt_width - 1: prompt_width - 1 + responses.shape[1]][response_mask.bool()]


# layout -> (causal LM, prompt_ids [B, P], prompt_mask [B, P], responses [B*k, R], response_mask [B*k, R]) ->
# the hidden states that predict the N real response tokens, [N, H], in ``response_mask``'s row-major order.
LAYOUTS: dict[str, Callable[[nn.Module, Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "packed": _packed_hidden,
    "shared_prompt": _shared_prompt_hidden,
    "concatenated": _concatenated_hidden,
}


def response_logps(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, responses: Tensor,
                   response_mask: Tensor, layout: str = "packed") -> Tensor:
    """Summed log-probs of ``k`` responses per prompt, ``Tensor[B*k]``, the model run in ``layout``
    (:data:`LAYOUTS`: the same numbers, different cost).

    Args:
        prompt_ids, prompt_mask: ``[B, P]``, left-padded.
        responses, response_mask: ``[B*k, R]``, right-padded, the k responses of prompt i in rows ``i*k .. i*k+k-1``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {tuple(LAYOUTS)}")
    causal_lm = unwrap(model)
    predicting = LAYOUTS[layout](causal_lm, prompt_ids, prompt_mask, responses, response_mask)  # [N, H]
    selected = response_mask.bool()  # [B*k, R]: the N real response tokens
    token_logps = -F.cross_entropy(_project(causal_lm, predicting), responses[selected], reduction="none")  # [N]
    return torch.zeros(responses.shape[0], dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, selected.nonzero()[:, 0], token_logps)


@torch.no_grad()
def sequence_logps(model: nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                   batch_size: int = 16) -> list[float | None]:
    """``log p(response | prompt)`` of each pair of token-id lists, computed ``batch_size`` rows at a time without
    gradients; None for an empty response. For scoring answers that are not in a :class:`PreferenceBatch` (sampled
    answers, a judge's candidates)."""
    out: list[float | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    rows = [(i, p, r) for i, (p, r) in enumerate(zip(prompts, responses, strict=True)) if r]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        prompt_rows, response_rows = [p for _, p, _ in chunk], [r for _, _, r in chunk]
        p_width, r_width = max(map(len, prompt_rows)), max(map(len, response_rows))
        tensors = (pad_rows(prompt_rows, p_width, pad_id, left=True), mask_rows(prompt_rows, p_width, left=True),
                   pad_rows(response_rows, r_width, pad_id, left=False),
                   mask_rows(response_rows, r_width, left=False))
        values = response_logps(model, *(t.to(device) for t in tensors)).tolist()
        for (i, _, _), value in zip(chunk, values, strict=True):
            out[i] = value
    return out


@torch.no_grad()
def next_token_logprobs(model: nn.Module, prompts: list[list[int]], pad_id: int, token_groups: list[list[int]],
                        batch_size: int = 8) -> Tensor:
    """``log P(next token in group g | prompt i)``, ``Tensor[N, G]`` on the CPU: how a judge or a letter scorer
    reads a model's answer (a group is one answer's spelling variants, e.g. ``"A"`` and ``" A"``; their
    probabilities add up).

    Prompts go ``batch_size`` at a time, sorted by length so a batch pads little, left-padded so that every prompt
    ends at the last column, and only that column's logits are computed: the output head over the whole prompt
    would cost, by parameter count, about a fifth of the forward for nothing."""
    device = next(model.parameters()).device
    out = torch.empty(len(prompts), len(token_groups))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        ids, mask = left_pad([prompts[i] for i in chunk], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=_positions(mask).to(device), logits_to_keep=1).logits[:, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1).cpu()  # [b, V]
        out[chunk] = torch.stack([logprobs[:, group].logsumexp(-1) for group in token_groups], dim=-1)
    return out


def pair_logps(model: nn.Module, batch: PreferenceBatch, layout: str = "packed") -> PairLogps:
    """Log-probs of ``batch``'s chosen and rejected responses under ``model`` (a causal LM, PEFT or not)."""
    # Interleaved [c0, r0, c1, r1, ...]: the two responses of each prompt are adjacent.
    responses = torch.stack([batch.chosen_ids, batch.rejected_ids], dim=1).flatten(0, 1)  # [2B, R]
    response_mask = torch.stack([batch.chosen_mask, batch.rejected_mask], dim=1).flatten(0, 1)
    sums = response_logps(model, batch.prompt_ids, batch.prompt_mask, responses, response_mask, layout)
    lengths = response_mask.sum(-1)
    return PairLogps(chosen=sums[0::2], rejected=sums[1::2], chosen_tokens=lengths[0::2], rejected_tokens=lengths[1::2])
