"""One way to parse Python source: under a lock, and once per distinct text.

CPython 3.11's `ast.parse` is not thread-safe (cpython gh-106905): converting the C
tree to Python objects keeps a recursion-depth counter in per-interpreter state, and
a thread switch in the middle (a garbage collection running a finalizer is enough)
lets another parse corrupt it, ending in `SystemError: AST constructor recursion
depth mismatch`. The exploit and explore ideators parse `train.py` in two threads
at once, so every parse in ideaforge goes through `parse()` here.

The tree of a text is cached by its SHA-256: ideators re-read the same baseline
every epoch. Cached trees are shared, so callers must treat them as read-only.
It lives in `envs/` (the lowest layer) so that `ideate/` and `implement/` can use it.
"""

from __future__ import annotations

import ast
import hashlib
import threading
from collections import OrderedDict

CACHE_SIZE = 64  # distinct source texts kept (a campaign parses a handful of files)

# Re-entrant: a finalizer run by a collection inside a parse may itself parse.
_LOCK = threading.RLock()
_TREES: OrderedDict[str, ast.Module] = OrderedDict()
_stats = {"parses": 0, "hits": 0}


def parse(text: str, filename: str = "<unknown>") -> ast.Module:
    """The module tree of `text` (read-only, shared); raises SyntaxError like ast.parse."""
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    with _LOCK:
        tree = _TREES.get(key)
        if tree is not None:
            _TREES.move_to_end(key)
            _stats["hits"] += 1
            return tree
        tree = ast.parse(text, filename)  # SyntaxError propagates; failures are not cached
        _stats["parses"] += 1
        _TREES[key] = tree
        if len(_TREES) > CACHE_SIZE:
            _TREES.popitem(last=False)
        return tree


def stats() -> dict[str, int]:
    """Counts since start-up: real parses and cache hits (for tests and benchmarks)."""
    with _LOCK:
        return dict(_stats)
