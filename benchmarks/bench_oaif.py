"""One online DPO step end to end (sample 2 answers per prompt, annotate, update): alignlab vs TRL's
OnlineDPOTrainer, like with like.

    python benchmarks/bench_oaif.py                        # SmolLM2-135M fp32, 4 prompts, 48 new tokens, 6 steps
    python benchmarks/bench_oaif.py --model tiny --steps 3 # a smoke run

Both sides run as alignlab does: fp32 with no autocast (TRL 1.16 defaults to ``bf16=True``), no activation
checkpointing (TRL defaults to ``gradient_checkpointing=True``, and then samples with ``use_cache=False``: its
generation kwargs pass ``use_cache = not gradient_checkpointing``), the KV cache on while sampling, the same
attention implementation, torch threads, prompts per step, sampling settings (temperature 0.9, top-p 1, no top-k),
length limits, optimizer (fused AdamW, constant learning rate), no gradient clipping, and a live reference model
(there are no pairs to precompute for). Each side's settings are read back from what ran (a probe in the policy's
training forward, another in the sampler: transformers' ``generate``, or alignlab's backend, below) and printed next to
each other; a difference is flagged.

alignlab samples with ``--alignlab-backend`` (default ``fused``: alignlab's Llama decode step on oneDNN-packed
weights, see ``alignlab/sampling/fused.py``, what ``experiment=oaif`` and the README's figures use; ``packed`` is the
model's own decode step on the same kernels, for other architectures; the configs' default is ``hf``: pass
``--alignlab-backend hf`` to sample through ``generate`` as TRL does). With another backend than ``hf`` the
sampling rows of the settings table are read from alignlab's ``Sampling`` value (the decode loop has no top-k and
no repetition penalty, and always decodes over its cache: those rows are "same" by construction) and the KV cache
row from the model's forward calls (no forward after the prefill re-reads the prompt; with ``fused`` the decode
steps do not call the model's forward at all, so the row only shows that nothing recomputed the prompt: that they
read the cache is by construction, and tests/test_sampling.py checks their cache writes); its generation seconds are the backend's whole call (padding and weight packing
included), where ``generate``'s are the ``generate`` call.

The annotator is the same programmatic rater for both (:class:`alignlab.judges.rule.RuleJudge`; for TRL it is a
reward function giving each completion that score); every pair is kept (alignlab ``unfinished=keep``,
``drop_ties=false``), as TRL keeps them. Each framework runs in its own process on the first ``steps * batch_size``
prompts of the bundled ``short_facts`` data, in the same batches (TRL gets them in alignlab's shuffled order and
reads them sequentially; the prompt tokens of each step are compared). Reported per step (median of steps 2..N, wall time between step ends):
seconds, generation seconds (the sampler's call alone) and new tokens (up to each answer's EOS) per second of
it, training tokens (prompt + answer of every trained sequence) per second of the rest of the step (annotating
included on both sides), and peak memory. The two sides sample their own answers (each its own random stream), so
their answers would end at different lengths; by default (``--equal-length``) neither may end before
``max_new_tokens`` (``min_new_tokens`` set to it on both sides: alignlab's ``data.sampling.min_new_tokens``, TRL's
``generation_kwargs``), so both generate and train on exactly the same number of tokens. With
``--no-equal-length`` the answers end at their EOS, and each repeat prints both sides' generated and trained tokens
and alignlab's time scaled to TRL's tokens (:func:`equal_work_s`). Results also go to a JSON file
(``--out``); ``--reprint FILE`` prints its tables again.
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
    GenerationProbe,
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

from alignlab.sampling.backends import BACKENDS  # noqa: E402

CONFIGS = {"alignlab": "alignlab objective=oaif", "trl": "TRL OnlineDPOTrainer"}
# Settings that must be equal for the ratios to mean anything; the other rows say how each side was told.
COMPARED = ["parameter dtype", "autocast", "activation checkpointing", "training forward use_cache", "torch threads",
            "attention implementation", "prompts per step", "gradient accumulation", "reference", "optimizer",
            "gradient clipping", "generation use_cache", "KV cache used in decoding", "generation do_sample",
            "generation temperature", "generation top_p", "generation top_k", "generation max_new_tokens",
            "generation min_new_tokens",
            "generation repetition_penalty", "generation sequences per call", "steps", "prompt tokens by step"]
FIGURES = {"median_step_s": "s/step (median)", "median_generation_s": "generation s/step (median)",
           "generated_tokens_per_s": "generated new tokens/s", "train_tokens_per_s": "training tokens/s",
           "end_to_end_s": "steps 2..N, total s", "train_peak_rss_mib": "peak RSS training MiB",
           "peak_rss_mib": "peak RSS process MiB"}


def summarize(step_ends: list[float], generation: GenerationProbe, train_tokens: list[int]) -> dict:
    """Figures over steps 2..N. ``step_ends``: training start then each step's end; one ``generate`` call per
    step; ``train_tokens``: per step."""
    steps = [b - a for a, b in zip(step_ends, step_ends[1:], strict=False)]
    if len(generation.calls) != len(steps):
        raise RuntimeError(f"{len(generation.calls)} generate calls in {len(steps)} steps: expected one per step")
    gen = [c["seconds"] for c in generation.calls][1:]
    new = [c["new_tokens"] for c in generation.calls][1:]
    rest = [s - g for s, g in zip(steps[1:], gen, strict=True)]
    return {"median_step_s": statistics.median(steps[1:]), "median_generation_s": statistics.median(gen),
            "generated_tokens_per_s": sum(new) / sum(gen), "train_tokens_per_s": sum(train_tokens[1:]) / sum(rest),
            "end_to_end_s": sum(steps[1:]), "train_peak_rss_mib": SAMPLER.peak, "peak_rss_mib": peak_rss_mib(),
            "step_s": steps, "generation_s": [c["seconds"] for c in generation.calls],
            "new_tokens": [c["new_tokens"] for c in generation.calls], "train_tokens": train_tokens}


def alignlab_config(model: str, steps: int, batch_size: int, max_new_tokens: int, max_prompt_length: int,
                    backend: str, equal_length: bool, lr: float, extra: tuple[str, ...] = ()):
    """alignlab's side of the benchmark as a train config: ``objective=oaif`` on the first ``steps * batch_size``
    bundled prompts, the rule annotator keeping every pair, a constant learning rate, no clipping; with
    ``equal_length`` every answer exactly ``max_new_tokens`` long. ``benchmarks/profile_online_step.py`` profiles
    the same run."""
    n = steps * batch_size
    data = Path(tempfile.mkdtemp(prefix="bench-oaif-data-")) / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in load_rows(n)))
    return compose_alignlab([f"model={model}", "objective=oaif", "judge=rule", f"data.prompts.path={data}",
                             f"data.prompts.max_train={n}", f"data.batch_size={batch_size}",
                             f"data.prompts.max_prompt_length={max_prompt_length}",
                             f"data.sampling.max_new_tokens={max_new_tokens}", "data.sampling.temperature=0.9",
                             "data.sampling.top_p=1.0", "data.unfinished=keep", "data.drop_ties=false",
                             f"trainer.max_steps={steps}", f"data.sampling.backend={backend}",
                             f"data.sampling.min_new_tokens={max_new_tokens if equal_length else 0}",
                             f"optimizer.lr={lr}", "scheduler=constant", "trainer.gradient_clip_val=null", *extra])


def run_alignlab(args, generation: GenerationProbe) -> dict:
    import pytorch_lightning as pl

    probe = TrainingProbe()
    ends, tokens = [], []

    class StepEnds(pl.Callback):
        def on_fit_start(self, trainer, module):
            probe.attach(module.policy)

        def on_train_start(self, trainer, module):
            ends.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            ends.append(time.perf_counter())
            tokens.append(batch.num_tokens)  # the pairs this step trained on
            if len(tokens) == args.steps:
                SAMPLER.active = False

    cfg = alignlab_config(args.model, args.steps, args.batch_size, args.max_new_tokens, args.max_prompt_length,
                          args.alignlab_backend, args.equal_length, args.lr)
    objects = run_alignlab_train(cfg, [StepEnds()])
    trainer, module, dm = objects["trainer"], objects["module"], objects["datamodule"]
    settings = {
        **probe.seen, **model_settings(module.policy), **generation.settings,
        "sampling backend": f"data.sampling.backend={dm.sampling.backend}",
        "precision setting": alignlab_precision(trainer),
        "checkpointing setting": f"model.gradient_checkpointing={cfg.model.gradient_checkpointing}",
        "prompts per step": dm.batch_size, "gradient accumulation": trainer.accumulate_grad_batches,
        "reference": "precomputed" if module.precompute_reference else "live",
        "optimizer": optimizer_summary(trainer.optimizers[0]),
        "gradient clipping": trainer.gradient_clip_val or "off",
        "length limits": f"prompt {dm.prompt_tokenizer.max_prompt_length}, new tokens {dm.sampling.max_new_tokens}",
        "steps": trainer.global_step,
        "prompt tokens by step": " ".join(str(c["prompt_tokens"]) for c in generation.calls),
    }
    return {"settings": settings, "figures": summarize(ends, generation, tokens)}


def run_trl(args, generation: GenerationProbe) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from alignlab.judges.rule import RuleJudge
    from alignlab.models import load_pretrained, tiny_random

    loaded = tiny_random(SMOLLM2) if args.model == "tiny" else load_pretrained(SMOLLM2)
    n = args.steps * args.batch_size
    first = load_rows(n)
    rows = [first[i] for i in batch_order(n)]
    answers = {r["prompt"]: {"answer": r["answer"]} for r in rows}
    dataset = Dataset.from_list(chat_rows(rows, keys=("prompt",)))
    judge = RuleJudge("helpful")
    probe = TrainingProbe()
    probe.attach(loaded.model)

    def rule_reward(prompts, completions, **kwargs):
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            question = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            out.append(judge.score(question, text, answers.get(question, {})))
        return out

    ends = []

    class StepEnds(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kw):
            ends.append(time.perf_counter())

        def on_step_end(self, targs, state, control, **kw):
            ends.append(time.perf_counter())
            if len(ends) == args.steps + 1:
                SAMPLER.active = False

    config = OnlineDPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-oaif-"), report_to="none", use_cpu=True,
                             bf16=False, gradient_checkpointing=False,  # TRL's defaults are True for both
                             per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                             learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1,
                             save_strategy="no", max_new_tokens=args.max_new_tokens, temperature=0.9, top_p=1.0,
                             max_length=args.max_prompt_length + args.max_new_tokens, beta=[0.1],
                             train_sampling_strategy="sequential",  # the rows are already in alignlab's order
                             generation_kwargs={"min_new_tokens": args.max_new_tokens} if args.equal_length else None)
    trainer = OnlineDPOTrainer(model=loaded.model, ref_model=copy.deepcopy(loaded.model).eval(),
                               reward_funcs=rule_reward, args=config, train_dataset=dataset,
                               processing_class=loaded.tokenizer, callbacks=[StepEnds()])
    trainer.train()
    targs = trainer.args
    settings = {
        **probe.seen, **model_settings(trainer.model), **generation.settings,
        "sampling backend": "transformers generate",
        "precision setting": trl_precision(trainer),
        "checkpointing setting": f"gradient_checkpointing={targs.gradient_checkpointing}",
        "prompts per step": targs.per_device_train_batch_size * targs.world_size,
        "gradient accumulation": targs.gradient_accumulation_steps,
        "reference": "live" if trainer.ref_model is not None else "none",
        "optimizer": optimizer_summary(trainer.optimizer),
        "gradient clipping": targs.max_grad_norm or "off",
        "length limits": f"prompt + answer {targs.max_length}, new tokens {targs.max_new_tokens}",
        "steps": trainer.state.global_step,
        "prompt tokens by step": " ".join(str(c["prompt_tokens"]) for c in generation.calls),
    }
    # OnlineDPOTrainer trains every sampled sequence (prompt + answer to its EOS; left-truncated only beyond
    # max_length, which the prompt limit + max_new_tokens never reach here).
    tokens = [int(c["sequence_tokens"]) for c in generation.calls]
    return {"settings": settings, "figures": summarize(ends, generation, tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per step (2 samples each)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides (default 2)")
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--which", default="alignlab,trl")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run both sides this many times, alternating which goes first")
    parser.add_argument("--alignlab-backend", default="fused", choices=sorted(BACKENDS),
                        help="alignlab's sampling.backend (default fused, as experiment=oaif samples)")
    parser.add_argument("--equal-length", action=argparse.BooleanOptionalAction, default=True,
                        help="every answer exactly max_new_tokens long on both sides (min_new_tokens = max_new_tokens), "
                             "so both do the same work; --no-equal-length lets answers end at their EOS")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default outputs/benchmarks/...)")
    parser.add_argument("--reprint", type=Path, metavar="JSON", help="print a results file's tables again; run nothing")
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reprint:
        report(json.loads(args.reprint.read_text()))
        return
    if args.child:
        set_threads(args.threads)
        generation = GenerationProbe()
        generation.install()
        if args.child == "alignlab" and args.alignlab_backend != "hf":
            generation.install_backend(args.alignlab_backend)
        emit({"alignlab": run_alignlab, "trl": run_trl}[args.child](args, generation))
        return

    options = ["--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--max-new-tokens", str(args.max_new_tokens), "--max-prompt-length", str(args.max_prompt_length),
               "--threads", str(args.threads), "--lr", str(args.lr), "--alignlab-backend", args.alignlab_backend,
               "--equal-length" if args.equal_length else "--no-equal-length"]
    payload = header("bench_oaif", args)
    names = args.which.split(",")
    repeats = []
    for r in range(args.repeats):  # alternate which side runs first, so a drift in the machine falls on both
        results = run_children(__file__, names if r % 2 == 0 else names[::-1], options, args.threads)
        repeats.append({name: {"label": CONFIGS[name], **res} for name, res in results.items()})
    payload["repeats"] = repeats
    payload["comparisons"] = report(payload)
    write_results(args.out or default_out("bench_oaif"), payload)


def equal_work_s(ours: dict, theirs: dict) -> float:
    """alignlab's steps 2..N at TRL's workload: its seconds per generated token times TRL's generated tokens,
    plus its seconds per trained token (the rest of the step) times TRL's trained tokens. The two sides sample
    different answers (their own random streams), so one side's steps can carry fewer tokens; this scales that
    away, approximately (a decode step costs the same whether its rows' answers have ended or not)."""
    gen = sum(ours["generation_s"][1:]) / sum(ours["new_tokens"][1:])
    rest = sum(s - g for s, g in zip(ours["step_s"][1:], ours["generation_s"][1:], strict=True))
    return gen * sum(theirs["new_tokens"][1:]) + rest / sum(ours["train_tokens"][1:]) * sum(theirs["train_tokens"][1:])


def report(payload: dict) -> list[dict]:
    """Print the settings and the figures of every repeat (and the medians over repeats); return the
    comparisons. ``--reprint`` calls it on a results file."""
    options = payload["options"]
    print(f"\nOne online DPO step, {options['model']}, {options['batch_size']} prompts x 2 samples, "
          f"{options['max_new_tokens']} new tokens, {options['steps']} steps, {options['threads']} threads "
          "(medians over steps 2..N)")
    comparisons = []
    complete = [r for r in payload["repeats"] if len(r) == 2]
    for i, results in enumerate(complete):
        ours, theirs = results["alignlab"], results["trl"]
        if i == 0:
            differ = print_settings(f"{CONFIGS['alignlab']} vs {CONFIGS['trl']}", ours["settings"],
                                    theirs["settings"], COMPARED)
        print(f"\nrepeat {i + 1} of {len(complete)}")
        ratios = print_figures(ours["figures"], theirs["figures"], FIGURES)
        tokens = {side: (sum(r["figures"]["new_tokens"][1:]), sum(r["figures"]["train_tokens"][1:]))
                  for side, r in (("alignlab", ours), ("TRL", theirs))}
        scaled = equal_work_s(ours["figures"], theirs["figures"])
        ratios["equal_work_end_to_end_s"] = scaled / theirs["figures"]["end_to_end_s"]
        print("  steps 2..N, generated / trained tokens: " + ", ".join(f"{side} {g} / {t}"
                                                                       for side, (g, t) in tokens.items()))
        print(f"  alignlab's steps 2..N at TRL's tokens (per-token times x TRL's tokens): {scaled:.2f} s vs TRL "
              f"{theirs['figures']['end_to_end_s']:.2f} s, ratio {ratios['equal_work_end_to_end_s']:.2f}")
        comparisons.append({"comparison": "online DPO step", "repeat": i + 1, "settings_differ": differ,
                            "ratios": ratios})
    if len(complete) > 1:
        print("\nalignlab / TRL in each repeat, and the median:")
        labels = {**FIGURES, "equal_work_end_to_end_s": "steps 2..N at TRL's tokens"}
        for key, label in labels.items():
            each = [c["ratios"][key] for c in comparisons]
            print(f"  {label:30s} {' '.join(f'{x:.2f}' for x in each)}   median {statistics.median(each):.2f}")
    return comparisons


if __name__ == "__main__":
    main()
