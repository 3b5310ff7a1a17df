"""Placeholder elision: a REPLACE (or a diff's '+' lines) that says "rest unchanged" instead of the code.

Models shorten replies by writing a line that stands for omitted code —
``# ... rest of the training step unchanged ...``, ``// ... existing code ...``, a
bare ``...``, ``<rest of file>``. Applied literally, such a line replaces the lines
the SEARCH quoted, and the code it stands for is deleted: the file may still compile
and run (an elided ``optimizer.step()`` trains nothing), so this is silent damage.

A hunk is refused when a placeholder line sits among its new lines *and* the same
change drops a line the hunk quoted: a quoted, non-blank line that is neither kept
nor turned into a similar new line. A placeholder that deletes nothing (an added
comment, an Ellipsis stub body inserted, a literal ``...`` kept as context) applies
as written: it costs nothing, and refusing it would cost a repair round.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

# Phrases of elided code. Kept to what a comment standing for code says; a comment
# that merely mentions "original" or "other" things is not a placeholder.
_PHRASE = re.compile(
    r"\b(?:rest\s+of\s+(?:the\s+)?(?:file|function|code|method|class|loop|body|block|module|script|implementation|it|this)\b"
    r"|(?:rest|remainder)\s*$|(?:rest|remainder)\s+(?:is\s+|are\s+|stays?\s+|remains?\s+)?(?:unchanged|the\s+same|as\s+(?:before|is))"
    r"|unchanged|as\s+before|same\s+as\s+(?:before|above|original|the\s+original)"
    r"|(?:existing|remaining|omitted|previous|other|surrounding)\s+(?:code|lines)"
    r"|existing\s+(?:content|logic|implementation|body|methods|functions|settings|imports)"
    r"|(?:code|lines?|content|body)\s+(?:omitted|elided|skipped|not\s+shown)|omitted|for\s+brevity"
    r"|keep\s+(?:the\s+)?(?:rest|existing)|\betc\.?$|and\s+so\s+on\b)",
    re.I,
)
_DOTS = r"(?:\.{3,}|…)"
# a comment in the common languages' styles (#, //, /* */, <!-- -->, --, ;), and its text
_COMMENT = re.compile(r"^(?:#+|//+|/\*+|<!--|--|;+|\*)\s*(.*?)\s*(?:\*+/|-->)?$")
_TRAILING = re.compile(r"\s(?:#|//)\s*(.*)$")
# prose standing alone in brackets: "(unchanged)", "<rest of file>", "[... existing code ...]"
_BRACKETED = re.compile(r"^[<\[({]\s*(.*?)\s*[>\])}]$")


def is_placeholder(line: str) -> bool:
    """Whether `line` stands for omitted code rather than being code or an ordinary comment."""
    s = line.strip()
    if not s:
        return False
    if re.fullmatch(_DOTS, s):
        return True  # a bare "..." line; as an Ellipsis statement it is kept unless it drops lines
    m = _COMMENT.match(s)
    if m:
        return _elides(m.group(1))
    m = _BRACKETED.match(s)
    if m:
        return _elides(m.group(1)) and _is_prose(m.group(1))
    if _PHRASE.search(s) and _is_prose(s):
        return True  # "rest unchanged", "remaining code" written as a bare line
    m = _TRAILING.search(s)
    return bool(m and re.search(_DOTS, m.group(1)) and _PHRASE.search(m.group(1)))


def _elides(text: str) -> bool:
    """A comment's text: only dots, dots around words ("... training loop ..."), or a short elision phrase."""
    t = text.strip()
    if not t:
        return False
    if re.fullmatch(_DOTS, t) or (re.match(_DOTS, t) and re.search(rf"{_DOTS}\W*$", t)):
        return True
    return bool(_PHRASE.search(t)) and (bool(re.search(_DOTS, t)) or len(t.split()) <= 8)


def _is_prose(s: str) -> bool:
    """Words and dots only: no assignment, call, operator or keyword syntax of code."""
    return re.fullmatch(r"[\w\s.…,'’()-]*", s) is not None and not re.search(r"\w\(|\b(?:def|class|return|import)\b", s)


def elision(old: list[str], new: list[str]) -> tuple[str, list[str]] | None:
    """(placeholder line, quoted lines it would delete) if the hunk elides code, else None.

    Compared on stripped lines, so a re-indented replacement still pairs with what it
    replaces. In each changed region, a removed line counts as dropped unless a new,
    non-placeholder line in the same region resembles it (a modified line).
    """
    a, b = [x.strip() for x in old], [x.strip() for x in new]
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "replace":  # a pure insertion deletes nothing, whatever it says
            continue
        marks = [j for j in range(j1, j2) if is_placeholder(new[j])]
        if not marks:
            continue
        # a placeholder trailing real code ("x = 1  # ... rest unchanged") still pairs by its code
        added = [_TRAILING.sub("", b[j]).strip() if j in marks else b[j] for j in range(j1, j2)]
        dropped = _dropped(a[i1:i2], [x for x in added if x and not is_placeholder(x)])
        if dropped:
            return new[marks[0]], dropped
    return None


def _dropped(removed: list[str], added: list[str]) -> list[str]:
    """Removed non-blank lines with no similar added line, paired one to one in order."""
    free = list(added)
    out = []
    for r in removed:
        if not r:
            continue
        k = next((k for k, x in enumerate(free) if SequenceMatcher(None, r, x, autojunk=False).ratio() >= 0.6), None)
        if k is None:
            out.append(r)
        else:
            del free[: k + 1]  # order is kept: later removed lines pair only with later added ones
    return out


_WORDING = {  # source -> (where the placeholder is, what holds the lines it would delete)
    "search_replace": ("REPLACE section contains", "the SEARCH section quotes"),
    "diff": ("'+' lines contain", "the hunk removes ('-' lines)"),
    "file": ("new content contains", "the file has now"),
}


def elision_message(placeholder: str, dropped: list[str], source: str) -> str:
    where, quoted = _WORDING.get(source, _WORDING["diff"])
    shown = "\n".join(f"    | {x}" for x in dropped[:4]) + (f"\n    | ... ({len(dropped) - 4} more)" if len(dropped) > 4 else "")
    return (
        f"the {where} the placeholder line {placeholder.strip()!r}, which stands for code that was left out. "
        f"Applied literally it would delete {len(dropped)} line(s) {quoted}:\n{shown}\n"
        "Nothing is applied from a placeholder. Write out the full new text of every line you quote, with no "
        "'...', 'existing code' or 'unchanged' placeholders, or quote fewer lines so that only the lines you change are replaced."
    )
