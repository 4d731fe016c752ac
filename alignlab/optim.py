"""Learning-rate schedules as pure functions of the step, and the factory the config instantiates."""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from alignlab.errors import ConfigError

DECAYS = ("constant", "linear", "cosine")


def warmup_factor(step: int, warmup_steps: int, total_steps: int, decay: str = "linear") -> float:
    """Multiplier of the peak learning rate at ``step``: linear warm-up, then constant, linear or cosine decay to 0.

    Warm-up matters for DPO: the first updates see the largest gradients (every pair is still misranked).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if decay == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0,
                    decay: str = "linear") -> LambdaLR:
    """``warmup_steps`` (or ``warmup_ratio`` of the run) of warm-up, then ``decay`` over the remaining steps."""
    if decay not in DECAYS:
        raise ConfigError(f"scheduler.decay={decay!r} is not one of {DECAYS}")
    warmup = warmup_steps or int(warmup_ratio * total_steps)
    return LambdaLR(optimizer, partial(warmup_factor, warmup_steps=warmup, total_steps=total_steps, decay=decay))
