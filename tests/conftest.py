"""Test-suite settings shared by every test file: the two tiers.

`python -m pytest` runs the default tier (pyproject's addopts deselect `@pytest.mark.slow`);
`python -m pytest -m "slow or not slow"` (what .ci/run runs) runs everything. The summary
says how many slow tests were left out and how to run them, so a skipped tier is never silent.
"""

from __future__ import annotations

import signal

import pytest


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    markexpr = config.getoption("markexpr", "")
    deselected = len(terminalreporter.stats.get("deselected", []))
    if markexpr == "not slow" and deselected:
        terminalreporter.write_line(
            f"{deselected} slow test(s) not run (the default tier); run everything, as CI does, with: "
            f'python -m pytest -m "slow or not slow"')


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """ideaforge's main() in this process, from tmp_path; restores the signal handlers main() installs."""
    from ideaforge.cli import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.chdir(tmp_path)

    def call(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err
    yield call
    for s, h in saved.items():
        signal.signal(s, h)
