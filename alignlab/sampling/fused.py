"""A decode step written for the Llama architecture, on fused, pre-packed weights (``sampling.backend=fused``, CPU).

Why: with :mod:`alignlab.sampling.packed` a SmolLM2-135M decode step at batch 8 still spent about 24 ms of its
105 ms of CPU time in some 5,500 small operator calls (``benchmarks/results/profile_decode_packed.txt``): the
model's forward runs each layer's seven products separately and, around them, the mask, cache, rotary and norm
bookkeeping of a general-purpose forward. This step computes the same function with about 35 calls per layer:

* the query, key and value projections are one product (their weights stacked), the gate and up projections
  another, each on a weight packed by oneDNN for the batch's row count (:class:`~alignlab.sampling.packed.
  PackedWeight`), as are the output projection, the down projection and the output head; the residual adds run
  inside the output and down products' kernel;
* the rotary embedding is applied to the queries and keys of a step in one pass, from the model's own
  ``rotary_emb`` (so its scaling variants are the model's);
* the new keys and values are written in place into the batch's ``StaticCache`` slot, and attention is two
  batched products over the filled part of the cache, each kv head's group of query heads at once (no copies of
  the grouped heads; the scale and the padding mask, one additive bias per step, inside the first product): for
  one query row that is cheaper than ``scaled_dot_product_attention``'s CPU kernel.

The prompts are prefilled by the model's own forward (:func:`alignlab.sampling.decode_loop.prefill`); only the
decode steps run here. The weights are read from the model when a batch starts, LoRA adapters merged in as the
adapter's forward would add them, so an online step always samples the updated policy; the stacked and packed
copies take as much memory again as the model's weights while the batch samples (538 MB for SmolLM2) and are
dropped after. Sums run in another order than the model's forward, so logits differ in the last bits: greedy
decoding gives ``generate``'s tokens except at near-ties, sampling draws from the same distribution
(tests/test_sampling.py runs every backend test on this one too).

Covered: :data:`ARCHITECTURES` (Llama: SmolLM2, Llama 2/3 and their random test models), fp32 weights on the
CPU, plain or PEFT LoRA layers. Anything else is a ConfigError that names the alternative (``backend=packed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaForCausalLM, StaticCache

from alignlab.errors import ConfigError
from alignlab.sampling import decode_loop
from alignlab.sampling.packed import PackedWeight

if TYPE_CHECKING:
    from alignlab.sampling.settings import Sampling

ARCHITECTURES: tuple[type[nn.Module], ...] = (LlamaForCausalLM,)


def linear_weight(module: nn.Module, name: str) -> tuple[Tensor, Tensor | None]:
    """The weight ``[out, in]`` and bias a layer applies: an ``nn.Linear``'s own, or a PEFT LoRA layer's base weight
    plus every active adapter's ``scale * B @ A`` (nothing added while adapters are disabled or merged)."""
    if type(module) is nn.Linear:
        return module.weight, module.bias
    from peft.tuners.lora import LoraLayer

    if not isinstance(module, LoraLayer):
        raise ConfigError(f"sampling.backend=fused: {name} is a {type(module).__name__}, not a linear or LoRA layer; "
                          "use backend=packed")
    base = module.get_base_layer()
    weight = base.weight
    if not (module.disable_adapters or module.merged):
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if module.use_dora.get(adapter) or adapter in module.lora_variant or module.lora_bias.get(adapter):
                raise ConfigError(f"sampling.backend=fused merges plain LoRA adapters only; {name}'s adapter "
                                  f"{adapter!r} is a variant (DoRA or another) or has a bias; use backend=packed")
            weight = weight + module.get_delta_weight(adapter)
    return weight, base.bias


def stacked(modules: list[nn.Module], names: list[str], rows: int) -> PackedWeight:
    """One packed product for layers that read the same input: their weights (and biases) stacked along the output.
    Nothing else is folded in (norm weights, the attention scale): a pass over the weights per batch costs more
    than the one small multiply per step it would save."""
    parts = [linear_weight(module, name) for module, name in zip(modules, names, strict=True)]
    weights = [w.detach() for w, _ in parts]
    bias = None
    if any(b is not None for _, b in parts):
        bias = torch.cat([torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b.detach()
                          for w, (_, b) in zip(weights, parts, strict=True)])
    return PackedWeight(weights[0] if len(weights) == 1 else torch.cat(weights), bias, rows)


@dataclass
class FusedLayer:
    """One decoder layer's weights for the fused step."""

    input_norm: Tensor  # [hidden]
    qkv: PackedWeight  # [hidden] -> [(heads + 2 kv_heads) * head_dim]
    o: PackedWeight  # [heads * head_dim] -> [hidden]
    post_norm: Tensor  # [hidden]
    gate_up: PackedWeight  # [hidden] -> [2 * intermediate]
    down: PackedWeight  # [intermediate] -> [hidden]


def fused_weights(model: nn.Module, rows: int) -> tuple[list[FusedLayer], PackedWeight, Tensor]:
    """Every decoder layer's norms and products, the output head and the final norm's weight, the products packed
    for ``rows`` rows, from the weights ``model`` has now."""
    base = checked(model)
    layers = []
    for i, layer in enumerate(base.model.layers):
        attn, mlp, at = layer.self_attn, layer.mlp, f"model.layers.{i}"
        layers.append(FusedLayer(
            input_norm=layer.input_layernorm.weight.detach(),
            qkv=stacked([attn.q_proj, attn.k_proj, attn.v_proj], [f"{at}.self_attn.{p}_proj" for p in "qkv"], rows),
            o=stacked([attn.o_proj], [f"{at}.self_attn.o_proj"], rows),
            post_norm=layer.post_attention_layernorm.weight.detach(),
            gate_up=stacked([mlp.gate_proj, mlp.up_proj], [f"{at}.mlp.gate_proj", f"{at}.mlp.up_proj"], rows),
            down=stacked([mlp.down_proj], [f"{at}.mlp.down_proj"], rows)))
    return layers, stacked([base.lm_head], ["lm_head"], rows), base.model.norm.weight.detach()


class FusedStep:
    """The decode step of :func:`alignlab.sampling.decode_loop.sample_batch` for one batch (see the module
    docstring); built after the prefill, from the model's weights as they are then."""

    def __init__(self, model: nn.Module, cache: StaticCache, mask: Tensor):
        base = checked(model)
        config, rows = base.config, mask.shape[0]
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.bias = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(mask == 0, float("-inf"))[:, None]
        self.embed = base.get_input_embeddings()
        self.rotary = base.model.rotary_emb
        self.eps = base.model.norm.variance_epsilon
        self.scale = base.model.layers[0].self_attn.scaling
        self.layers, self.head, self.final_norm = fused_weights(model, rows)
        self.caches = [(layer.keys, layer.values) for layer in cache.layers]  # [B, kv_heads, W + T, d], in place

    def __call__(self, tokens: Tensor, positions: Tensor, slot: int) -> Tensor:
        """Logits ``[B, V]`` after ``tokens`` ``[B]`` at ``positions`` ``[B, 1]``, their keys and values written
        to cache slot ``slot``; attention covers slots ``0..slot`` where the mask lets it."""
        rows, d, half = tokens.shape[0], self.head_dim, self.head_dim // 2
        heads, kv_heads, group = self.heads, self.kv_heads, self.heads // self.kv_heads
        qk_width, length = (heads + kv_heads) * d, slot + 1
        x = self.embed(tokens)  # [B, hidden]
        cos, sin = self.rotary(x, positions)  # [B, 1, d] each: broadcast over [B, heads + kv_heads, d]
        # [B * kv, 1, L]: 0 where attended, -inf at padding, for each kv head's group of query rows
        bias = self.bias[:, :, :length].expand(rows, kv_heads, length).reshape(rows * kv_heads, 1, length)
        for layer, (cached_keys, cached_values) in zip(self.layers, self.caches, strict=True):
            qkv = layer.qkv(F.rms_norm(x, x.shape[-1:], layer.input_norm, self.eps))
            qk = qkv[:, :qk_width].view(rows, heads + kv_heads, d)
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin  # rotary, q and k at once
            cached_keys.select(2, slot).copy_(qk[:, heads:])
            cached_values.select(2, slot).copy_(qkv[:, qk_width:].view(rows, kv_heads, d))
            # head h reads kv head h // group, as the model's repeat_kv pairs them
            q = qk[:, :heads].reshape(rows * kv_heads, group, d)
            keys = cached_keys[:, :, :length].reshape(rows * kv_heads, length, d)  # views: no copy
            values = cached_values[:, :, :length].reshape(rows * kv_heads, length, d)
            scores = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=self.scale)  # [B * kv, group, L]
            attended = torch.bmm(scores.softmax(-1), values)  # [B * kv, group, d]
            x = layer.o.add(attended.view(rows, heads * d), x)
            gate, up = layer.gate_up(F.rms_norm(x, x.shape[-1:], layer.post_norm, self.eps)).chunk(2, dim=-1)
            x = layer.down.add(F.silu(gate) * up, x)
        return self.head(F.rms_norm(x, x.shape[-1:], self.final_norm, self.eps))


def checked(model: nn.Module) -> nn.Module:
    """The causal LM under ``model`` (a PEFT model's base model), if this step can compute its forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, ARCHITECTURES):
        raise ConfigError(f"sampling.backend=fused computes the decode step of {[a.__name__ for a in ARCHITECTURES]}, "
                          f"not {type(base).__name__}; use backend=packed")
    if base.config.hidden_act != "silu":
        raise ConfigError(f"sampling.backend=fused assumes hidden_act=silu, the model has {base.config.hidden_act!r}; "
                          "use backend=packed")
    weight = base.lm_head.weight
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise ConfigError(f"sampling.backend=fused packs fp32 weights on the CPU, the model's are {weight.dtype} on "
                          f"{weight.device}; use backend=loop or hf")
    return base


@torch.no_grad()
def sample_batch(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, sampling: Sampling, eos: int,
                 pad: int) -> Tensor:
    """:func:`alignlab.sampling.decode_loop.sample_batch` with :class:`FusedStep` computing the decode steps."""
    checked(model)
    return decode_loop.sample_batch(model, input_ids, attention_mask, sampling, eos, pad, decoder=FusedStep)
