"""Sampling backends: every backend samples what Hugging Face ``generate`` samples.

Greedy decoding must give the same tokens and ``finished`` flags; sampling the same distribution: first tokens
against the tempered, nucleus-filtered softmax (a chi-square test that rejects a temperature or top-p slightly
off), and second tokens (through the KV cache) against ``generate``'s (a two-sample test). Seeded calls repeat and
leave the caller's random state alone.

The shared ``tiny`` model repeats its prompt's last token forever (tied embeddings, small weights), which would
make comparisons pass trivially; most tests use ``lively``: a random Llama with a 512-token vocabulary whose greedy
answers differ by prompt and end at different steps, or not at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.errors import ConfigError
from alignlab.models import tiny_random
from alignlab.sampling import BACKENDS, Sampling, generate
from tests.conftest import SMOLLM2

EOS = 2
VOCAB = 512
FAST = sorted(set(BACKENDS) - {"hf"})


@pytest.fixture(scope="module")
def lively(tiny):
    """(model, tokenizer): weights large enough (std 0.2) for peaked, prompt-dependent next-token distributions,
    and an EOS row made twice as long so that some greedy answers end early."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=False,
                         initializer_range=0.2, bos_token_id=1, eos_token_id=EOS, pad_token_id=EOS)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 2
    return model, tiny.tokenizer


def random_prompts(lengths, seed=0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]


# Different lengths (so batches are left-padded) and repeated prompts (online pairs: each prompt twice).
PROMPTS = random_prompts((3, 9, 5, 14, 1, 7, 11, 4))
PROMPTS = PROMPTS + [PROMPTS[1], PROMPTS[1], PROMPTS[6]]


def answers(gens):
    return [(g.token_ids, g.finished, g.text) for g in gens]


def test_an_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="sampling.backend"):
        Sampling(backend="nope")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_greedy_tokens_and_finished_flags_match_generate(lively, backend, batch_size):
    model, tok = lively
    sampling = Sampling(max_new_tokens=16, temperature=0.0, batch_size=batch_size, backend="hf")
    reference = generate(model, tok, PROMPTS, sampling)
    assert answers(generate(model, tok, PROMPTS, sampling.replace(backend=backend))) == answers(reference)
    flags = {g.finished for g in reference}
    assert flags == {True, False}  # some answers end with EOS, others run to the cap
    assert len({tuple(g.token_ids) for g in reference}) >= 6


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_min_new_tokens_holds_eos_back_as_generate_does(lively, backend):
    """With ``min_new_tokens`` no answer ends before it (greedy answers that ended at steps 1-3 run on; one ends
    right at the minimum), every backend gives ``generate``'s greedy tokens, a minimum equal to the cap gives
    answers of exactly that length, and a minimum above the cap is a config error."""
    model, tok = lively
    free = generate(model, tok, PROMPTS, Sampling(max_new_tokens=16, temperature=0.0))
    assert any(g.finished and len(g.token_ids) < 4 for g in free)  # so the minimum changes something
    held = Sampling(max_new_tokens=16, min_new_tokens=4, temperature=0.0, backend="hf")
    reference = generate(model, tok, PROMPTS, held)
    assert all(len(g.token_ids) >= 4 for g in reference)
    assert any(g.finished and len(g.token_ids) == 4 for g in reference)  # EOS at the first step it is allowed
    assert answers(generate(model, tok, PROMPTS, held.replace(backend=backend))) == answers(reference)
    sampled = generate(model, tok, PROMPTS * 3, held.replace(backend=backend, temperature=1.0, seed=0))
    assert all(len(g.token_ids) >= 4 for g in sampled)
    exact = generate(model, tok, PROMPTS, held.replace(backend=backend, max_new_tokens=4))  # the benchmarks' case
    assert all(len(g.token_ids) == 4 and not g.finished for g in exact)
    with pytest.raises(ConfigError, match="min_new_tokens"):
        Sampling(max_new_tokens=3, min_new_tokens=4)


def expected_first_tokens(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """Next-token probabilities ``[V]`` after temperature and nucleus filtering, computed independently of the
    backends (float64, descending order): the smallest set of most likely tokens holding ``top_p``."""
    z = logits / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
    kept = np.zeros_like(probs)
    kept[keep] = probs[keep]
    return kept / kept.sum()


def goodness_of_fit(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square p-value of observed token ``counts`` against ``probs`` (tokens expected fewer than 5 times are
    pooled); 0 when a token of probability 0 was drawn."""
    if counts[probs == 0].sum() > 0:
        return 0.0
    n = counts.sum()
    big = probs * n >= 5
    observed, expected = counts[big], probs[big] * n
    if probs[~big].sum() > 0:
        observed, expected = np.append(observed, counts[~big].sum()), np.append(expected, probs[~big].sum() * n)
    return float(stats.chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.8)])
def test_first_tokens_follow_the_tempered_nucleus_distribution(lively, backend, temperature, top_p):
    model, tok = lively
    prompt, n = PROMPTS[1], 20_000
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].double().numpy()
    sampling = Sampling(max_new_tokens=1, temperature=temperature, top_p=top_p, batch_size=2_000, seed=5,
                        backend=backend)
    gens = generate(model, tok, [prompt] * n, sampling)
    first = [g.token_ids[0] if g.token_ids else EOS for g in gens]
    counts = np.bincount(first, minlength=VOCAB).astype(float)
    assert goodness_of_fit(counts, expected_first_tokens(logits, temperature, top_p)) > 1e-3
    # The test has the power to see a setting slightly off: these are rejected.
    assert goodness_of_fit(counts, expected_first_tokens(logits, temperature * 1.1, top_p)) < 1e-6
    assert goodness_of_fit(counts, expected_first_tokens(logits, temperature, top_p - 0.05)) < 1e-6
    if top_p < 1:
        assert goodness_of_fit(counts, expected_first_tokens(logits, temperature, top_p + 0.05)) < 1e-6


def second_tokens(model, tok, prompts, sampling) -> np.ndarray:
    """Counts ``[V + 1]`` of each answer's second token (the last bin: the answer ended before it)."""
    gens = generate(model, tok, prompts, sampling)
    second = [g.token_ids[1] if len(g.token_ids) > 1 else VOCAB for g in gens]
    return np.bincount(second, minlength=VOCAB + 1)


def same_distribution(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample chi-square p-value for two count vectors (categories seen fewer than 10 times in all pooled)."""
    big = a + b >= 10
    table = np.stack([np.append(a[big], a[~big].sum()), np.append(b[big], b[~big].sum())])
    return float(stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue)


@pytest.mark.parametrize("backend", FAST)
def test_second_tokens_follow_generates_distribution(lively, backend):
    """The second token is sampled through the KV cache the first one left: its distribution, over 20,000 answers
    to one prompt, must match ``generate``'s (different seeds), and differ from ``generate``'s at another
    temperature (the test's power)."""
    model, tok = lively
    prompts = [PROMPTS[3]] * 20_000
    sampling = Sampling(max_new_tokens=2, temperature=0.8, top_p=0.9, batch_size=2_000, seed=1, backend="hf")
    reference = second_tokens(model, tok, prompts, sampling)
    ours = second_tokens(model, tok, prompts, sampling.replace(backend=backend, seed=2))
    assert same_distribution(reference, ours) > 1e-3
    hotter = second_tokens(model, tok, prompts, sampling.replace(temperature=0.88, seed=3))
    assert same_distribution(reference, hotter) < 1e-6


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_seeded_calls_repeat_and_leave_the_global_rng_alone(lively, backend):
    model, tok = lively
    model.train()
    sampling = Sampling(max_new_tokens=8, temperature=1.0, batch_size=4, seed=3, backend=backend)
    state = torch.random.get_rng_state()
    first, again = generate(model, tok, PROMPTS, sampling), generate(model, tok, PROMPTS, sampling)
    assert answers(first) == answers(again)
    assert torch.equal(state, torch.random.get_rng_state())
    assert model.training  # the caller's mode is restored
    model.eval()
    unseeded = [generate(model, tok, PROMPTS[:1], sampling.replace(seed=None))[0].token_ids for _ in range(3)]
    assert len({tuple(u) for u in unseeded}) > 1


@pytest.mark.parametrize("backend", FAST)
def test_chat_prompts_through_a_lora_adapter_and_without_it(tiny, backend):
    """The real tokenizer's chat template, a PEFT model (online training with LoRA samples through it) and the
    same model with its adapter disabled (the reference)."""
    loaded = tiny_random(SMOLLM2, lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    model, tok = loaded.model, loaded.tokenizer
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # a trained adapter: B starts at zero, which would make it a no-op
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"])
               for q in ("Hi?", "What is the capital of France? Answer briefly.", "Tell me a story.")]
    sampling = Sampling(max_new_tokens=6, temperature=0.0, backend="hf")
    adapted = generate(model, tok, prompts, sampling)
    assert answers(generate(model, tok, prompts, sampling.replace(backend=backend))) == answers(adapted)
    with model.disable_adapter():
        plain = generate(model, tok, prompts, sampling)
        assert answers(generate(model, tok, prompts, sampling.replace(backend=backend))) == answers(plain)
    assert answers(plain) != answers(adapted)


def test_packed_backend_packs_every_linear_and_restores_the_model_even_when_sampling_fails(lively, monkeypatch):
    """While a batch samples, every fp32 ``nn.Linear`` is a ``PackedLinear`` whose decode-sized products equal
    ``F.linear``'s to float precision; afterwards (also after an error) the model holds its own layers again."""
    import alignlab.sampling.packed as packed

    model, tok = lively
    linears = {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    seen = {}

    def failing(model, *args):
        seen.update({n: m for n, m in model.named_modules() if isinstance(m, packed.PackedLinear)})
        raise RuntimeError("sampler failed")

    monkeypatch.setattr(packed.decode_loop, "sample_batch", failing)
    with pytest.raises(RuntimeError, match="sampler failed"):
        generate(model, tok, PROMPTS[:4], Sampling(max_new_tokens=4, backend="packed"))
    assert set(seen) == set(linears)
    assert {n: m for n, m in model.named_modules() if type(m) is torch.nn.Linear} == linears
    layer = seen["lm_head"]
    x = torch.randn(4, layer.in_features)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, linears["lm_head"].weight))
    assert layer.rows == 4


def test_packed_backend_runs_every_decode_product_on_onednn_and_a_single_row_without(lively):
    """Each decode step's products (every linear layer) and the prefill's output head go through oneDNN's packed
    kernel; a batch of one row samples with the plain loop (no packing)."""
    model, tok = lively
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    forwards = []
    hook = model.register_forward_pre_hook(lambda m, a: forwards.append(1))

    def onednn_calls(prompts, batch_size):
        forwards.clear()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            generate(model, tok, prompts, Sampling(max_new_tokens=5, temperature=0.0, batch_size=batch_size,
                                                   backend="packed"))
        return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise"), len(forwards)

    try:
        calls, n_forwards = onednn_calls(PROMPTS[:4], 4)  # distinct prompts: one prefill, then decode steps
        assert n_forwards >= 2 and calls == linears * (n_forwards - 1) + 1
        assert onednn_calls(PROMPTS[:2], 1)[0] == 0
    finally:
        hook.remove()


def one_decode_step(model, decoder, prompts, tokens=(7, 11)):
    """Logits ``[B, V]`` of each of two decode steps after ``prompts`` (left-padded, prefilled by the model),
    stacked ``[2, B, V]``, and the cache slots they wrote, computed by ``decoder``."""
    from transformers import StaticCache

    from alignlab.padding import left_pad
    from alignlab.sampling import decode_loop

    input_ids, attention = left_pad(prompts, EOS)
    width = input_ids.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=width + len(tokens))
    mask = attention.new_ones(len(prompts), width + len(tokens))
    mask[:, :width] = attention
    positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
    with torch.no_grad():
        decode_loop.prefill(model, input_ids, mask, positions, cache)
        step = decoder(model, cache, mask)
        logits = torch.stack([step(torch.full((len(prompts),), token), positions[:, -1:] + 1 + i, width + i)
                              for i, token in enumerate(tokens)])
    return logits, [(layer.keys[:, :, width:].clone(), layer.values[:, :, width:].clone()) for layer in cache.layers]


@pytest.mark.parametrize("biases", [False, True])
def test_fused_step_computes_the_models_decode_step(biases):
    """The fused decode step's logits and cache writes equal the model's own forward to float precision, with
    grouped-query heads, left padding, and (Qwen-style) projection biases; the model's forward is not called."""
    from alignlab.sampling import decode_loop, fused

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, initializer_range=0.2, attention_bias=biases,
                         mlp_bias=biases, rms_norm_eps=1e-5)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = LlamaForCausalLM(config).eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.bias.normal_(0, 0.5)
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.uniform_(0.5, 1.5)
    prompts = random_prompts((3, 9, 5, 14))
    expected, expected_cache = one_decode_step(model, decode_loop.model_step, prompts)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        logits, written = one_decode_step(model, fused.FusedStep, prompts)
    finally:
        hook.remove()
    assert len(calls) == 1  # the prefill
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    for (k, v), (k0, v0) in zip(written, expected_cache, strict=True):
        torch.testing.assert_close(k, k0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v, v0, rtol=1e-4, atol=1e-5)


def test_fused_step_merges_active_lora_adapters_and_skips_disabled_ones(lively):
    """A LoRA policy's decode step with its adapters merged into the weights it packs, and without them while the
    adapter is disabled (the reference), each equal to the PEFT model's own forward."""
    import copy

    from peft import LoraConfig, get_peft_model

    from alignlab.sampling import decode_loop, fused

    model = get_peft_model(copy.deepcopy(lively[0]), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj", "lm_head"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    model.eval()
    prompts = random_prompts((3, 9, 5))
    adapted, _ = one_decode_step(model, fused.FusedStep, prompts)
    torch.testing.assert_close(adapted, one_decode_step(model, decode_loop.model_step, prompts)[0], rtol=1e-4,
                               atol=1e-5)
    with model.disable_adapter():
        plain, _ = one_decode_step(model, fused.FusedStep, prompts)
        torch.testing.assert_close(plain, one_decode_step(model, decode_loop.model_step, prompts)[0], rtol=1e-4,
                                   atol=1e-5)
    assert (adapted - plain).abs().max() > 0.1


def test_fused_backend_refuses_a_model_it_does_not_cover(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()
    with pytest.raises(ConfigError, match="GPT2LMHeadModel.*backend=packed"):
        generate(model, tiny.tokenizer, PROMPTS[:2], Sampling(max_new_tokens=3, backend="fused"))


def test_a_labelled_sampling_logs_a_line_per_batch_off_a_terminal(lively, caplog, monkeypatch):
    """Off a terminal, one line per batch: 4 batches of at most 3 of the 11 prompts. An unlabelled sampling, and a
    sampling done in one batch, log nothing."""
    import alignlab.progress

    monkeypatch.setattr(alignlab.progress, "progress_wanted", lambda enabled="auto": True)  # as if stdout were a file
    model, tok = lively
    caplog.set_level("INFO", logger="alignlab.progress")
    sampling = Sampling(max_new_tokens=4, temperature=0.0, batch_size=3, backend="loop")
    generate(model, tok, PROMPTS, sampling)
    generate(model, tok, PROMPTS, sampling.replace(batch_size=None), progress="one batch")
    assert caplog.messages == []
    generate(model, tok, PROMPTS, sampling, progress="held-out answers")
    done = [m.split("|")[0].strip() for m in caplog.messages]
    assert done == [f"generation held-out answers: {n}/11 prompts" for n in (3, 6, 9, 11)]
