"""OPO: rule memory, retrievers, prompt packing, letter scoring, the evaluator's conditions and the edit
demonstration, question generation and its checking pass, and bad input."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from omegaconf import open_dict

from alignlab.errors import ConfigError, DataError
from alignlab.opo.evaluate import Condition, OPOEvaluator, bootstrap_interval, edit_demonstration, run_opo
from alignlab.opo.make_questions import (
    Draft,
    LLMQuestionGenerator,
    TemplateQuestionGenerator,
    check,
    check_all,
    run_make_questions,
)
from alignlab.opo.memory import Rule, RuleMemory
from alignlab.opo.prompting import PromptTemplate, messages, pack_rules
from alignlab.opo.questions import MCQuestion, load_questions
from alignlab.opo.retrievers import BM25Retriever, DenseRetriever
from alignlab.opo.scoring import EndpointLetterScorer, LocalLetterScorer, OptionLikelihoodScorer, Scorer

from .conftest import compose_config

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

def make_evaluator(memory, tiny, orders=None, **kw):
    return OPOEvaluator(memory, BM25Retriever(memory), RuleReader(orders=orders), tiny.tokenizer,
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
    random_rules = [a["rules"] for a in evaluator.evaluate(questions, Condition("random", 2))]
    assert random_rules == [a["rules"] for a in evaluator.evaluate(questions, Condition("random", 2))]  # seeded
    assert all(len(r) == 2 for r in random_rules)
    assert not any(a["rules"] for a in make_evaluator(memory, tiny, budget_tokens=3).evaluate(
        questions, Condition("top", 3)))  # nothing fits in 3 tokens


def test_metadata_filter_uses_the_question_location(memory, tiny):
    question = MCQuestion("Q", "pennant colour at the quay?", ["green", "red"], 0, ["R1"], meta={"location": "hills"})
    evaluator = make_evaluator(memory, tiny, filter_key="location")
    assert evaluator.rules_for(Condition("top", 4), question)[0].id == "R2"  # the harbor rule is filtered out
    assert {r.id for r in evaluator.rules_for(Condition("top", 4), question)} == {"R2", "R4"}


def test_edit_demonstration_answers_follow_the_memory(memory, questions, tiny):
    evaluator = make_evaluator(memory, tiny)
    edits = [{"id": "R4", "text": "Dogs must wear a green collar everywhere in town.", "question_id": "Q4",
              "new_answer": "C"}]
    demo = edit_demonstration(evaluator, edits, {q.id: q for q in questions}, Condition("top", 1), tiny.model)
    assert demo["before_matches_old"] == 1.0 and demo["after_matches_new"] == 1.0
    assert demo["weights_unchanged"] is True
    assert "blue" in memory["R4"].text  # restored afterwards


def test_bootstrap_interval_brackets_the_mean():
    low, high = bootstrap_interval([True] * 30 + [False] * 10, resamples=2000)
    assert low < 0.75 < high and low > 0.55 and high < 0.9


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


def test_run_opo_writes_the_table(tmp_path, memory):
    rules = write_rows(tmp_path / "rules.jsonl", RULES)
    qs = write_rows(tmp_path / "questions.jsonl", [*QUESTIONS, "{broken"])
    edits = write_rows(tmp_path / "edits.jsonl", [{"id": "R2", "text": "Whistling on Heron Hill is forbidden on "
                                                   "Fridays.", "question_id": "Q2", "new_answer": "B"}])
    cfg = compose_config("opo", ["model=tiny", f"memory={rules}", f"questions.human={qs}", "questions.generated=null",
                                 f"edits={edits}", "ks=[1,2]", "random_k=1", "bootstrap=200"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    results = run_opo(cfg)
    entry = results["sets"]["human"]
    assert entry["report"]["skipped"] == 1 and entry["recall"]["recall@1"] == 1.0
    assert set(entry["conditions"]) == {"no rules", "top-1", "top-2", "gold rule (oracle)", "random-1"}
    assert all(0 <= c["accuracy"] <= 1 and c["questions"] == 4 for c in entry["conditions"].values())
    assert results["edit_demonstration"][0]["weights_unchanged"] is True
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 5 * 4
    assert (tmp_path / "run" / "results.png").stat().st_size > 0


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
