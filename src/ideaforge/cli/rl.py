"""`ideaforge rl`: RL of the ideator from execution reward (the command lives in ideaforge.rl.command)."""

from __future__ import annotations

from ideaforge.cli.common import app
from ideaforge.rl.command import rl_command

app.command("rl")(rl_command)
