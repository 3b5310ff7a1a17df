"""`ideaforge status | show | report | ui`: read-only views of a campaign."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ideaforge.cli.common import CAMPAIGN_DIR_HELP, app, bound, say
from ideaforge.search.campaign import Campaign


def print_status(campaign: Campaign, top: int = 10) -> None:
    from ideaforge.report.text import status_lines

    spec = campaign.spec
    for line in status_lines(campaign.store, spec.name, spec.metric, spec.goal, spec.cpus, spec.gpus, top):
        say(line)


@app.command()
def status(
    dir: Annotated[Path, typer.Argument(metavar="DIR", help=CAMPAIGN_DIR_HELP)],
    top: Annotated[int, typer.Option(callback=bound(1), help="leaderboard rows (>= 1)")] = 10,
) -> int:
    """Leaderboard (mean ± std, beyond noise or not), per-epoch progress and failures, execution rate per kind
    of idea, diversity, best so far per model, spend."""
    print_status(Campaign.open(dir), top=top)
    return 0


@app.command()
def show(
    dir: Annotated[Path, typer.Argument(metavar="DIR", help=CAMPAIGN_DIR_HELP)],
    idea: Annotated[int, typer.Argument(metavar="IDEA", callback=bound(1), help="an idea id, as listed by `ideaforge status`")],
) -> int:
    """One idea: parents, children, attempts, diff, trials and the tails of their logs."""
    from ideaforge.report.text import show_idea

    campaign = Campaign.open(dir)
    return 0 if show_idea(campaign.store, campaign.spec.metric, idea, say) else 2


@app.command()
def report(
    dirs: Annotated[list[Path], typer.Argument(metavar="DIR", help=CAMPAIGN_DIR_HELP)],
    out: Annotated[Optional[Path], typer.Option(help="the HTML file to write [default: DIR/report.html]")] = None,
    compare: Annotated[Optional[list[Path]], typer.Option(
        help="other campaign directories to overlay, e.g. a best-of-N control, or campaigns run with other models: "
        "their best-so-far curves join this one's, and the per-model plot draws one curve per campaign and model "
        "(--compare A B, or --compare A --compare B)")] = None,
) -> int:
    """Write a self-contained HTML report of a campaign (plots, the reference's analyses, lineage, diffs, logs;
    opens offline)."""
    from ideaforge.report import write_report

    compare = list(compare or [])
    if len(dirs) > 1:
        if not compare:
            raise typer.BadParameter(f"one campaign directory, got {len(dirs)} (overlay others with --compare)",
                                     param_hint="DIR")
        compare += dirs[1:]  # `--compare A B`: B arrives as a positional
    written = write_report(dirs[0], out, compare=compare)
    say(f"wrote {written}")
    return 0


@app.command()
def ui(
    dir: Annotated[Path, typer.Argument(metavar="DIR", help=CAMPAIGN_DIR_HELP)],
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 shows it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(callback=bound(0), help="TCP port (0: any free port)")] = 8765,
) -> int:
    """Serve the report live while a campaign runs (read-only)."""
    from ideaforge.report import serve

    if port > 65535:
        raise typer.BadParameter(f"{port} is not a TCP port (0..65535)", param_hint="--port")
    try:
        serve(dir, host=host, port=port,
              ready=lambda url: say(f"live view of {dir} at {url} (read-only; Ctrl-C to stop)"))
    except KeyboardInterrupt:
        pass
    return 0
