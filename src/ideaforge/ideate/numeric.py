"""NumericIdeator: one-setting moves on the numeric settings of the editable Python files.

It needs no model. Settings are found with `ast`: module-level `NAME = <number>`
(and numbers inside a module-level tuple, `BETAS = (0.9, 0.99)` -> BETAS[0], BETAS[1]),
numeric defaults in class bodies (dataclass fields), entries of module-level config
dicts (`config = dict(lr=1e-3)`, `{"lr": 1e-3}`) and argparse `add_argument(...,
default=<number>)`. Settings whose names mark them as harness plumbing (seeds,
evaluation, budgets and clocks, logging cadence, threads, epsilons) are left alone.

A move rewrites the number textually in its own source line, comments and all, so
the SEARCH/REPLACE edit is exact. Moves are multiplicative (x2, x0.5; integers
stay >= 1), except decay-like values in [0.8, 1), which move their distance to 1
(0.99 -> 0.995 or 0.98). Sizes that must stay compatible (n_embd divisible by
n_head) are not modelled: such a move fails its smoke check and is recorded as
failed, which is itself a result.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from ideaforge.envs.pyparse import parse as parse_python
from ideaforge.ideate import blocks as B
from ideaforge.ideate.types import Context, Idea, ScoredIdea, rank

# Name tokens (split at _ and camelCase) that mark a number as not a tunable.
DENY = frozenset(
    """seed seeds eval evals val valid validation test vocab budget time timeout elapsed deadline s sec secs
    seconds log logging print every freq frequency save checkpoint ckpt reserve thread threads worker workers
    port verbose debug device gpu gpus rank world eps epsilon version prompt id idx index""".split()
)
_FLAG_PREFIX = ("use", "enable", "do", "is", "has", "flag", "compile")
# A zero can only move if we know a sensible first non-zero value for it.
_FROM_ZERO = (("weight_decay", 0.01), ("wd", 0.01), ("dropout", 0.1), ("drop", 0.1), ("smoothing", 0.1))
_PROBABILITY = ("drop", "dropout", "prob", "p", "frac", "fraction", "smoothing", "ratio")
MAX_CONTEXT = 3  # lines of context added above a setting's line until its SEARCH text is unique


@dataclass(frozen=True)
class Setting:
    name: str  # display name: LR, BETAS[1], GPTConfig.n_layer, config.lr, --lr -> lr
    path: str
    lineno: int  # 1-based
    prefix: str  # the line up to the number
    literal: str  # the number as written, e.g. "3e-4"
    suffix: str  # the rest of the line, comment included
    value: float | int
    context: tuple[str, ...]  # lines above it that make the SEARCH text unique (usually none)

    @property
    def line(self) -> str:
        return self.prefix + self.literal + self.suffix

    @property
    def rule(self) -> str:
        v = self.value
        if isinstance(v, int):
            return "int"
        if 0.8 <= v < 1.0:
            return "to_one"
        return "mul"

    def block(self, value: float | int) -> B.Block:
        new = self.prefix + format_like(value, self.literal) + self.suffix
        return B.Block(self.path, (*self.context, self.line), (*self.context, new))

    def value_in(self, block: B.Block) -> float | int | None:
        """The value this setting has in `block`, or None when the block is not a move of it."""
        if block.path != self.path or block.old != (*self.context, self.line) or len(block.new) != len(block.old):
            return None
        if block.new[:-1] != self.context:
            return None
        new = block.new[-1]
        if not (new.startswith(self.prefix) and new.endswith(self.suffix)) or len(new) <= len(self.prefix) + len(self.suffix):
            return None
        try:
            v = ast.literal_eval(new[len(self.prefix) : len(new) - len(self.suffix)].strip())
        except (ValueError, SyntaxError):
            return None
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def format_like(value: float | int, literal: str) -> str:
    """`value` written the way `literal` is: 3e-4 style stays scientific, ints stay ints."""
    if isinstance(value, int):
        return str(value)
    value = float(f"{value:.6g}")
    if "e" in literal.lower():
        mant, exp = f"{value:.6e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    s = f"{value:.6g}"
    return s if ("." in s or "e" in s) else s + ".0"


def step(s: Setting, value: float | int, up: bool) -> float | int | None:
    """One move of `value` in a direction, by the setting's rule; None when there is none."""
    if s.rule == "int":
        new = value * 2 if up else max(1, round(value / 2))
    elif value == 0:
        new = next((v for k, v in _FROM_ZERO if k in s.name.lower()), None) if up else None
        if new is None:
            return None
    elif s.rule == "to_one":
        new = 1 - (1 - value) / 2 if up else 1 - (1 - value) * 2
        if not 0 < new < 1:
            return None
    else:
        new = value * 2 if up else value / 2
        if up and 0 < value < 1 and new >= 1 and set(_tokens(s.name)) & set(_PROBABILITY):
            return None
    if isinstance(value, float):
        new = float(f"{float(new):.6g}")
    return None if new == value else new


def _tokens(name: str) -> list[str]:
    return [t.lower() for t in re.split(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])", name) if t]


def tunable(name: str, value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return False
    toks = _tokens(name)
    if not toks or DENY & set(toks):
        return False
    if isinstance(value, int) and value in (0, 1) and toks[0] in _FLAG_PREFIX:
        return False
    return not (isinstance(value, int) and value == 0)



def find_settings(path: str, text: str) -> list[Setting]:
    """The numeric settings of one Python file, in file order; [] if it does not parse."""
    try:
        tree = parse_python(text, path)
    except SyntaxError:
        return []
    lines = text.split("\n")
    found: list[tuple[str, ast.Constant]] = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if names and node.value is not None:
                found += _from_value(names[0], node.value)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.Assign, ast.AnnAssign)) and item.value is not None:
                    targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                    if isinstance(targets[0], ast.Name) and _number(item.value):
                        found.append((f"{node.name}.{targets[0].id}", item.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            flag = next((a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)), None)
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            if flag and default is not None and _number(default):
                found.append((flag.lstrip("-").replace("-", "_"), default))
    out, seen = [], set()
    for name, const in found:
        if not tunable(name, const.value) or const.lineno != const.end_lineno or (name, const.lineno) in seen:
            continue
        seen.add((name, const.lineno))
        s = _setting(path, lines, name, const)
        if s is not None:
            out.append(s)
    return sorted(out, key=lambda s: (s.lineno, s.prefix))


def _number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def _from_value(name: str, value: ast.AST) -> list[tuple[str, ast.Constant]]:
    if _number(value):
        return [(name, value)]
    if isinstance(value, ast.Tuple):
        return [(f"{name}[{i}]", e) for i, e in enumerate(value.elts) if _number(e)]
    if isinstance(value, ast.Dict):
        return [
            (f"{name}.{k.value}", v)
            for k, v in zip(value.keys, value.values)
            if isinstance(k, ast.Constant) and isinstance(k.value, str) and _number(v)
        ]
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
        return [(f"{name}.{k.arg}", k.value) for k in value.keywords if k.arg and _number(k.value)]
    return []


def _setting(path: str, lines: list[str], name: str, const: ast.Constant) -> Setting | None:
    i = const.lineno - 1
    raw = lines[i].encode()  # ast column offsets count UTF-8 bytes
    prefix = raw[: const.col_offset].decode(errors="replace")
    literal = raw[const.col_offset : const.end_col_offset].decode(errors="replace")
    suffix = raw[const.end_col_offset :].decode(errors="replace")
    for k in range(MAX_CONTEXT + 1):
        if i - k < 0:
            return None
        window = lines[i - k : i + 1]
        hits = sum(lines[j : j + len(window)] == window for j in range(len(lines) - len(window) + 1))
        if hits == 1:
            return Setting(name, path, i + 1, prefix, literal, suffix, const.value, tuple(lines[i - k : i]))
    return None


@dataclass
class Move:
    setting: Setting
    value: float | int
    up: bool

    def idea(self, kind: str, parents: list[int] | None = None, base: float | int | None = None) -> tuple[Idea, tuple[B.Block, ...]]:
        s = self.setting
        new = format_like(self.value, s.literal)
        factor = self.value / s.value if s.value else None
        how = f" (x{factor:.3g})" if factor and s.rule != "to_one" else ""
        further = f", one step beyond the {format_like(base, s.literal)} that did well" if base is not None else ""
        idea = Idea(
            title=f"{s.name}: {s.literal} -> {new}",
            description=(
                f"Change the setting {s.name} in {s.path} (line {s.lineno}) from {s.literal} to {new}{how}{further}, "
                "leaving everything else as it is."
            ),
            code_changes=f"{s.path} line {s.lineno}: `{s.line.strip()}` becomes `{(s.prefix + new + s.suffix).strip()}`",
            hyperparameters={s.name: new},
            parents=list(parents or []),
            kind=kind,
            origin={"ideator": "numeric", "prompt": kind, "setting": s.name, "direction": "up" if self.up else "down"},
        )
        return idea, (s.block(self.value),)


class NumericIdeator:
    name = "numeric"

    def settings(self, ctx: Context) -> list[Setting]:
        out = []
        for path in sorted(ctx.files):
            if path.endswith(".py") and ctx.spec.is_editable(path):
                out += find_settings(path, ctx.files[path])
        return out

    def moves(self, ctx: Context) -> list[Move]:
        """Every one-step move from the baseline, both directions of each setting."""
        out = []
        for s in self.settings(ctx):
            for up in (True, False):
                v = step(s, s.value, up)
                if v is not None:
                    out.append(Move(s, v, up))
        return out

    def initial(self, ctx: Context, n: int) -> list[Idea]:
        return B.Picker(ctx).fill(self._spread(ctx, self.moves(ctx), "initial"), n)

    def explore(self, ctx: Context, history: list[ScoredIdea], n: int) -> list[Idea]:
        """Settings nobody moved yet first, then untried directions, then two-step jumps."""
        touched = self._touched(ctx, history, with_proposed=True)
        moves = self.moves(ctx)
        fresh = self._spread(ctx, [m for m in moves if m.setting.name not in touched], "explore")
        other = self._spread(ctx, [m for m in moves if m.setting.name in touched], "explore")
        jumps = [Move(m.setting, v, m.up) for m in moves if (v := step(m.setting, m.value, m.up)) is not None]
        return B.Picker(ctx, history).fill(fresh + other + self._spread(ctx, jumps, "explore:jumps"), n)

    def exploit(self, ctx: Context, parents: list[ScoredIdea], n: int) -> list[Idea]:
        parents = rank(parents, ctx.spec.goal)
        return B.Picker(ctx, parents).fill(B.round_robin(self.further(ctx, parents), B.combos(ctx, parents, self.name),
                                                         self.with_untried(ctx, parents)), n)

    # -- exploit helpers ------------------------------------------------------------------------
    def recognise(self, ctx: Context, edit: str | None) -> list[tuple[Setting, float | int]]:
        """The settings an edit moves and the values it gives them ([] if any block is not such a move)."""
        blocks = B.split_edit(edit) or ()
        settings = self.settings(ctx)
        out = []
        for b in blocks:
            hit = next(((s, v) for s in settings if (v := s.value_in(b)) is not None), None)
            if hit is None:
                return []
            out.append(hit)
        return out

    def further(self, ctx: Context, parents: list[ScoredIdea]) -> list[tuple[Idea, tuple[B.Block, ...]]]:
        """A parent that moved one setting: the same move, one step further."""
        out = []
        for p in parents:
            moved = self.recognise(ctx, p.edit)
            if len(moved) != 1:
                continue
            s, v = moved[0]
            if v == s.value:
                continue
            nxt = step(s, v, v > s.value)
            if nxt is not None:
                out.append(Move(s, nxt, v > s.value).idea("exploit", [p.id], base=v))
        return out

    def with_untried(self, ctx: Context, parents: list[ScoredIdea]) -> list[tuple[Idea, tuple[B.Block, ...]]]:
        """A parent plus one move of a setting no parent touched; every parent's first partner before any second."""
        touched = self._touched(ctx, parents)
        fresh = [m for m in self.moves(ctx) if m.setting.name not in touched]
        B.rng(ctx, "numeric:with_untried").shuffle(fresh)
        rows = []
        for k, p in enumerate(parents):
            pb = B.split_edit(p.edit)
            row = []
            for m in (fresh[k % len(fresh) :] + fresh[: k % len(fresh)]) if pb and fresh else ():  # rotated: parents differ
                idea, mb = m.idea("exploit", [p.id])
                blocks = B.merge(pb, mb)
                if blocks is None:
                    continue
                idea.title = f"{p.title} + {idea.title}"
                idea.description = f"Keep the idea that did well ({p.title}: {p.description}) and also: {idea.description}"
                idea.code_changes = B.describe(blocks)
                row.append((idea, blocks))
            rows.append(row)
        return list(B.round_robin(*rows))

    # -- internals ------------------------------------------------------------------------------
    def _touched(self, ctx: Context, seen: list[ScoredIdea], with_proposed: bool = False) -> set[str]:
        """Names of the settings that `seen` (and, if asked, any proposed title) moved."""
        names = {s.name for s in self.settings(ctx)}
        touched = set()
        for s in seen:
            touched |= {x.name for x, _ in self.recognise(ctx, s.edit)}
        for text in (ctx.proposed if with_proposed else []) + [s.title for s in seen]:
            for part in text.split(" + "):
                name = part.split(":", 1)[0].strip()
                if name in names:
                    touched.add(name)
        return touched

    def _spread(self, ctx: Context, moves: list[Move], what: str) -> list[tuple[Idea, tuple[B.Block, ...]]]:
        """Shuffled by seed, then one move per setting before any setting's second move."""
        rng = B.rng(ctx, f"numeric:{what}")
        moves = list(moves)
        rng.shuffle(moves)
        nth: dict[str, int] = {}
        ranked = []
        for pos, m in enumerate(moves):
            nth[m.setting.name] = nth.get(m.setting.name, -1) + 1
            ranked.append((nth[m.setting.name], pos, m))
        ranked.sort(key=lambda r: r[:2])
        return [m.idea(what) for _, _, m in ranked]
