"""An OpenAI-compatible chat endpoint as annotator (OpenAI, vLLM's server, llama.cpp's server, Hugging Face's, ...).

Verdicts come from probabilities where the server gives them, as with the local judges
(:mod:`alignlab.judges.llm`): the request asks for ``logprobs`` with the ``top_logprobs`` most likely first tokens,
and the verdict is ``P(A) / (P(A) + P(B))`` (``Yes``/``No`` pointwise) over those tokens, their spelling variants
(``" A"``, ``"A"``, ``"a"``) merged. A server that sends no log-probabilities, or whose top tokens name neither
answer, is read from its reply text instead (1 or 0). Each verdict says which decided it (``Verdicts.sources``:
``"logprobs"`` only when every reply behind it was read from probabilities), the judge counts them over the run
(``verdict_sources``) and logs the first use of each.

Robust by construction, because a long run must not die with the network (HTTP by ``httpx``, retries by
``tenacity``):

* every request has a timeout; timeouts, connection errors, a body cut off mid-transfer, 429 and 5xx are retried
  ``max_retries`` times with jittered exponential back-off; other 4xx are not retried; 401/403/404 (a wrong key,
  model or URL: every request would fail) stop the run at once with a ConfigError;
* a reply that cannot be read (no ``A``/``B`` or ``Yes``/``No`` where expected, a body that is not a chat
  completion) is a failure, not a guess;
* a failed request costs its pair (``None`` in the verdicts, counted by the datamodule), never the run;
* requests run ``concurrency`` at a time over one connection pool, and replies (text and first-token
  log-probabilities) are cached on disk under a hash of the request, so a resumed run or a re-evaluation does not
  pay twice.

:class:`OpenAIPairwiseJudge` (``judge=openai``) asks in both orders and averages (position consistency is
reported); :class:`OpenAIPointwiseJudge` (``judge=openai_pointwise``) asks about each answer alone and compares
``P(yes)``. The base URL and key come from config or ``OPENAI_BASE_URL`` /
``OPENAI_API_KEY``; the key is sent as a bearer token and never logged. A server that refuses ``logprobs`` (a 400)
needs ``top_logprobs: null``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import tenacity

from alignlab.errors import ConfigError
from alignlab.judges.base import Verdicts
from alignlab.judges.llm import PAIRWISE, POINTWISE

log = logging.getLogger(__name__)
# httpx logs every request at INFO: thousands of lines in a run's log, so only its warnings are kept.
logging.getLogger("httpx").setLevel(logging.WARNING)
# "A", "B.", "Answer: A", "The answer is B", "**A**"
_LETTER = re.compile(r"^\W*(?:(?:the\s+)?(?:better\s+)?answer(?:\s+is)?\s*:?\s*\W*)?([AB])\b", re.IGNORECASE)
_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
RETRYABLE = {408, 409, 429, 500, 502, 503, 504}
FATAL = {401, 403, 404}  # a wrong key, model or URL: every request would fail, so the run stops at once
MAX_BACKOFF_S = 60.0  # however many retries are configured, no single wait is longer
LOGPROBS, TEXT = "logprobs", "text"  # what decided a verdict


@dataclass(frozen=True)
class Reply:
    """One chat completion: its text and, where the server sent them, the first generated token's most likely
    alternatives as ``(token, log-probability)`` pairs (None: not requested, or not sent)."""

    text: str
    top_logprobs: list[tuple[str, float]] | None = None


class _RetryableStatus(Exception):
    """An HTTP status worth asking again for (429, 5xx, ...)."""


class ChatEndpoint:
    """Requests to an OpenAI-compatible ``/chat/completions`` endpoint: timeouts, bounded retries, concurrency and
    an on-disk cache keyed by the request. Shared by the judge below and OPO's scorer and question generator.

    ``top_logprobs``: ask for the first tokens' log-probabilities (that many alternatives); None or 0 does not
    ask, and the request is then exactly what it was before log-probabilities existed here (same cache keys)."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 system_prompt: str | None = None, timeout: float = 30.0, max_retries: int = 3, backoff: float = 1.0,
                 concurrency: int = 4, max_tokens: int = 4, temperature: float = 0.0,
                 cache_dir: str | None = None, top_logprobs: int | None = None) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ConfigError("base_url is not set (nor OPENAI_BASE_URL)")
        if top_logprobs is not None and top_logprobs < 0:
            raise ConfigError(f"top_logprobs={top_logprobs} is negative (null or 0: do not ask)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY", "")
        self.model, self.system_prompt = model, system_prompt
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.concurrency, self.max_tokens, self.temperature = concurrency, max_tokens, temperature
        self.top_logprobs = top_logprobs or None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.failures = 0
        self.last_error: str | None = None  # why the latest failed request failed, for a failure report

    # ----- public: text replies (OPO) and full replies (the judge) ------------------------------------------------
    def complete(self, prompt: str | list[dict[str, str]]) -> str | None:
        """The endpoint's reply text to ``prompt`` (a user message, or whole chat messages), or ``None`` after the
        retries are spent."""
        reply = self.reply(prompt)
        return None if reply is None else reply.text

    def complete_all(self, prompts: list) -> list[str | None]:
        """Reply texts in the order of ``prompts`` (``None`` where a request failed), ``concurrency`` at a time."""
        return [None if reply is None else reply.text for reply in self.reply_all(prompts)]

    def reply(self, prompt: str | list[dict[str, str]]) -> Reply | None:
        """Like :meth:`complete`, with the first token's log-probabilities where the server sent them."""
        return self.reply_all([prompt])[0]

    def reply_all(self, prompts: list) -> list[Reply | None]:
        """Like :meth:`complete_all`, with log-probabilities; one connection pool serves the whole batch."""
        with self._client() as client, ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(partial(self._reply, client), prompts))

    # ----- one request -----------------------------------------------------------------------------------------
    def _payload(self, prompt: str | list[dict[str, str]]) -> dict[str, Any]:
        if isinstance(prompt, list):  # whole chat messages
            messages = list(prompt)
        else:
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            messages.append({"role": "user", "content": prompt})
        payload = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                   "temperature": self.temperature}
        if self.top_logprobs:
            payload |= {"logprobs": True, "top_logprobs": self.top_logprobs}
        return payload

    def _client(self) -> httpx.Client:
        """A pooled client for one batch of requests (made per batch, so the endpoint itself stays picklable)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(headers=headers, timeout=self.timeout,
                            limits=httpx.Limits(max_connections=max(1, self.concurrency)))

    def _retrying(self) -> tenacity.Retrying:
        """The retry policy, fresh per request: transient faults only, bounded tries, jittered back-off."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=tenacity.wait_exponential_jitter(initial=self.backoff, max=MAX_BACKOFF_S, jitter=self.backoff),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _RetryableStatus)),
            reraise=True)

    def _reply(self, client: httpx.Client, prompt: str | list[dict[str, str]]) -> Reply | None:
        payload = self._payload(prompt)
        cached = self._cache_path(payload)
        hit = self._read_cache(cached)
        if hit is not None:
            return hit
        try:
            response = self._retrying()(self._post, client, payload)
        except (httpx.TransportError, _RetryableStatus) as e:  # e.g. a body cut off mid-transfer, a timeout
            tries = self.max_retries + 1
            return self._failed(f"endpoint request failed after {tries} tries ({type(e).__name__}: {e})")
        if not response.is_success:  # a 400 (e.g. a server that refuses logprobs), a redirect, ...
            return self._failed(f"endpoint answered {response.status_code}: {response.text[:200]}")
        try:
            reply = _read_reply(response.content)
        except ValueError as e:
            return self._failed(f"endpoint sent a malformed response: {e}")
        self._write_cache(cached, payload, reply)
        return reply

    def _failed(self, why: str) -> None:
        log.warning("%s", why)
        self.last_error = why
        return None

    def _post(self, client: httpx.Client, payload: dict[str, Any]) -> httpx.Response:
        """One try; raises what the retry policy retries, and a ConfigError for what no retry could fix."""
        try:
            response = client.post(self.url, json=payload)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
            raise ConfigError(f"endpoint base_url {self.url!r} is not an http(s) URL ({e})") from None
        if response.status_code in FATAL:
            raise ConfigError(f"endpoint {self.url} answered {response.status_code} {response.reason_phrase}: "
                              f"check its base_url, model and API key")
        if response.status_code in RETRYABLE:
            raise _RetryableStatus(f"HTTP {response.status_code}")
        return response

    # ----- the disk cache ----------------------------------------------------------------------------------------
    def _cache_path(self, payload: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps([self.url, payload], sort_keys=True).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, path: Path | None) -> Reply | None:
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
            top = entry.get("top_logprobs")  # absent in entries written before log-probabilities were kept
            return Reply(entry["reply"], None if top is None else [(str(t), float(lp)) for t, lp in top])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a damaged entry is a miss
            log.warning("endpoint cache entry %s is unreadable (%s): asking again", path, e)
            return None

    def _write_cache(self, path: Path | None, payload: dict[str, Any], reply: Reply) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"request": payload, "reply": reply.text, "top_logprobs": reply.top_logprobs}))
        tmp.replace(path)  # whole or absent, also with concurrent writers


class _Read(NamedTuple):
    prob: float  # P(the positive answer: "A", "Yes")
    source: str  # LOGPROBS or TEXT


@dataclass(frozen=True)
class _Choice:
    """The two answers a judge prompt asks for (``a``/``b``, ``yes``/``no``, lower case) and the text pattern that
    finds them in a reply."""

    positive: str
    negative: str
    pattern: re.Pattern

    def read(self, reply: Reply | None) -> _Read | None:
        """P(positive) from the first token's log-probabilities where they name either answer, else from the
        reply text (1 or 0); None when neither tells."""
        if reply is None:
            return None
        if reply.top_logprobs:
            prob = self.probability(reply.top_logprobs)
            if prob is not None:
                return _Read(prob, LOGPROBS)
        match = self.pattern.match(reply.text.strip())
        if match is None:
            return None
        return _Read(1.0 if match.group(1).lower() == self.positive else 0.0, TEXT)

    def probability(self, top: list[tuple[str, float]]) -> float | None:
        """``P(positive) / (P(positive) + P(negative))`` over the listed tokens, each answer's spelling variants
        summed. An answer missing from the list counts as probability 0 (it is less likely than every listed
        token); None when neither is listed."""
        logprobs: dict[str, list[float]] = {self.positive: [], self.negative: []}
        for token, logprob in top:
            word = _bare(token)
            if word in logprobs:
                logprobs[word].append(logprob)
        if not (logprobs[self.positive] or logprobs[self.negative]):
            return None
        margin = _logsumexp(logprobs[self.positive]) - _logsumexp(logprobs[self.negative])
        return None if math.isnan(margin) else _sigmoid(margin)


_AB = _Choice("a", "b", _LETTER)
_YES_OR_NO = _Choice("yes", "no", _YES_NO)


class OpenAIJudge(ChatEndpoint):
    """An endpoint as annotator; a subclass says how it asks (:meth:`verdicts`) and its default ``template``.
    ``top_logprobs``: how many first-token alternatives to ask for (20 is OpenAI's maximum); null reads the reply
    text only, for servers that refuse ``logprobs``."""

    runs_elsewhere = True  # it waits on a server: online pairs overlap its requests with sampling (overlap_judge)
    default_template: str

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 template: str | None = None, system_prompt: str | None = None,
                 timeout: float = 30.0, max_retries: int = 3, backoff: float = 1.0, concurrency: int = 4,
                 max_tokens: int = 4, temperature: float = 0.0, cache_dir: str | None = None,
                 top_logprobs: int | None = 20) -> None:
        if not hasattr(self, "default_template"):
            raise ConfigError(f"{type(self).__name__} does not say how to ask: use OpenAIPairwiseJudge (judge=openai) "
                              "or OpenAIPointwiseJudge (judge=openai_pointwise)")
        if not (base_url or os.environ.get("OPENAI_BASE_URL")):
            raise ConfigError("judge.base_url is not set (nor OPENAI_BASE_URL)")
        super().__init__(model, base_url, api_key, system_prompt=system_prompt, timeout=timeout,
                         max_retries=max_retries, backoff=backoff, concurrency=concurrency, max_tokens=max_tokens,
                         temperature=temperature, cache_dir=cache_dir, top_logprobs=top_logprobs)
        self.template = template or self.default_template
        self.verdict_sources: Counter[str] = Counter()  # over the run: how many verdicts each source decided

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, url={self.url!r})"

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        verdicts = self.verdicts(prompts, pairs)
        self.failures += sum(p is None for p in verdicts.prob_first)
        self._count_sources(verdicts.source_counts())
        return verdicts

    def verdicts(self, prompts: list[str], pairs: list[tuple[str, str]]) -> Verdicts:
        """``P(first answer better)`` for each pair, from the endpoint's replies."""
        raise NotImplementedError

    def _last_failure(self, replies: list[Reply | None], reads: list[_Read | None]) -> str | None:
        """Why the last reply of a batch that decided nothing failed: its text, or the failed request's error."""
        for reply, read in zip(reversed(replies), reversed(reads), strict=True):
            if read is None:
                return f"unreadable reply {reply.text[:200]!r}" if reply is not None else self.last_error
        return None

    def _count_sources(self, counts: Counter[str]) -> None:
        """Adds to the run's counts, and says once per run which way verdicts are being decided."""
        for source in sorted(set(counts) - set(self.verdict_sources)):
            if source == LOGPROBS:
                log.info("judge %s: verdicts read from the first token's log-probabilities (top %d)",
                         self.model, self.top_logprobs)
            elif self.top_logprobs:
                log.warning("judge %s: the server sent no usable log-probabilities for some replies; those "
                            "verdicts are parsed from the reply text", self.model)
            else:
                log.info("judge %s: verdicts parsed from the reply text (judge.top_logprobs is off)", self.model)
        self.verdict_sources.update(counts)


class OpenAIPairwiseJudge(OpenAIJudge):
    """Both answers in one prompt, asked in both orders (``judge=openai``)."""

    default_template = PAIRWISE

    def verdicts(self, prompts: list[str], pairs: list[tuple[str, str]]) -> Verdicts:
        """``P(a better)`` is the mean of ``P(A)`` with ``a`` shown first and ``P(B)`` with it shown
        second; the orders are consistent when both put ``a`` on the same side of 0.5."""
        shown = [self.template.format(prompt=p, first=a, second=b) for p, (a, b) in zip(prompts, pairs, strict=True)]
        swapped = [self.template.format(prompt=p, first=b, second=a) for p, (a, b) in zip(prompts, pairs, strict=True)]
        replies = self.reply_all(shown + swapped)
        reads = [_AB.read(r) for r in replies]
        n = len(prompts)
        probs, consistent, sources, orders = [], [], [], []
        for read_shown, read_swapped in zip(reads[:n], reads[n:], strict=True):
            orders.append((read_shown.prob if read_shown else None, 1.0 - read_swapped.prob if read_swapped else None))
            if read_shown is None or read_swapped is None:
                probs.append(None)
                consistent.append(None)
                sources.append(None)
                continue
            a_wins_shown, a_wins_swapped = read_shown.prob, 1.0 - read_swapped.prob  # swapped: "B" is a
            probs.append((a_wins_shown + a_wins_swapped) / 2)
            consistent.append((a_wins_shown > 0.5) == (a_wins_swapped > 0.5))
            sources.append(_source(read_shown, read_swapped))
        return Verdicts(probs, consistent, sources, orders, self._last_failure(replies, reads))


class OpenAIPointwiseJudge(OpenAIJudge):
    """Each answer alone, asked whether it is good (``judge=openai_pointwise``).

    Two answers are compared as ``0.5 + (P_a(yes) - P_b(yes)) / 2``, not by their log-odds as the local pointwise
    judge does: a reply read from its text gives ``P(yes)`` of exactly 0 or 1, whose log-odds are infinite."""

    default_template = POINTWISE

    def verdicts(self, prompts: list[str], pairs: list[tuple[str, str]]) -> Verdicts:
        texts = [self.template.format(prompt=p, answer=a) for p, (a, _) in zip(prompts, pairs, strict=True)]
        texts += [self.template.format(prompt=p, answer=b) for p, (_, b) in zip(prompts, pairs, strict=True)]
        replies = self.reply_all(texts)
        reads = [_YES_OR_NO.read(r) for r in replies]
        n = len(prompts)
        probs, sources = [], []
        for read_a, read_b in zip(reads[:n], reads[n:], strict=True):
            if read_a is None or read_b is None:
                probs.append(None)
                sources.append(None)
                continue
            probs.append(0.5 + (read_a.prob - read_b.prob) / 2)
            sources.append(_source(read_a, read_b))
        return Verdicts(probs, sources=sources, last_failure=self._last_failure(replies, reads))


def _source(*reads: _Read) -> str:
    """A verdict is "logprobs" only when every reply behind it was read from probabilities."""
    return LOGPROBS if all(r.source == LOGPROBS for r in reads) else TEXT


def _read_reply(raw: bytes) -> Reply:
    """The text and first-token log-probabilities of a chat-completions response body; ValueError when it is not
    one (a missing or odd ``logprobs`` field is not an error: the text then decides)."""
    try:
        choice = json.loads(raw)["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"no choices[0].message.content ({type(e).__name__}: {e})") from None
    if content is not None and not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, not text")
    return Reply(content or "", _first_token_alternatives(choice))


def _first_token_alternatives(choice: dict[str, Any]) -> list[tuple[str, float]] | None:
    """``choices[0].logprobs.content[0].top_logprobs`` as ``(token, logprob)`` pairs (the shape OpenAI, vLLM,
    llama.cpp and TGI share); None when the server sent none or another shape."""
    try:
        top = choice["logprobs"]["content"][0]["top_logprobs"]
        pairs = [(str(t["token"]), float(t["logprob"])) for t in top]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return [(token, lp) for token, lp in pairs if not math.isnan(lp)] or None


def _bare(token: str) -> str:
    """A token's word, lower case, without spaces, punctuation or tokenizer space marks: " A", "A.", "▁a" -> "a"."""
    return re.sub(r"\W", "", token.lstrip("Ġ▁")).lower()


def _logsumexp(values: list[float]) -> float:
    top = max(values, default=-math.inf)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def _sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)) without overflow, also at +-inf (an answer absent from the top tokens)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
