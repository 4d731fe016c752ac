"""The batch every objective trains on, and the collator that pads tokenized pairs into it.

Layout (B pairs, P prompt tokens, R response tokens):

* ``prompt_ids``, ``prompt_mask``: ``[B, P]``, **left**-padded, so every prompt ends at column P-1;
* ``chosen_ids``, ``chosen_mask``, ``rejected_ids``, ``rejected_mask``: ``[B, R]``, **right**-padded to one
  common R, so chosen and rejected stack into ``[2B, R]``;
* ``example_id``: ``[B]``, a dataset-wide index (keys precomputed reference log-probs).

``prompt ++ response`` is then a valid causal-LM input (pads on both sides, positions from the mask), and the
prompt can also be run once and shared by both responses through the KV cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from alignlab.data.pairs import TokenizedPair
from alignlab.padding import mask_rows, pad_rows


@dataclass
class PreferenceBatch:
    prompt_ids: Tensor
    prompt_mask: Tensor
    chosen_ids: Tensor
    chosen_mask: Tensor
    rejected_ids: Tensor
    rejected_mask: Tensor
    example_id: Tensor
    stats: dict[str, Any] | None = None  # how the pairs were made (online: dropped pairs, judge consistency)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def to(self, device) -> PreferenceBatch:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self) if f.name != "stats"})

    @property
    def num_tokens(self) -> int:
        """Tokens as a concatenated trainer counts them: prompt+chosen plus prompt+rejected, without padding."""
        prompt = int(self.prompt_mask.sum())
        return 2 * prompt + int(self.chosen_mask.sum()) + int(self.rejected_mask.sum())


class PreferenceCollator:
    """Pads a list of :class:`TokenizedPair` into a :class:`PreferenceBatch`."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def _width(self, n: int) -> int:
        if self.multiple:
            n = -(-n // self.multiple) * self.multiple
        return max(n, 1)

    def __call__(self, pairs: Sequence[TokenizedPair]) -> PreferenceBatch:
        prompts = [p.prompt_ids for p in pairs]
        chosen = [p.chosen_ids for p in pairs]
        rejected = [p.rejected_ids for p in pairs]
        prompt_width = self._width(max(map(len, prompts)))
        response_width = self._width(max(max(map(len, chosen)), max(map(len, rejected))))
        return PreferenceBatch(
            prompt_ids=pad_rows(prompts, prompt_width, self.pad_token_id, left=True),
            prompt_mask=mask_rows(prompts, prompt_width, left=True),
            chosen_ids=pad_rows(chosen, response_width, self.pad_token_id, left=False),
            chosen_mask=mask_rows(chosen, response_width, left=False),
            rejected_ids=pad_rows(rejected, response_width, self.pad_token_id, left=False),
            rejected_mask=mask_rows(rejected, response_width, left=False),
            example_id=torch.tensor([p.example_id for p in pairs], dtype=torch.long),
        )
