"""The action space of the ideator: the environment's fixed prompt, and how an idea becomes an edit.

Offline (no implementer model), an idea is realised from what it names:
- numeric settings of the editable files (`ideate.numeric.find_settings`), written
  `NAME = value` in its [Hyperparameters] block or anywhere in its text;
- catalogue ideas (`ideate.catalogue`), named by id or title.
Their SEARCH/REPLACE blocks are merged (`ideate.blocks.merge`); an idea that names
nothing realisable, or names two conflicting changes, fails to implement, which is
a result with the failure reward like any other. With an implementer model the idea's
text goes to `implement.Implementer.implement` as in a search campaign.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from ideaforge.envs.spec import EnvSpec
from ideaforge.envs.workspace import render_codebase
from ideaforge.ideate import blocks as B
from ideaforge.ideate.catalogue import load_catalogue
from ideaforge.ideate.numeric import Setting, find_settings, format_like
from ideaforge.ideate.types import Idea

FORMAT = """Answer with exactly one idea in this format:
[Idea] a one-line title
[Description] what to change and why
[Hyperparameters] NAME = value, one per line (or: none)
[End]"""

_ARROW = re.compile(r"([A-Za-z_][\w.\[\]]*)\s*:?\s*-?[0-9][0-9_.eE+-]*\s*->\s*")  # "LR: 0.1 -> 0.2" means LR = 0.2
NEAR = 25  # characters between a setting's name and the number meant for it, at most
_NUMBER = r"-?[0-9][0-9_]*\.?[0-9]*(?:[eE][-+]?[0-9]+)?"
_ASSIGN = re.compile(r"(?<![\w.])([A-Za-z_][\w.\[\]]*)\s*(?:=|:|->|to)\s*(-?[0-9][0-9_]*\.?[0-9]*(?:[eE][-+]?[0-9]+)?)")


@dataclass
class Realised:
    edit: str | None  # SEARCH/REPLACE blocks, or None
    error: str | None  # why there is no edit
    names: list[str]  # the settings and catalogue ids it used, for the record


class ActionSpace:
    def __init__(self, spec: EnvSpec, files: dict[str, str]):
        self.spec = spec
        self.files = files
        self.settings: list[Setting] = []
        for path in sorted(files):
            if path.endswith(".py") and spec.is_editable(path):
                self.settings += find_settings(path, files[path])
        self.catalogue = load_catalogue(spec)
        self._by_name = {s.name.lower(): s for s in self.settings}

    # -- the prompt ------------------------------------------------------------------------
    def prompt(self, style: str = "settings") -> str:
        """The environment's fixed prompt: the task, what can be changed, the answer format."""
        goal = "lower" if self.spec.goal == "min" else "higher"
        out = [f"{self.spec.description.strip()}", "",
               f"The result is measured as {self.spec.metric} ({goal} is better). Propose one change to improve it."]
        if style == "codebase":
            out += ["", "The code:", render_codebase(self.spec, self.files)]
        if self.settings:
            out += ["", "Settings you can change (current values):"]
            out += [f"{s.name} = {s.literal}" for s in self.settings]
        if self.catalogue:
            out += ["", "Known ideas you can use (name them by title):"]
            out += [f"- {e['title']}: {e['description'].splitlines()[0][:160]}" for e in self.catalogue]
        out += ["", FORMAT]
        if self.settings:  # a concrete answer: small models follow an example far better than a schema
            s = self.settings[0]
            v = format_like(s.value * 2 if s.value else 1, s.literal)
            out += ["", "For example:", f"[Idea] Change {s.name}", "[Description] Try another value of "
                    f"{s.name}.", "[Hyperparameters]", f"{s.name} = {v}", "[End]"]
        return "\n".join(out)

    # -- realising an idea offline ----------------------------------------------------------
    def realise(self, idea: Idea) -> Realised:
        parts: list[tuple[B.Block, ...]] = []
        names: list[str] = []
        for name, value in self._assignments(idea):
            s = self._by_name.get(name.lower()) or self._by_name.get(name.lower().lstrip("-").replace("-", "_"))
            if s is None or s.name in names:
                continue
            v = _coerce(value, s)
            if v is None:
                return Realised(None, f"{s.name} = {value}: not a valid value for this setting", names)
            if v != s.value:
                parts.append((s.block(v),))
                names.append(s.name)
        text = f"{idea.title}\n{idea.description}\n{idea.code_changes}".lower()
        for e in self.catalogue:
            if e["title"].lower() in text or re.search(rf"(?<![\w-]){re.escape(e['id'].lower())}(?![\w-])", text):
                blocks = B.split_edit(e["edit"])
                if blocks:
                    parts.append(blocks)
                    names.append(f"catalogue:{e['id']}")
        if not parts:
            return Realised(None, "the idea names no setting (with a new value) or catalogue idea of this environment", [])
        merged = B.merge(*parts)
        if merged is None:
            return Realised(None, "the changes it names conflict: two of them rewrite the same lines differently", names)
        return Realised(B.render(merged), None, names)

    def _assignments(self, idea: Idea) -> list[tuple[str, str]]:
        """NAME = value pairs: the [Hyperparameters] block first, then the idea's text, where a
        setting's name followed closely by a number ("set LR to 0.2", "LR (0.2)") counts too."""
        out = list(idea.hyperparameters.items())
        for field in (idea.title, idea.description, idea.code_changes):
            text = _ARROW.sub(lambda m: m.group(1) + " = ", field or "")
            out += [(m.group(1), m.group(2)) for m in _ASSIGN.finditer(text)]
            for s in self.settings:
                m = re.search(rf"(?<![\w.]){re.escape(s.name)}(?![\w\[])[^0-9\n]{{0,{NEAR}}}?({_NUMBER})", text)
                if m:
                    out.append((s.name, m.group(1)))
        return out


def _coerce(text: str, s: Setting) -> float | int | None:
    """The value written for a setting, typed like the setting; None when it makes no sense."""
    try:
        v = ast.literal_eval(text.strip().strip("`'\"").replace("_", ""))
    except (ValueError, SyntaxError):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0 or abs(v) > 1e12:
        return None
    if isinstance(s.value, int):
        return int(v) if float(v).is_integer() and v >= 1 else None
    return float(v)
