"""Parsing a model's reply into ideas.

The requested format is, per idea:

    [Idea] one-line title
    [Description] what to do and why
    [Code Changes] the changes in words
    [Hyperparameters] name = value, one per line (or: none)
    [End]

Models drift from it, so parsing is lenient: tags may be bolded, headed or
followed by a colon; [Hyperparameters] and [End] may be missing; prose between
blocks is ignored. The reference's `[Experiment] ... [Code Changes] ... [End]`
form is accepted too, with a title taken from the experiment's first sentence.
A reply with no recognisable idea yields no ideas; it is not an error.
"""

from __future__ import annotations

import re

from ideaforge.ideate.types import Idea

_TAGS = {
    "idea": "title",
    "title": "title",
    "experiment": "experiment",
    "description": "description",
    "code changes": "code_changes",
    "code change": "code_changes",
    "hyperparameters": "hyperparameters",
    "hyper-parameters": "hyperparameters",
    "hyperparameter": "hyperparameters",
    "end": "end",
}
# "[Idea]", "**[Idea]**", "[Idea 3]", "[Code Changes]:" anywhere in a line.
_TAG = re.compile(
    r"[*_]*\[\s*(" + "|".join(re.escape(t) for t in sorted(_TAGS, key=len, reverse=True)) + r")(?:\s*#?\s*\d+)?\s*\][*_]*[ \t]*:?",
    re.IGNORECASE,
)
_HP_LINE = re.compile(r"^[\s\-*•]*`?([A-Za-z_][\w.\[\]'\"-]*)`?\s*(?:=|:)\s*(.+?)\s*$")
_NONE = re.compile(r"^\W*(none|n/?a|no (?:hyper-?parameter )?changes?|unchanged|-)\W*$", re.IGNORECASE)
TITLE_MAX = 120  # characters kept of a title derived from a description


def parse_ideas(text: str) -> list[Idea]:
    """Every idea in `text`, in order; [] when none can be found."""
    text = (text or "").replace("\r\n", "\n")
    matches = list(_TAG.finditer(text))
    ideas: list[Idea] = []
    cur: dict[str, str] = {}
    for k, m in enumerate(matches):
        field = _TAGS[m.group(1).lower()]
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        body = text[m.end() : end]
        if field == "end":
            _flush(cur, ideas)
            continue
        starts_idea = field == "title" or (field == "experiment" and "title" not in cur)
        if (starts_idea and (cur.get("title") or cur.get("description") or cur.get("experiment"))) or field in cur:
            _flush(cur, ideas)
        cur[field] = body
    _flush(cur, ideas)
    return ideas


def _flush(cur: dict[str, str], ideas: list[Idea]) -> None:
    fields = dict(cur)
    cur.clear()
    title_block = _clean(fields.get("title", ""))
    title, _, rest = title_block.partition("\n")
    title = _clean_title(title)
    description = _clean(fields.get("description", "")) or _clean(fields.get("experiment", ""))
    if fields.get("description") and fields.get("experiment"):
        description = _clean(fields["experiment"]) + "\n\n" + description
    if rest.strip() and not description:
        description = _clean(rest)
    if not title and description:
        title = _first_sentence(description)
    if not title or not (description or title_block):
        return
    if not re.search(r"[A-Za-z]{2}", title):
        return
    ideas.append(
        Idea(
            title=title,
            description=description or title,
            code_changes=_clean(fields.get("code_changes", "")),
            hyperparameters=_hyperparameters(fields.get("hyperparameters", "")),
        )
    )


def _clean(s: str) -> str:
    """Trim a block: surrounding blank lines, fences, stray bold markers, trailing separators."""
    lines = [ln.rstrip() for ln in s.strip("\n").split("\n")]
    lines = [ln for ln in lines if not re.match(r"^\s*(```+\w*|~~~+|-{3,}|\*{3,}|_{3,})\s*$", ln)]
    out = "\n".join(lines).strip()
    out = re.sub(r"^\*\*\s*|\s*\*\*$", "", out).strip()
    return out


def _clean_title(s: str) -> str:
    s = s.strip().strip("*_#`\"' ").strip()
    s = re.sub(r"^(?:idea\s*#?\d*\s*[:.)-]\s*|#?\d+\s*[.):-]\s+)", "", s, flags=re.IGNORECASE).strip()
    return s.strip("*_`\"' ").rstrip(":").strip()


def _first_sentence(text: str) -> str:
    first = re.split(r"(?<=[.!?])\s+|\n", text.strip(), maxsplit=1)[0].strip().rstrip(".")
    first = _clean_title(first)
    if len(first) > TITLE_MAX:
        first = first[:TITLE_MAX].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return first


def _hyperparameters(s: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in s.split("\n"):
        if not line.strip() or _NONE.match(line):
            continue
        m = _HP_LINE.match(line)
        if m and not m.group(1).lower() in ("none", "note"):
            out[m.group(1).strip("'\"")] = m.group(2).strip().strip("`").rstrip(",;").strip()
    return out
