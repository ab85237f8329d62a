"""The daily digest: the report's executive summary, with the HTML and JSON reports attached, sent once
per local day from ``reports.digest.time`` on, to ``reports.digest.notifiers``.

"Once" holds across restarts and across the daemon and scheduled ``run --mode report`` alike: the day
is claimed in the store (kv ``digest.last_day``) in the same transaction that writes the digest to the
outbox, so either both happen or neither does. Delivery then goes through the outbox, which retries
a failed send without ever writing a second digest for the day.

Config::

    reports:
      digest: {time: "07:30", timezone: Europe/Dublin, notifiers: [noc-email]}
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mistwatch.errors import ConfigError
from mistwatch.model import Attachment, Notification
from mistwatch.notify import outbox
from mistwatch.notify.pipeline import send_outbox
from mistwatch.yamlfile import load_yaml

log = logging.getLogger("mistwatch.notify.digest")

KV_LAST_DAY = "digest.last_day"
DEFAULT_TIME = "07:30"
DEFAULT_TIMEZONE = "UTC"


@dataclass(frozen=True)
class DigestSettings:
    at: time
    zone: ZoneInfo
    notifiers: tuple[str, ...]

    def local_day(self, now: datetime) -> date:
        return now.astimezone(self.zone).date()

    def due_at(self, day: date) -> datetime:
        """The moment the digest of local ``day`` becomes due (aware)."""
        return datetime.combine(day, self.at, tzinfo=self.zone)


def digest_settings(config: Any) -> DigestSettings | None:
    """``reports.digest`` checked (time, zone, notifier names), or None when no digest is configured.
    Raises ConfigError naming the key."""
    spec = (config.data.get("reports") or {}).get("digest")
    if not spec or spec.get("enabled") is False:
        return None
    path = getattr(config, "path", None)

    def bad(key: str, message: str) -> ConfigError:
        line = None
        if path:
            try:  # errors are rare: read the file again for the line number
                line = load_yaml(path)[1].line(["reports", "digest", key])
            except Exception:  # a line number is a nicety; never fail on it
                line = None
        return ConfigError(message, file=str(path) if path else None, line=line, key=f"reports.digest.{key}")

    text = str(spec.get("time", DEFAULT_TIME))
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text)
    if not match:
        raise bad("time", f"{text!r} is not a time of day as HH:MM")
    zone_name = str(spec.get("timezone", DEFAULT_TIMEZONE))
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad("timezone", f"unknown time zone {zone_name!r} (use an IANA name such as Europe/Dublin)") from None
    names = tuple(spec.get("notifiers") or ())
    known = {n.get("name") for n in (config.data.get("notifiers") or [])}
    missing = [n for n in names if n not in known]
    if not names:
        raise bad("notifiers", "names no notifier")
    if missing:
        raise bad("notifiers", f"names notifier(s) not defined under notifiers: {', '.join(missing)}")
    return DigestSettings(time(int(match.group(1)), int(match.group(2))), zone, names)


def digest_due(config: Any, store: Any, now: datetime) -> bool:
    """True once the local day's digest time has come and that day's digest has not been sent."""
    settings = digest_settings(config)
    if settings is None:
        return False
    day = settings.local_day(now)
    return now >= settings.due_at(day) and store.kv_get(KV_LAST_DAY) != day.isoformat()


def next_due(config: Any, store: Any, now: datetime) -> datetime | None:
    """When the next digest falls due (``now`` if it is due already), or None without a digest."""
    settings = digest_settings(config)
    if settings is None:
        return None
    day = settings.local_day(now)
    if store.kv_get(KV_LAST_DAY) != day.isoformat():
        return max(now, settings.due_at(day))
    return settings.due_at(day + timedelta(days=1))


def build_digest(report: Mapping[str, Any], paths: Any, notifiers: Sequence[str], day: date, now: datetime,
                 new_id: Callable[[], str]) -> list[Notification]:
    """One digest notification per notifier: the executive summary as HTML and text, both reports attached."""
    from mistwatch.report.build import summary_html

    org = report.get("org", {}).get("name") or report.get("org", {}).get("id") or "Mist org"
    headline = f"Daily digest: {org} — {day.isoformat()}"
    html = summary_html(dict(report))
    attachments = (
        Attachment(f"mistwatch-report-{day.isoformat()}.html", paths.html.read_bytes(), "text/html"),
        Attachment(f"mistwatch-report-{day.isoformat()}.json", paths.json.read_bytes(), "application/json"),
    )
    text = summary_text(report)
    return [Notification(id=new_id(), notifier=name, kind="digest", title=f"[mistwatch] {headline}",
                         created_at=now, text=text, html=html, attachments=attachments,
                         data={"headline": headline, "group_key": f"digest:{day.isoformat()}",
                               "severity": _digest_severity(report)})
            for name in notifiers]


def _digest_severity(report: Mapping[str, Any]) -> str:
    firing = report.get("org", {}).get("alerts_firing", {})
    for sev in ("critical", "major", "minor"):
        if firing.get(sev):
            return sev
    return "info"


def summary_text(report: Mapping[str, Any]) -> str:
    """The executive summary as plain text (the mail's text part)."""
    org, summary = report["org"], report["summary"]
    health = org["health"]["value"]
    lines = [f"Org health {'unknown' if health is None else f'{health:g}'}"
             + (f" ({org['health']['delta_1d']:+g} since yesterday)" if org["health"]["delta_1d"] else "")
             + f"; {org['devices_connected']}/{org['devices']} devices connected; {org['sites']} sites.", ""]
    lines.append("Worst sites:")
    lines += [f"  {w['score']:g}  {w['name']}: {w['reason']}" for w in summary["worst_sites"]] or ["  none"]
    lines += ["", "What changed since yesterday:"]
    lines += [f"  - {c['site_name']}: {c['text']}" for c in summary["changes"]] or ["  nothing notable"]
    lines += ["", "Open critical alerts:"]
    lines += [f"  - {a.get('site_name') or 'org'}: {a['summary'] or a['rule_id']}"
              for a in summary["critical_alerts"]] or ["  none"]
    lines += ["", "Top recommendations:"]
    lines += [f"  {i}. {t}" for i, t in enumerate(summary["recommendations"], 1)] or ["  none"]
    lines += ["", "The full report is attached (HTML and JSON)."]
    return "\n".join(lines)


def send_digest(config: Any, host: Any, store: Any, report: Mapping[str, Any], paths: Any, now: datetime,
                *, deliver: Callable[[list[str]], Any] | None = None) -> bool:
    """Queue today's digest if it is due and not yet sent, then deliver it; True if queued now.

    The day is claimed and the digest written to the outbox in one transaction, so it is never
    queued twice for a day, whatever crashes or restarts. ``deliver(ids)`` sends the queued ids
    (default: ``mistwatch.notify.pipeline.send_outbox``); a failed send stays in the outbox for retry."""
    settings = digest_settings(config)
    if settings is None:
        return False
    day = settings.local_day(now)
    if now < settings.due_at(day):
        return False
    notes = build_digest(report, paths, settings.notifiers, day, now, outbox.new_id)
    with store.transaction() as db:
        # re-check inside the write lock: another process may have claimed the day meanwhile
        if store.kv_get(KV_LAST_DAY) == day.isoformat():
            return False
        store.kv_set(KV_LAST_DAY, day.isoformat())
        outbox.insert_notifications(db, notes, now)
    log.info("daily digest for %s queued for %s", day.isoformat(), ", ".join(settings.notifiers))
    ids = [n.id for n in notes]
    if deliver is None:
        result = send_outbox(config, host, store, now, ids=ids)
        for warning in getattr(result, "warnings", []):
            log.warning("digest: %s", warning)
    else:
        deliver(ids)
    return True
