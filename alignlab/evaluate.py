"""``run_evaluate(cfg) -> (metrics, objects)``: the plain function behind ``alignlab-eval``.

Two measurements of a saved policy against its reference, on held-out data:

* **pairs**: the DPO metrics (``rewards/accuracies``, ``rewards/margins``, ``logps/*``) on the held-out pairs,
  and each pair's margin as a row of ``records/pairs.jsonl`` (an interval over pairs, a pairing across runs);
* **samples** (``generate.enabled``): ``generate.n_samples`` answers per held-out prompt from the policy and from
  the reference, same seed and ``sampling``, scored by ``reward`` (for the bundled data, :class:`AnswerRater`):
  mean reward, its parts, mean length in tokens, the share that ended with EOS, and the policy's win rate over the
  reference (ties count half); every answer is a row of ``records/eval.jsonl``;
* whatever the data's pair source evaluates of its own (counterfactual: behaviour rates and capability, also
  ``generate.n_samples`` answers per prompt).

``generate.prompts`` (a :class:`PromptSet`) samples its validation prompts instead of the run's own held-out
ones, by their stable ids: runs trained on different data are then scored on the same prompts. Records carry
the evaluated run's final step and seed (``sampling_seed``: the eval's own), and with ``logger=wandb`` every
records file is also a W&B Table (``records/<evaluation>``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from alignlab.errors import ConfigError
from alignlab.loggers import evaluation_loggers, log_recorder_tables
from alignlab.module import PreferenceModule
from alignlab.policy_vs_reference import held_out_prompts, reference_answer_cache, sample_and_rate
from alignlab.records import Recorder
from alignlab.reference import Reference
from alignlab.train import prepare_output_dir

log = logging.getLogger(__name__)


def resolve_policy_dir(policy_path: str) -> tuple[Path, Path | None]:
    """``(policy weights folder, run config or None)`` for a run folder or a ``save_pretrained`` folder."""
    path = Path(policy_path).expanduser()
    if (path / "policy").is_dir():
        config = path / "config.yaml"
        return path / "policy", config if config.is_file() else None
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path, None
    raise ConfigError(f"policy_path={policy_path!r}: neither a run folder with policy/ nor a save_pretrained folder")


def load_policy(policy_dir: Path, reference_model: torch.nn.Module) -> torch.nn.Module:
    """Full weights load as they are; a LoRA adapter is attached to a copy of the reference (its base)."""
    if (policy_dir / "adapter_config.json").is_file():
        import copy

        from peft import PeftModel

        return PeftModel.from_pretrained(copy.deepcopy(reference_model), policy_dir).eval()
    from transformers import AutoModelForCausalLM

    dtype = next(reference_model.parameters()).dtype
    return AutoModelForCausalLM.from_pretrained(policy_dir, dtype=dtype).eval()


def trained_step_and_seed(run_config: Path | None) -> tuple[int | None, int | None]:
    """``(final global step, seed)`` of the training run whose ``config.yaml`` is ``run_config``: what its
    policy's records are stamped with, so that they line up with the run's own (monitor) records and pair with
    other seeds of the same arm. The step comes from the run's ``summary.json``, else its last checkpoint;
    ``(None, None)`` for a bare ``save_pretrained`` folder, whose training is unknown."""
    if run_config is None:
        return None, None
    seed = OmegaConf.load(run_config).get("seed")
    summary, checkpoint = run_config.parent / "summary.json", run_config.parent / "checkpoints" / "last.ckpt"
    step = None
    if summary.is_file():
        step = json.loads(summary.read_text()).get("global_step")
    elif checkpoint.is_file():  # the run's own file, written by Lightning (not only tensors)
        step = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get("global_step")
    return step, seed


def _merge_run_config(cfg: DictConfig, run_config: Path) -> DictConfig:
    run = OmegaConf.load(run_config)
    with open_dict(cfg):
        for key in ("model", "data", "loss"):
            if key in run:
                cfg[key] = run[key]
        if "lora" in cfg.model:
            cfg.model.lora = None  # the reference is the base model; the adapter is loaded from the run
    return cfg


def run_evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate a saved policy against its reference on a split of its data (see the module docstring)."""
    policy_dir, run_config = resolve_policy_dir(cfg.policy_path)
    if run_config is not None and cfg.get("use_run_config", True):
        cfg = _merge_run_config(cfg, run_config)
    output_dir = prepare_output_dir(cfg)
    pl.seed_everything(cfg.seed)
    step, seed = trained_step_and_seed(run_config)

    loaded = instantiate(cfg.model)
    reference = Reference.frozen_copy_of(loaded.model)
    with reference.as_model() as base:
        policy = load_policy(policy_dir, base)
    loss = instantiate(cfg.loss)
    data_cfg = cfg.data
    if "judge" in data_cfg:  # the training annotator (maybe a model, maybe an endpoint) is never asked here
        data_cfg = OmegaConf.merge(data_cfg, {"judge": None})
    datamodule = instantiate(data_cfg, _partial_=True)(tokenizer=loaded.tokenizer)
    with reference.as_model() as base:
        datamodule.prepare(base)  # counterfactual pairs come from the reference (usually cached)
    prompt_set = instantiate(cfg.generate.prompts) if cfg.generate.get("prompts") else None
    examples = held_out_prompts(datamodule, prompt_set, cfg.split)
    if not examples:
        raise ConfigError("generate.prompts has no validation prompts" if prompt_set is not None else
                          f"split={cfg.split!r} has no examples (was the run trained with data.prompts."
                          "val_fraction=0?)")
    # Unseeded sampling draws from the generator seeded with cfg.seed above.
    sampling_seed = cfg.sampling.seed if cfg.sampling.seed is not None else cfg.seed
    recorder = Recorder(output_dir, seed, step=step, sampling_seed=sampling_seed)

    loader = datamodule.pair_loader(cfg.split)  # fixed pairs (offline, counterfactual); online has prompts only
    metrics: dict[str, Any] = {"policy": str(policy_dir), "split": cfg.split,
                               "num_pairs": len(loader.dataset) if loader is not None else 0}
    if loader is not None:
        module = PreferenceModule(policy, loss, optimizer=torch.optim.AdamW, reference=reference)
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False,
                              default_root_dir=str(output_dir))
        pair_metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
        metrics.update({k.removeprefix("val/"): float(v) for k, v in pair_metrics.items()})
        # Validation's teardown leaves the policy on the CPU and the reference where it ran: sample on one device.
        device = trainer.strategy.root_device
        policy.to(device)
        reference.to(device)
        recorder.write("pairs", pair_rows(module, loader, device))

    if cfg.generate.enabled:
        sampling = instantiate(cfg.sampling)
        reward = instantiate(cfg.reward) if cfg.get("reward") else None
        evaluator = instantiate(cfg.evaluator) if cfg.get("evaluator") else None
        n_samples = cfg.generate.get("n_samples", 1)
        cache = reference_answer_cache(cfg.generate.get("reference_cache"))
        metrics["samples"] = sample_and_rate(policy, reference, loaded.tokenizer,
                                             examples[: cfg.generate.num_prompts], sampling, reward, evaluator,
                                             n_samples, recorder, "eval", cache=cache)
        metrics.update(datamodule.evaluate(policy, reference, sampling, recorder, cfg.generate.num_prompts,
                                           n_samples, cache))

    (output_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
    with evaluation_loggers(cfg) as loggers:
        log_recorder_tables(loggers, recorder)
    _print_summary(metrics)
    print(f"results: {output_dir / 'eval.json'}; per-prompt records: {output_dir / 'records'}")
    return metrics, {"datamodule": datamodule, "output_dir": output_dir, "recorder": recorder}


@torch.no_grad()
def pair_rows(module: PreferenceModule, loader, device) -> list[dict[str, Any]]:
    """One record per pair of ``loader``: ``margin``, the implicit reward margin ``beta * h`` on summed log-probs,
    where ``h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))`` (the quantity IPO drives to
    1/(2 beta) and DPO keeps pushing up; for a reference-free loss, the policy's own log-prob margin), ``h``, and
    ``ranked`` (margin > 0: the policy ranks the chosen answer first), keyed by the pair's prompt id so that runs
    can be paired on the same pairs."""
    owners = {pair.example_id: pair for pair in loader.dataset}
    rows = []
    with module.evaluating():
        for batch in loader:
            batch = batch.to(device)
            policy, reference = module.policy_logps(batch), module.reference_pair_logps(batch)
            chosen, rejected = module.loss.rewards(policy.chosen, policy.rejected,
                                                   *((reference.chosen, reference.rejected) if reference else (None, None)))
            for example_id, c, r in zip(batch.example_id.tolist(), chosen.tolist(), rejected.tolist(), strict=True):
                pair = owners[example_id]
                rows.append({"prompt_id": pair.prompt_id, "arm": "policy",
                             "margin": c - r, "h": (c - r) / module.loss.beta, "ranked": c > r})
    return rows


def _print_summary(metrics: dict[str, Any]) -> None:
    if metrics["num_pairs"]:
        print(f"pairs ({metrics['split']}, {metrics['num_pairs']}): accuracy {metrics['rewards/accuracies']:.3f}, "
              f"margin {metrics['rewards/margins']:.3f}, loss {metrics['loss']:.4f}")
    samples = metrics.get("samples")
    if not samples:
        return
    for who in ("policy", "reference"):
        parts = [f"length {samples[f'{who}/mean_length']:.1f}"]
        if f"{who}/reward" in samples:
            parts.insert(0, f"reward {samples[f'{who}/reward']:.3f}")
        print(f"  {who:9s}: " + ", ".join(parts))
    print(f"  KL(policy || reference) per answer: {samples['policy/kl_to_reference']:.3f} nats")
    for key in ("behavior", "capability"):
        if key in metrics:
            print(f"  {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[key].items()
                                          if isinstance(v, float)))
    if "win_rate_vs_reference" in samples:
        print(f"  win rate vs reference (reward): {samples['win_rate_vs_reference']:.3f}")
    if "judge/win_rate" in samples:
        print(f"  win rate vs reference (evaluator): {samples['judge/win_rate']:.3f} "
              f"(wins {samples['judge/wins']:g}, ties {samples['judge/ties']:g}, losses {samples['judge/losses']:g}, "
              f"failures {samples['judge/failures']:g})")
