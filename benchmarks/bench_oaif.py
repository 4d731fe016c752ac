"""One online DPO step end to end (sample 2 answers per prompt, annotate, update): alignlab vs TRL's
OnlineDPOTrainer, same model, prompts, batch, generation length and annotator.

    python benchmarks/bench_oaif.py                  # SmolLM2-135M fp32, 4 prompts per step, 48 new tokens, 6 steps
    python benchmarks/bench_oaif.py --model tiny --steps 3

The annotator is the same programmatic rater for both (:class:`alignlab.judges.rule.RuleJudge`; for TRL it is a
reward function giving each completion that score). Each framework runs in its own process. Reported per step
(median of steps 2..N, wall time between step ends): seconds, generation seconds (sampling alone; annotating
falls in the rest for both) and new tokens generated per second of generation, training tokens (prompt+answer of
every trained sequence) per second of the rest, and peak memory; then alignlab's ratio to TRL for each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_dpo import SAMPLER, SMOLLM2, load_rows, peak_rss_mib, run_children  # noqa: E402

CONFIGS = {"alignlab": "alignlab objective=oaif", "trl": "TRL OnlineDPOTrainer"}


def summarize(step_ends: list[float], gen_times: list[float], gen_tokens: list[int], train_tokens: list[int]) -> dict:
    steps = [b - a for a, b in zip(step_ends, step_ends[1:], strict=False)][1:]  # steps 2..N
    gen, new, trained = gen_times[1:], gen_tokens[1:], train_tokens[1:]
    rest = [s - g for s, g in zip(steps, gen, strict=True)]
    return {"median_step_s": statistics.median(steps), "median_generation_s": statistics.median(gen),
            "generated_tokens_per_s": sum(new) / sum(gen),
            "train_tokens_per_s": sum(trained) / max(1e-9, sum(rest)) if trained else float("nan"),
            "end_to_end_s": sum(steps), "peak_rss_mib": peak_rss_mib(), "train_peak_rss_mib": SAMPLER.peak}


def run_alignlab(args) -> dict:
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import alignlab.train as train_module
    from alignlab.cli import CONF_DIR
    from alignlab.data.online import OnlinePairsDataModule

    gen_times, gen_tokens, train_tokens, ends = [], [], [], []
    original_make_pairs, original_generate = OnlinePairsDataModule.make_pairs, OnlinePairsDataModule._generate

    def timed_generate(self, model, prompts, seed=None):  # sampling alone, as TRL's _generate is timed
        SAMPLER.active = True
        start = time.perf_counter()
        samples = original_generate(self, model, prompts, seed)
        gen_times.append(time.perf_counter() - start)
        gen_tokens.append(sum(len(s.token_ids) for s in samples))
        return samples

    def counted_make_pairs(self, module, batch):
        pairs = original_make_pairs(self, module, batch)
        train_tokens.append(pairs.num_tokens if len(pairs) else 0)
        return pairs

    OnlinePairsDataModule._generate, OnlinePairsDataModule.make_pairs = timed_generate, counted_make_pairs

    class StepEnds(pl.Callback):
        def on_train_start(self, trainer, module):
            ends.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            ends.append(time.perf_counter())

    n = args.steps * args.batch_size
    model = "model=tiny" if args.model == "tiny" else "model=smollm2"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", [model, "objective=oaif", "judge=rule", f"data.prompts.max_train={n}",
                                "data.prompts.val_fraction=0", f"data.batch_size={args.batch_size}",
                                f"data.sampling.max_new_tokens={args.max_new_tokens}", "data.sampling.temperature=0.9",
                                "data.unfinished=keep", "data.drop_ties=false", f"trainer.max_steps={args.steps}",
                                "+trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
                                "+trainer.enable_checkpointing=false", "validate_before_training=false",
                                "save_policy=false", "optimizer.lr=5e-6", "scheduler=constant",
                                "trainer.gradient_clip_val=null"])
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="bench-oaif-")
        cfg.callbacks = {"checkpoint": None}
        cfg.logger = {}
    original_build = train_module.build_trainer

    def build_trainer(cfg, output_dir):
        trainer = original_build(cfg, output_dir)
        trainer.callbacks.append(StepEnds())
        return trainer

    train_module.build_trainer = build_trainer
    train_module.run_train(cfg)
    return summarize(ends, gen_times, gen_tokens, train_tokens)


def run_trl(args) -> dict:
    import copy

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from alignlab.judges.rule import RuleJudge
    from alignlab.models import load_pretrained, tiny_random

    loaded = tiny_random(SMOLLM2) if args.model == "tiny" else load_pretrained(SMOLLM2)
    rows = load_rows(args.steps * args.batch_size)
    answers = {r["prompt"]: {"answer": r["answer"]} for r in rows}
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])
    judge = RuleJudge("helpful")

    def rule_reward(prompts, completions, **kwargs):
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            question = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            out.append(judge.score(question, text, answers.get(question, {})))
        return out

    gen_times, gen_tokens, train_tokens, ends = [], [], [], []

    class StepEnds(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kw):
            ends.append(time.perf_counter())

        def on_step_end(self, targs, state, control, **kw):
            ends.append(time.perf_counter())

    config = OnlineDPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-oaif-"), report_to="none", use_cpu=True,
                             per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                             learning_rate=5e-6, lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1,
                             save_strategy="no", max_new_tokens=args.max_new_tokens, temperature=0.9, beta=[0.1])
    trainer = OnlineDPOTrainer(model=loaded.model, ref_model=copy.deepcopy(loaded.model).eval(),
                               reward_funcs=rule_reward, args=config, train_dataset=dataset,
                               processing_class=loaded.tokenizer, callbacks=[StepEnds()])
    original = trainer._generate

    def timed_generate(model, prompts, images=None):
        SAMPLER.active = True
        start = time.perf_counter()
        out = original(model, prompts, images)
        gen_times.append(time.perf_counter() - start)
        gen_tokens.append(int(out[3].sum()))
        train_tokens.append(int(out[1].sum() + out[3].sum()))  # every prompt+completion is trained on
        return out

    trainer._generate = timed_generate
    trainer.train()
    return summarize(ends, gen_times, gen_tokens, train_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--which", default="alignlab,trl")
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = {"alignlab": run_alignlab, "trl": run_trl}[args.child](args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    results = run_children(__file__, args.which.split(","),
                           ["--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                            "--max-new-tokens", str(args.max_new_tokens)])

    print(f"\nOne online DPO step, {args.model}, {args.batch_size} prompts x 2 samples, {args.max_new_tokens} new "
          f"tokens, {args.steps} steps (medians over steps 2..N)")
    header = (f"{'configuration':28s} {'s/step':>7s} {'gen s':>6s} {'gen tok/s':>9s} {'train tok/s':>11s} "
              f"{'train peak MiB':>14s}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{CONFIGS[name]:28s} {r['median_step_s']:7.2f} {r['median_generation_s']:6.2f} "
              f"{r['generated_tokens_per_s']:9.1f} {r['train_tokens_per_s']:11.1f} {r['train_peak_rss_mib']:14.0f}")
    if len(results) == 2:
        ours, trl = results["alignlab"], results["trl"]
        print(f"alignlab vs TRL: end to end {trl['end_to_end_s'] / ours['end_to_end_s']:.2f}x, generation tok/s "
              f"{ours['generated_tokens_per_s'] / trl['generated_tokens_per_s']:.2f}x, training tok/s "
              f"{ours['train_tokens_per_s'] / trl['train_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
