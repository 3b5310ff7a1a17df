"""Ideation: prompts (initial, exploit, explore), parsing ideas, de-duplication, offline ideators.

    from ideaforge.ideate import Context, ModelIdeator, offline_ideator
    ideator = ModelIdeator("anthropic:claude-opus-4-5", recorder=store_call) if model else offline_ideator(spec)
    ideas = ideator.initial(ctx, 50)
    ideas = ideator.exploit(ctx, winners, 20) + ideator.explore(ctx, history, 30)

Offline ideators (catalogue ideas, numeric moves) need no model: their ideas carry
their own SEARCH/REPLACE edit, checked to apply to the baseline.
"""

from ideaforge.envs.workspace import render_codebase
from ideaforge.ideate.catalogue import CatalogueIdeator
from ideaforge.ideate.dedup import dedup, is_duplicate
from ideaforge.ideate.llm_ideator import ModelIdeator
from ideaforge.ideate.numeric import NumericIdeator
from ideaforge.ideate.offline import OfflineIdeator, offline_ideator
from ideaforge.ideate.parse import parse_ideas
from ideaforge.ideate.types import Context, Idea, Ideator, ScoredIdea

__all__ = [
    "CatalogueIdeator",
    "Context",
    "Idea",
    "Ideator",
    "ModelIdeator",
    "NumericIdeator",
    "OfflineIdeator",
    "ScoredIdea",
    "dedup",
    "is_duplicate",
    "offline_ideator",
    "parse_ideas",
    "render_codebase",
]
