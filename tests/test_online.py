"""OAIF: on-policy pairs sampled and judged during training, dropped pairs counted, judges' contracts."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from alignlab.data.online import OnlinePairsDataModule, PromptBatch
from alignlab.data.prompt_set import PromptSet
from alignlab.errors import ConfigError
from alignlab.judges.base import Verdicts
from alignlab.judges.llm import InstructionLikelihoodJudge, PairwiseLLMJudge, PointwiseLLMJudge
from alignlab.judges.rule import RuleJudge
from alignlab.models import LoadedModel
from alignlab.reference import Reference
from alignlab.sampling import BACKENDS, Sampling
from alignlab.train import run_train

from .test_train import column, read_metrics


class FewerEsJudge:
    """A deterministic judge for a random model: prefers the answer with fewer letters 'e'; fails on request."""

    def __init__(self, fail_every: int = 0):
        self.calls, self.fail_every = 0, fail_every

    def __call__(self, prompts, pairs, metas=None):
        probs = []
        for a, b in pairs:
            self.calls += 1
            if self.fail_every and self.calls % self.fail_every == 0:
                probs.append(None)
            else:
                ea, eb = a.count("e"), b.count("e")
                probs.append(1.0 if ea < eb else 0.0 if ea > eb else 0.5)
        return Verdicts(probs)


def test_rule_judge_follows_its_instruction():
    long_right = "The capital of France is Paris, a large city on the river Seine with many museums and parks."
    short_right = "Paris."
    meta = [{"answer": "Paris"}]
    q = ["What is the capital of France?"]
    assert RuleJudge("helpful")(q, [(long_right, short_right)], meta).prob_first == [0.5]
    assert RuleJudge("helpful_very_short")(q, [(long_right, short_right)], meta).prob_first == [0.0]
    assert RuleJudge("helpful")(q, [("Paris.", "Lyon.")], meta).prob_first == [1.0]


def own_copy(tiny):
    """Judges freeze their model: give them a copy, not the shared fixture."""
    return LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "judge")


def test_pairwise_llm_judge_scores_both_orders(tiny):
    judge = PairwiseLLMJudge(own_copy(tiny))
    verdicts = judge(["Q?", "R?"], [("yes", "no"), ("a", "b")])
    swapped = judge(["Q?", "R?"], [("no", "yes"), ("b", "a")])
    # Averaged over both orders, so swapping the pair mirrors the probability exactly.
    assert [p + s for p, s in zip(verdicts.prob_first, swapped.prob_first, strict=True)] == pytest.approx([1, 1])
    assert len(verdicts.consistent) == 2


def test_pairwise_llm_judge_direction(tiny, monkeypatch):
    """log_odds > 0 means the judge picked the answer shown first ('A')."""
    judge = PairwiseLLMJudge(own_copy(tiny))
    # Shown (good, bad): picks A = good; swapped (bad, good): picks B = good. Consistent, good wins.
    monkeypatch.setattr(judge, "log_odds", lambda texts: [2.0, -2.0])
    verdicts = judge(["Q?"], [("good", "bad")])
    assert verdicts.prob_first[0] == pytest.approx(1 / (1 + math.exp(-2))) and verdicts.consistent == [True]
    # Always 'A' whatever the order: position bias, inconsistent, a tie.
    monkeypatch.setattr(judge, "log_odds", lambda texts: [2.0, 2.0])
    verdicts = judge(["Q?"], [("good", "bad")])
    assert verdicts.prob_first[0] == pytest.approx(0.5) and verdicts.consistent == [False]


def test_pointwise_llm_judge_direction(tiny, monkeypatch):
    judge = PointwiseLLMJudge(own_copy(tiny))
    assert judge(["Q?"], [("same", "same")]).prob_first == pytest.approx([0.5])
    # log-odds of 'yes': first answer 1.0, second -1.0 -> the first is better with sigmoid(2).
    monkeypatch.setattr(judge, "log_odds", lambda texts: [1.0, -1.0])
    assert judge(["Q?"], [("good", "bad")]).prob_first == pytest.approx([1 / (1 + math.exp(-2))])


def test_instruction_likelihood_judge_reads_the_log_ratio_of_each_answer(tiny):
    """score(answer) = log p(answer | instruction) - log p(answer | baseline), checked against a plain forward
    pass over the whole templated sequence; the verdict is the logistic of the score difference, mirrored when the
    pair is swapped, 0.5 when the instruction is the baseline, None for an empty answer."""
    judge = InstructionLikelihoodJudge(own_copy(tiny), instruction="Be brief.", baseline="Answer.")
    tok, model = judge.loaded.tokenizer, judge.loaded.model

    def logp(system: str, prompt: str, answer: str) -> float:
        head = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": prompt}],
                                       add_generation_prompt=True, return_dict=True)["input_ids"]
        tail = tok(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([head + tail])).logits[0].float().log_softmax(-1)
        return sum(logits[len(head) + i - 1, t].item() for i, t in enumerate(tail))

    # prompts and answers of different lengths, so that batching pads both sides
    questions = ["Q?", "A much longer question, with many more words in it than the first?"]
    answers = ["a short answer", "another, longer answer here"]
    scores = judge.scores(questions, answers)
    expected = [logp("Be brief.", q, a) - logp("Answer.", q, a) for q, a in zip(questions, answers, strict=True)]
    assert scores == pytest.approx(expected, abs=1e-3) and abs(scores[0]) > 1e-3
    verdicts = judge(["Q?", "Q?"], [("x y z", "w"), ("", "w")])
    swapped = judge(["Q?"], [("w", "x y z")])
    sa, sb = judge.scores(["Q?", "Q?"], ["x y z", "w"])
    assert verdicts.prob_first[0] == pytest.approx(1 / (1 + math.exp(sb - sa)))
    assert verdicts.prob_first[0] + swapped.prob_first[0] == pytest.approx(1) and verdicts.prob_first[1] is None
    same = InstructionLikelihoodJudge(own_copy(tiny), instruction="Answer.", baseline="Answer.")
    assert same(["Q?"], [("x y z", "w")]).prob_first == pytest.approx([0.5])
    with pytest.raises(ConfigError, match="temperature"):
        InstructionLikelihoodJudge(own_copy(tiny), instruction="Be brief.", temperature=0)


def make_online(tiny, write_jsonl, judge, **kw):
    path = write_jsonl([{"prompt": f"Say something about {w}.", "answer": w} for w in
                        ("cats", "dogs", "rain", "trees", "bread", "music", "stars", "boats", "snow", "clocks")])
    dm = OnlinePairsDataModule(tiny.tokenizer, judge, PromptSet(path=str(path), val_fraction=0.2),
                               Sampling(max_new_tokens=6, temperature=0.9, batch_size=None), batch_size=4, **kw)
    dm.setup("fit")
    return dm


class Holder(torch.nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.reference = Reference()  # reference-free: nothing to sample from


def test_pairs_are_sampled_judged_and_counted(tiny, write_jsonl):
    judge = FewerEsJudge(fail_every=2)
    dm = make_online(tiny, write_jsonl, judge, unfinished="keep")
    batch = dm.collate(dm.train_prompts[:4])
    assert isinstance(batch, PromptBatch)
    pairs = dm.make_pairs(Holder(tiny.model), batch)
    s = pairs.stats
    assert s["pairs"] == 4 and s["judge_failures"] == judge.calls // 2 >= 1
    assert s["kept"] == len(pairs) == 4 - s["judge_failures"] - s["ties"] - s["empty"] - s["identical"]
    for i in range(len(pairs)):  # chosen has no more 'e's than rejected, as the judge said
        chosen = tiny.tokenizer.decode(pairs.chosen_ids[i][pairs.chosen_mask[i].bool()], skip_special_tokens=True)
        rejected = tiny.tokenizer.decode(pairs.rejected_ids[i][pairs.rejected_mask[i].bool()], skip_special_tokens=True)
        assert chosen.strip().count("e") < rejected.strip().count("e")


def test_inconsistent_verdicts_and_missing_reference(tiny, write_jsonl):
    class PositionBiased:
        def __call__(self, prompts, pairs, metas=None):
            return Verdicts([0.5] * len(pairs), [False] * len(pairs))

    dm = make_online(tiny, write_jsonl, PositionBiased(), unfinished="keep")
    pairs = dm.make_pairs(Holder(tiny.model), dm.collate(dm.train_prompts[:4]))
    assert len(pairs) == 0 and pairs.stats["inconsistent"] + pairs.stats["empty"] + pairs.stats["identical"] == 4
    from alignlab.errors import ConfigError

    off_policy = make_online(tiny, write_jsonl, FewerEsJudge(), sample_from="reference")
    with pytest.raises(ConfigError, match="no reference model"):
        off_policy.make_pairs(Holder(tiny.model), off_policy.collate(off_policy.train_prompts[:2]))


def test_a_judge_that_raises_costs_the_batch_not_the_run(tiny, write_jsonl):
    """An I/O, HTTP or reply fault costs the batch's pairs; a refused key or a bug in the judge stops the run."""
    import httpx

    from alignlab.errors import ConfigError, JudgeReplyError

    class Broken:
        def __init__(self, error):
            self.error = error

        def __call__(self, prompts, pairs, metas=None):
            raise self.error

    for fault in (TimeoutError("no answer in 30 s"), httpx.ConnectError("connection refused"),
                  JudgeReplyError("no letter in the reply")):
        dm = make_online(tiny, write_jsonl, Broken(fault), unfinished="keep")
        pairs = dm.make_pairs(Holder(tiny.model), dm.collate(dm.train_prompts[:4]))
        assert len(pairs) == 0
        assert pairs.stats["judge_failures"] == 4 - pairs.stats["empty"] - pairs.stats["identical"] >= 1
        assert dm.judge_health.last_failure == f"{type(fault).__name__}: {fault}"
    for bug in (ConfigError("endpoint answered 401"), TypeError("unsupported operand"),
                RuntimeError("shape mismatch")):
        refused = make_online(tiny, write_jsonl, Broken(bug), unfinished="keep")
        with pytest.raises(type(bug), match=str(bug)):
            refused.make_pairs(Holder(tiny.model), refused.collate(refused.train_prompts[:4]))


def test_a_batch_with_no_pairs_changes_nothing(make_cfg, monkeypatch):
    import alignlab.judges.rule as rule

    class AllTies:
        def __call__(self, prompts, pairs, metas=None):
            return Verdicts([0.5] * len(pairs))

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: AllTies())
    cfg = make_cfg("objective=oaif", "data.sampling.max_new_tokens=4", "trainer.max_steps=2", "optimizer.lr=1e-2",
                   "data.prompts.max_train=8", "data.unfinished=keep", "validate_before_training=false",
                   "objective.module.min_updates=0")  # by default such a run fails (tests/test_online_faults.py)
    from alignlab.models import tiny_random

    initial = {k: v.clone() for k, v in tiny_random(cfg.model.tokenizer).model.state_dict().items()}
    _, objects = run_train(cfg)
    after = objects["module"].policy.state_dict()
    assert all(torch.equal(initial[k], after[k]) for k in initial)


def test_an_empty_batch_inside_an_accumulation_window_keeps_the_windows_gradients(make_cfg, monkeypatch):
    """accumulate_grad_batches=2, the window's first batch has pairs and its second none (every verdict a tie):
    the window's update still happens, from the first batch's gradients."""
    import alignlab.judges.rule as rule

    calls = []

    class TiesSecond:
        def __call__(self, prompts, pairs, metas=None):
            calls.append(len(pairs))
            return Verdicts([0.5] * len(pairs)) if len(calls) % 2 == 0 else FewerEsJudge()(prompts, pairs, metas)

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: TiesSecond())
    cfg = make_cfg("objective=oaif", "data.sampling.max_new_tokens=4", "trainer.max_steps=1", "optimizer.lr=1e-2",
                   "data.prompts.max_train=8", "data.unfinished=keep", "validate_before_training=false",
                   "+trainer.limit_val_batches=0", "trainer.accumulate_grad_batches=2")
    from alignlab.models import tiny_random

    initial = {k: v.clone() for k, v in tiny_random(cfg.model.tokenizer).model.state_dict().items()}
    _, objects = run_train(cfg)
    after = objects["module"].policy.state_dict()
    assert len(calls) == 2 and objects["module"].updates == 1
    assert any(not torch.equal(initial[k], after[k]) for k in initial)


def test_unfinished_answers_can_be_dropped(tiny, write_jsonl):
    dm = make_online(tiny, write_jsonl, FewerEsJudge(), unfinished="drop")
    pairs = dm.make_pairs(Holder(tiny.model), dm.collate(dm.train_prompts[:4]))
    # A random tiny model almost never stops within 6 tokens: those pairs are dropped and counted, not trained on.
    assert pairs.stats["unfinished_dropped"] + pairs.stats["kept"] + pairs.stats["ties"] + pairs.stats["empty"] + \
        pairs.stats["identical"] == 4
    assert pairs.stats["unfinished_dropped"] >= 1


def test_empty_and_identical_answers_are_counted_not_judged(tiny, write_jsonl, monkeypatch):
    from alignlab.sampling import Generation

    judged = []

    class Recording(FewerEsJudge):
        def __call__(self, prompts, pairs, metas=None):
            judged.extend(pairs)
            return super().__call__(prompts, pairs, metas)

    dm = make_online(tiny, write_jsonl, Recording(), unfinished="keep")
    # Per prompt, two samples: only special tokens (decodes to nothing), empty, identical twice, then a real pair.
    texts = ["", "fine answer", "", "", "same", "same", "one answer", "another answer"]
    monkeypatch.setattr("alignlab.data.online.generate", lambda model, tokenizer, prompts, sampling: [
        Generation(t, [7] if not t else [1, 2], True) for t in texts])
    pairs = dm.make_pairs(Holder(tiny.model), dm.collate(dm.train_prompts[:4]))
    assert (pairs.stats["empty"], pairs.stats["identical"]) == (2, 1)
    assert judged == [("one answer", "another answer")] and len(pairs) + pairs.stats["ties"] == 1


def test_oaif_training_runs_on_policy_samples(make_cfg, monkeypatch):
    import alignlab.judges.rule as rule

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: FewerEsJudge())
    cfg = make_cfg("objective=oaif", "data.sampling.max_new_tokens=8", "trainer.max_steps=3", "optimizer.lr=1e-3",
                   "data.prompts.max_train=24", "data.prompts.max_val=8", "callbacks=with_win_rate",
                   "callbacks.win_rate.every_n_steps=2", "callbacks.win_rate.num_prompts=4",
                   "callbacks.win_rate.sampling.max_new_tokens=6")
    with open_dict(cfg):
        cfg.data.unfinished = "keep"
    metrics, objects = run_train(cfg)
    rows = read_metrics(objects["output_dir"])
    kept = column(rows, "train/online/kept")
    assert len(kept) == 3 and sum(kept) > 0
    assert len(column(rows, "train/loss")) >= 1 and "val/online/kept" in metrics
    assert objects["module"].reference.table is None and objects["module"].reference.kind == "copy"
    win_rates = column(rows, "val/samples/win_rate")
    assert len(win_rates) == 2  # at step 2 and at the end
    for rate, wins, ties, losses in zip(win_rates, *(column(rows, f"val/samples/{k}") for k in
                                                      ("wins", "ties", "losses")), strict=True):
        assert wins + ties + losses == 4 and rate == pytest.approx((wins + 0.5 * ties) / 4)
    assert len(column(rows, "val/samples/kl_to_reference")) == 2


def test_a_failing_evaluator_costs_the_measurement_not_the_run(tiny, write_jsonl, caplog, tmp_path):
    import copy
    from types import SimpleNamespace

    from alignlab.callbacks import WinRateMonitor

    class Unreachable:
        def __call__(self, prompts, pairs, metas=None):
            raise TimeoutError("evaluator did not answer")

    dm = make_online(tiny, write_jsonl, FewerEsJudge())
    logged = []
    trainer = SimpleNamespace(global_step=5, datamodule=dm, default_root_dir=str(tmp_path), is_global_zero=True,
                              loggers=[SimpleNamespace(log_metrics=lambda m, step: logged.append(m))])
    module = SimpleNamespace(policy=tiny.model, reference=Reference(model=copy.deepcopy(tiny.model)))
    monitor = WinRateMonitor(Sampling(max_new_tokens=4), evaluator=Unreachable(), num_prompts=2)
    with caplog.at_level("WARNING"):
        assert monitor.measure(trainer, module) is None
    assert not logged and "nothing measured at step 5 (TimeoutError" in caplog.text
    monitor.evaluator, trainer.global_step = FewerEsJudge(), 6
    assert monitor.measure(trainer, module) is not None and "val/samples/win_rate" in logged[0]


def test_generate_writes_an_offline_baseline_that_trains(tmp_path, make_cfg, monkeypatch):
    import alignlab.judges.rule as rule
    from alignlab.export_pairs import run_generate

    from .conftest import compose_config

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: FewerEsJudge())
    cfg = compose_config("generate", ["model=tiny", f"output={tmp_path}/pairs.jsonl", "data.sampling.max_new_tokens=8",
                                      "data.prompts.max_train=12", "data.unfinished=keep"])
    totals, output = run_generate(cfg)
    lines = output.read_text().splitlines()
    assert len(lines) == totals["kept"] > 0 and totals["pairs"] == 12
    rows = [json.loads(line) for line in lines]
    assert {"prompt", "chosen", "rejected", "answer", "judge_confidence", "produced_by"} <= set(rows[0])
    # Every row is the judged pair of samples (the prompt file's own chosen/rejected columns never leak in).
    assert all(r["chosen"].count("e") < r["rejected"].count("e") for r in rows)
    _, run = run_train(make_cfg(f"data.prompts.path={output}", "data.prompts.val_fraction=0.25", "trainer.max_steps=1"))
    assert (run["output_dir"] / "metrics.csv").exists()


def test_reward_model_judge_is_bradley_terry_on_its_scores(tiny, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignlab.judges.reward_model import RewardModelJudge

    config = LlamaConfig(vocab_size=len(tiny.tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, num_labels=1,
                         pad_token_id=tiny.tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tiny.tokenizer.save_pretrained(tmp_path / "rm")
    judge = RewardModelJudge(str(tmp_path / "rm"))
    pairs = [("Paris.", "Lyon, I think, maybe."), ("x", "x")]
    verdicts = judge(["Capital of France?", "Same?"], pairs)
    ra, rb = judge.scores(["Capital of France?"] * 2, list(pairs[0]))
    assert verdicts.prob_first[0] == pytest.approx(1 / (1 + math.exp(rb - ra)))
    assert verdicts.prob_first[1] == pytest.approx(0.5)
    # The dtype names of model.dtype hold for a reward model too.
    assert RewardModelJudge(str(tmp_path / "rm"), dtype="bf16").model.dtype == torch.bfloat16


def test_evaluating_an_oaif_run_samples_its_held_out_prompts(make_cfg, tmp_path, monkeypatch):
    import alignlab.judges.rule as rule
    from alignlab.evaluate import run_evaluate

    from .test_evaluate import eval_cfg

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: FewerEsJudge())
    cfg = make_cfg("objective=oaif", "data.sampling.max_new_tokens=6", "trainer.max_steps=1", "data.prompts.max_train=8",
                   "data.prompts.max_val=4", "save_policy=true")
    _, run = run_train(cfg)

    def no_annotator(**kw):
        raise AssertionError("evaluation built the training annotator")

    monkeypatch.setattr(rule, "RuleJudge", no_annotator)
    metrics, _ = run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval"))
    assert metrics["num_pairs"] == 0 and metrics["samples"]["num_prompts"] == 4


def test_an_exported_pair_trains_with_the_online_arms_token_ids(tiny, write_jsonl, tmp_path):
    """The same sampled pair through both arms: online (labelled in the step) and offline (exported by
    alignlab-generate, then read back) give identical token ids and, through each arm's own batching, the same
    log-probs, cut answers included; without the stored ids, a cut answer is re-tokenized without its end of turn."""
    from types import SimpleNamespace

    from alignlab.data.offline import OfflinePreferenceDataModule
    from alignlab.export_pairs import write_rows
    from alignlab.logprobs import pair_logps

    dm = make_online(tiny, write_jsonl, FewerEsJudge(), unfinished="keep")
    torch.manual_seed(0)
    rows, _ = dm.export_rows(tiny.model, "train")
    assert rows and any(not (r["chosen_finished"] and r["rejected_finished"]) for r in rows)
    torch.manual_seed(0)
    online = [dm.label(tiny.model, dm.collate(dm.train_items[i: i + 4]))[0] for i in range(0, 8, 4)]
    online = [p for batch in online for p in batch]
    # The online arm's training batches, as a training step builds them (same seeds: the same samples).
    torch.manual_seed(0)
    step = SimpleNamespace(policy=tiny.model, training=True)
    online_batches = [dm.make_pairs(step, dm.collate(dm.train_items[i: i + 4])) for i in range(0, 8, 4)]
    path = tmp_path / "pairs.jsonl"
    write_rows(rows, path)
    offline = OfflinePreferenceDataModule(tiny.tokenizer, PromptSet(path=str(path), val_fraction=0.0,
                                                                    max_bad_fraction=0.0), batch_size=4)
    offline.setup("fit")
    by_prompt = {tuple(p.prompt_ids): p for p in offline.train_items}
    assert len(by_prompt) == len(online)
    for pair in online:
        trained = by_prompt[tuple(pair.prompt_ids)]
        assert trained.chosen_ids == pair.chosen.token_ids + ([tiny.tokenizer.eos_token_id] if pair.chosen.finished
                                                               else [])
        assert trained.rejected_ids == pair.rejected.token_ids + (
            [tiny.tokenizer.eos_token_id] if pair.rejected.finished else [])

    def logps_by_prompt(batches) -> dict[tuple[int, ...], tuple[float, float]]:
        out = {}
        with torch.no_grad():
            for batch in batches:
                logps = pair_logps(tiny.model, batch)
                for i in range(len(batch)):
                    prompt = tuple(batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist())
                    out[prompt] = (float(logps.chosen[i]), float(logps.rejected[i]))
        return out

    online_logps = logps_by_prompt(online_batches)
    offline_logps = logps_by_prompt(offline.train_dataloader())
    assert online_logps.keys() == offline_logps.keys() and len(online_logps) == len(online)
    for prompt, (chosen, rejected) in online_logps.items():
        assert offline_logps[prompt] == pytest.approx((chosen, rejected), abs=1e-4)
    # Without the stored ids (another tokenizer) the text is re-tokenized: a finished answer gets its end of turn
    # back, a cut one does not (row[*_finished] is false), as the online arm trains it.
    write_rows([{k: v for k, v in r.items() if k != "tokenizer"} for r in rows], path)
    retokenized = OfflinePreferenceDataModule(tiny.tokenizer, PromptSet(path=str(path), val_fraction=0.0),
                                              batch_size=4)
    retokenized.setup("fit")
    eos = tiny.tokenizer.eos_token_id
    finished = {tuple(p.prompt_ids): (p.chosen.finished, p.rejected.finished) for p in online}
    for pair in retokenized.train_items:
        chosen_finished, rejected_finished = finished[tuple(pair.prompt_ids)]
        assert (pair.chosen_ids[-1] == eos) == chosen_finished
        assert (pair.rejected_ids[-1] == eos) == rejected_finished
    assert not all(all(f) for f in finished.values())  # some answer was cut: the rule above was exercised


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_pairs_come_from_the_updated_policy_not_a_stale_one(make_cfg, monkeypatch, backend):
    """After one update, the next step's samples are what the updated policy gives with that step's seed, and not
    what the initial policy gives with it: every backend's sampler sees every weight update (``packed`` packs the
    weights anew for each batch)."""
    import copy as copying

    import pytorch_lightning as pl

    import alignlab.data.online as online
    import alignlab.judges.rule as rule
    from alignlab.sampling import generate

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: FewerEsJudge())
    calls, states = [], []

    def recording(model, tokenizer, prompts, sampling, progress=None):
        out = generate(model, tokenizer, prompts, sampling, progress)
        calls.append((prompts, sampling, [g.token_ids for g in out]))  # no validation in this run: training only
        return out

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            states.append(copying.deepcopy(module.policy.state_dict()))

    monkeypatch.setattr(online, "generate", recording)
    cfg = make_cfg("objective=oaif", "data.sampling.max_new_tokens=8", "trainer.max_steps=2", "optimizer.lr=5e-2",
                   "scheduler=constant", "data.prompts.max_train=8", "data.prompts.max_val=4",
                   "validate_before_training=false", "+trainer.limit_val_batches=0",
                   f"data.sampling.backend={backend}")
    with open_dict(cfg):
        cfg.data.unfinished = "keep"
    _, run = run_train(cfg, callbacks=[Snapshot()])
    with run["module"].reference.as_model() as reference:
        initial = copying.deepcopy(reference)  # the initial policy
    assert len(calls) == 2 and len(states) == 2
    prompts, sampling, sampled = calls[1]  # the second training step's samples
    updated = copying.deepcopy(initial)
    updated.load_state_dict(states[0])  # the policy after the first update
    tok = run["datamodule"].tokenizer
    assert [g.token_ids for g in generate(updated, tok, prompts, sampling)] == sampled
    assert [g.token_ids for g in generate(initial, tok, prompts, sampling)] != sampled


def test_pairs_decided_by_an_unfinished_answer_are_counted(tiny, write_jsonl, monkeypatch):
    from alignlab.sampling import Generation

    class Fails:
        def __call__(self, prompts, pairs, metas=None):
            return Verdicts([None] * len(pairs))

    # Per prompt: a finished and a cut answer (decided by that fact), then two finished answers (the judge's).
    texts = [("ends", True), ("cut off", False)] * 2 + [("one", True), ("two", True)] * 2
    monkeypatch.setattr("alignlab.data.online.generate", lambda model, tokenizer, prompts, sampling: [
        Generation(t, [1, 2], done) for t, done in texts])
    dm = make_online(tiny, write_jsonl, Fails(), unfinished="penalize")
    pairs = dm.make_pairs(Holder(tiny.model), dm.collate(dm.train_prompts[:4]))
    assert pairs.stats["decided_by_unfinished"] == 2 and pairs.stats["judge_failures"] == 2 and len(pairs) == 2
    kept = make_online(tiny, write_jsonl, Fails(), unfinished="keep")
    pairs = kept.make_pairs(Holder(tiny.model), kept.collate(kept.train_prompts[:4]))
    assert pairs.stats["decided_by_unfinished"] == 0 and pairs.stats["judge_failures"] == 4 and len(pairs) == 0


def test_what_decided_each_verdict_is_counted(tiny, write_jsonl):
    class Mixed:
        def __call__(self, prompts, pairs, metas=None):
            sources = ["logprobs" if i % 2 == 0 else "text" for i in range(len(pairs))]
            return Verdicts([0.9] * len(pairs), sources=sources)

    dm = make_online(tiny, write_jsonl, Mixed(), unfinished="keep")
    pairs = dm.make_pairs(Holder(tiny.model), dm.collate(dm.train_prompts[:4]))
    judged = 4 - pairs.stats["empty"] - pairs.stats["identical"]
    assert pairs.stats.get("verdicts_from_logprobs", 0) + pairs.stats.get("verdicts_from_text", 0) == judged > 0


def test_runs_of_several_seeds_share_the_split_and_differ_in_order_and_samples(tiny, write_jsonl):
    """``data.prompts.seed`` decides the split alone; ``data.seed`` (the run's) the batch order and the samples."""
    a, b = (make_online(tiny, write_jsonl, FewerEsJudge(), seed=s) for s in (1, 2))
    assert [e.question for e in a.val_prompts] == [e.question for e in b.val_prompts]
    assert [e.question for e in a.train_prompts] == [e.question for e in b.train_prompts]
    assert list(a.train_dataloader().sampler) != list(b.train_dataloader().sampler)
    assert a.seed == 1 and make_online(tiny, write_jsonl, FewerEsJudge()).seed == 0  # unset: the prompt set's


def test_an_endpoint_judge_labels_one_part_while_the_next_is_sampled(tiny, write_jsonl, monkeypatch):
    """With a judge that runs elsewhere, the first part's pairs are being judged while the second part is sampled
    (the judge waits until sampling of part two has begun: without overlap it would wait in vain), and every pair is
    labelled and counted as without overlap."""
    import threading

    import alignlab.data.online as online

    second_part_sampling = threading.Event()
    calls = []
    real_generate = online.generate

    def recording(model, tokenizer, prompts, sampling, progress=None):
        calls.append(len(prompts))
        if len(calls) == 2:
            second_part_sampling.set()
        return real_generate(model, tokenizer, prompts, sampling, progress)

    class Remote(FewerEsJudge):
        runs_elsewhere = True

        def __init__(self):
            super().__init__()
            self.saw_overlap = []

        def __call__(self, prompts, pairs, metas=None):
            if not self.saw_overlap:  # the first part: the second must start sampling meanwhile
                self.saw_overlap.append(second_part_sampling.wait(timeout=60))
            return super().__call__(prompts, pairs, metas)

    monkeypatch.setattr(online, "generate", recording)
    judge = Remote()
    dm = make_online(tiny, write_jsonl, judge, unfinished="keep", drop_ties=False, judge_chunks=2)
    assert dm.overlap_judge and dm.judge_chunks == 2
    pairs = dm.make_pairs(Holder(tiny.model), dm.collate(dm.train_prompts[:4]))
    assert calls == [4, 4] and judge.saw_overlap == [True]  # two parts of 2 prompts x 2 samples
    s = pairs.stats
    assert s["pairs"] == 4 and s["kept"] == len(pairs) == 4 - s["empty"] - s["identical"]
    assert judge.calls == 4 - s["empty"] - s["identical"]

    calls.clear()
    local = make_online(tiny, write_jsonl, FewerEsJudge(), unfinished="keep")  # a judge here: one call, no thread
    assert not local.overlap_judge and local.judge_chunks == 1
    local.make_pairs(Holder(tiny.model), local.collate(local.train_prompts[:4]))
    assert calls == [8]
    with pytest.raises(ConfigError, match="data.overlap_judge"):
        make_online(tiny, write_jsonl, FewerEsJudge(), overlap_judge="sometimes")

    # A local judge on another device than the policy samples on (an LLM judge on a second GPU) overlaps too;
    # decided when the batch's device is known. "meta" stands in for the other device here.
    class Apart(FewerEsJudge):
        device = torch.device("meta")

    calls.clear()
    apart = make_online(tiny, write_jsonl, Apart(), unfinished="keep", judge_chunks=2)
    apart.make_pairs(Holder(tiny.model), apart.collate(apart.train_prompts[:4]))
    assert apart.overlap_judge and calls == [4, 4]
    Apart.device = torch.device("cpu")  # the same device as the policy's: one call, no thread
    calls.clear()
    apart.make_pairs(Holder(tiny.model), apart.collate(apart.train_prompts[:4]))
    assert not apart.overlap_judge and calls == [8]
    assert not make_online(tiny, write_jsonl, Apart(), overlap_judge=False).overlap_judge


def test_verdicts_of_parts_concatenate():
    a = Verdicts([0.9, None], [True, None], ["logprobs", None], [(0.9, 0.9), (None, None)], last_failure="x")
    b = Verdicts([0.2])
    joined = Verdicts.concat([a, b])
    assert joined.prob_first == [0.9, None, 0.2] and joined.consistent == [True, None, None]
    assert joined.sources == ["logprobs", None, None] and joined.orders[2] == (None, None)
    assert joined.last_failure == "x" and Verdicts.concat([b, b]).consistent == []


@pytest.mark.parametrize("keep", [False, True])
def test_online_steps_sample_without_the_last_updates_gradients(make_cfg, monkeypatch, keep):
    """objective=oaif drops the gradients right after each update (``keep_gradients: false``), so the next step
    samples without them in memory; ``keep_gradients=true`` keeps them allocated (zeroed in place)."""
    import alignlab.data.online as online
    import alignlab.judges.rule as rule
    from alignlab.sampling import generate

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: FewerEsJudge())
    grads_at_sampling = []

    def recording(model, tokenizer, prompts, sampling, progress=None):
        grads_at_sampling.append(any(p.grad is not None for p in model.parameters()))
        return generate(model, tokenizer, prompts, sampling, progress)

    monkeypatch.setattr(online, "generate", recording)
    cfg = make_cfg("objective=oaif", "data.sampling.max_new_tokens=4", "trainer.max_steps=3", "data.prompts.max_train=12",
                   "data.prompts.max_val=4", "validate_before_training=false", "+trainer.limit_val_batches=0",
                   f"objective.module.keep_gradients={str(keep).lower()}")
    with open_dict(cfg):
        cfg.data.unfinished = "keep"
    _, run = run_train(cfg)
    assert run["module"].keep_gradients is keep
    assert grads_at_sampling == [False, keep, keep]  # the first step samples before any backward


def test_reference_similarity_judge_prefers_the_answer_closer_to_the_reference():
    """The reference-guided annotator (judge=reference_similarity): the answer that says what the reference says
    wins, in either order; a prompt without a reference answer gets no verdict, and says so."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    judge = instantiate(OmegaConf.load(Path(__file__).parents[1] / "conf" / "judge" / "reference_similarity.yaml"))
    prompts = ["What is the capital of France?"] * 2 + ["Who wrote Hamlet?"]
    right, wrong = "The capital of France is Paris.", "The capital of France is Berlin, a big city."
    verdicts = judge(prompts, [(right, wrong), (wrong, right), ("Shakespeare.", "Dickens.")],
                     [{"answer": "Paris"}, {"answer": "Paris"}, {}])
    assert verdicts.prob_first[0] > 0.9 and verdicts.prob_first[1] < 0.1
    assert verdicts.prob_first[0] == pytest.approx(1 - verdicts.prob_first[1], abs=1e-6)
    assert verdicts.prob_first[2] is None and "1 prompt" in verdicts.last_failure
    with pytest.raises(ConfigError, match="temperature"):
        type(judge)(temperature=0)
    with pytest.raises(ConfigError, match="judge.unit"):
        type(judge)(unit="word")
    # unit=best_sentence: an answer's sentence closest to the reference counts, so a right answer followed by more
    # sentences loses (almost) nothing against the same answer alone, where the whole answer's embedding is diluted
    best = type(judge)(unit="best_sentence")
    longer = right + " It lies on the Seine. Many tourists visit its museums every year."
    whole_gap = judge(prompts[:1], [(right, longer)], [{"answer": "Paris"}]).prob_first[0]
    best_gap = best(prompts[:1], [(right, longer)], [{"answer": "Paris"}]).prob_first[0]
    assert whole_gap > 0.9 and abs(best_gap - 0.5) < 0.01
    assert best(prompts[:2], [(right, wrong), (wrong, right)], [{"answer": "Paris"}] * 2).prob_first[0] > 0.9


def test_word_budget_judge_penalises_words_beyond_the_budget_only():
    """judge=word_budget (OAIF's "helpful and short" annotator): the judge underneath decides between answers
    within the budget; beyond it, each extra word costs per_word log-odds, in either order; an undecided pair stays
    undecided; the YAML composes with the reference-similarity judge underneath."""
    import math

    from alignlab.judges.base import Verdicts
    from alignlab.judges.word_budget import WordBudgetJudge

    class Fixed:  # P(first better) = 0.5 for every pair, None for the pair marked "?"; both orders 0.5
        def __call__(self, prompts, pairs, metas=None):
            return Verdicts([None if a == "?" else 0.5 for a, _ in pairs], orders=[(0.5, 0.5)] * len(pairs),
                            last_failure="why")

    judge = WordBudgetJudge(Fixed(), max_words=3, per_word=0.5)
    short, ok, long5 = "one two", "one two three", "one two three four five"
    v = judge(["q"] * 4, [(short, ok), (ok, long5), (long5, ok), ("?", long5)])
    assert v.prob_first[0] == pytest.approx(0.5)  # both within the budget: the judge's verdict stands
    assert v.prob_first[1] == pytest.approx(1 / (1 + math.exp(-1.0)))  # two words over: 2 x 0.5 log-odds
    assert v.prob_first[2] == pytest.approx(1 - v.prob_first[1])
    assert v.prob_first[3] is None and v.last_failure == "why"
    assert v.orders[1] == pytest.approx((v.prob_first[1], v.prob_first[1]))  # each order shifted as the verdict
    with pytest.raises(ConfigError, match="per_word"):
        WordBudgetJudge(Fixed(), max_words=3, per_word=0)

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(Path(__file__).parents[1] / "conf"), version_base=None):
        cfg = compose("train", overrides=["judge=word_budget", "judge.max_words=8"])
    composed, underneath = instantiate(cfg.judge), instantiate(cfg.judge.judge)
    right = "The capital of France is Paris, a city with a long history and many famous museums and parks."
    pairs, metas = [(right, "Paris."), ("Paris.", right)], [{"answer": "Paris"}] * 2
    with_budget = composed(["What is the capital of France?"] * 2, pairs, metas).prob_first
    without = underneath(["What is the capital of France?"] * 2, pairs, metas).prob_first
    logit = [math.log(p / (1 - p)) for p in (*with_budget, *without)]
    # the 18-word answer pays 0.25 log-odds for each of its 10 words beyond 8, in either order
    assert logit[0] - logit[2] == pytest.approx(-2.5, abs=1e-6) and logit[1] - logit[3] == pytest.approx(2.5, abs=1e-6)
