"""The live view: the report served over HTTP while a campaign runs, refreshing as it moves.

Read-only by construction: every request opens the campaign database with
`Store.open_readonly` and closes it again, so the server never holds a lock the search
loop could wait on, and it answers only GET/HEAD on two paths:

    /            the report page, rendered fresh, with a poller (every 2 s)
    /api/state   {"version": ..., "trials_done": ..., "last_trial": ..., ...}
    /ideas/N.js  one idea's details (diffs, trials, logs), asked for when the reader opens it

Bound to 127.0.0.1 unless told otherwise: campaign logs and diffs are not for the LAN.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from ideaforge.errors import StoreError
from ideaforge.report.data import load_campaign, read_state
from ideaforge.report.html import detail_script, render
from ideaforge.store import Store

_DETAIL = re.compile(r"^/ideas/(\d+)\.js$")


class ReportServer(ThreadingHTTPServer):
    daemon_threads = True  # a browser holding a connection open must not block shutdown

    def __init__(self, address: tuple[str, int], campaign_dir: Path):
        self.campaign_dir = campaign_dir
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ReportServer

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                data = load_campaign(self.server.campaign_dir, details=False)
                # One script per idea, named by the campaign's version: a browser never reuses a stale one.
                version = data["state"]["version"]
                body = render(data, live=True, detail_src=lambda i: f"ideas/{i}.js?v={version}").encode()
                ctype = "text/html; charset=utf-8"
            elif m := _DETAIL.match(path):
                store = Store.open_readonly(self.server.campaign_dir)
                try:
                    body, ctype = detail_script(store, int(m.group(1))).encode(), "text/javascript; charset=utf-8"
                finally:
                    store.close()
            elif path == "/api/state":
                body, ctype = json.dumps(read_state(self.server.campaign_dir)).encode(), "application/json"
            else:
                return self._error(HTTPStatus.NOT_FOUND, f"no page {path}; try /, /api/state or /ideas/N.js")
        except StoreError as e:
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass  # a poll every 2 s would flood the terminal the campaign prints to


def make_server(campaign_dir: str | Path, host: str = "127.0.0.1", port: int = 8765) -> ReportServer:
    """A server ready to `serve_forever()` (port 0 picks a free port; see `.url`)."""
    campaign_dir = Path(campaign_dir).resolve()
    read_state(campaign_dir)  # fail now, with the store's message, when DIR holds no campaign
    return ReportServer((host, port), campaign_dir)


def serve(campaign_dir: str | Path, host: str = "127.0.0.1", port: int = 8765,
          ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted; `ready(url)` is called once the socket listens."""
    server = make_server(campaign_dir, host, port)
    try:
        if ready:
            ready(server.url)
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
