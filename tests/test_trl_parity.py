"""Same model, same data: alignlab's token ids, log-probs and losses equal TRL's DPOTrainer, before and after an
update.

TRL runs in fp32 without gradient checkpointing, as alignlab does: TRL 1.16's ``DPOConfig`` defaults to
``bf16=True`` and ``gradient_checkpointing=True``; under bf16 autocast its policy and reference passes of the same
weights no longer agree, so policy = reference stops giving log 2. In fp32 the two frameworks agree to float
rounding, and the tolerances below are tight.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from alignlab.data.collate import PreferenceCollator
from alignlab.data.pairs import PairTokenizer, parse_row
from alignlab.losses import PreferenceLoss
from alignlab.module import PreferenceModule
from alignlab.reference import Reference

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

# alignlab loss name and hyper-parameters -> TRL's loss_type and the DPOConfig fields it reads.
CASES = [
    ("sigmoid", {}, "sigmoid", {}),
    ("ipo", {"average_logps": True}, "ipo", {}),  # TRL averages log-probs per token for IPO
    ("hinge", {}, "hinge", {}),
    ("robust", {"label_smoothing": 0.1}, "robust", {"label_smoothing": 0.1}),
    ("exo_pair", {"label_smoothing": 0.01}, "exo_pair", {"label_smoothing": 0.01}),
    ("nca_pair", {}, "nca_pair", {}),
    ("bco_pair", {}, "bco_pair", {}),
    ("sppo_hard", {}, "sppo_hard", {}),
    ("apo_zero", {}, "apo_zero", {}),
    ("apo_down", {}, "apo_down", {}),
]


@pytest.fixture(scope="module")
def setup_models(tiny):
    reference = copy.deepcopy(tiny.model).eval()
    policy = copy.deepcopy(tiny.model)
    with torch.no_grad():  # a policy that differs from the reference, so the losses are not all log 2
        gen = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return policy, reference, tiny.tokenizer


@pytest.fixture(scope="module")
def rows(bundled_rows):
    return bundled_rows[:8]


def conversational(rows):
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def trl_trainer(policy, reference, tokenizer, examples, tmp_path_factory, loss_type="sigmoid", beta=0.1, **extra):
    """TRL's DPOTrainer in fp32 without gradient checkpointing, training and evaluating on ``examples``."""
    dataset = datasets.Dataset.from_list(examples)
    args = trl.DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), report_to="none", use_cpu=True,
                         bf16=False, gradient_checkpointing=False, per_device_eval_batch_size=len(examples),
                         max_length=None, beta=beta, loss_type=[loss_type], **extra)
    trainer = trl.DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                             train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer)
    assert trainer.accelerator.mixed_precision == "no"  # no autocast: the comparison is fp32 against fp32
    return trainer


def trl_eval(policy, reference, tokenizer, rows, tmp_path_factory, loss_type="sigmoid", beta=0.1, **extra):
    trainer = trl_trainer(policy, reference, tokenizer, conversational(rows), tmp_path_factory, loss_type, beta,
                          **extra)
    return trainer, trainer.evaluate()


def our_module(policy, reference, loss, lr=1e-3):
    optimizer = functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.0, fused=True)
    return PreferenceModule(copy.deepcopy(policy), loss, optimizer=optimizer, reference=Reference(model=reference))


def our_batch(tokenizer, rows, chat_template=True):
    pair_tokenizer = PairTokenizer(tokenizer, chat_template=chat_template)
    pairs = [pair_tokenizer(parse_row(r), i, f"row {i}") for i, r in enumerate(rows)]
    return pairs, PreferenceCollator(tokenizer.pad_token_id)(pairs)


def evaluated(module, batch) -> dict[str, float]:
    with torch.no_grad():
        _, metrics = module.preference_step(batch)
    return {k: float(v) for k, v in metrics.items()}


def ours(policy, reference, tokenizer, rows, loss):
    pairs, batch = our_batch(tokenizer, rows)
    return pairs, evaluated(our_module(policy, reference, loss), batch)


def test_token_ids_match_trl(setup_models, rows, tmp_path_factory):
    policy, reference, tokenizer = setup_models
    trainer, _ = trl_eval(policy, reference, tokenizer, rows, tmp_path_factory)
    pairs, _ = ours(policy, reference, tokenizer, rows, PreferenceLoss("sigmoid", 0.1))
    for pair, theirs in zip(pairs, trainer.eval_dataset, strict=True):
        assert pair.prompt_ids == theirs["prompt_ids"]
        assert pair.chosen_ids == theirs["chosen_ids"]
        assert pair.rejected_ids == theirs["rejected_ids"]


@pytest.mark.parametrize("name,hparams,loss_type,trl_args", CASES, ids=[c[0] for c in CASES])
def test_logps_and_loss_match_trl(setup_models, rows, tmp_path_factory, name, hparams, loss_type, trl_args):
    policy, reference, tokenizer = setup_models
    _, theirs = trl_eval(policy, reference, tokenizer, rows, tmp_path_factory, loss_type, beta=0.1, **trl_args)
    _, mine = ours(policy, reference, tokenizer, rows, PreferenceLoss(name, 0.1, **hparams))
    # fp32 against fp32, so float rounding alone: each sequence log-prob (a sum of up to ~440 nats here) agrees to
    # an ulp or two (3e-5 at 440); rewards are beta x differences of such sums, so they carry beta x a few ulps.
    for key in ("logps/chosen", "logps/rejected"):
        assert mine[key] == pytest.approx(theirs[f"eval_{key}"], rel=1e-6), key
    for key in ("rewards/margins", "rewards/chosen"):
        assert mine[key] == pytest.approx(theirs[f"eval_{key}"], rel=0, abs=3e-5), key
    assert mine["loss"] == pytest.approx(theirs["eval_loss"], rel=2e-5, abs=2e-5)
    assert mine["rewards/accuracies"] == pytest.approx(theirs["eval_rewards/accuracies"])


def test_policy_equal_to_reference_gives_log_2_in_both(tiny, rows, tmp_path_factory):
    """At step 0 the log-ratios are exactly 0 on both sides: loss log 2, margin 0 (no autocast noise in fp32)."""
    reference = copy.deepcopy(tiny.model).eval()
    _, theirs = trl_eval(tiny.model, reference, tiny.tokenizer, rows, tmp_path_factory)
    _, mine = ours(tiny.model, reference, tiny.tokenizer, rows, PreferenceLoss("sigmoid", 0.1))
    for metrics, prefix in ((theirs, "eval_"), (mine, "")):
        assert metrics[f"{prefix}loss"] == pytest.approx(math.log(2), abs=1e-6), prefix or "alignlab"
        assert metrics[f"{prefix}rewards/margins"] == pytest.approx(0.0, abs=1e-6), prefix or "alignlab"


def test_one_update_matches_trl(tiny, bundled_rows, tmp_path_factory):
    """One AdamW step (lr 1e-3, no clipping, no weight decay) on 16 plain-text pairs in one batch, from the same
    weights: the loss afterwards agrees to float rounding. TRL tokenizes plain-text rows as raw text plus EOS, which
    is alignlab's ``chat_template=False``."""
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in bundled_rows[:16]]
    reference = copy.deepcopy(tiny.model).eval()
    trainer = trl_trainer(tiny.model, reference, tiny.tokenizer, rows, tmp_path_factory,
                          per_device_train_batch_size=len(rows), max_steps=1, learning_rate=1e-3,
                          lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, save_strategy="no")
    trainer.train()
    theirs = trainer.evaluate()

    pairs, batch = our_batch(tiny.tokenizer, rows, chat_template=False)
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert [getattr(p, key) for p in pairs] == list(trainer.eval_dataset[key]), key
    module = our_module(tiny.model, reference, PreferenceLoss("sigmoid", 0.1), lr=1e-3)
    optimizer = module.configure_optimizers()
    loss, _ = module.preference_step(batch)
    loss.backward()
    optimizer.step()
    mine = evaluated(module, batch)

    assert theirs["eval_loss"] < math.log(2) - 0.05  # the update happened and moved the loss
    for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert mine[key] == pytest.approx(theirs[f"eval_{key}"], rel=1e-4), key


def test_smollm2_logps_and_loss_match_trl_at_step_zero(bundled_rows, tmp_path_factory):
    """The claim on the real default model: at step 0 (policy = reference = SmolLM2) the same logps and loss."""
    from alignlab.models import load_pretrained

    from .conftest import SMOLLM2

    loaded = load_pretrained(SMOLLM2)
    reference = copy.deepcopy(loaded.model).eval()
    rows = bundled_rows[8:12]
    _, theirs = trl_eval(loaded.model, reference, loaded.tokenizer, rows, tmp_path_factory)
    _, mine = ours(loaded.model, reference, loaded.tokenizer, rows, PreferenceLoss("sigmoid", 0.1))
    assert mine["logps/chosen"] == pytest.approx(theirs["eval_logps/chosen"], rel=1e-4)
    assert mine["logps/rejected"] == pytest.approx(theirs["eval_logps/rejected"], rel=1e-4)
    # Policy = reference, so the exact loss is log 2 and the margin 0, in both frameworks.
    for metrics, prefix in ((theirs, "eval_"), (mine, "")):
        assert metrics[f"{prefix}loss"] == pytest.approx(math.log(2), abs=1e-6), prefix or "alignlab"
        assert metrics[f"{prefix}rewards/margins"] == pytest.approx(0.0, abs=1e-6), prefix or "alignlab"
