"""What the state directory says about the service: `status`, `alerts`, and the daemon's HTTP API.

Every function here reads the store and returns JSON-able data; nothing takes the state lock, so
they work while a daemon runs (SQLite WAL lets readers in beside the writer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from mistwatch.durations import parse_duration
from mistwatch.errors import ConfigError
from mistwatch.model import SEVERITIES, Alert, severity_rank

#: The running daemon's interval (``--interval`` may differ from the config): status measures
#: staleness by it, so a daemon that died shows as stale after three of its own intervals.
KV_DAEMON_INTERVAL = "daemon.interval_s"
#: Alert states a user can ask for (``inactive`` rows are bookkeeping, never shown).
ALERT_STATES = ("firing", "pending", "resolved")


def parse_interval(text: Any, where: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key=where) from None
    if value.total_seconds() < 1:
        raise ConfigError(f"{text!r} is too short (at least 1s)", key=where)
    return value


def config_interval(config: Any) -> timedelta:
    return parse_interval((config.data.get("daemon") or {}).get("interval", "15m"), "daemon.interval")


def daemon_interval(config: Any, store: Any) -> timedelta:
    """The interval of the daemon that last ran on this state (``--interval`` wins over the config)."""
    recorded = store.kv_get(KV_DAEMON_INTERVAL)
    return timedelta(seconds=float(recorded)) if recorded else config_interval(config)


# -- alerts ----------------------------------------------------------------------------------------

def query_alerts(alerts: Iterable[Alert], *, states: Iterable[str] = (), severities: Iterable[str] = (),
                 sites: Iterable[str] = ()) -> list[Alert]:
    """Alerts matching every given filter (each a set of accepted values; empty accepts all),
    most severe first, then by site and key. Without a state filter: firing and pending ones
    (what is open now), as ``amtool alert query`` shows active alerts.

    ``sites`` match the site name or the site id, case-insensitively."""
    wanted_states = set(states) or {"firing", "pending"}
    wanted_sev = set(severities)
    wanted_sites = {s.casefold() for s in sites}
    chosen = [
        a for a in alerts
        if a.state in wanted_states
        and (not wanted_sev or a.severity in wanted_sev)
        and (not wanted_sites or a.labels.get("site_name", "").casefold() in wanted_sites
             or a.labels.get("site_id", "").casefold() in wanted_sites)
    ]
    order = {"firing": 0, "pending": 1, "resolved": 2}
    chosen.sort(key=lambda a: (order.get(a.state, 3), -severity_rank(a.severity), a.site_name, a.key))
    return chosen


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def alert_json(alert: Alert) -> dict[str, Any]:
    return {"key": alert.key, "rule_id": alert.rule_id, "state": alert.state, "severity": alert.severity,
            "summary": alert.summary, "labels": dict(alert.labels), "value": alert.value,
            "threshold": alert.threshold, "pending_since": _iso(alert.pending_since),
            "firing_since": _iso(alert.firing_since), "resolved_at": _iso(alert.resolved_at),
            # muted by the config's inhibit: rules: the key and rule of the firing alert muting it
            "inhibited_by": _muting(alert, "inhibited_by"), "inhibited_by_rule": _muting(alert, "inhibited_by_rule")}


def _muting(alert: Alert, name: str) -> str | None:
    value = alert.annotations.get(name) if alert.state == "firing" else None
    return str(value) if value else None


def alert_filters(params: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Checked filters from query parameters or CLI options: ``state``, ``severity``, ``site``
    (each may repeat). Raises ValueError naming the bad value."""
    unknown = sorted(set(params) - {"state", "severity", "site"})
    if unknown:
        raise ValueError(f"unknown filter {unknown[0]!r} (use state, severity, site)")
    states = list(params.get("state", []))
    severities = list(params.get("severity", []))
    for value in states:
        if value not in ALERT_STATES:
            raise ValueError(f"state must be one of {', '.join(ALERT_STATES)}, not {value!r}")
    for value in severities:
        if value not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {value!r}")
    return {"states": states, "severities": severities, "sites": list(params.get("site", []))}


# -- status ----------------------------------------------------------------------------------------

def _run_dict(r: Any, interval_s: float | None = None) -> dict[str, Any] | None:
    """A run as JSON; with ``interval_s`` each API budget (one per token, so per org with several
    orgs) carries its check at that interval (``calls_per_hour``, ``within_budget``)."""
    from mistwatch.report.console import budget_check

    if r is None:
        return None
    budgets = (r.summary or {}).get("api_budget", {})
    if interval_s:
        budgets = {name: {**b, **budget_check(b, interval_s)} for name, b in budgets.items()}
    return {"id": r.id, "started_at": r.started_at.isoformat(timespec="seconds"),
            "finished_at": r.finished_at.isoformat(timespec="seconds") if r.finished_at else None,
            "mode": r.mode, "status": r.status, "api_calls": r.api_calls, "errors": list(r.errors),
            "api_budget": budgets}


def status_data(config: Any, store: Any, now: datetime) -> dict[str, Any]:
    """What `status` and ``/api/v1/status`` show, as JSON-able data."""
    from mistwatch.errors import LockHeld
    from mistwatch.notify import outbox
    from mistwatch.notify.digest import KV_LAST_DAY, next_due
    from mistwatch.service.lock import StateLock

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
    interval = daemon_interval(config, store)
    age = (now - last_ok.finished_at).total_seconds() if last_ok and last_ok.finished_at else None
    due = next_due(config, store, now)
    return {
        "now": now.isoformat(timespec="seconds"),
        "running": holder,
        "interval_s": interval.total_seconds(),
        "last_successful_run": _run_dict(last_ok),
        "last_success_age_s": None if age is None else round(age),
        "stale": age is None or age > 3 * interval.total_seconds(),
        "runs": [_run_dict(r, interval.total_seconds()) for r in store.runs(10)],
        "alerts_firing": firing,
        "alerts_pending": pending,
        "store": {"backend": store.dialect.name, "where": store.where, "daemons": store.active_sessions()},
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
