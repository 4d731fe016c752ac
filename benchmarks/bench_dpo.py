"""Offline DPO training speed and memory: alignlab vs TRL's DPOTrainer, like with like.

    python benchmarks/bench_dpo.py                        # SmolLM2-135M fp32, batch 4, 12 steps, 2 threads
    python benchmarks/bench_dpo.py --model tiny --steps 3 # a smoke run

Two comparisons, each alignlab against the TRL configuration that does the same work: a live reference model
(alignlab ``precompute_reference=false`` vs TRL with a reference copy) and precomputed reference log-probs (alignlab's
default vs TRL ``precompute_ref_log_probs=True``, given no reference model so it keeps none). Both sides run as
alignlab does: fp32 with no autocast (TRL 1.16 defaults to ``bf16=True``), no activation checkpointing (TRL
defaults to ``gradient_checkpointing=True``), the same attention implementation, torch threads, pairs per step,
length limits, optimizer (fused AdamW, constant learning rate) and no gradient clipping. Each side's settings are
read back from what ran and printed next to each other; a difference is flagged.

Each configuration runs in its own process (so peak resident memory is its own) on the same pairs: the first
``steps * batch_size`` rows of the bundled ``short_facts`` data, rendered with the chat template (TRL gets the
conversational form of the same rows; tests/test_trl_parity.py checks that both tokenize them identically), in the
same batches: TRL gets the rows in alignlab's shuffled order and reads them sequentially. Tokens
are counted the same way for both: prompt+chosen plus prompt+rejected, without padding (alignlab's
``PreferenceBatch.num_tokens``, TRL's logged ``num_tokens``), so both sides' tokens per step must agree.
Throughput is over steps 2..N (the first step pays one-off costs); one-off work, from building the framework's
trainer (model and reference copy already loaded) to the first step (tokenizing, reference precomputation), is
reported on its own. Results also go to a JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import (  # noqa: E402
    SAMPLER,
    SMOLLM2,
    TrainingProbe,
    alignlab_precision,
    batch_order,
    chat_rows,
    compose_alignlab,
    default_out,
    emit,
    header,
    load_rows,
    model_settings,
    optimizer_summary,
    peak_rss_mib,
    print_figures,
    print_settings,
    run_alignlab_train,
    run_children,
    set_threads,
    trl_precision,
    write_results,
)

CONFIGS = {
    "alignlab": "alignlab (precomputed reference, packed pairs)",
    "alignlab_live": "alignlab (live reference, packed pairs)",
    "trl": "TRL DPOTrainer (live reference)",
    "trl_precompute": "TRL DPOTrainer (precompute_ref_log_probs)",
}
# (title, alignlab configuration, TRL configuration): the same work on both sides.
COMPARISONS = [("live reference", "alignlab_live", "trl"), ("precomputed reference", "alignlab", "trl_precompute")]
# Settings that must be equal for the ratios to mean anything; the other rows say how each side was told.
COMPARED = ["parameter dtype", "autocast", "activation checkpointing", "training forward use_cache", "torch threads",
            "attention implementation", "pairs per step", "gradient accumulation", "data loader workers",
            "reference", "optimizer", "gradient clipping", "longest pair (tokens)", "rows truncated", "steps",
            "training tokens (all steps)", "training tokens by step"]
FIGURES = {"tokens_per_s": "training tokens/s", "median_step_s": "s/step (median)",
           "tokens_per_step": "tokens/step", "one_off_s": "one-off s", "train_peak_rss_mib": "peak RSS training MiB",
           "peak_rss_mib": "peak RSS process MiB"}


def summarize(step_times: list[float], step_tokens: list[int], one_off: float) -> dict:
    """Figures over steps 2..N from per-step seconds and training tokens (all steps are kept in the result)."""
    times, tokens = step_times[1:], step_tokens[1:]
    return {"tokens_per_s": sum(tokens) / sum(times), "median_step_s": statistics.median(times),
            "tokens_per_step": statistics.fmean(tokens), "one_off_s": one_off,
            "train_peak_rss_mib": SAMPLER.peak, "peak_rss_mib": peak_rss_mib(),
            "step_s": step_times, "step_tokens": step_tokens}


def longest_pair(prompts: list, chosen: list, rejected: list) -> int:
    """Tokens of the longest prompt + longer answer: the longest sequence either side trains on."""
    return max(len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected, strict=True))


def run_alignlab(args, precompute: bool) -> dict:
    import pytorch_lightning as pl

    probe = TrainingProbe()

    class StepTimer(pl.Callback):
        def __init__(self):
            self.times, self.tokens, self.start, self.first_start = [], [], 0.0, None

        def on_fit_start(self, trainer, module):
            probe.attach(module.policy)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            SAMPLER.active = True
            self.start = time.perf_counter()
            self.first_start = self.first_start or self.start

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter() - self.start)
            self.tokens.append(batch.num_tokens)
            if len(self.times) == args.steps:
                SAMPLER.active = False

    n = args.steps * args.batch_size
    data = Path(tempfile.mkdtemp(prefix="bench-dpo-data-")) / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in load_rows(n)))
    cfg = compose_alignlab([f"model={args.model}", f"data.prompts.path={data}", f"data.prompts.max_train={n}",
                            f"data.batch_size={args.batch_size}", f"data.prompts.max_prompt_length={args.max_prompt_length}",
                            f"data.max_response_length={args.max_response_length}", f"trainer.max_steps={args.steps}",
                            f"objective.module.precompute_reference={precompute}", f"optimizer.lr={args.lr}",
                            "scheduler=constant", "trainer.gradient_clip_val=null"])
    timer = StepTimer()
    objects = run_alignlab_train(cfg, [timer])
    trainer, module, dm = objects["trainer"], objects["module"], objects["datamodule"]
    pairs, limits = dm.train_pairs, dm.pair_tokenizer
    settings = {
        **probe.seen, **model_settings(module.policy),
        "precision setting": alignlab_precision(trainer),
        "checkpointing setting": f"model.gradient_checkpointing={cfg.model.gradient_checkpointing}",
        "pairs per step": dm.batch_size, "gradient accumulation": trainer.accumulate_grad_batches,
        "data loader workers": dm.num_workers,
        "reference": "precomputed" if module.precompute_reference else "live",
        "optimizer": optimizer_summary(trainer.optimizers[0]),
        "gradient clipping": trainer.gradient_clip_val or "off",
        "length limits": f"prompt {limits.max_prompt_length}, answer {limits.max_response_length}",
        "longest pair (tokens)": longest_pair([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs],
                                              [p.rejected_ids for p in pairs]),
        "rows truncated": limits.truncated_prompts + limits.truncated_responses,
        "steps": trainer.global_step, "training tokens (all steps)": sum(timer.tokens),
        "training tokens by step": " ".join(map(str, timer.tokens)),
    }
    one_off = timer.first_start - objects["trainer_built_at"]
    return {"settings": settings, "figures": summarize(timer.times, timer.tokens, one_off)}


def run_trl(args, precompute: bool) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignlab.models import load_pretrained, tiny_random

    loaded = tiny_random(SMOLLM2) if args.model == "tiny" else load_pretrained(SMOLLM2)
    n = args.steps * args.batch_size
    rows = load_rows(n)
    dataset = Dataset.from_list(chat_rows([rows[i] for i in batch_order(n)]))
    probe = TrainingProbe()
    probe.attach(loaded.model)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.tokens, self.start, self.seen, self.first_start = [], [], 0.0, 0, None

        def on_step_begin(self, targs, state, control, **kw):
            SAMPLER.active = True
            self.start = time.perf_counter()
            self.first_start = self.first_start or self.start

        def on_step_end(self, targs, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)
            if len(self.times) == args.steps:
                SAMPLER.active = False

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:  # cumulative training tokens, logged every step
                self.tokens.append(int(logs["num_tokens"]) - self.seen)
                self.seen = int(logs["num_tokens"])

    config = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), report_to="none", use_cpu=True,
                       bf16=False, gradient_checkpointing=False,  # TRL's defaults are True for both
                       per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=args.lr,
                       lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1, save_strategy="no",
                       max_length=args.max_prompt_length + args.max_response_length, beta=0.1,
                       precompute_ref_log_probs=precompute, dataloader_drop_last=False,
                       train_sampling_strategy="sequential")  # the rows are already in alignlab's batch order
    timer = StepTimer()
    construct_start = time.perf_counter()
    # Precomputing, TRL computes the reference log-probs with the initial policy and keeps no reference model.
    reference = None if precompute else copy.deepcopy(loaded.model).eval()
    trainer = DPOTrainer(model=loaded.model, ref_model=reference, args=config, train_dataset=dataset,
                         processing_class=loaded.tokenizer, callbacks=[timer])
    trainer.train()
    targs, rows = trainer.args, trainer.train_dataset
    longest = longest_pair(rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"])
    settings = {
        **probe.seen, **model_settings(trainer.model),
        "precision setting": trl_precision(trainer),
        "checkpointing setting": f"gradient_checkpointing={targs.gradient_checkpointing}",
        "pairs per step": targs.per_device_train_batch_size * targs.world_size,
        "gradient accumulation": targs.gradient_accumulation_steps,
        "data loader workers": targs.dataloader_num_workers,
        "reference": "precomputed" if targs.precompute_ref_log_probs else "live",
        "optimizer": optimizer_summary(trainer.optimizer),
        "gradient clipping": targs.max_grad_norm or "off",
        "length limits": f"prompt + answer {targs.max_length}",
        "longest pair (tokens)": longest,
        "rows truncated": sum(len(p) + max(len(c), len(r)) > (targs.max_length or longest)
                              for p, c, r in zip(rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"],
                                                 strict=True)),
        "steps": trainer.state.global_step, "training tokens (all steps)": sum(timer.tokens),
        "training tokens by step": " ".join(map(str, timer.tokens)),
    }
    return {"settings": settings, "figures": summarize(timer.times, timer.tokens, timer.first_start - construct_start)}


def child(args) -> None:
    set_threads(args.threads)
    runners = {"alignlab": lambda: run_alignlab(args, True), "alignlab_live": lambda: run_alignlab(args, False),
               "trl": lambda: run_trl(args, False), "trl_precompute": lambda: run_trl(args, True)}
    emit(runners[args.child]())


def report(args, results: dict[str, dict]) -> list[dict]:
    """The settings and figures tables of each comparison whose two sides both ran."""
    print(f"\nOffline DPO, {args.model}, batch {args.batch_size} pairs, {args.steps} steps, {args.threads} threads "
          "(throughput over steps 2..N)")
    comparisons = []
    for title, ours, theirs in COMPARISONS:
        if ours not in results or theirs not in results:
            continue
        a, b = results[ours], results[theirs]
        differ = print_settings(f"{title}: {CONFIGS[ours]} vs {CONFIGS[theirs]}", a["settings"], b["settings"],
                                COMPARED)
        ratios = print_figures(a["figures"], b["figures"], FIGURES)
        comparisons.append({"comparison": title, "alignlab": ours, "trl": theirs, "settings_differ": differ,
                            "ratios": ratios})
    return comparisons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides (default 2)")
    parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--max-response-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--which", default="alignlab_live,trl,alignlab,trl_precompute")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default outputs/benchmarks/...)")
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    options = ["--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--max-prompt-length", str(args.max_prompt_length),
               "--max-response-length", str(args.max_response_length), "--lr", str(args.lr)]
    payload = header("bench_dpo", args)
    results = run_children(__file__, args.which.split(","), options, args.threads)
    payload["configurations"] = {name: {"label": CONFIGS[name], **r} for name, r in results.items()}
    payload["comparisons"] = report(args, results)
    write_results(args.out or default_out("bench_dpo"), payload)


if __name__ == "__main__":
    main()
