"""Moved to `ideaforge.stats` (a bottom layer, beside the store, so report/ need not import search/).

Kept only so callers written before the move still import; import `ideaforge.stats`.
"""

from ideaforge.stats import Stats, Z, beats, leaderboard, noise_floor, z_score

__all__ = ["Stats", "Z", "beats", "leaderboard", "noise_floor", "z_score"]
