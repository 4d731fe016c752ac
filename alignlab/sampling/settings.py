"""The settings value every sampler takes: :class:`Sampling`, built from a ``sampling:`` config node."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from alignlab.errors import ConfigError
from alignlab.sampling.backends import BACKENDS


@dataclass(frozen=True)
class Sampling:
    """How answers are sampled.

    Args:
        max_new_tokens: the cap on an answer's length; an answer that reaches it did not finish.
        min_new_tokens: no answer ends before this many new tokens (EOS is masked until then, as ``generate``'s
            ``min_new_tokens`` does); 0 by default. Benchmarks set it to ``max_new_tokens`` so that two samplers
            compared do exactly the same work.
        temperature: 0 decodes greedily.
        top_p: nucleus sampling (1.0: the whole distribution).
        batch_size: prompts per forward batch; ``None`` samples every prompt of a call in one batch (online pairs:
            a training batch's prompts, twice each).
        seed: a seeded call samples the same answers whenever it is repeated and leaves the caller's random state
            alone; ``None`` draws from the global generator (online training: a new draw every step).
        backend: the engine that samples, a key of :data:`alignlab.sampling.BACKENDS`: ``hf`` (Hugging Face
            ``generate``, the reference and the default), ``loop`` (alignlab's decode loop: ``generate``'s tokens
            under greedy decoding and its distribution under sampling, but other draws for a seed), ``packed``
            (the decode loop with oneDNN kernels on weights pre-packed for the batch, CPU only; its logits differ
            from ``generate``'s in the last bits, so a greedy near-tie can go the other way) or ``fused`` (the
            decode loop with alignlab's own decode step for Llama-architecture models on fused, packed weights; CPU
            only, same caveat). The faster ones are opt-in: ``benchmarks/bench_sampling.py`` prints what each gains
            on the machine it runs on.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int | None = 16
    seed: int | None = None
    backend: str = "hf"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"sampling.max_new_tokens={self.max_new_tokens} must be at least 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"sampling.min_new_tokens={self.min_new_tokens} must be between 0 and "
                              f"sampling.max_new_tokens={self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"sampling.temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p={self.top_p} must be in (0, 1]")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"sampling.batch_size={self.batch_size} must be at least 1 (or null)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"sampling.backend={self.backend!r} is not one of {sorted(BACKENDS)}")

    def replace(self, **changes) -> Sampling:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """The settings by name, ``min_new_tokens`` only when set: what records and cache keys written before that
        field existed hold still describes the same sampling (and still finds its cached answers)."""
        settings = dataclasses.asdict(self)
        if not self.min_new_tokens:
            del settings["min_new_tokens"]
        return settings
