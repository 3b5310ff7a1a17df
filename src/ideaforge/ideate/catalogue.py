"""CatalogueIdeator: known ideas shipped with an environment, and their combinations.

`<env root>/catalogue/ideas.toml` holds `[[idea]]` tables with `id`, `title`,
`description` and `edit` (SEARCH/REPLACE blocks against the baseline), and optionally
`requires`: hardware features the idea only pays off with (e.g. `["avx512_bf16"]` for
bfloat16 autocast, 8.8x slower per CPU-second without it). Entries whose features this
machine lacks are skipped, with a log line, and listed in `CatalogueIdeator.skipped`.
The catalogue belongs to no file class, so it is never copied into a workspace nor
shown to a model. An environment without one gives an ideator that proposes nothing.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tomllib
from pathlib import Path

from ideaforge.envs.spec import EnvSpec
from ideaforge.errors import EnvError
from ideaforge.ideate import blocks as B
from ideaforge.ideate.types import Context, Idea, ScoredIdea, rank

CATALOGUE = Path("catalogue") / "ideas.toml"
# Features a catalogue entry may require: /proc/cpuinfo flags, and "cuda" (an NVIDIA GPU).
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
FEATURES = CPU_FEATURES + ("cuda",)

log = logging.getLogger(__name__)


def machine_features(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """This machine's hardware as catalogue entries see it: {"features": [...], "cpu": model
    name, "gpus": [nvidia-smi names]}. Called, never run at import (it may start nvidia-smi)."""
    flags: set[str] = set()
    model = ""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name" and not model:
                model = value.strip()
    except OSError:  # not Linux: no CPU flags known, so no hardware-dependent idea is offered
        pass
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            gpus = [g.strip() for g in out.stdout.splitlines() if g.strip()] if out.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired):
            gpus = []
    features = [f for f in CPU_FEATURES if f in flags] + (["cuda"] if gpus else [])
    return {"features": features, "cpu": model, "gpus": gpus}


def load_catalogue(spec: EnvSpec) -> list[dict]:
    """The catalogue's ideas as dicts (id, title, description, edit); [] when there is none."""
    path = spec.root / CATALOGUE
    if not path.is_file():
        return []
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EnvError(f"{path}: not valid TOML: {e}") from None
    out = []
    for k, item in enumerate(raw.get("idea", [])):
        missing = [f for f in ("title", "description", "edit") if not isinstance(item.get(f), str) or not item[f].strip()]
        if missing:
            raise EnvError(f"{path}: [[idea]] number {k + 1} lacks {', '.join(missing)}; each idea needs id, title, description and edit")
        requires = item.get("requires", [])
        if not isinstance(requires, list) or any(r not in FEATURES for r in requires):
            raise EnvError(f"{path}: [[idea]] number {k + 1}: requires = {requires!r}; it must be a list of "
                           f"hardware features among {', '.join(FEATURES)}")
        out.append({"id": str(item.get("id", k + 1)), "title": item["title"].strip(),
                     "description": item["description"].strip(), "edit": item["edit"], "requires": requires})
    return out


class CatalogueIdeator:
    name = "catalogue"

    def __init__(self, spec: EnvSpec, features: list[str] | None = None):
        """`features`: the hardware features present (default: this machine's, probed once)."""
        entries = load_catalogue(spec)
        if features is None and any(e["requires"] for e in entries):
            features = machine_features()["features"]
        have = set(features or [])
        self.entries = [e for e in entries if set(e["requires"]) <= have]
        # (entry id, title, the features it lacks): shown by the search and the report
        self.skipped = [(e["id"], e["title"], sorted(set(e["requires"]) - have)) for e in entries
                        if not set(e["requires"]) <= have]
        for cid, title, missing in self.skipped:
            log.info("catalogue idea %s (%s) skipped: this machine lacks %s", cid, title, ", ".join(missing))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def candidates(self, ctx: Context, kind: str) -> list[tuple[Idea, tuple[B.Block, ...]]]:
        """Every catalogue idea, shuffled by seed."""
        out = []
        for e in self.entries:
            blocks = B.split_edit(e["edit"])
            if not blocks:
                continue
            idea = Idea(e["title"], e["description"], code_changes=B.describe(blocks), kind=kind,
                        origin={"ideator": self.name, "prompt": kind, "catalogue_id": e["id"],
                                **({"requires": e["requires"]} if e["requires"] else {})})
            out.append((idea, blocks))
        B.rng(ctx, f"catalogue:{kind}").shuffle(out)
        return out

    def initial(self, ctx: Context, n: int) -> list[Idea]:
        return B.Picker(ctx).fill(self.candidates(ctx, "initial"), n)

    def explore(self, ctx: Context, history: list[ScoredIdea], n: int) -> list[Idea]:
        return B.Picker(ctx, history).fill(self.candidates(ctx, "explore"), n)

    def exploit(self, ctx: Context, parents: list[ScoredIdea], n: int) -> list[Idea]:
        parents = rank(parents, ctx.spec.goal)
        return B.Picker(ctx, parents).fill(B.round_robin(B.combos(ctx, parents, self.name), self.with_untried(ctx, parents)), n)

    def with_untried(self, ctx: Context, parents: list[ScoredIdea]) -> list[tuple[Idea, tuple[B.Block, ...]]]:
        """Each parent (best first) plus another catalogue idea, those never proposed first."""
        parent_titles = {p.title for p in parents}
        partners = [(i, b) for i, b in self.candidates(ctx, "exploit") if i.title not in parent_titles]
        partners.sort(key=lambda c: B.was_proposed(ctx, c[0].title))  # stable: the seed's order within each group
        rows = []
        for k, p in enumerate(parents):
            pb = B.split_edit(p.edit)
            if not pb:
                continue
            row = []
            r = k % len(partners) if partners else 0
            for idea, cb in partners[r:] + partners[:r]:  # rotated, so parents get different first partners
                blocks = B.merge(pb, cb)
                if blocks is None or set(blocks) == set(pb):
                    continue
                row.append((Idea(
                    title=B.join_titles(p.title, idea.title),
                    description=f"Keep the idea that did well ({p.title}: {p.description}) and add: {idea.title}: {idea.description}",
                    code_changes=B.describe(blocks), parents=[p.id], kind="exploit",
                    origin={"ideator": self.name, "prompt": "exploit", "move": "add", "catalogue_id": idea.origin["catalogue_id"]},
                ), blocks))
            rows.append(row)
        # column-wise: every parent's first partner before any parent's second
        return list(B.round_robin(*rows))
