"""The reference backend: Hugging Face ``model.generate`` on one left-padded batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from alignlab.sampling.settings import Sampling


def sample_batch(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, sampling: Sampling, eos: int,
                 pad: int) -> Tensor:
    """New tokens ``[B, T]`` after ``input_ids`` ``[B, W]``; rows that ended hold ``pad`` after their EOS."""
    decoding = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p) \
        if sampling.temperature > 0 else dict(do_sample=False)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=sampling.max_new_tokens,
                         min_new_tokens=sampling.min_new_tokens or None, eos_token_id=eos, pad_token_id=pad, top_k=0,
                         use_cache=True, **decoding)  # also when training turned it off for checkpointing
    return out[:, input_ids.shape[1]:]
