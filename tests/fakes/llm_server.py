"""A scripted model server speaking the Anthropic Messages and OpenAI Chat Completions HTTP APIs.

Drive the real SDKs against it:

    with FakeLLMServer(["first reply", {"status": 429, "headers": {"retry-after": "0"}}, "second"]) as srv:
        complete(f"anthropic:claude-opus-4-5@{srv.anthropic_url}", msgs)   # -> "first reply"
        complete(f"openai:gpt-5@{srv.openai_url}", msgs)                   # 429, then "second"
        srv.requests[-1]["json"]["messages"]                               # what the SDK sent

Endpoints: POST /v1/messages (Anthropic; the SDK's base_url is srv.anthropic_url
= http://127.0.0.1:PORT) and POST /v1/chat/completions (OpenAI; base_url is
srv.openai_url = http://127.0.0.1:PORT/v1). Set ANTHROPIC_API_KEY / OPENAI_API_KEY
to anything; the server does not check keys.

The script is either a list of replies, consumed in order across both endpoints
(an empty queue answers 500 "script exhausted", so a test that calls too often
fails loudly), or a callable `(provider, request_json) -> reply` where provider
is "anthropic" or "openai". A reply is one of:

  - a str: the reply text;
  - {"text": str, "input_tokens": int, "output_tokens": int, "thinking": str}
    (all optional; tokens default to rough word counts, thinking adds an
    Anthropic thinking block before the text);
  - an error: {"status": 429 | 500 | 529 | 400 | ..., "headers": {...},
    "body": {...}}; body defaults to the provider's error JSON shape with a
    type matched to the status;
  - {"delay_s": float, ...} with any of the above: sleep first (for timeouts).

Every request is appended to `srv.requests` as {"path", "provider", "headers"
(lower-case keys), "json"} before it is answered.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = str | dict
Script = Iterable[Reply] | Callable[[str, dict], Reply]

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def error_body(provider: str, status: int, message: str | None = None) -> dict:
    """The JSON body a provider sends with an error of this HTTP status."""
    message = message or f"fake {status} error"
    if provider == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = _OPENAI_ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def _words(x: Any) -> int:
    return max(1, len(json.dumps(x).split()))


class FakeLLMServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) in a daemon thread; use as a context manager."""

    def __init__(self, script: Script = ()):
        self._lock = threading.Lock()
        self._fn = script if callable(script) else None
        self._queue: list[Reply] = [] if callable(script) else list(script)
        self.requests: list[dict] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeLLMServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def push(self, *replies: Reply) -> None:
        """Append replies to the queue (list scripts only)."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Replies still queued."""
        with self._lock:
            return len(self._queue)

    # ---- answering ----
    def _next(self, provider: str, req: dict) -> Reply:
        if self._fn is not None:
            return self._fn(provider, req)
        with self._lock:
            if not self._queue:
                return {"status": 500, "body": error_body(provider, 500, "FakeLLMServer: script exhausted")}
            return self._queue.pop(0)

    def _answer(self, provider: str, req: dict) -> tuple[int, dict, dict]:
        """-> (status, headers, json body)"""
        reply = self._next(provider, req)
        if isinstance(reply, str):
            reply = {"text": reply}
        if reply.get("delay_s"):
            time.sleep(reply["delay_s"])
        if "status" in reply and reply["status"] != 200:
            status = int(reply["status"])
            body = reply.get("body") or error_body(provider, status)
            return status, dict(reply.get("headers") or {}), body
        text = reply.get("text", "")
        tin = reply.get("input_tokens", _words(req.get("messages", [])) + _words(req.get("system", "")))
        tout = reply.get("output_tokens", len(text.split()))
        model = req.get("model", "fake-model")
        headers = dict(reply.get("headers") or {})
        if provider == "anthropic":
            content = []
            if reply.get("thinking"):
                content.append({"type": "thinking", "thinking": reply["thinking"], "signature": "fake-sig"})
            content.append({"type": "text", "text": text})
            body = {
                "id": f"msg_fake{len(self.requests)}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": tin, "output_tokens": tout},
            }
        else:
            body = {
                "id": f"chatcmpl-fake{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout},
            }
        return 200, headers, body

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    req = json.loads(raw or b"{}")
                except ValueError:
                    req = {"_raw": raw.decode("utf-8", "replace")}
                path = self.path.split("?")[0]
                provider = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}.get(path)
                with server._lock:
                    server.requests.append(
                        {"path": path, "provider": provider, "headers": {k.lower(): v for k, v in self.headers.items()}, "json": req}
                    )
                if provider is None:
                    self._send(404, {}, {"error": {"type": "not_found_error", "message": f"no route {path}"}})
                    return
                try:
                    status, headers, body = server._answer(provider, req)
                except Exception as e:  # a broken script must surface as an HTTP error, not a hang
                    status, headers, body = 500, {}, error_body(provider, 500, f"FakeLLMServer script raised {e!r}")
                self._send(status, headers, body)

            def _send(self, status: int, headers: dict, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet test output
                pass

        return Handler
