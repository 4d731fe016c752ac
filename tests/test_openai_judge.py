"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 that answers with a local model.

The server injects faults by keyword in the question: SLOW (slower than the timeout), FLAKY (two 500s, then an
answer), GARBAGE (an unparseable reply), REFUSE (a 400).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.judges.openai import OpenAIJudge

# Question marker -> a 200 response whose body is not a chat completion.
MALFORMED = {
    "EMPTYLIST": b"[]",
    "NULLBODY": b"null",
    "NOCHOICES": b'{"choices": null}',
    "NOTTEXT": b'{"choices": [{"message": {"content": {"text": "A"}}}]}',
    "BADUTF8": b'{"choices": [{"message": {"content": "\xff\xfe"}}]}',
}


class ModelServer:
    def __init__(self, loaded):
        self.model = copy.deepcopy(loaded.model).eval()
        self.tokenizer = loaded.tokenizer
        self.requests = Counter()
        self.authorizations = Counter()
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
                    seen = server.requests[text]
                if "SLOW" in text:
                    time.sleep(1.0)
                if "REFUSE" in text:
                    return self._send(400, {"error": "bad request"})
                if "FLAKY" in text and seen <= 2:
                    return self._send(500, {"error": "try again"})
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
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

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


def judge(server, tmp_path, **kw):
    options = dict(timeout=0.5, max_retries=2, backoff=0.01, concurrency=4, cache_dir=str(tmp_path / "cache"))
    return OpenAIJudge("tiny", base_url=server.url, api_key="test", **(options | kw))


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
    verdicts = OpenAIJudge("tiny", cache_dir=None, max_retries=0)(["Env question?"], [("a", "b")])
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
    bad = OpenAIJudge("tiny", base_url=server.url.replace("/v1", "/missing"), timeout=1, max_retries=0)
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
    assert time.perf_counter() - started < 10  # bounded: timeouts x retries, in parallel


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
    verdicts = judge(server, tmp_path, mode="pointwise")(["Q?", "Q?"], [("good", "bad"), ("bad", "good")])
    assert verdicts.prob_first == [1.0, 0.0]
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIJudge("m")
    with pytest.raises(ConfigError, match="mode"):
        OpenAIJudge("m", base_url="http://127.0.0.1:1", mode="listwise")
