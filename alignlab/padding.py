"""Padding token-id rows into tensors: the one place every batch is padded (training pairs, sampling, judges, OPO).

Prompts are padded on the **left**, so that every row's last prompt token sits in the last column (where sampling
continues and where a judge reads the next-token distribution); responses on the **right**, so that chosen and
rejected stack into one tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pad_rows(rows: Sequence[Sequence[int]], width: int, value: int, left: bool) -> Tensor:
    """``[len(rows), width]`` long tensor: each row placed at the left or right end, the rest ``value``."""
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if left:
                out[i, width - len(row):] = torch.as_tensor(row)
            else:
                out[i, : len(row)] = torch.as_tensor(row)
    return out


def mask_rows(rows: Sequence[Sequence[int]], width: int, left: bool) -> Tensor:
    """The attention mask matching :func:`pad_rows`: 1 on a row's tokens, 0 on padding."""
    return pad_rows([[1] * len(r) for r in rows], width, 0, left)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Prompts as ``(input_ids, attention_mask)``, both ``[B, max length]``, left-padded with ``pad_id``."""
    width = max(1, max((len(r) for r in rows), default=1))
    return pad_rows(rows, width, pad_id, left=True), mask_rows(rows, width, left=True)
