"""Which model a command uses, and whether its endpoint answers, decided before any work starts.

`choose_model` is the one rule for "no --model given": IDEAFORGE_MODEL, then the first
provider whose key is set, else none (the offline ideators). `check_reachable` opens one
TCP connection to the model's server with a short timeout, so a local server that is not
running is reported in a second, before a campaign directory exists, instead of after the
SDK's retries (~16 s) inside a campaign.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from ideaforge.errors import LLMError
from ideaforge.llm.models import Model, check_key

DEFAULT_MODEL = "anthropic:claude-sonnet-4-5"
DEFAULT_OPENAI_MODEL = "openai:gpt-5"

# Where each SDK sends requests when the model names no base URL (and *_BASE_URL is unset).
_SDK_BASE_ENV = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
_SDK_DEFAULT_URL = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}
_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def choose_model(explicit: str | None, offline: bool = False, environ: Mapping[str, str] | None = None) -> str | None:
    """--model wins; --offline forces none; then IDEAFORGE_MODEL; then the first provider with a key.

    A named model whose key is missing raises MissingKey. None means: use the offline ideators.
    """
    env = os.environ if environ is None else environ
    if offline:
        return None
    named = explicit or env.get("IDEAFORGE_MODEL")
    if named:
        m = check_key(named)
        return m.spec if m.provider == "local" else named  # local: the absolute path, so `resume` finds it
    if env.get("ANTHROPIC_API_KEY"):
        return DEFAULT_MODEL
    if env.get("OPENAI_API_KEY"):
        return DEFAULT_OPENAI_MODEL
    return None


def endpoint(model: str | Model, environ: Mapping[str, str] | None = None) -> str:
    """The base URL the SDK will call for `model`."""
    env = os.environ if environ is None else environ
    m = check_key(model)
    if m.base_url:
        return m.base_url
    sdk = "anthropic" if m.provider == "anthropic" else "openai"
    return env.get(_SDK_BASE_ENV[sdk]) or _SDK_DEFAULT_URL[sdk]


def check_reachable(model: str | Model, timeout_s: float = 3.0, environ: Mapping[str, str] | None = None) -> None:
    """Raise LLMError unless a TCP connection to the model's server opens within `timeout_s` seconds.

    Skipped for a provider's public endpoint behind an HTTPS proxy (the proxy, not the host, is
    what this machine can reach). Checks the key too (MissingKey first: it is the likelier fault).
    """
    env = os.environ if environ is None else environ
    if check_key(model).provider in ("replay", "local"):  # no server: recorded calls, or a model on disk
        return
    url = endpoint(model, env)
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise LLMError(f"model {model}: cannot read a host from its base URL {url!r}")
    if url in _SDK_DEFAULT_URL.values() and any(env.get(v) for v in _PROXY_ENV):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        why = "nothing is listening there" if isinstance(e, ConnectionRefusedError) else (e.strerror or str(e))
        raise LLMError(
            f"cannot reach the server of model {model} at {url} ({why}, {host}:{port}, "
            f"{timeout_s:g} s timeout). Is the model server running (and is the URL right)? "
            f"Nothing was created; start it and run the command again, or pass --offline / another --model."
        ) from None
