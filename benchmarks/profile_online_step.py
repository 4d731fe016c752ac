"""Where an online step's training time goes: torch.profiler over the update of one OAIF step (not its sampling).

    OMP_NUM_THREADS=2 python benchmarks/profile_online_step.py          # bench_oaif.py's alignlab settings

Runs ``objective=oaif`` as ``benchmarks/bench_oaif.py`` does (SmolLM2-135M fp32, 4 prompts x 2 samples, 48 new
tokens, the rule annotator, live reference, fused AdamW) and profiles step ``--step`` from Lightning's
``on_train_batch_start`` to ``on_train_batch_end``: the pairs are already sampled and labelled then (the
datamodule does it in ``on_after_batch_transfer``), so this is the part bench_oaif.py reports as training tokens/s:
the policy's and the reference's forwards, the backward, the optimizer step and Lightning's own work. Prints the
wall time of that part, then the operators with the most self CPU time, and the top-level operators (those called
from Python, not from another operator) by total time. Run it on a quiet machine: it measures this process only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_oaif import alignlab_config  # noqa: E402
from harness import run_alignlab_train, set_threads  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--step", type=int, default=3, help="the step profiled (1-based; later steps run unprofiled)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--backend", default="fused")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25, help="operators shown")
    parser.add_argument("--whole", action="store_true",
                        help="profile the whole step (from the previous step's end: sampling and annotating too)")
    parser.add_argument("--extra", nargs="*", default=[], help="more alignlab-train overrides")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    class Profiled(pl.Callback):
        def __init__(self) -> None:
            self.prof, self.seconds, self.tokens = None, None, None

        def start_profile(self) -> None:
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()
            self.start = time.perf_counter()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step + 1 == args.step and not args.whole:
                self.start_profile()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if self.prof is not None and self.seconds is None:
                self.seconds = time.perf_counter() - self.start
                self.prof.__exit__(None, None, None)
                self.tokens = batch.num_tokens
            elif args.whole and trainer.global_step + 1 == args.step:
                self.start_profile()  # from the end of the step before: sampling, annotating and the update

    cfg = alignlab_config(args.model, args.step, args.batch_size, args.max_new_tokens, 256, args.backend, True, 5e-6,
                          tuple(args.extra))
    probe = Profiled()
    run_alignlab_train(cfg, [probe])
    events = probe.prof.key_averages()
    by_self = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3
    window = "the previous step's end" if args.whole else "batch start"
    print(f"{args.model}, step {args.step}: {probe.tokens} training tokens, {probe.seconds:.2f} s wall from {window} "
          f"to batch end ({probe.tokens / probe.seconds:.1f} tokens/s), {total_ms / 1e3:.2f} s of self CPU time in "
          f"operators, {args.threads} threads; overrides {args.extra or 'none'}")
    print(f"{'operator (self time)':60s} {'ms':>9s} {'calls':>7s} {'share':>6s}")
    for e in by_self[: args.rows]:
        print(f"{e.key[:60]:60s} {e.self_cpu_time_total / 1e3:9.1f} {e.count:7d} {e.self_cpu_time_total / 1e3 / total_ms:6.1%}")
    rest = by_self[args.rows:]
    print(f"{f'the other {len(rest)} operators':60s} {sum(e.self_cpu_time_total for e in rest) / 1e3:9.1f} "
          f"{sum(e.count for e in rest):7d}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
