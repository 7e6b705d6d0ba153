"""``tvcs report``: a run's history as one self-contained HTML file (tensorvcs/report)."""

from __future__ import annotations

import click

from ._util import echo_json, human_size, repo


@click.command()
@click.argument("rev_range", default="HEAD", required=False, metavar="[REV-RANGE]")
@click.option(
    "-o",
    "--output",
    "out",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False, writable=True),
    help="The HTML file to write.",
)
@click.option("--title", default=None, help="The page's title (default: the range).")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
def report(rev_range: str, out: str, title: str | None, as_json: bool) -> None:
    """Write an HTML report of REV-RANGE: REV (its history, default HEAD) or A..B (B's
    history without A's).

    One file with everything inline (it opens offline and makes no network request): metric
    curves over step with tags and branches marked, a heatmap of each layer's relative change
    per commit, storage per commit against a folder of torch.save files, and the commit list
    with NaN/Inf warnings. Commits with statistics recorded at commit time need no tensor
    bytes; older ones have their tensors read and measured.
    """
    from ..report import write_report

    data = write_report(repo(), out, rev_range, title)
    summary = {
        "output": out,
        "range": rev_range,
        "commits": len(data.commits),
        "metrics": data.metrics,
        "layers": len(data.heat),
        "stats_recorded_commits": sum(c.stats_recorded for c in data.commits),
        "measured_commits": data.measured_commits,
        "measured_bytes": data.measured_bytes,
        "nonfinite_commits": [c.id for c in data.commits if c.nonfinite],
        "store_bytes": data.store_bytes,
        "torch_save_bytes": data.torch_save_bytes,
        "seconds": round(data.build_seconds, 3),
    }
    if as_json:
        echo_json(summary)
        return
    measured = (
        f"; measured {data.measured_commits} commit(s) without recorded statistics "
        f"({human_size(data.measured_bytes)} read)"
        if data.measured_commits
        else ""
    )
    bad = len(summary["nonfinite_commits"])  # type: ignore[arg-type]
    warn = f"; {bad} commit(s) with NaN/Inf" if bad else ""
    click.echo(
        f"wrote {out}: {len(data.commits)} commits, {len(data.metrics)} metric(s), "
        f"{len(data.heat)} layers{measured}{warn} ({data.build_seconds:.2f} s)"
    )


COMMANDS = [report]
