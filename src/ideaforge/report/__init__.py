"""Seeing a campaign: the self-contained HTML report and the live web view.

    load_campaign(dir) -> dict          everything shown, read once, read-only (data.py)
    write_report(dir, out=None, compare=()) -> Path   one offline HTML file (html.py)
    make_server(dir, host, port) / serve(dir, ...)    the live view (server.py)

Imports only the stdlib and `ideaforge.store` / `ideaforge.stats`; importing this
package starts nothing.
"""

from ideaforge.report.data import load_campaign, read_state
from ideaforge.report.html import render, write_report
from ideaforge.report.server import make_server, serve

__all__ = ["load_campaign", "make_server", "read_state", "render", "serve", "write_report"]
