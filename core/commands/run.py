"""`mistwatch run` (one cycle) and `mistwatch demo` (cycles against the built-in simulated org)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from contextlib import ExitStack, nullcontext, redirect_stdout
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from mistwatch.durations import parse_duration, parse_time

MODE_HELP = """What the cycle does:

\b
monitor   collect, store the history, show the status of every site and device
insights  monitor + evaluate the rules: findings by severity and site, alert states kept
report    insights + write reports/latest.json and latest.html (+ dated copies, the digest when due)
all       the whole cycle: report + notifications (the default)"""


def setup_logging(verbosity: int) -> None:
    """-v: info, -vv: debug; always through the secret-redacting filter."""
    from mistwatch.secrets import RedactingFilter

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("mistwatch")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _parse_now(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r} (e.g. 2026-11-27T09:00:00Z)",
                                 param_hint="--now") from None


def _interval_s(config: Any) -> float:
    daemon = config.data.get("daemon") or {}
    try:
        return parse_duration(daemon.get("interval", "15m")).total_seconds()
    except ValueError:
        return 900.0


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


def show_result(console: Any, app: Any, result: Any, *, verbose: bool = False) -> None:
    from mistwatch.summary import print_summary

    health_past = None
    if result.health is not None:  # a week of stored scores behind today's, for the sparklines
        from mistwatch.report import past_values

        health_past = past_values(app.store, "site.health", result.started_at)
    print_summary(console, result, interval_s=_interval_s(app.config), verbose=verbose, health_past=health_past)
    if result.rules is not None:
        from mistwatch.commands.insights import print_insights

        print_insights(console, result.rules, now=result.started_at)
    if result.notify is not None:
        from mistwatch.notify import print_notify_summary

        print_notify_summary(console, result.notify)
    if result.report is not None:
        console.print(f"[bold]Report:[/] {result.report.html}  (JSON: {result.report.json})")
    if result.digest_sent:
        console.print("[bold]Daily digest sent.[/]")


@click.command(help="Run one cycle against the Mist org of the config file.\n\n" + MODE_HELP)
@click.option("--config", "config_path", default="config.yaml", show_default=True,
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
    setup_logging(verbose)
    console = Console(stderr=as_json)
    app = open_app(config_path, console=console)
    try:
        with ExitStack() as stack:
            if not dry_run:
                from mistwatch.lock import StateLock

                stack.enter_context(StateLock(app.config.state_dir))
            show_progress = not as_json and console.is_terminal
            progress = stack.enter_context(_Progress(console)) if show_progress else None
            if as_json:  # stdout carries the JSON only; what notifiers print goes to stderr
                stack.enter_context(redirect_stdout(sys.stderr))
            result = run_cycle(app, mode=mode, now=now, dry_run=dry_run, progress=progress)
        if as_json:
            from mistwatch.summary import summary_json

            click.echo(json.dumps(summary_json(result), indent=2, default=str))
        else:
            show_result(console, app, result, verbose=verbose > 0)
            if result.status == "failed":
                click.echo("mistwatch: " + "; ".join(result.errors), err=True)
            if dry_run:
                console.print("[bold]Dry run:[/] nothing was stored or sent.")
    finally:
        close_app(app)
    sys.exit(result.exit_code)


# The demo's story: a quiet day, a bad morning a day later, an hour on, then recovery.
DEMO_TIMELINE: tuple[tuple[str, timedelta, str], ...] = (
    ("healthy", timedelta(hours=0), "day 1: all healthy"),
    ("healthy", timedelta(minutes=15), "day 1: all healthy"),
    ("healthy", timedelta(minutes=30), "day 1: all healthy"),
    ("degraded", timedelta(days=1), "day 2: trouble starts"),
    ("degraded", timedelta(days=1, minutes=15), "day 2: still degraded"),
    ("degraded", timedelta(days=1, minutes=30), "day 2: still degraded"),
    ("recovered", timedelta(days=1, hours=2), "day 2: recovered"),
)


def write_demo_config(out: Path, server: Any) -> Path:
    from importlib.resources import files

    import yaml

    rules_dir = Path(str(files("mistwatch.rulepack")))
    config = {
        "mist": {"base_url": server.url, "token": server.token, "org_id": server.org.org_id},
        "state_dir": "var",
        "reports": {"dir": "reports", "retention_days": 7},
        "rules": [str(rules_dir)],
        "notifiers": [{"name": "console", "type": "console"}],
    }
    path = out / "config.yaml"
    path.write_text("# Written by `mistwatch demo`: the simulated org on loopback.\n"
                    + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@click.command(help="Run the whole job against a built-in simulated Mist org on loopback: a healthy day, a "
                    "degraded morning a day later, recovery; alerts, notifications and a report. "
                    "No network and no credentials needed.")
@click.option("--sites", default=12, show_default=True, type=click.IntRange(5, 10000),
              help="Sites in the simulated org.")
@click.option("--out", default="mistwatch-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's config, state and reports (reset at each demo).")
@click.option("--json", "as_json", is_flag=True, help="Print the last cycle's result as JSON.")
def demo(sites: int, out: str, as_json: bool) -> None:
    from rich.console import Console

    from mistwatch.engine import close_app, open_app, run_cycle
    from mistwatch.simulator import SimulatedOrg, serve

    setup_logging(0)
    console = Console(stderr=as_json)
    out_dir = Path(out)
    for stale in ("var", "reports"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = datetime.now(timezone.utc).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=2)
    org = SimulatedOrg(sites=sites, now=start)
    with serve(org) as server:
        app = open_app(write_demo_config(out_dir, server), console=console)
        console.rule(f"mistwatch demo: simulated org '{org.org_name}', {sites} sites, at {server.url}")
        results = []
        try:
            for scenario, offset, story in DEMO_TIMELINE:
                now = start + offset
                org.set_scenario(scenario)
                org.now = now
                with console.status(f"{now:%a %H:%M} {story}") if console.is_terminal else nullcontext():
                    result = run_cycle(app, mode="all", now=now)
                results.append(result)
                if scenario == "degraded" and result.report is not None:  # keep the bad day's report
                    for made in (result.report.html, result.report.json):
                        shutil.copyfile(made, made.with_name(f"degraded-day{made.suffix}"))
                firing = sum(1 for a in (result.rules.alerts if result.rules else []) if a.state == "firing")
                sent = len(getattr(result.notify, "sent", []) or [])
                console.print(f"[bold]{now:%a %d %b %H:%M}[/] {story}: {result.api_calls} API calls, "
                              f"{firing} alerts firing, {sent} notifications sent ({result.duration_s:.2f} s)")
            worst = max(results, key=lambda r: sum(1 for a in (r.rules.alerts if r.rules else [])
                                                   if a.state == "firing"))
            if as_json:
                from mistwatch.summary import summary_json

                click.echo(json.dumps(summary_json(worst), indent=2, default=str))
            else:
                console.rule("The worst moment: day 2")
                latest, worst.report = results[-1].report, None  # latest.* now shows the recovery
                show_result(console, app, worst)
                console.rule("Now")
                console.print(f"After recovery: {sum(1 for a in results[-1].rules.alerts if a.state == 'firing')} "
                              "alerts firing.")
                if latest is not None:
                    console.print(f"Open the report of the degraded day: {latest.html.with_name('degraded-day.html')}"
                                  f"\nand the latest one, after recovery: {latest.html}")
                console.print("Try your own rules on this org: `mistwatch simulate --scenario degraded` serves it "
                              "and prints the config to point `mistwatch run` at it.")
        finally:
            close_app(app)
    sys.exit(max(r.exit_code for r in results) if results else 1)
