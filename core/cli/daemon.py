"""`mistwatch daemon` (cycles on a fixed schedule until stopped) and `mistwatch status`."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from mistwatch.durations import format_duration, parse_duration

log = logging.getLogger("mistwatch.service.daemon")
#: The running daemon's interval (``--interval`` may differ from the config): status measures
#: staleness by it, so a daemon that died shows as stale after three of its own intervals.
KV_DAEMON_INTERVAL = "daemon.interval_s"

DAEMON_HELP = """Run cycles (collect, evaluate, report, notify) on a fixed schedule until stopped.

\b
Cycle k starts at start + k * interval; a cycle that overruns skips the
slots it missed. The daily digest (reports.digest) goes out at its time.
SIGHUP reloads the config and rules (a broken new config is reported and
the old one kept). SIGINT or SIGTERM (SIGBREAK on Windows) finish the
current cycle, then exit 0. The daemon holds the state directory's lock
for its whole life: a second daemon or a `mistwatch run` is refused."""


def _interval(text: Any, where: str) -> timedelta:
    from mistwatch.errors import ConfigError

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key=where) from None
    if value.total_seconds() < 1:
        raise ConfigError(f"{text!r} is too short (at least 1s)", key=where)
    return value


def _config_interval(config: Any) -> timedelta:
    return _interval((config.data.get("daemon") or {}).get("interval", "15m"), "daemon.interval")


class _DigestHook:
    """Sends the digest at its time from the latest report the daemon wrote (no extra API calls).
    Without a fresh report it does nothing: the next cycle's report sends it instead."""

    def __init__(self, holder: dict[str, Any], interval: timedelta) -> None:
        self.holder, self.interval = holder, interval

    def next_due(self, now: datetime) -> datetime | None:
        from mistwatch.notify.digest import next_due

        app = self.holder["app"]
        return next_due(app.config, app.store, now)

    def send(self, now: datetime) -> bool:
        from mistwatch.durations import parse_time
        from mistwatch.notify.digest import send_digest
        from mistwatch.report.build import ReportPaths

        app = self.holder["app"]
        reports = app.config.reports_dir
        latest = reports / "latest.json"
        if not latest.exists():
            return False
        report = json.loads(latest.read_text(encoding="utf-8"))
        if now - parse_time(report["generated_at"]) > 2 * self.interval:
            return False  # stale: let the next cycle report and send
        day = report["generated_at"][:10]
        paths = ReportPaths(json=latest, html=reports / "latest.html",
                            history_json=reports / "history" / f"report-{day}.json",
                            history_html=reports / "history" / f"report-{day}.html")
        return send_digest(app.config, app.host, app.store, report, paths, now)


def _cycle_line(result: Any) -> str:
    parts = [f"cycle {result.status}", f"{result.duration_s:.1f} s", f"{result.api_calls} API calls"]
    if result.rules is not None:
        firing = sum(1 for a in result.rules.alerts if a.state == "firing")
        parts.append(f"{firing} alert(s) firing")
    if result.notify is not None:
        parts.append(f"{len(result.notify.sent)} notification(s) sent")
        if result.notify.failed or result.notify.permanent_failures:
            parts.append(f"{len(result.notify.failed) + len(result.notify.permanent_failures)} failed")
    if result.digest_sent:
        parts.append("digest sent")
    return ", ".join(parts)


@click.command(help=DAEMON_HELP)
@click.option("--config", "config_path", default="config.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The configuration file.")
@click.option("--interval", "interval_text", metavar="DURATION",
              help="Time between cycle starts, e.g. 15m, 5m, 1h (default: daemon.interval, else 15m).")
@click.option("-v", "--verbose", count=True, help="Debug logging. Never shows secrets.")
def daemon(config_path: str, interval_text: str | None, verbose: int) -> None:
    from mistwatch.engine import close_app, open_app, run_cycle
    from mistwatch.errors import MistwatchError
    from mistwatch.notify.digest import digest_settings
    from mistwatch.service.daemon import Daemon, install_signal_handlers, restore_signal_handlers
    from mistwatch.service.lock import StateLock
    from mistwatch.service.logsetup import setup_logging

    fixed = _interval(interval_text, "--interval") if interval_text else None
    app = open_app(config_path)
    try:
        interval = fixed or _config_interval(app.config)
        digest_settings(app.config)  # a bad digest setting stops us now, not at 07:30
        setup_logging(app.config.data.get("log"), resolve=app.config.resolve, verbose=verbose > 0)
        lock = StateLock(app.config.state_dir, purpose="daemon").acquire()
    except BaseException:
        close_app(app)
        raise
    holder: dict[str, Any] = {"app": app}
    app.store.kv_set(KV_DAEMON_INTERVAL, interval.total_seconds())

    def cycle(now: datetime) -> None:
        result = run_cycle(holder["app"], mode="all", now=now)
        level = logging.WARNING if result.status != "ok" else logging.INFO
        log.log(level, "%s", _cycle_line(result))
        for error in result.errors[:10]:
            log.warning("  %s", error)

    def flush(now: datetime) -> datetime | None:
        """Send what is due between cycles (held by group_wait/group_interval, retries); when next."""
        from mistwatch.notify import outbox as outbox_table
        from mistwatch.notify.pipeline import send_outbox

        app = holder["app"]
        result = send_outbox(app.config, app.host, app.store, now)
        if result.sent or result.failed or result.permanent_failures:
            log.info("between cycles: %d notification(s) sent, %d failed", len(result.sent),
                     len(result.failed) + len(result.permanent_failures))
        return outbox_table.next_due(app.store)

    def reload() -> timedelta | None:
        new = open_app(config_path)
        try:
            old = holder["app"]
            if new.config.state_dir.resolve() != old.config.state_dir.resolve():
                raise MistwatchError("state_dir changed: restart the daemon to move to the new state directory")
            new_interval = fixed or _config_interval(new.config)
            digest_settings(new.config)
            setup_logging(new.config.data.get("log"), resolve=new.config.resolve, verbose=verbose > 0)
        except BaseException:
            close_app(new)
            raise
        holder["app"] = new
        close_app(old)
        hook.interval = new_interval
        new.store.kv_set(KV_DAEMON_INTERVAL, new_interval.total_seconds())
        return new_interval

    hook = _DigestHook(holder, interval)
    runner = Daemon(cycle, interval, reload=reload, digest=hook, flush=flush)
    previous = install_signal_handlers(runner)
    log.info("mistwatch daemon holding %s, config %s", lock.path.name, Path(config_path).name)
    try:
        code = runner.run()
    finally:
        restore_signal_handlers(previous)
        close_app(holder["app"])
        lock.release()
    sys.exit(code)


# -- status ---------------------------------------------------------------------------------------

def status_data(config: Any, store: Any, now: datetime) -> dict[str, Any]:
    """What `status` shows, as JSON-able data."""
    from mistwatch.errors import LockHeld
    from mistwatch.notify import outbox
    from mistwatch.notify.digest import KV_LAST_DAY, next_due
    from mistwatch.service.lock import StateLock

    def run_dict(r: Any) -> dict[str, Any] | None:
        if r is None:
            return None
        return {"id": r.id, "started_at": r.started_at.isoformat(timespec="seconds"),
                "finished_at": r.finished_at.isoformat(timespec="seconds") if r.finished_at else None,
                "mode": r.mode, "status": r.status, "api_calls": r.api_calls, "errors": list(r.errors),
                "api_budget": (r.summary or {}).get("api_budget", {})}

    firing: dict[str, int] = {"critical": 0, "major": 0, "minor": 0, "info": 0}
    pending = 0
    for alert in store.load_alerts().values():
        if alert.state == "firing":
            firing[alert.severity] = firing.get(alert.severity, 0) + 1
        elif alert.state == "pending":
            pending += 1
    probe = StateLock(config.state_dir, purpose="status")
    try:
        probe.acquire()
        probe.release()
        holder = None
    except LockHeld:
        holder = probe.holder() or {"pid": "?"}
    last_ok = store.last_successful_run()
    recorded = store.kv_get(KV_DAEMON_INTERVAL)
    interval = timedelta(seconds=float(recorded)) if recorded else _config_interval(config)
    age = (now - last_ok.finished_at).total_seconds() if last_ok and last_ok.finished_at else None
    due = next_due(config, store, now)
    return {
        "now": now.isoformat(timespec="seconds"),
        "running": holder,
        "interval_s": interval.total_seconds(),
        "last_successful_run": run_dict(last_ok),
        "last_success_age_s": None if age is None else round(age),
        "stale": age is None or age > 3 * interval.total_seconds(),
        "runs": [run_dict(r) for r in store.runs(10)],
        "alerts_firing": firing,
        "alerts_pending": pending,
        "outbox": outbox.counts(store),
        "outbox_failed": [{"notifier": i.notifier, "title": i.title, "error": i.last_error}
                          for i in outbox.items(store, permanent=True, limit=5)],
        # waiting for a retry (relay down, 4xx, 429): why mail has not arrived yet
        "outbox_retrying": [{"notifier": i.notifier, "title": i.title, "error": i.last_error, "attempts": i.attempts,
                             "next_attempt_at": i.next_attempt_at.isoformat(timespec="seconds")}
                            for i in outbox.items(store, status="failed", permanent=False, limit=5)],
        "digest": {"last_day": store.kv_get(KV_LAST_DAY),
                   "next_due": due.isoformat(timespec="minutes") if due else None},
    }


@click.command()
@click.option("--config", "config_path", default="config.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The configuration file.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON for scripts.")
def status(config_path: str, as_json: bool) -> None:
    """Show the last cycles, the last successful one, open alerts by severity and the outbox."""
    from mistwatch.config import load_config
    from mistwatch.host import make_host
    from mistwatch.store.database import Store

    config = load_config(config_path, make_host(), require_env=False)  # no Mist token needed to read the state
    with Store.open(config.state_dir) as store, store.reading():
        data = status_data(config, store, datetime.now(timezone.utc))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _print_status(data)


def _print_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from mistwatch.report.insights import console_text as escape  # no terminal controls, capped, markup escaped

    console = Console(highlight=False)
    running = data["running"]
    if running:
        console.print(f"[bold]Running:[/] a mistwatch {escape(str(running.get('purpose', 'process')))} "
                      f"(pid {escape(str(running.get('pid')))} on {escape(str(running.get('host', '?')))}, "
                      f"since {escape(str(running.get('since', '?')))})")
    else:
        console.print("[bold]Running:[/] nothing holds the state directory now")
    last = data["last_successful_run"]
    if last is None:
        console.print("[bold red]No successful cycle yet.[/]")
    else:
        age = format_duration(data["last_success_age_s"] or 0)
        style = "bold red" if data["stale"] else "bold"
        console.print(f"[{style}]Last successful cycle:[/] {last['finished_at']} ({age} ago, mode {last['mode']})"
                      + ("  [red]stale: more than 3 intervals ago[/]" if data["stale"] else ""))
    table = Table(title="Last cycles", title_justify="left")
    for col in ("started", "mode", "status", "API calls"):
        table.add_column(col, no_wrap=True)
    table.add_column("errors", overflow="fold")
    for r in data["runs"]:
        colour = {"ok": "green", "partial": "yellow", "failed": "red"}.get(r["status"], "white")
        table.add_row(r["started_at"], r["mode"], f"[{colour}]{r['status']}[/]", str(r["api_calls"]),
                      escape("; ".join(r["errors"]), 80))
    console.print(table)
    from mistwatch.report.console import budget_text

    latest = next((r for r in data["runs"] if r.get("api_budget")), None)
    for name, budget in sorted((latest or {}).get("api_budget", {}).items()):
        console.print(f"[bold]API budget ({escape(name)}, cycle of {latest['started_at']}):[/] "
                      f"{escape(budget_text(budget), 1000)}")
    f = data["alerts_firing"]
    console.print(f"[bold]Alerts firing:[/] critical {f.get('critical', 0)}, major {f.get('major', 0)}, "
                  f"minor {f.get('minor', 0)}, info {f.get('info', 0)}; pending {data['alerts_pending']}")
    o = data["outbox"]
    console.print(f"[bold]Outbox:[/] {o['pending']} pending, {o['failed']} failed, {o['sent']} sent, "
                  f"{o.get('superseded', 0)} superseded")
    for item in data["outbox_failed"]:
        console.print(f"  [red]failed[/] {escape(item['notifier'])}: {escape(item['title'], 300)}: "
                      f"{escape(item['error'], 1000)}")
    for item in data.get("outbox_retrying", []):
        console.print(f"  [yellow]retrying[/] {escape(item['notifier'])}: {escape(item['title'], 300)} (attempt "
                      f"{item['attempts']}, next at {item['next_attempt_at']}): {escape(item['error'], 1000)}")
    d = data["digest"]
    if d["next_due"] or d["last_day"]:
        console.print(f"[bold]Digest:[/] last sent for {d['last_day'] or 'never'}; next due {d['next_due']}")
