"""An OpenAI-compatible chat endpoint as annotator (OpenAI, vLLM's server, llama.cpp's server, ...).

Robust by construction, because a long run must not die with the network:

* every request has a timeout; timeouts, connection errors, 429 and 5xx are retried ``max_retries`` times with
  exponential back-off; other 4xx are not retried;
* a reply that cannot be parsed (no ``A``/``B`` or ``Yes``/``No`` where expected) is a failure, not a guess;
* a failed request costs its pair (``None`` in the verdicts, counted by the datamodule), never the run;
* requests run ``concurrency`` at a time, and replies are cached on disk under a hash of the request, so a
  resumed run or a re-evaluation does not pay twice.

``mode=pairwise`` asks in both orders and averages (position consistency is reported); ``mode=pointwise`` asks
about each answer alone. The base URL and key come from config or ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError
from alignlab.judges.base import Verdicts
from alignlab.judges.llm import PAIRWISE, POINTWISE

log = logging.getLogger(__name__)
# "A", "B.", "Answer: A", "The answer is B", "**A**"
_LETTER = re.compile(r"^\W*(?:(?:the\s+)?(?:better\s+)?answer(?:\s+is)?\s*:?\s*\W*)?([AB])\b", re.IGNORECASE)
_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
RETRYABLE = {408, 409, 429, 500, 502, 503, 504}
FATAL = {401, 403, 404}  # a wrong key, model or URL: every request would fail, so the run stops at once


class ChatEndpoint:
    """Requests to an OpenAI-compatible ``/chat/completions`` endpoint: timeouts, bounded retries, concurrency and
    an on-disk cache keyed by the request. Shared by the judge below and OPO's scorer and question generator."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 system_prompt: str | None = None, timeout: float = 30.0, max_retries: int = 3, backoff: float = 1.0,
                 concurrency: int = 4, max_tokens: int = 4, temperature: float = 0.0,
                 cache_dir: str | None = None) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ConfigError("base_url is not set (nor OPENAI_BASE_URL)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY", "")
        self.model, self.system_prompt = model, system_prompt
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.concurrency, self.max_tokens, self.temperature = concurrency, max_tokens, temperature
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.failures = 0

    # ----- one request -----------------------------------------------------------------------------------------
    def _payload(self, prompt: str | list[dict[str, str]]) -> dict[str, Any]:
        if isinstance(prompt, list):  # whole chat messages
            messages = list(prompt)
        else:
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            messages.append({"role": "user", "content": prompt})
        return {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature}

    def _cache_path(self, payload: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps([self.url, payload], sort_keys=True).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, prompt: str | list[dict[str, str]]) -> str | None:
        """The endpoint's reply to ``prompt`` (a user message, or whole chat messages), or ``None`` after the
        retries are spent."""
        payload = self._payload(prompt)
        cached = self._cache_path(payload)
        if cached is not None and cached.is_file():
            try:
                return json.loads(cached.read_text())["reply"]
            except (OSError, ValueError, KeyError) as e:  # a damaged entry is a miss, not a failure
                log.warning("endpoint cache entry %s is unreadable (%s): asking again", cached, e)
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.max_retries + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = _reply_text(response.read())
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                    tmp.write_text(json.dumps({"request": payload, "reply": reply}))
                    tmp.replace(cached)  # whole or absent, also with concurrent writers
                return reply
            except urllib.error.HTTPError as e:
                if e.code in FATAL:
                    raise ConfigError(f"endpoint {self.url} answered {e.code} {e.reason}: check its base_url, "
                                      f"model and API key") from None
                if e.code not in RETRYABLE:
                    log.warning("endpoint answered %d: %s", e.code, e.reason)
                    return None
                error = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as e:
                error = f"{type(e).__name__}: {e}"  # HTTPException: e.g. a body cut off mid-transfer
            except ValueError as e:
                log.warning("endpoint sent a malformed response: %s", e)
                return None
            if attempt < self.max_retries:
                time.sleep(self.backoff * 2 ** attempt)
        log.warning("endpoint request failed after %d tries (%s)", self.max_retries + 1, error)
        return None

    def complete_all(self, prompts: list) -> list[str | None]:
        """Replies in the order of ``prompts`` (``None`` where a request failed), ``concurrency`` at a time."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.complete, prompts))


class OpenAIJudge(ChatEndpoint):
    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 mode: str = "pairwise", template: str | None = None, system_prompt: str | None = None,
                 timeout: float = 30.0, max_retries: int = 3, backoff: float = 1.0, concurrency: int = 4,
                 max_tokens: int = 4, temperature: float = 0.0, cache_dir: str | None = None) -> None:
        if mode not in ("pairwise", "pointwise"):
            raise ConfigError(f"judge.mode={mode!r} is not 'pairwise' or 'pointwise'")
        if not (base_url or os.environ.get("OPENAI_BASE_URL")):
            raise ConfigError("judge.base_url is not set (nor OPENAI_BASE_URL)")
        super().__init__(model, base_url, api_key, system_prompt, timeout, max_retries, backoff, concurrency,
                         max_tokens, temperature, cache_dir)
        self.mode = mode
        self.template = template or (PAIRWISE if mode == "pairwise" else POINTWISE)

    # ----- verdicts --------------------------------------------------------------------------------------------
    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        n = len(prompts)
        if self.mode == "pointwise":
            texts = [self.template.format(prompt=p, answer=a) for p, (a, _) in zip(prompts, pairs, strict=True)]
            texts += [self.template.format(prompt=p, answer=b) for p, (_, b) in zip(prompts, pairs, strict=True)]
            scores = [_parse(r, _YES_NO, {"yes": 1.0, "no": 0.0}) for r in self.complete_all(texts)]
            probs = [None if scores[i] is None or scores[n + i] is None else 0.5 + (scores[i] - scores[n + i]) / 2
                     for i in range(n)]
            self.failures += sum(p is None for p in probs)
            return Verdicts(probs)
        shown = [self.template.format(prompt=p, first=a, second=b) for p, (a, b) in zip(prompts, pairs, strict=True)]
        swapped = [self.template.format(prompt=p, first=b, second=a) for p, (a, b) in zip(prompts, pairs, strict=True)]
        letters = [_parse(r, _LETTER, {"a": 1.0, "b": 0.0}) for r in self.complete_all(shown + swapped)]
        probs, consistent = [], []
        for i in range(n):
            first, second = letters[i], letters[n + i]
            if first is None or second is None:
                probs.append(None)
                consistent.append(None)
                continue
            a_wins_shown, a_wins_swapped = first, 1.0 - second  # swapped: "B" means the first pair member
            probs.append((a_wins_shown + a_wins_swapped) / 2)
            consistent.append(a_wins_shown == a_wins_swapped)
        self.failures += sum(p is None for p in probs)
        return Verdicts(probs, consistent)


def _reply_text(raw: bytes) -> str:
    """The message text of a chat-completions response body; ValueError for any other shape."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"no choices[0].message.content ({type(e).__name__}: {e})") from None
    if content is not None and not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, not text")
    return content or ""


def _parse(reply: str | None, pattern: re.Pattern, values: dict[str, float]) -> float | None:
    if reply is None:
        return None
    match = pattern.match(reply.strip())
    return values[match.group(1).lower()] if match else None
