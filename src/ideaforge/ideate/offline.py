"""OfflineIdeator: the default with no model. Catalogue ideas first, numeric moves for the rest.

Exploit mixes moves of both: a numeric move pushed further, two parents combined
(whichever ideator they came from, as long as their edits merge and apply), a
parent plus an untried catalogue idea, a parent plus an untried numeric move.
"""

from __future__ import annotations

from ideaforge.envs.spec import EnvSpec
from ideaforge.ideate import blocks as B
from ideaforge.ideate.catalogue import CatalogueIdeator
from ideaforge.ideate.numeric import NumericIdeator
from ideaforge.ideate.types import Context, Idea, Ideator, ScoredIdea, rank


class OfflineIdeator:
    name = "offline"

    def __init__(self, spec: EnvSpec):
        self.catalogue = CatalogueIdeator(spec)
        self.skipped = self.catalogue.skipped  # catalogue ideas this machine's hardware lacks the features for
        self.numeric = NumericIdeator()

    def initial(self, ctx: Context, n: int) -> list[Idea]:
        cands = self.catalogue.candidates(ctx, "initial") + self.numeric._spread(ctx, self.numeric.moves(ctx), "initial")
        return B.Picker(ctx).fill(cands, n)

    def explore(self, ctx: Context, history: list[ScoredIdea], n: int) -> list[Idea]:
        cat = self.catalogue.explore(ctx, history, n)
        rest = self.numeric.explore(ctx, history, n)
        picker = B.Picker(ctx, history)
        return picker.fill(((i, B.split_edit(i.edit)) for i in cat + rest), n)

    def exploit(self, ctx: Context, parents: list[ScoredIdea], n: int) -> list[Idea]:
        parents = rank(parents, ctx.spec.goal)
        cands = B.round_robin(
            self.numeric.further(ctx, parents),
            B.combos(ctx, parents, self.name),
            self.catalogue.with_untried(ctx, parents),
            self.numeric.with_untried(ctx, parents),
        )
        return B.Picker(ctx, parents).fill(cands, n)


def offline_ideator(spec: EnvSpec) -> Ideator:
    """The ideator to use when no model is configured."""
    return OfflineIdeator(spec)
