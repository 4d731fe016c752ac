"""Where a decode step's time goes: torch.profiler over one seeded sampling call, per decode step.

    OMP_NUM_THREADS=2 python benchmarks/profile_decode.py --backend packed    # SmolLM2-135M fp32, 8 rows, 24 tokens

Prints, for the operators with the most self CPU time, their milliseconds and calls per decode step (the call's
total divided by its decode steps, so the prefill and, for ``packed``, the weight packing are spread over them:
their own rows say how much), and the total. Run it on a quiet machine: it measures this process only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sampling import batch_prompts, chat_prompts, load_model  # noqa: E402

from alignlab.sampling import BACKENDS, Sampling, generate  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--backend", default="packed", choices=sorted(BACKENDS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", default="pairs", choices=["pairs", "distinct"])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=20, help="operators shown")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    prompts = batch_prompts(chat_prompts(tokenizer, args.batch), args.batch, args.prompts)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.9, batch_size=args.batch, seed=0,
                        backend=args.backend)
    generate(model, tokenizer, prompts, sampling)  # one-off costs outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        answers = generate(model, tokenizer, prompts, sampling)
    steps = max(len(a.token_ids) + a.finished for a in answers)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3
    print(f"{args.model}, backend={args.backend}, {args.batch} rows ({args.prompts}), {steps} tokens, "
          f"{args.threads} threads: {total_ms / steps:.1f} ms of self CPU time per decode step")
    print(f"{'operator':56s} {'ms/step':>8s} {'calls/step':>10s} {'share':>6s}")
    for e in events[: args.rows]:
        print(f"{e.key[:56]:56s} {e.self_cpu_time_total / 1e3 / steps:8.2f} {e.count / steps:10.1f} "
              f"{e.self_cpu_time_total / 1e3 / total_ms:6.1%}")
    rest = events[args.rows:]
    print(f"{f'the other {len(rest)} operators':56s} {sum(e.self_cpu_time_total for e in rest) / 1e3 / steps:8.2f} "
          f"{sum(e.count for e in rest) / steps:10.1f}")
    print(f"{'all operators':56s} {total_ms / steps:8.2f} {sum(e.count for e in events) / steps:10.1f}")


if __name__ == "__main__":
    main()
