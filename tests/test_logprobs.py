"""Sequence log-probs: every layout equals the plain per-sequence computation from full logits."""

from __future__ import annotations

import pytest
import torch

from alignlab.data.collate import PreferenceCollator, mask_rows, pad_rows
from alignlab.data.pairs import PairTokenizer, parse_row
from alignlab.logprobs import LAYOUTS, next_token_logprobs, pair_logps, response_logps


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


def test_next_token_logprobs_sum_each_group_and_ignore_batching_and_padding():
    """On a random Llama whose outputs depend on the whole prompt (weights of std 0.2, not the tiny model, which
    repeats its last token whatever comes before), a prompt scored beside longer ones, left-padded, gets what it gets
    alone; a group's value is the log of its tokens' summed probabilities."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, initializer_range=0.2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33]]
    groups = [[3], [4, 40], [50, 51, 52]]
    together = next_token_logprobs(model, prompts, pad_id=0, token_groups=groups, batch_size=3)  # [3, 3]
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            alone = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1], dim=-1)
        expected = torch.stack([alone[g].exp().sum().log() for g in groups])
        assert together[i] == pytest.approx(expected, abs=1e-4)
    assert not torch.allclose(together[0], together[1], atol=1e-2)  # prompts differ, so the rows can be told apart
