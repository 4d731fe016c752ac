"""Same model, same data: alignlab's token ids, log-probs and losses equal TRL's DPOTrainer at step 0."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from alignlab.data.collate import PreferenceCollator
from alignlab.data.pairs import PairTokenizer, parse_row
from alignlab.losses import PreferenceLoss
from alignlab.module import PreferenceModule

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


def trl_eval(policy, reference, tokenizer, rows, tmp_path_factory, loss_type="sigmoid", beta=0.1, **extra):
    conversational = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                       "chosen": [{"role": "assistant", "content": r["chosen"]}],
                       "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    dataset = datasets.Dataset.from_list(conversational)
    args = trl.DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), report_to="none", use_cpu=True,
                         per_device_eval_batch_size=len(rows), max_length=None, beta=beta, loss_type=[loss_type],
                         **extra)
    trainer = trl.DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                             train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer)
    return trainer, trainer.evaluate()


def ours(policy, reference, tokenizer, rows, loss):
    pair_tokenizer = PairTokenizer(tokenizer, chat_template=True)
    pairs = [pair_tokenizer(parse_row(r), i, f"row {i}") for i, r in enumerate(rows)]
    batch = PreferenceCollator(tokenizer.pad_token_id)(pairs)
    module = PreferenceModule(copy.deepcopy(policy), loss, optimizer=torch.optim.AdamW, reference=reference)
    with torch.no_grad():
        _, metrics = module.preference_step(batch)
    return pairs, {k: float(v) for k, v in metrics.items()}


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
    for key in ("logps/chosen", "logps/rejected"):
        assert mine[key] == pytest.approx(theirs[f"eval_{key}"], rel=1e-4), key
    # TRL's fused LM head rounds differently: with policy == reference it reports margins of ~3e-4, not 0.
    for key in ("loss", "rewards/margins", "rewards/chosen"):
        assert mine[key] == pytest.approx(theirs[f"eval_{key}"], rel=2e-3, abs=1e-3), key
    assert mine["rewards/accuracies"] == pytest.approx(theirs["eval_rewards/accuracies"])


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
    # Policy = reference, so the exact loss is log 2. TRL's two forward passes of identical weights (policy and
    # reference, through its fused LM head) disagree slightly on SmolLM2: it reports 0.6912 here, not 0.6931.
    assert mine["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert theirs["eval_loss"] == pytest.approx(math.log(2), abs=5e-3)
