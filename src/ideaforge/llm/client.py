"""complete(): one model call over the official SDKs, with our own retries, cost and recording.

The SDKs' own retries are off (max_retries=0) so that every attempt is counted,
spaced and recorded here. What is retried: 408/409/429, any 5xx (529 = Anthropic
"overloaded"), connection errors and timeouts. Everything else (400, 401, 403,
404, 422, malformed responses) will not change on a second try and fails at once.
"""

from __future__ import annotations

import email.utils
import importlib
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ideaforge.errors import LLMError
from ideaforge.llm.models import Model, Prices, api_key, cost_usd, load_prices, parse_model

RETRY_STATUS = frozenset({408, 409, 429})  # plus every status >= 500


@dataclass(frozen=True)
class Completion:
    text: str  # the reply's text blocks joined; thinking blocks are dropped
    model: str  # the model spec string, e.g. "anthropic:claude-opus-4-5"
    input_tokens: int
    output_tokens: int  # includes thinking/reasoning tokens, as the providers bill them
    cost_usd: float
    latency_s: float  # wall time of the whole call, retries and back-off included


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries, the first included
    base_s: float = 1.0  # back-off before the 2nd try; doubles each try
    cap_s: float = 30.0  # no single wait is longer, a server's retry-after included
    timeout_s: float = 600.0  # per attempt (long: thinking replies take minutes)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_s)
        d = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        return d * (0.5 + 0.5 * random.random())  # "equal jitter": spreads clients that failed together


DEFAULT_RETRY = RetryPolicy()


@dataclass
class CallRecord:
    """One model call as the campaign store keeps it (success or final failure)."""

    model: str  # spec string
    purpose: str  # e.g. "ideate", "implement", "repair"
    system: str | None
    messages: list[dict]  # the prompt as sent
    reply: str | None  # None when the call failed
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    error: str | None = None
    started_at: float = field(default_factory=time.time)  # unix time


Recorder = Callable[[CallRecord], Any]


class _Retryable(Exception):
    """Internal: one failed attempt that may succeed if tried again."""

    def __init__(self, desc: str, retry_after: float | None):
        super().__init__(desc)
        self.retry_after = retry_after


def complete(
    model: Model | str,
    messages: list[dict],
    *,
    system: str | None = None,
    max_tokens: int = 8000,
    temperature: float | None = None,
    thinking_budget: int | None = None,
    reasoning_effort: str | None = None,
    recorder: Recorder | None = None,
    purpose: str = "",
    retry: RetryPolicy | None = None,
    prices: Prices | None = None,
) -> Completion:
    """Ask `model` for one reply to `messages` ([{"role": "user"|"assistant", "content": str}]).

    thinking_budget applies to Anthropic only (temperature is then dropped: the API
    requires the default); reasoning_effort ("low"/"medium"/"high") to OpenAI and
    OpenAI-compatible servers only. `prices` defaults to load_prices().
    Raises LLMError (MissingKey when the key is not set) after recording the failure.
    """
    retry = retry or DEFAULT_RETRY
    started, t0 = time.time(), time.perf_counter()
    spec = model.spec if isinstance(model, Model) else str(model)
    rec = CallRecord(spec, purpose, system, [dict(m) for m in messages], None, started_at=started)
    try:
        m = parse_model(model)
        rec.model = m.spec
        if m.provider == "replay":  # the recorded reply, its token counts, and no cost (llm/replay.py)
            from ideaforge.llm.replay import replayer

            rec.attempts = 1
            text, tin, tout = replayer(m.name).answer(system, messages, purpose)
            cost = 0.0
        elif m.provider == "local":  # a transformers model on this machine, loaded once (llm/local.py)
            from ideaforge.llm.local import local_model

            if not messages:
                raise LLMError(f"{m.spec}: no messages to send")
            rec.attempts = 1
            text, tin, tout = local_model(m.name).complete(messages, system=system, max_tokens=max_tokens,
                                                           temperature=temperature, purpose=purpose)
            cost = 0.0
        else:
            call = _prepare(m, messages, system, max_tokens, temperature, thinking_budget, reasoning_effort, retry)
            text, tin, tout = _with_retries(m, call, retry, rec)
            cost = cost_usd(m, tin, tout, load_prices() if prices is None else prices)
    except Exception as e:
        rec.error = f"{type(e).__name__}: {e}"
        rec.latency_s = time.perf_counter() - t0
        if recorder is not None:
            recorder(rec)
        raise
    rec.reply, rec.input_tokens, rec.output_tokens, rec.cost_usd = text, tin, tout, cost
    rec.latency_s = time.perf_counter() - t0
    if recorder is not None:
        recorder(rec)
    return Completion(text, m.spec, tin, tout, cost, rec.latency_s)


def _with_retries(m: Model, call: Callable[[], tuple[str, int, int]], retry: RetryPolicy, rec: CallRecord):
    last = ""
    for attempt in range(1, retry.attempts + 1):
        rec.attempts = attempt
        try:
            return call()
        except _Retryable as e:
            last = str(e)
            if attempt < retry.attempts:
                time.sleep(retry.delay(attempt, e.retry_after))
    raise LLMError(f"{m.spec}: gave up after {retry.attempts} attempts; last error: {last}")


def _prepare(m, messages, system, max_tokens, temperature, thinking_budget, reasoning_effort, retry):
    """Validate, build the SDK client, and return a no-argument function for one attempt."""
    if not messages:
        raise LLMError(f"{m.spec}: no messages to send")
    for msg in messages:
        if msg.get("role") not in ("user", "assistant") or not isinstance(msg.get("content"), str):
            raise LLMError(f"{m.spec}: each message must be {{'role': 'user'|'assistant', 'content': str}}, got {msg!r}")
    key = api_key(m)
    if m.provider == "anthropic":
        if thinking_budget is not None and thinking_budget >= max_tokens:
            raise LLMError(f"{m.spec}: thinking_budget ({thinking_budget}) must be below max_tokens ({max_tokens})")
        client = _client("anthropic", key, m.base_url, retry.timeout_s)
        kw: dict[str, Any] = {"model": m.name, "max_tokens": max_tokens, "messages": list(messages)}
        if system is not None:
            kw["system"] = system
        if thinking_budget is not None:
            kw["thinking"] = {"type": "enabled", "budget_tokens": thinking_budget}
        elif temperature is not None:
            kw["extra_body"] = {"temperature": temperature}  # not a named parameter in every SDK version
        return lambda: _attempt("anthropic", m, lambda: _anthropic_reply(client.messages.create(**kw)))
    client = _client("openai", key, m.base_url, retry.timeout_s)
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + list(messages)
    kw = {"model": m.name, "messages": msgs}
    # OpenAI's reasoning models reject max_tokens; local servers know max_tokens best.
    kw["max_completion_tokens" if m.provider == "openai" else "max_tokens"] = max_tokens
    if temperature is not None:
        kw["temperature"] = temperature
    if reasoning_effort is not None:
        kw["reasoning_effort"] = reasoning_effort
    return lambda: _attempt("openai", m, lambda: _openai_reply(client.chat.completions.create(**kw)))


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def _client(sdk: str, key: str, base_url: str | None, timeout_s: float):
    """One SDK client per (sdk, key, base URL, timeout): they hold connection pools."""
    ck = (sdk, key, base_url, timeout_s)
    with _clients_lock:
        c = _clients.get(ck)
        if c is None:
            if sdk == "anthropic":
                import anthropic

                c = anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0, timeout=timeout_s)
            else:
                import openai

                c = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout_s)
            _clients[ck] = c
        return c


def _attempt(sdk_name: str, m: Model, send: Callable[[], tuple[str, int, int]]) -> tuple[str, int, int]:
    """Run one try; classify the SDK's errors into _Retryable or a final LLMError."""
    sdk = importlib.import_module(sdk_name)
    try:
        return send()
    except sdk.APIStatusError as e:
        desc = f"{m.provider} HTTP {e.status_code}: {_api_message(e)}"
        if e.status_code in RETRY_STATUS or e.status_code >= 500:
            raise _Retryable(desc, _retry_after(e.response.headers)) from e
        raise LLMError(f"{m.spec}: {desc}") from e
    except sdk.APIConnectionError as e:  # APITimeoutError included
        raise _Retryable(f"{m.provider} {type(e).__name__}: {e}", None) from e
    except sdk.APIError as e:  # e.g. a response that does not parse: trying again will not help
        raise LLMError(f"{m.spec}: {m.provider} {type(e).__name__}: {e}") from e


def _api_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            kind = err.get("type") or err.get("code")
            return f"{err['message']}" + (f" ({kind})" if kind else "")
    return str(getattr(e, "message", e))


def _retry_after(headers) -> float | None:
    """Seconds from retry-after-ms / retry-after (seconds or an HTTP date); None if absent or unreadable."""
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        v = headers.get("retry-after")
        if not v:
            return None
        try:
            return float(v)
        except ValueError:
            return email.utils.parsedate_to_datetime(v).timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        return None


def _anthropic_reply(r) -> tuple[str, int, int]:
    text = "".join(b.text for b in r.content if getattr(b, "type", None) == "text")
    u = r.usage
    return text, int(u.input_tokens or 0), int(u.output_tokens or 0)


def _openai_reply(r) -> tuple[str, int, int]:
    if not r.choices:
        raise LLMError(f"openai reply for {r.model!r} has no choices")
    text = r.choices[0].message.content or ""
    u = r.usage
    return text, int(getattr(u, "prompt_tokens", 0) or 0), int(getattr(u, "completion_tokens", 0) or 0)
