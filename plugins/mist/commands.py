"""The Mist plugin's commands: ``mistwatch simulate`` serves a simulated Mist org on loopback until
Ctrl-C; ``mistwatch demo`` runs the whole job against one. Registered with the
``mistwatch_commands`` hook; they use mistwatch's public API only."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from mistwatch.plugins.mist import SCENARIOS


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
@click.option("--orgs", "n_orgs", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Serve this many orgs, each on its own port (--port, --port+1, ...) with its own token.")
@click.option("--hourly-budget", type=click.IntRange(0, None), default=5000, show_default=True,
              help="Calls per token and clock hour before HTTP 429, as Mist does (0: unlimited).")
@click.option("--backfill", metavar="DURATION", default=None,
              help="Instead of serving: write this much seasonal history (e.g. 35d) into --state-dir and exit.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --backfill: the new state directory to write the history into.")
@click.option("--truth", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --backfill: write what was injected (anomalies, trends, holidays) as JSON here.")
@click.option("--anomalies", type=click.IntRange(0, None), default=None,
              help="With --backfill: anomalies to inject (default: about one per site and two weeks).")
@click.option("--until", default=None, metavar="TIME",
              help="With --backfill: when the history ends (ISO time; default: the current hour).")
def simulate(port: int, host: str, sites: int, devices_per_site: int, scenario: str, token: str,
             seed: int, n_orgs: int, hourly_budget: int, backfill: str | None, state_dir: Path | None,
             truth: Path | None, anomalies: int | None, until: str | None) -> None:
    """Serve a Mist-compatible API on loopback, for trying rules.

    The org is generated from --seed; point `mistwatch run` at the printed base_url, token and org_id.
    Stops cleanly on Ctrl-C or SIGTERM.

    With --backfill 35d --state-dir DIR it serves nothing: it writes weeks of seasonal history for
    --sites sites (office hours, weekends, holidays, a leaking device, a drifting SLE, injected
    drops) into DIR, for `mistwatch rules backtest --state-dir DIR` (docs/rules.md).
    """
    if backfill is not None or state_dir is not None or truth is not None:
        write_backfill(backfill, state_dir, truth, sites=sites, seed=seed, anomalies=anomalies, until=until)
        return
    from mistwatch.plugins.mist.collector import DEVICE_FIELDS
    from mistwatch.plugins.mist.simulator import SimulatedOrg, serve

    # device texts built before serving (with the fields the collector asks), so a big org's first poll
    # is as fast as the next
    fields = ",".join(DEVICE_FIELDS)
    org = SimulatedOrg(sites=sites, devices_per_site=devices_per_site, scenario=scenario, seed=seed)
    org.prepare(fields)
    servers: list[Any] = []
    try:
        servers.append(serve(org, host=host, port=port, token=token, hourly_budget=hourly_budget or None))
        for i in range(1, n_orgs):
            other = SimulatedOrg(sites=sites, devices_per_site=devices_per_site, scenario=scenario,
                                 seed=seed + i, org_name=f"Org {i + 1}")
            other.prepare(fields)
            servers.append(serve(other, host=host, port=port + i if port else 0, token=f"{token}-{i + 1}",
                                 hourly_budget=hourly_budget or None))
    except (ValueError, OSError) as exc:
        for opened in servers:
            opened.close()
        if isinstance(exc, ValueError):
            raise click.BadParameter(str(exc), param_hint="--host") from None
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server, others = servers[0], servers[1:]
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
        for other in others:
            click.echo(f"Mist API simulator: {other.org.org_name}, {sites} sites, scenario {scenario}, at {other.url}")
        click.echo("\nConfig snippet for `mistwatch run --config FILE`:\n")
        click.echo("mist:")
        if others:
            click.echo("  orgs:")
            for each in (server, *others):
                click.echo(f"    - {{name: {each.org.org_name}, base_url: {each.url}, token: {each.token}, "
                           f"org_id: {each.org.org_id}}}")
        else:
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
        for other in others:
            other.close()
    click.echo(f"Stopped after {server.calls} API calls.")


def write_backfill(span: str | None, state_dir: Path | None, truth_path: Path | None, *, sites: int, seed: int,
                   anomalies: int | None, until: str | None) -> None:
    """``simulate --backfill``: the seasonal history of ``plugins/mist/backfill.py`` into a new store."""
    import time

    from mistwatch import Store
    from mistwatch.durations import parse_duration
    from mistwatch.plugins.mist.backfill import backfill, make_truth, truth_json

    if span is None:
        raise click.BadParameter("--state-dir and --truth go with --backfill DURATION", param_hint="--backfill")
    try:
        days = parse_duration(span) / timedelta(days=1)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--backfill") from None
    if not 2 <= days <= 120:
        raise click.BadParameter("between 2d and 120d", param_hint="--backfill")
    if state_dir is None:
        raise click.BadParameter("give the state directory to write the history into", param_hint="--state-dir")
    if state_dir.exists() and any(state_dir.iterdir()):
        # history written into a live state directory would mix with the real one for good
        raise click.BadParameter(f"{state_dir} is not empty: backfill into a new directory",
                                 param_hint="--state-dir")
    try:
        end = datetime.fromisoformat(until.replace("Z", "+00:00")) if until else datetime.now(timezone.utc)
    except ValueError:
        raise click.BadParameter("not an ISO 8601 time", param_hint="--until") from None
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    end = end.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    count = anomalies if anomalies is not None else max(1, round(sites * days / 14))
    truth = make_truth(sites, days, seed, end=end, anomalies=count, leaks=max(1, sites // 20),
                       drifts=max(1, sites // 40))
    started = time.perf_counter()
    with Store.open(state_dir) as store:
        written = backfill(store, truth, seed=seed)
    if truth_path is not None:
        truth_path.write_text(json.dumps(truth_json(truth), indent=2), encoding="utf-8")
    click.echo(f"{written} hourly snapshots of {sites} sites from {truth.start:%Y-%m-%d %H:%M} to "
               f"{truth.end:%Y-%m-%d %H:%M} UTC in {state_dir} ({time.perf_counter() - started:.1f} s): "
               f"{len(truth.anomalies)} drops injected, {len(truth.trends)} trends"
               + (f"; ground truth in {truth_path}" if truth_path else ""))
    click.echo(f"Try: mistwatch rules backtest rules/ --state-dir {state_dir} --since 14d "
               f"--until {truth.end:%Y-%m-%dT%H:%M}Z --rule site-clients-drop")


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


def write_demo_config(out: Path, server: Any, more: Sequence[Any] = ()) -> Path:
    """The demo's config: the simulated org, or with ``more`` servers several orgs (``mist.orgs``)."""
    from importlib.resources import files

    import yaml

    rules_dir = Path(str(files("mistwatch.rulepack")))
    mist: dict[str, Any] = {"base_url": server.url, "token": server.token, "org_id": server.org.org_id}
    if more:
        mist = {"orgs": [{"name": s.org.org_name, "org_id": s.org.org_id, "token": s.token, "base_url": s.url}
                         for s in (server, *more)]}
    config = {
        "mist": mist,
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
@click.option("--orgs", "n_orgs", default=1, show_default=True, type=click.IntRange(1, 20),
              help="Simulated orgs, each on its own server and token, collected in parallel.")
@click.option("--json", "as_json", is_flag=True, help="Print the last cycle's result as JSON.")
def demo(sites: int, out: str, n_orgs: int, as_json: bool) -> None:
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
    # More orgs: each its own seed (so its own ids), name and token, served on its own port.
    others = [SimulatedOrg(sites=sites, now=start, seed=7 + i, org_name=f"Org {i + 1}") for i in range(1, n_orgs)]
    with ExitStack() as servers:
        server = servers.enter_context(serve(org))
        more = [servers.enter_context(serve(o, token=f"sim-token-{i + 2}")) for i, o in enumerate(others)]
        app = open_app(write_demo_config(out_dir, server, more), console=console)
        names = ", ".join(f"'{o.org_name}'" for o in (org, *others))
        console.rule(f"mistwatch demo: simulated org{'s' if others else ''} {names}, {sites} sites each")
        results = []
        try:
            for scenario, offset, story in DEMO_TIMELINE:
                now = start + offset
                for each in (org, *others):
                    each.set_scenario(scenario)
                    each.now = now
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


@click.group("webhooks")
def webhooks() -> None:
    """Mist webhooks into the daemon's HTTP listener (see docs/webhook.md)."""


@webhooks.command("test")
@click.option("--config", "config_path", default="config.yaml", envvar="MISTWATCH_CONFIG", show_default=True,
              type=click.Path(dir_okay=False), help="The configuration file (or $MISTWATCH_CONFIG).")
@click.option("--url", default=None, metavar="URL",
              help="Where to send (default: the daemon's http.listen address, path /webhooks/mist).")
def webhooks_test(config_path: str, url: str | None) -> None:
    """Send a signed sample Mist webhook to the running daemon, as Mist would.

    The sample is a device-events test event: it proves the address, the secret and the signature
    check, and changes no alert. Exit 0 when the daemon accepted it, 1 otherwise."""
    import secrets as random

    import requests

    from mistwatch import close_app, open_app
    from mistwatch.errors import ConfigError
    from mistwatch.plugins.mist.webhook import sign

    app = open_app(config_path)
    try:
        mist = app.config.data.get("mist") or {}
        secret, org_id = mist.get("webhook_secret"), str(mist.get("org_id") or "")
        listen = (app.config.data.get("http") or {}).get("listen")
    finally:
        close_app(app)
    if not secret:
        raise ConfigError("mist.webhook_secret is not set: the daemon refuses unsigned webhooks", key="mist")
    if url is None:
        if not listen:
            raise ConfigError("http.listen is not set: give --url, or start the daemon with a listener",
                              key="http.listen")
        host, _, port = str(listen).rpartition(":")
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
        url = f"http://{host}:{port}/webhooks/mist"
    event = {"type": "MISTWATCH_TEST", "org_id": org_id, "text": "mistwatch webhooks test",
             "timestamp": int(datetime.now(timezone.utc).timestamp()), "id": random.token_hex(8)}
    body = json.dumps({"topic": "device-events", "events": [event]}).encode()
    try:
        answer = requests.post(url, data=body, timeout=10, headers={
            "Content-Type": "application/json", "X-Mist-Signature-v2": sign(secret, body)})
    except requests.RequestException as exc:
        click.echo(f"webhook test: cannot reach {url}: {type(exc).__name__}", err=True)
        sys.exit(1)
    if answer.status_code == 202:
        click.echo(f"webhook test: {url} accepted the signed sample (HTTP 202)")
        return
    click.echo(f"webhook test: {url} answered HTTP {answer.status_code}: {answer.text[:200]}", err=True)
    sys.exit(1)
