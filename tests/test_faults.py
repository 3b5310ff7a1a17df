"""Faults and load: parsing in threads, resume after SIGKILL, a full disk."""

from __future__ import annotations

import ast
import gc
import sys
import threading
import time
from pathlib import Path

import pytest

from ideaforge.envs import pyparse
from ideaforge.ideate.numeric import find_settings

TRAIN = Path(__file__).resolve().parents[1] / "src/ideaforge/envs/builtin/nanogpt-cpu/train.py"


class _Finalized:
    """Garbage whose finalizer yields the GIL: a collection inside a parse switches threads."""

    def __init__(self):
        self.me = self  # a cycle, so only the collector frees it

    def __del__(self):
        time.sleep(0)


def _hammer(parse, sources: list[str], threads: int = 4) -> list[str]:
    errors: list[str] = []

    def work(i: int) -> None:
        for text in sources:
            try:
                for _ in range(20):
                    _Finalized()
                parse(text + f"\nTHREAD_{i} = {i}\n")  # distinct texts: the cache cannot serve them
            except Exception as e:  # noqa: BLE001 - the race shows as SystemError
                errors.append(repr(e))
                return

    old = (sys.getswitchinterval(), gc.get_threshold())
    sys.setswitchinterval(1e-6)
    gc.set_threshold(50, 1, 1)
    try:
        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old[0])
        gc.set_threshold(*old[1])
    return errors


def test_parse_in_threads_is_safe(monkeypatch):
    # Trees kept by the cache change when collections run and hide the race: test the lock alone.
    monkeypatch.setattr(pyparse, "CACHE_SIZE", 0)
    base = TRAIN.read_text()
    sources = [base + f"\nVARIANT = {j}\n" for j in range(10)]
    rounds = next((r for r in range(1, 9) if _hammer(ast.parse, sources)), None)  # the race is random
    if rounds is None:
        pytest.skip("this interpreter does not show the ast.parse race (gh-106905), so the test cannot tell")
    for _ in range(rounds + 2):  # at least as many rounds as showed the race, plus margin
        assert _hammer(pyparse.parse, sources) == []


def test_parse_once_per_text():
    text = TRAIN.read_text() + "\nONCE_PER_TEXT = 1\n"
    before = pyparse.stats()
    first = find_settings("train.py", text)
    again = find_settings("train.py", text)
    after = pyparse.stats()
    assert first == again and first
    assert after["parses"] - before["parses"] == 1 and after["hits"] - before["hits"] == 1
    assert find_settings("train.py", "def broken(:\n") == []
