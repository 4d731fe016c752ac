"""The frozen reference π_ref that every DPO-family loss compares the policy with, behind one public face.

It takes one of three forms, and callers never need to know which:

* ``copy``: a frozen deep copy of the initial policy (``Reference.frozen_copy_of``), kept outside the module tree
  so checkpoints store the policy once;
* ``adapter``: the policy itself with its LoRA adapter disabled (``Reference.disabled_adapter_of``): no second copy;
* ``table``: reference log-probs precomputed once for every pair of fixed data (:meth:`precompute`); the copy is
  then released, and the reference can no longer sample.

One way to get log-probs (:meth:`pair_logps`), one way to get a model to sample from or score with
(:meth:`as_model`, a context manager that yields an eval-mode network and restores the policy afterwards).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from alignlab.data.collate import PreferenceBatch
from alignlab.errors import ConfigError
from alignlab.logprobs import PairLogps, pair_logps


def release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc keeps it otherwise): after dropping the reference copy."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Reference:
    """π_ref as a frozen copy, a disabled adapter, or a table of precomputed log-probs (see the module docstring).

    Args:
        model: the frozen copy (``copy`` form), or ``None``.
        policy: the PEFT policy whose disabled adapter is the reference (``adapter`` form), or ``None``.
    """

    def __init__(self, model: nn.Module | None = None, policy: nn.Module | None = None) -> None:
        if model is not None and policy is not None:
            raise ValueError("a reference is a frozen copy or a disabled adapter, not both")
        self._model = model.eval().requires_grad_(False) if model is not None else None
        self._policy = policy
        self.table: Tensor | None = None  # [num_examples, 2] (chosen, rejected) once precomputed
        self.table_key: str | None = None  # the data fingerprint the table belongs to

    @classmethod
    def frozen_copy_of(cls, model: nn.Module) -> Reference:
        """A frozen, eval-mode deep copy of ``model`` (the initial policy): the reference without an adapter."""
        return cls(model=copy.deepcopy(model))

    @classmethod
    def disabled_adapter_of(cls, policy: nn.Module) -> Reference:
        return cls(policy=policy)

    @property
    def kind(self) -> str:
        """``copy`` | ``adapter`` | ``table`` (log-probs only, no model left) | ``none``."""
        if self._model is not None:
            return "copy"
        if self._policy is not None:
            return "adapter"
        return "table" if self.table is not None else "none"

    @property
    def can_sample(self) -> bool:
        """Whether a model is in memory to sample from (not after the copy was released for a table)."""
        return self._model is not None or self._policy is not None

    # ----- log-probs --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def pair_logps(self, batch: PreferenceBatch, layout: str = "packed") -> PairLogps:
        """Reference log-probs of a batch: from the table where every example of the batch is in it, else from
        the model (``[B]`` tensors on the batch's device)."""
        if self.table is not None:
            cached = self.table[batch.example_id.to(self.table.device)].to(batch.chosen_ids.device)
            if not torch.isnan(cached).any():
                return PairLogps(cached[:, 0], cached[:, 1], batch.chosen_mask.sum(-1), batch.rejected_mask.sum(-1))
        if not self.can_sample:
            raise RuntimeError("reference log-probs were not precomputed for this batch and no reference is kept")
        with self.as_model() as model:
            return pair_logps(model, batch, layout)

    @contextlib.contextmanager
    def as_model(self) -> Iterator[nn.Module]:
        """The reference network in eval mode, on the policy's device when it is the disabled adapter.

        For the ``adapter`` form the adapter is disabled for the duration and the policy's train mode restored
        afterwards, so nothing may use the policy as the policy inside the block.
        """
        if self._model is not None:
            yield self._model
            return
        if self._policy is None:
            raise ConfigError("the reference is only a table of precomputed log-probs (objective.module."
                              "precompute_reference=true): nothing can sample from it")
        was_training = self._policy.training
        self._policy.eval()
        try:
            with self._policy.disable_adapter():
                yield self._policy
        finally:
            self._policy.train(was_training)

    # ----- the table ----------------------------------------------------------------------------------------
    def precompute(self, batches: Iterable[PreferenceBatch], num_examples: int, key: str | None,
                   move: Callable[[PreferenceBatch], PreferenceBatch], layout: str = "packed") -> None:
        """Fill the table for every example id (``move`` puts a batch on the compute device), then release the
        copy: training reads log-probs from the table from now on."""
        table = torch.full((num_examples, 2), float("nan"))
        for batch in batches:
            batch = move(batch)
            ref = self.pair_logps(batch, layout)
            table[batch.example_id.cpu()] = torch.stack([ref.chosen, ref.rejected], -1).float().cpu()
        self.table, self.table_key = table, key
        self.release_copy()

    def release_copy(self) -> None:
        """Drop the frozen copy once a complete table makes it unnecessary."""
        if self._model is not None and self.table is not None and not torch.isnan(self.table).any():
            self._model = None
            release_freed_memory()

    def forget_table(self) -> None:
        self.table, self.table_key = None, None

    def to(self, device: torch.device | str) -> Reference:
        if self._model is not None and next(self._model.parameters()).device != torch.device(device):
            self._model.to(device)
        return self

    def __repr__(self) -> str:
        return f"Reference({self.kind})"
