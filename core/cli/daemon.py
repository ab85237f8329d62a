"""`mistwatch daemon` (cycles on a fixed schedule until stopped) and `mistwatch status`."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from mistwatch.durations import format_duration
from mistwatch.service.status import KV_DAEMON_INTERVAL, status_data
from mistwatch.service.status import config_interval as _config_interval
from mistwatch.service.status import parse_interval as _interval

__all__ = ["KV_DAEMON_INTERVAL", "daemon", "status", "status_data"]

log = logging.getLogger("mistwatch.service.daemon")

DAEMON_HELP = """Run cycles (collect, evaluate, report, notify) on a fixed schedule until stopped.

\b
Cycle k starts at start + k * interval; a cycle that overruns skips the
slots it missed. The daily digest (reports.digest) goes out at its time.
SIGHUP reloads the config and rules (a broken new config is reported and
the old one kept). SIGINT or SIGTERM (SIGBREAK on Windows) finish the
current cycle, then exit 0. The daemon holds the state directory's lock
for its whole life: a second daemon or a `mistwatch run` is refused.

\b
With a shared PostgreSQL store (store.url), run daemons on several hosts:
one is active (it holds the store's lock), the others wait as standbys and
one of them takes over within seconds when the active one dies or loses
its connection. `mistwatch status` shows which is which."""


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
@click.option("--config", "config_path", default="config.yaml", envvar="MISTWATCH_CONFIG", show_default=True,
              type=click.Path(dir_okay=False), help="The configuration file.")
@click.option("--interval", "interval_text", metavar="DURATION",
              help="Time between cycle starts, e.g. 15m, 5m, 1h (default: daemon.interval, else 15m).")
@click.option("--listen", "listen", metavar="HOST:PORT",
              help="Serve /healthz, /readyz, /metrics, /api/v1 and the report over HTTP here, e.g. "
                   "127.0.0.1:9108 (default: http.listen; off when neither is set).")
@click.option("--log-format", "log_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object a line (time, level, logger, message), for log collectors.")
@click.option("-v", "--verbose", count=True, help="Debug logging. Never shows secrets.")
def daemon(config_path: str, interval_text: str | None, listen: str | None, log_format: str, verbose: int) -> None:
    from mistwatch.engine import close_app, enabled_collectors, open_app, run_cycle
    from mistwatch.errors import MistwatchError
    from mistwatch.notify.digest import digest_settings
    from mistwatch.service.daemon import Daemon, install_signal_handlers, restore_signal_handlers
    from mistwatch.service.http import http_settings
    from mistwatch.service.live import LiveState
    from mistwatch.service.lock import StateLock
    from mistwatch.service.logsetup import setup_logging

    fixed = _interval(interval_text, "--interval") if interval_text else None
    app = open_app(config_path)
    try:
        interval = fixed or _config_interval(app.config)
        digest_settings(app.config)  # a bad digest setting stops us now, not at 07:30
        web = http_settings(app.config.data.get("http"), listen)
        setup_logging(app.config.data.get("log"), resolve=app.config.resolve, verbose=verbose > 0,
                      json_lines=log_format == "json")
        lock = StateLock(app.config.state_dir, purpose="daemon").acquire()
    except BaseException:
        close_app(app)
        raise
    holder: dict[str, Any] = {"app": app}
    shared = app.store.dialect.shared  # a PostgreSQL store: active/standby (mistwatch.service.standby)
    lost: list[str] = []
    live = LiveState(interval_s=interval.total_seconds())
    heartbeat = _heartbeat(app.config, live)
    hub = None  # the webhook intake, when the HTTP face listens

    def collector_names() -> list[str]:
        return [c.name for c in enabled_collectors(holder["app"])]

    def cycle(now: datetime) -> None:
        if shared and not holder["app"].store.still_active():
            lost.append("lost the store's active lock (connection lost?)")
            runner.request_stop(lost[0])
            log.error("%s: stopping without a cycle so that a standby takes over", lost[0])
            return
        names = collector_names()
        try:
            result = run_cycle(holder["app"], mode="all", now=now,
                               observe=lambda r: live.record_cycle(r, names))
        except BaseException:
            if heartbeat is not None:
                heartbeat.ping(False)
            raise
        if hub is not None and result.status != "failed":
            hub.polled(now)  # the poll is the truth: older pushed states are done
        if heartbeat is not None:
            heartbeat.ping(result.status != "failed")
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
        nonlocal heartbeat
        new = open_app(config_path)
        try:
            old = holder["app"]
            if new.config.state_dir.resolve() != old.config.state_dir.resolve():
                raise MistwatchError("state_dir changed: restart the daemon to move to the new state directory")
            if str(new.config.store_target) != str(old.config.store_target):
                raise MistwatchError("store.url changed: restart the daemon to move to the new store")
            new_interval = fixed or _config_interval(new.config)
            digest_settings(new.config)
            if http_settings(new.config.data.get("http"), listen) != web:
                log.warning("http settings changed: restart the daemon to apply them")
            setup_logging(new.config.data.get("log"), resolve=new.config.resolve, verbose=verbose > 0,
                          json_lines=log_format == "json")
        except BaseException:
            close_app(new)
            raise
        if shared:  # keep the session that holds the active lock: closing it would hand over to a standby
            new.store.close()
            new.store, old.store = old.store, None
        holder["app"] = new
        if old.store is not None:
            close_app(old)
        hook.interval = new_interval
        live.set_interval(new_interval)
        new.store.kv_set(KV_DAEMON_INTERVAL, new_interval.total_seconds())
        if _heartbeat_url(new.config) != (heartbeat.url if heartbeat else None):
            if heartbeat is not None:
                heartbeat.close(timeout=1)
            heartbeat = _heartbeat(new.config, live)
        return new_interval

    hook = _DigestHook(holder, interval)
    runner = Daemon(cycle, interval, reload=reload, digest=hook, flush=flush)
    if web is not None:
        from mistwatch.service.webhooks import WebhookHub

        hub = WebhookHub(lambda: holder["app"], runner.wake, record=live.record_webhook, on_notify=live.record_notify)
        runner.jobs.append(hub)
    server = view = None
    code = 0
    try:
        if web is not None:
            server, view = _start_http(web, holder, live, collector_names, hub)
        previous = install_signal_handlers(runner)
        log.info("mistwatch daemon holding %s, config %s", lock.path.name, Path(config_path).name)
        try:
            if shared:
                from mistwatch.service.standby import standby_poll, took_over, wait_until_active
                from mistwatch.store.database import Store

                waiting_since = time.monotonic()
                store = wait_until_active(app.store, standby_poll(interval.total_seconds()),
                                          lambda: runner.stopping, reopen=lambda: Store.open(app.config.store_target))
                if store is not None:
                    holder["app"].store = store
                    took_over(store, waiting_since)
            if not runner.stopping:
                holder["app"].store.kv_set(KV_DAEMON_INTERVAL, interval.total_seconds())
                code = runner.run()
            if lost:
                code = 1
        finally:
            restore_signal_handlers(previous)
    finally:
        if server is not None:
            server.stop(grace=5.0)  # requests in flight finish; new connections are refused
        if view is not None:
            view.close()
        if heartbeat is not None:
            heartbeat.close()
        close_app(holder["app"])
        lock.release()
    sys.exit(code)


def _heartbeat_url(config: Any) -> str | None:
    return (config.data.get("daemon") or {}).get("heartbeat_url") or None


def _heartbeat(config: Any, live: Any) -> Any:
    from mistwatch.service.heartbeat import Heartbeat

    url = _heartbeat_url(config)
    return Heartbeat(url, record=live.record_heartbeat) if url else None


def _start_http(web: Any, holder: dict[str, Any], live: Any, collectors: Any, hub: Any) -> tuple[Any, Any]:
    from mistwatch.service.http import HttpServer, ServiceView, make_app

    view = ServiceView(config=lambda: holder["app"].config, live=live, settings=web, collectors=collectors,
                       webhook=hub.receive if hub is not None else None)
    return HttpServer(make_app(view), web).start(), view


# -- status ---------------------------------------------------------------------------------------

@click.command()
@click.option("--config", "config_path", default="config.yaml", envvar="MISTWATCH_CONFIG", show_default=True,
              type=click.Path(dir_okay=False), help="The configuration file.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON for scripts.")
def status(config_path: str, as_json: bool) -> None:
    """Show the last cycles, the last successful one, open alerts by severity and the outbox."""
    from mistwatch.config import host_for_config, load_config
    from mistwatch.store.database import Store

    # no Mist token needed to read the state; the config's plugins_dir is loaded, so a notifier
    # type that comes from it is known
    config = load_config(config_path, host_for_config(config_path), require_env=False)
    with Store.open(config.store_target) as store, store.reading():
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
    for d in data.get("store", {}).get("daemons", []):
        role = "[bold green]active[/]" if d["active"] else "standby"
        console.print(f"  {role}: {escape(str(d['application_name']))} (connected since {d['since']})")
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
                      f"{escape(budget_text(budget, data['interval_s']), 1000)}")
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
