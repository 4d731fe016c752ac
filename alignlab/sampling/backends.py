"""The sampling engines, by name: ``sampling.backend`` selects one entry of :data:`BACKENDS`.

A backend is a callable ``backend(model, prompts, sampling, eos, pad, progress) -> list[list[int]]``: each
prompt's new token ids, in input order, up to and including the first ``eos`` when the answer ended (anything after
it is ignored). ``progress(prompts_done, new_tokens)`` is called as batches finish. :func:`alignlab.sampling.generate`
does the rest that every backend shares (eval mode, the seeded random state, cutting at EOS, decoding), so a
backend only samples. The built-in backends sample left-padded batches through :class:`Batched`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor, nn

from alignlab.padding import left_pad
from alignlab.sampling import decode_loop, fused, hf, packed

if TYPE_CHECKING:
    from alignlab.sampling.settings import Sampling

Progress = Callable[[int, int], None]
# (model, input_ids [B, W] left-padded, attention_mask [B, W], sampling, eos, pad) -> new tokens [B, T], T <= the
# cap; a row that ended holds ``pad`` after its EOS.
BatchSampler = Callable[[nn.Module, Tensor, Tensor, "Sampling", int, int], Tensor]


class Backend(Protocol):
    def __call__(self, model: nn.Module, prompts: list[list[int]], sampling: Sampling, eos: int, pad: int,
                 progress: Progress) -> list[list[int]]: ...


@dataclass(frozen=True)
class Batched:
    """A backend from a function that samples one left-padded batch.

    Prompts are sorted by length, so a batch pads little; duplicates stay next to each other (a stable sort), so
    a batch sampler can compute a prompt shared by several rows once. Results come back in input order.
    """

    sample_batch: BatchSampler

    def __call__(self, model: nn.Module, prompts: list[list[int]], sampling: Sampling, eos: int, pad: int,
                 progress: Progress) -> list[list[int]]:
        device = next(model.parameters()).device
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        batch_size = sampling.batch_size or max(1, len(prompts))
        results: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            input_ids, attention = left_pad([prompts[i] for i in chunk], pad)
            new = self.sample_batch(model, input_ids.to(device), attention.to(device), sampling, eos, pad)
            for i, row in zip(chunk, new.tolist(), strict=True):
                results[i] = row
            progress(len(chunk), int(((new != pad) & (new != eos)).sum()))
        return results


BACKENDS: dict[str, Backend] = {
    "hf": Batched(hf.sample_batch),
    "loop": Batched(decode_loop.sample_batch),
    "packed": Batched(packed.sample_batch),
    "fused": Batched(fused.sample_batch),
}
