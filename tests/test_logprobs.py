"""Sequence log-probs: every layout equals the plain per-sequence computation from full logits."""

from __future__ import annotations

import pytest
import torch

from alignlab.data.collate import PreferenceCollator, mask_rows, pad_rows
from alignlab.data.pairs import PairTokenizer, parse_row
from alignlab.logprobs import LAYOUTS, pair_logps, response_logps


def naive_logp(model, prompt, response):
    ids = torch.tensor([prompt + response])
    logps = model(ids).logits.log_softmax(-1)[0]
    return sum(logps[len(prompt) - 1 + j, t].item() for j, t in enumerate(response))


@pytest.fixture(scope="module")
def pairs(tiny, bundled_rows):
    tok = PairTokenizer(tiny.tokenizer)
    # Prompts of different lengths (one with a system prompt) and responses of very different lengths.
    rows = bundled_rows[:5] + [{**bundled_rows[5], "prompt": [{"role": "system", "content": "Be brief."},
                                                              {"role": "user", "content": "Hi?"}],
                                "chosen": [{"role": "assistant", "content": "Hello."}],
                                "rejected": [{"role": "assistant", "content": "Hello there, how are you?"}]}]
    return [tok(parse_row(r), i, "r") for i, r in enumerate(rows)]


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_pair_logps_equal_per_sequence_logps(tiny, pairs, layout):
    batch = PreferenceCollator(tiny.tokenizer.pad_token_id)(pairs)
    out = pair_logps(tiny.model, batch, layout)
    expected_chosen = [naive_logp(tiny.model, p.prompt_ids, p.chosen_ids) for p in pairs]
    expected_rejected = [naive_logp(tiny.model, p.prompt_ids, p.rejected_ids) for p in pairs]
    assert out.chosen.tolist() == pytest.approx(expected_chosen, rel=1e-5)
    assert out.rejected.tolist() == pytest.approx(expected_rejected, rel=1e-5)
    assert out.chosen_tokens.tolist() == [len(p.chosen_ids) for p in pairs]


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_any_number_of_responses_per_prompt(tiny, pairs, layout):
    prompts = [p.prompt_ids for p in pairs[:2]]
    responses = [pairs[0].chosen_ids, pairs[0].rejected_ids, pairs[2].chosen_ids,
                 pairs[1].chosen_ids, pairs[3].rejected_ids, [tiny.tokenizer.eos_token_id]]
    p_width, r_width = max(map(len, prompts)), max(map(len, responses))
    out = response_logps(tiny.model, pad_rows(prompts, p_width, 0, left=True), mask_rows(prompts, p_width, left=True),
                         pad_rows(responses, r_width, 0, left=False), mask_rows(responses, r_width, left=False),
                         layout)
    expected = [naive_logp(tiny.model, prompts[i // 3], r) for i, r in enumerate(responses)]
    assert out.tolist() == pytest.approx(expected, rel=1e-5)


def test_gradients_agree_across_layouts(tiny, pairs):
    batch = PreferenceCollator(tiny.tokenizer.pad_token_id)(pairs[:3])
    grads = {}
    for layout in LAYOUTS:
        tiny.model.zero_grad()
        out = pair_logps(tiny.model, batch, layout)
        (out.chosen - out.rejected).sum().backward()
        grads[layout] = tiny.model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    tiny.model.zero_grad()
    assert torch.allclose(grads["packed"], grads["concatenated"], atol=1e-4)
    assert torch.allclose(grads["shared_prompt"], grads["concatenated"], atol=1e-4)
