"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 that answers with a local model.

The server injects faults by keyword in the question: SLOW (slower than the timeout), FLAKY (two 500s, then an
answer), BUSY (two 429s, then an answer), GARBAGE (an unparseable reply), REFUSE (a 400). It sends first-token
log-probabilities only when asked for them and when a test sets ``server.logprobs`` (text -> the ``logprobs`` field).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.judges.base import Verdicts
from alignlab.judges.openai import ChatEndpoint, OpenAIJudge, OpenAIPairwiseJudge, OpenAIPointwiseJudge

# Question marker -> a 200 response whose body is not a chat completion.
MALFORMED = {
    "EMPTYLIST": b"[]",
    "NULLBODY": b"null",
    "NOCHOICES": b'{"choices": null}',
    "NOTTEXT": b'{"choices": [{"message": {"content": {"text": "A"}}}]}',
    "BADUTF8": b'{"choices": [{"message": {"content": "\xff\xfe"}}]}',
}
ABSENT = object()  # server.logprobs' answer for "send no logprobs field at all"


def logprobs_field(probs: dict[str, float]) -> dict:
    """The OpenAI ``choices[0].logprobs`` field whose first token has these alternatives (token -> probability)."""
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in probs.items()]
    return {"content": [{**max(top, key=lambda t: t["logprob"]), "top_logprobs": top}]}


class ModelServer:
    def __init__(self, loaded):
        self.model = copy.deepcopy(loaded.model).eval()
        self.tokenizer = loaded.tokenizer
        self.requests = Counter()
        self.authorizations = Counter()
        self.payloads = {}  # question -> the last request body asking it
        self.logprobs = lambda text: ABSENT
        self.lock = threading.Lock()
        self.letter_ids = [self.tokenizer.encode(x, add_special_tokens=False)[0] for x in ("A", "B")]

    @torch.no_grad()
    def answer(self, text: str) -> str:
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 return_dict=True)["input_ids"]
        logits = self.model(torch.tensor([list(ids)])).logits[0, -1]
        return "AB"[int(logits[self.letter_ids].argmax())]

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.startswith("/v1/"):
                    return self._send(404, {"error": "no such route"})
                text = payload["messages"][-1]["content"]
                with server.lock:
                    server.requests[text] += 1
                    server.authorizations[self.headers.get("Authorization")] += 1
                    server.payloads[text] = payload
                    seen = server.requests[text]
                if "SLOW" in text:
                    time.sleep(4.0)
                if "REFUSE" in text:
                    return self._send(400, {"error": "bad request"})
                if "FLAKY" in text and seen <= 2:
                    return self._send(500, {"error": "try again"})
                if "BUSY" in text and seen <= 2:
                    return self._send(429, {"error": "rate limited"})
                for marker, body in MALFORMED.items():
                    if marker in text:
                        return self._send(200, body)
                if "TRUNCATED" in text:  # announces more bytes than it sends, then closes the connection
                    self.send_response(200)
                    self.send_header("Content-Length", "500")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [')
                    self.close_connection = True
                    return None
                reply = "banana" if "GARBAGE" in text else server.answer(text)
                choice = {"message": {"role": "assistant", "content": reply}}
                field = server.logprobs(text) if payload.get("logprobs") else ABSENT
                if field is not ABSENT:
                    choice["logprobs"] = field
                self._send(200, {"choices": [choice]})

            def _send(self, code, body):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        return Handler


@pytest.fixture(scope="module")
def server(tiny):
    model_server = ModelServer(tiny)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), model_server.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    model_server.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield model_server
    httpd.shutdown()


def judge(server, tmp_path, kind=OpenAIPairwiseJudge, **kw):
    # Timeouts well above a healthy reply's time on a loaded machine; the SLOW fault sleeps past them.
    options = dict(timeout=2.0, max_retries=2, backoff=0.01, concurrency=4, cache_dir=str(tmp_path / "cache"))
    return kind("tiny", base_url=server.url, api_key="test", **(options | kw))


def test_pairwise_both_orders_from_the_model(server, tmp_path):
    verdicts = judge(server, tmp_path)(["What is 2 plus 2?", "Name a colour."], [("4", "5"), ("red", "blue")])
    assert all(p in (0.0, 0.5, 1.0) for p in verdicts.prob_first)
    assert len(verdicts.consistent) == 2 and all(c is not None for c in verdicts.consistent)
    # A tiny random model picks the same letter whatever the order: inconsistent, and the average is a tie.
    for p, c in zip(verdicts.prob_first, verdicts.consistent, strict=True):
        assert (p == 0.5) == (not c)


def test_endpoint_and_key_come_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setattr(server, "answer", lambda text: "A")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    before = server.authorizations["Bearer sk-from-env"]
    verdicts = OpenAIPairwiseJudge("tiny", cache_dir=None, max_retries=0)(["Env question?"], [("a", "b")])
    assert verdicts.prob_first == [0.5]  # "A" in both orders: position bias, a tie
    assert server.authorizations["Bearer sk-from-env"] == before + 2


def test_pairwise_direction_and_lenient_parsing(server, tmp_path, monkeypatch):
    # The server's model prefers whichever answer is "good", wherever it is shown, and words its reply variously.
    phrasings = iter(["Answer: {}", "The answer is {}", "**{}**", "{}."] * 4)
    monkeypatch.setattr(server, "answer",
                        lambda text: next(phrasings).format("A" if "Answer A: good" in text else "B"))
    verdicts = judge(server, tmp_path, cache_dir=None)(["Q?", "Q?"], [("good", "bad"), ("bad", "good")])
    assert verdicts.prob_first == [1.0, 0.0] and verdicts.consistent == [True, True]
    monkeypatch.setattr(server, "answer", lambda text: "The answer is B")
    assert judge(server, tmp_path, cache_dir=None)(["Q?"], [("x", "y")]).prob_first == [0.5]  # always B: a tie


def test_wrong_credentials_stop_the_run(server, tmp_path, monkeypatch):
    monkeypatch.setattr(server, "answer", lambda text: "A")
    bad = OpenAIPairwiseJudge("tiny", base_url=server.url.replace("/v1", "/missing"), timeout=1, max_retries=0)
    with pytest.raises(ConfigError, match="answered 404"):
        bad(["Q?"], [("a", "b")])


def test_faults_cost_the_pair_not_the_run(server, tmp_path):
    j = judge(server, tmp_path)
    started = time.perf_counter()
    verdicts = j(["SLOW question", "GARBAGE question", "REFUSE question", "FLAKY question", "fine question"],
                 [("a", "b")] * 5)
    assert verdicts.prob_first[0] is None  # timed out on every try
    assert verdicts.prob_first[1] is None  # unparseable reply
    assert verdicts.prob_first[2] is None  # 400: not retried
    assert verdicts.prob_first[3] is not None and verdicts.prob_first[4] is not None  # 500s were retried
    assert j.failures == 3
    refused = [t for t in server.requests if "REFUSE" in t]
    assert all(server.requests[t] == 1 for t in refused)
    assert time.perf_counter() - started < 30  # bounded: timeouts x retries, in parallel


def test_malformed_bodies_cost_the_pair_not_the_run(server, tmp_path):
    j = judge(server, tmp_path, max_retries=1)
    questions = [f"{marker} question" for marker in MALFORMED] + ["TRUNCATED question", "fine question"]
    verdicts = j(questions, [("a", "b")] * len(questions))
    assert verdicts.prob_first[:-1] == [None] * (len(questions) - 1)
    assert verdicts.prob_first[-1] is not None
    assert j.failures == len(questions) - 1
    truncated = [t for t in server.requests if "TRUNCATED" in t]
    assert truncated and all(server.requests[t] == 2 for t in truncated)  # a cut-off body is retried


def test_replies_are_cached_on_disk(server, tmp_path):
    j = judge(server, tmp_path)
    first = j(["Cache me?"], [("yes", "no")])
    before = sum(server.requests.values())
    second = judge(server, tmp_path)(["Cache me?"], [("yes", "no")])
    assert second.prob_first == first.prob_first and sum(server.requests.values()) == before


def test_pointwise_mode_and_config_errors(server, tmp_path, monkeypatch):
    monkeypatch.setattr(server, "answer", lambda text: "Yes" if "Answer: good" in text else "No")
    verdicts = judge(server, tmp_path, OpenAIPointwiseJudge)(["Q?", "Q?"], [("good", "bad"), ("bad", "good")])
    assert verdicts.prob_first == [1.0, 0.0]
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIPairwiseJudge("m")
    with pytest.raises(ConfigError, match="judge=openai_pointwise"):  # the base class does not know how to ask
        OpenAIJudge("m", base_url="http://127.0.0.1:1")


@pytest.mark.parametrize("group, kind", [("openai", OpenAIPairwiseJudge), ("openai_pointwise", OpenAIPointwiseJudge)])
def test_judge_groups_build_their_endpoint_judge(group, kind, tmp_path):
    from hydra.utils import instantiate

    from .conftest import compose_config

    cfg = compose_config("train", ["objective=oaif", f"judge={group}", "judge.model=m",
                                   "judge.base_url=http://127.0.0.1:1/v1", f"judge.cache_dir={tmp_path}"])
    built = instantiate(cfg.judge)
    assert type(built) is kind and built.template == kind.default_template


# ----- verdicts from log-probabilities ---------------------------------------------------------------------------
def shown_first(text: str, answer: str) -> bool:
    return f"Answer A: {answer}" in text


def test_pairwise_verdict_from_logprobs_both_orders_averaged(server, tmp_path, monkeypatch):
    # The text always says "B" (a tie and inconsistent if it decided); the probabilities favour "good" in both orders.
    monkeypatch.setattr(server, "answer", lambda text: "B")
    shown = {" A": 0.5, "A": 0.1, "B": 0.2, "x": 0.2}  # P(A) = 0.6 / (0.6 + 0.2) = 3/4
    swapped = {"a": 0.1, " B": 0.5, "b": 0.1, "The": 0.3}  # P(A) = 0.1 / (0.1 + 0.6) = 1/7: "good" is B
    monkeypatch.setattr(server, "logprobs",
                        lambda text: logprobs_field(shown if shown_first(text, "good") else swapped))
    j = judge(server, tmp_path)
    verdicts = j(["Logprob pair?"], [("good", "bad")])
    # P(good better) = (P(A | good first) + P(B | good second)) / 2 = (3/4 + 6/7) / 2 = 45/56
    assert verdicts.prob_first == [pytest.approx(45 / 56)]
    assert verdicts.consistent == [True]
    assert verdicts.sources == ["logprobs"] and j.verdict_sources == Counter(logprobs=1)
    asked = [p for t, p in server.payloads.items() if "Logprob pair?" in t]
    assert len(asked) == 2 and all(p["logprobs"] is True and p["top_logprobs"] == 20 for p in asked)


def test_pointwise_verdict_from_logprobs(server, tmp_path, monkeypatch):
    monkeypatch.setattr(server, "answer", lambda text: "No")
    good = {"Yes": 0.6, " yes": 0.1, "No": 0.1}  # P(yes) = 0.7 / 0.8 = 7/8
    bad = {"YES": 0.2, " No": 0.6, "Maybe": 0.2}  # P(yes) = 0.2 / 0.8 = 1/4
    monkeypatch.setattr(server, "logprobs",
                        lambda text: logprobs_field(good if "Answer: good" in text else bad))
    verdicts = judge(server, tmp_path, OpenAIPointwiseJudge)(["Pointwise logprobs?"] * 2,
                                                         [("good", "bad"), ("bad", "good")])
    # 0.5 + (P_a(yes) - P_b(yes)) / 2 = 0.5 +- (7/8 - 1/4) / 2 = 0.8125 | 0.1875
    assert verdicts.prob_first == [pytest.approx(0.8125), pytest.approx(0.1875)]
    assert verdicts.sources == ["logprobs", "logprobs"]


@pytest.mark.parametrize("field", [ABSENT, None, {"content": None}, {"content": []}],
                         ids=["absent", "null", "null-content", "no-tokens"])
def test_no_logprobs_falls_back_to_the_text_and_says_so(server, tmp_path, monkeypatch, caplog, field):
    monkeypatch.setattr(server, "answer", lambda text: "A" if shown_first(text, "good") else "B")
    monkeypatch.setattr(server, "logprobs", lambda text: field)
    j = judge(server, tmp_path)
    with caplog.at_level(logging.INFO, logger="alignlab.judges.openai"):
        first = j(["No logprobs?"], [("good", "bad")])
        second = j(["No logprobs either?"], [("bad", "good")])
    assert first.prob_first == [1.0] and second.prob_first == [0.0]
    assert first.sources == second.sources == ["text"]
    assert j.verdict_sources == Counter(text=2) and first.source_counts() == Counter(text=1)
    said = [r for r in caplog.records if "parsed from the reply text" in r.getMessage()]
    assert len(said) == 1  # once per run, not once per batch


def test_top_tokens_without_either_letter_fall_back_to_the_text(server, tmp_path, monkeypatch):
    monkeypatch.setattr(server, "answer", lambda text: "The answer is " + ("A" if shown_first(text, "good") else "B"))
    no_letters = {"The": 0.5, "**": 0.3, "Answer": 0.2}  # " a"-like words only inside longer tokens
    letters = {"A": 0.3, "B": 0.1, "The": 0.6}  # P(A) = 3/4
    monkeypatch.setattr(server, "logprobs", lambda text: logprobs_field(
        letters if "mixed" in text and shown_first(text, "good") else no_letters))
    verdicts = judge(server, tmp_path)(["No letters?", "mixed?"], [("good", "bad"), ("good", "bad")])
    assert verdicts.prob_first[0] == 1.0  # both orders from the text
    assert verdicts.prob_first[1] == pytest.approx((3 / 4 + 1.0) / 2)  # probabilities shown, text swapped
    assert verdicts.sources == ["text", "text"]  # "logprobs" only when every reply behind it was


def test_logprob_verdicts_are_cached_on_disk(server, tmp_path, monkeypatch):
    monkeypatch.setattr(server, "answer", lambda text: "B")
    monkeypatch.setattr(server, "logprobs", lambda text: logprobs_field({"A": 0.2, "B": 0.6}))
    first = judge(server, tmp_path)(["Cache my logprobs?"], [("x", "y")])
    before = sum(server.requests.values())
    second = judge(server, tmp_path)(["Cache my logprobs?"], [("x", "y")])
    assert second.prob_first == first.prob_first == [pytest.approx(0.5)]  # (1/4 + 3/4) / 2
    assert second.sources == ["logprobs"] and sum(server.requests.values()) == before


def test_text_only_endpoint_asks_for_no_logprobs(server, tmp_path, monkeypatch):
    # OPO's scorer and question generator use the bare endpoint: plain replies, requests as before.
    monkeypatch.setattr(server, "answer", lambda text: "C. the third")
    monkeypatch.setattr(server, "logprobs", lambda text: logprobs_field({"A": 0.9}))
    endpoint = ChatEndpoint("tiny", base_url=server.url, api_key="test", timeout=1, max_retries=0)
    assert endpoint.complete_all(["OPO question 1", [{"role": "user", "content": "OPO question 2"}]]) == \
        ["C. the third"] * 2
    assert all("logprobs" not in server.payloads[f"OPO question {i}"] for i in (1, 2))
    off = judge(server, tmp_path, top_logprobs=None)
    monkeypatch.setattr(server, "answer", lambda text: "A")
    assert off(["Logprobs off?"], [("a", "b")]).sources == ["text"]
    assert all("logprobs" not in p for t, p in server.payloads.items() if "Logprobs off?" in t)


def test_rate_limits_are_retried_and_the_key_is_never_logged(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(server, "answer", lambda text: "A")
    j = OpenAIPairwiseJudge("tiny", base_url=server.url, api_key="sk-very-secret-key", timeout=1, max_retries=2,
                    backoff=0.01, cache_dir=None)
    with caplog.at_level(logging.DEBUG):
        verdicts = j(["BUSY question", "REFUSE keyed question"], [("a", "b")] * 2)
    assert verdicts.prob_first == [0.5, None]  # two 429s, then an answer; a 400 costs its pair
    assert all(server.requests[t] == 3 for t in server.requests if "BUSY" in t)
    assert server.authorizations["Bearer sk-very-secret-key"] >= 6
    assert "sk-very-secret-key" not in caplog.text


def test_verdict_sources_are_one_per_pair():
    assert Verdicts([0.5, None], sources=["logprobs", None]).source_counts() == Counter(logprobs=1)
    assert Verdicts([0.5]).source_counts() == Counter()  # a judge that does not say
    with pytest.raises(ValueError, match="one source per pair"):
        Verdicts([0.5, 0.5], sources=["text"])
