"""`mistwatch run` (one cycle) and `mistwatch demo` (cycles against the built-in simulated org)."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import ExitStack, redirect_stdout
from datetime import datetime
from typing import Any

import click

from mistwatch.durations import parse_time
from mistwatch.sanitize import terminal

MODE_HELP = """What the cycle does:

\b
monitor   collect, store the history, show the status of every site and device
insights  monitor + evaluate the rules: findings by severity and site, alert states kept
report    insights + write reports/latest.json and latest.html (+ dated copies, the digest when due)
all       the whole cycle: report + notifications (the default)"""


def _parse_now(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r} (e.g. 2026-11-27T09:00:00Z)",
                                 param_hint="--now") from None


class _Progress:
    """A rich progress bar on stderr while collectors page through large orgs."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 console=console, transient=True)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(f"Collecting {stage}", total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


@click.command(help="Run one cycle against the Mist org of the config file.\n\n" + MODE_HELP)
@click.option("--config", "config_path", default="config.yaml", envvar="MISTWATCH_CONFIG", show_default=True,
              type=click.Path(dir_okay=False), help="The configuration file.")
@click.option("--mode", type=click.Choice(["monitor", "insights", "report", "all"]), default="all",
              show_default=True, help="How much of the cycle to run (see above).")
@click.option("--now", "now_text", metavar="ISO8601", help="Evaluate as of this time, for replays and tests.")
@click.option("--dry-run", is_flag=True, help="Show what would be stored and sent; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON for scripts.")
@click.option("-v", "--verbose", count=True, help="More detail (-vv: debug). Never shows secrets.")
def run(config_path: str, mode: str, now_text: str | None, dry_run: bool, as_json: bool, verbose: int) -> None:
    from rich.console import Console

    from mistwatch.engine import close_app, open_app, run_cycle

    now = _parse_now(now_text)
    from mistwatch.report.console import show_result
    from mistwatch.service.logsetup import setup_console_logging

    setup_console_logging(verbose)
    # no highlighting: rich's highlighter is quadratic on long lines (a 100 KB name took minutes)
    # and would colour numbers inside names
    console = Console(stderr=as_json, highlight=False)
    app = open_app(config_path, console=console)
    if app.config.data.get("log"):  # honour log.file, as the daemon does
        setup_console_logging(verbose, app.config.data.get("log"), resolve=app.config.resolve)
    try:
        with ExitStack() as stack:
            if not dry_run:
                from mistwatch.service.lock import StateLock

                stack.enter_context(StateLock(app.config.state_dir))
                if not app.store.try_become_active():  # a shared store: one writer, the active daemon
                    from mistwatch.errors import LockHeld

                    raise LockHeld(f"a mistwatch daemon is active on {app.store.where}; "
                                   "stop it or let it run the cycles")
            show_progress = not as_json and console.is_terminal
            progress = stack.enter_context(_Progress(console)) if show_progress else None
            if as_json:  # stdout carries the JSON only; what notifiers print goes to stderr
                stack.enter_context(redirect_stdout(sys.stderr))
            result = run_cycle(app, mode=mode, now=now, dry_run=dry_run, progress=progress)
        from mistwatch.cli.daemon import _cycle_line

        logging.getLogger("mistwatch.cli.run").info("run --mode %s: %s", mode, _cycle_line(result))
        if as_json:
            from mistwatch.report.console import interval_seconds, summary_json

            click.echo(json.dumps(summary_json(result, interval_seconds(app.config)), indent=2, default=str))
        else:
            show_result(console, app, result, verbose=verbose > 0)
            if result.status == "failed":
                # errors can quote what Mist answered: no terminal controls from it
                click.echo("mistwatch: " + terminal("; ".join(result.errors), 2000), err=True)
            if dry_run:
                console.print("[bold]Dry run:[/] nothing was stored or sent.")
    finally:
        close_app(app)
    sys.exit(result.exit_code)
