"""The decode loop with every linear layer's weight pre-packed for oneDNN (``sampling.backend=packed``, CPU only).

Why: a decode step multiplies a batch of a few rows by every weight matrix, and on this kind of CPU (AMD EPYC,
MKL's fp32 ``sgemm``) those few-row products run far below the memory bandwidth: with 8 rows SmolLM2-135M's
products cost 96-98 ms a step against 20 ms to read the weights once. oneDNN's inner-product kernel, given the
weight once in the blocked layout it chooses for the batch's row count, runs them in 64 ms
(``benchmarks/results/bench_sampling.txt``; ``benchmarks/bench_sampling.py`` prints the figures of the machine it
runs on). Packing every weight costs one pass over them, paid once per batch of prompts, so the
sampler always reads the policy's current weights: an online step that updated them samples from the update.

What changes is only the kernel of the products with as many rows as the batch: every decode step's, and the
prefill's output head (``logits_to_keep=1``); the rest of the prefill, batch x prompt width rows, runs
``F.linear``. The two kernels sum in different orders, so logits differ in the last bits: greedy decoding gives
``generate``'s tokens except where two tokens tie to that precision, and sampling draws from the same
distribution (tests/test_sampling.py checks both on a small random model; ``benchmarks/bench_sampling.py
--check-greedy`` counts agreement on the real one). A batch of one row samples with the plain decode loop: a single
row gains nothing from packing (the benchmark's batch-1 products cost the same) and would pay for it.

The model is changed while a batch samples and restored after, even on error: each ``nn.Linear`` with an fp32
weight on the CPU is replaced in its parent by a :class:`PackedLinear` holding it, and put back afterwards. While
it samples, therefore: the packed copies take as much memory again as those weights (538 MB for SmolLM2); the
model's ``state_dict`` keys read ``...linear.weight``; hooks registered on the original layers do not run; and no
other thread may run the same model (a judge thread that shares its modules would see the swap).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignlab.errors import ConfigError
from alignlab.sampling import decode_loop

if TYPE_CHECKING:
    from alignlab.sampling.settings import Sampling


class PackedWeight:
    """A weight ``[out, in]`` (and bias ``[out]``) held in the blocked layout oneDNN chooses for ``rows``-row
    inputs; called on an input ``[rows, in]``, it returns ``x @ weight.T + bias`` ``[rows, out]``."""

    def __init__(self, weight: Tensor, bias: Tensor | None, rows: int):
        if not torch.backends.mkldnn.is_available():
            raise ConfigError("sampling.backend=packed and fused need a PyTorch built with oneDNN (mkldnn); "
                              "use backend=loop")
        self.rows = rows
        self.in_features = weight.shape[1]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def add(self, x: Tensor, other: Tensor) -> Tensor:
        """``self(x) + other`` (``other`` ``[rows, out]``: a residual) in the same kernel."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "add")


class PackedLinear(nn.Module):
    """``linear``'s forward with its weight ``[out, in]`` also held pre-packed for inputs of ``rows`` rows.

    An input ``[..., in]`` of ``rows`` rows in all goes through oneDNN with the packed copy; any other row count
    through ``F.linear`` with the original weight, exactly as ``linear`` computes it.
    """

    def __init__(self, linear: nn.Linear, rows: int):
        super().__init__()
        self.linear = linear
        self.rows = rows
        self.packed = PackedWeight(linear.weight, linear.bias, rows)

    # what a wrapper of the layer reads (a LoRA layer reads its base layer's weight, e.g. for its dtype)
    weight = property(lambda self: self.linear.weight)
    bias = property(lambda self: self.linear.bias)
    in_features = property(lambda self: self.linear.in_features)
    out_features = property(lambda self: self.linear.out_features)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] != self.rows:
            return F.linear(x, self.weight, self.bias)
        out = self.packed(flat)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def packable(module: nn.Module) -> bool:
    return type(module) is nn.Linear and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu"


@contextmanager
def packed_linears(model: nn.Module, rows: int) -> Iterator[int]:
    """Within the block every packable ``nn.Linear`` of ``model`` is a :class:`PackedLinear` for ``rows`` rows;
    yields how many were replaced. Restored on exit."""
    swapped: list[tuple[nn.Module, str, nn.Linear]] = []
    try:
        for name, module in list(model.named_modules()):
            if not packable(module):
                continue
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, PackedLinear(module, rows))
            swapped.append((parent, child, module))
        yield len(swapped)
    finally:
        for parent, child, module in reversed(swapped):
            setattr(parent, child, module)


@torch.no_grad()
def sample_batch(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, sampling: Sampling, eos: int,
                 pad: int) -> Tensor:
    """:func:`alignlab.sampling.decode_loop.sample_batch` with the decode steps' products on packed weights."""
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError("sampling.backend=packed packs weights for the CPU's oneDNN kernels; on "
                          f"{next(model.parameters()).device} use backend=loop or hf")
    if input_ids.shape[0] == 1:
        return decode_loop.sample_batch(model, input_ids, attention_mask, sampling, eos, pad)
    with packed_linears(model, rows=input_ids.shape[0]) as packed:
        if packed == 0:
            raise ConfigError("sampling.backend=packed found no fp32 nn.Linear on the CPU to pack in "
                              f"{type(model).__name__}; use backend=loop")
        return decode_loop.sample_batch(model, input_ids, attention_mask, sampling, eos, pad)
