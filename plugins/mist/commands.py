"""The Mist plugin's commands: ``mistwatch simulate`` serves a simulated Mist org on loopback until
Ctrl-C; ``mistwatch demo`` runs the whole job against one. Registered with the
``mistwatch_commands`` hook; they use mistwatch's public API only."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from contextlib import nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from mistwatch.plugins.mist.simdata import SCENARIOS


@click.command("simulate")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port on loopback (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind (127.0.0.1, ::1).")
@click.option("--sites", type=click.IntRange(1, 100_000), default=12, show_default=True,
              help="Number of generated sites.")
@click.option("--devices-per-site", type=click.IntRange(1, 50), default=6, show_default=True,
              help="Devices per site: APs, then one switch and one gateway.")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="healthy", show_default=True,
              help="healthy, degraded (sites 2-5 in list order have problems) or recovered.")
@click.option("--token", default="sim-token", show_default=True, help="API token the simulator accepts.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the generated org.")
@click.option("--hourly-budget", type=click.IntRange(0, None), default=5000, show_default=True,
              help="Calls per token and clock hour before HTTP 429, as Mist does (0: unlimited).")
def simulate(port: int, host: str, sites: int, devices_per_site: int, scenario: str, token: str,
             seed: int, hourly_budget: int) -> None:
    """Serve a Mist-compatible API on loopback, for trying rules.

    The org is generated from --seed; point `mistwatch run` at the printed base_url, token and org_id.
    Stops cleanly on Ctrl-C or SIGTERM.
    """
    from mistwatch.plugins.mist.simulator import SimulatedOrg, serve

    org = SimulatedOrg(sites=sites, devices_per_site=devices_per_site, scenario=scenario, seed=seed)
    org.prepare()  # device texts built before serving, so a big org's first poll is as fast as the next
    try:
        server = serve(org, host=host, port=port, token=token, hourly_budget=hourly_budget or None)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(f"Mist API simulator: {org.org_name}, {sites} sites, scenario {scenario}, at {server.url}")
        click.echo(f"  org_id: {org.org_id}")
        click.echo(f"  token:  {token}")
        affected = org.affected_sites()
        for site_id, reason in affected.items():
            click.echo(f"  {org.site_name(site_id)}: {reason}")
        click.echo("\nConfig snippet for `mistwatch run --config FILE`:\n")
        click.echo("mist:")
        click.echo(f"  base_url: {server.url}")
        click.echo(f"  token: {token}")
        click.echo(f"  org_id: {org.org_id}")
        click.echo("\nServing; press Ctrl-C to stop.")
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
    click.echo(f"Stopped after {server.calls} API calls.")


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


@click.command(short_help="Run cycles against a built-in simulated Mist org and show the result.",
               help="Run the whole job against a built-in simulated Mist org on loopback: a healthy day, a "
                    "degraded morning a day later, recovery; alerts, notifications and a report. "
                    "No network and no credentials needed.")
@click.option("--sites", default=12, show_default=True, type=click.IntRange(5, 10000),
              help="Sites in the simulated org.")
@click.option("--out", default="mistwatch-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's config, state and reports (reset at each demo).")
@click.option("--json", "as_json", is_flag=True, help="Print the last cycle's result as JSON.")
def demo(sites: int, out: str, as_json: bool) -> None:
    from rich.console import Console

    from mistwatch import close_app, open_app, run_cycle, setup_console_logging, show_result
    from mistwatch.plugins.mist.simulator import SimulatedOrg, serve

    setup_console_logging(0)
    console = Console(stderr=as_json, highlight=False)  # quadratic on long names; see mistwatch run
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
                from mistwatch import result_json

                click.echo(json.dumps(result_json(worst), indent=2, default=str))
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
