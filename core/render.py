"""Rendering a notification for people, shared by every notifier (built-in or third-party): one row per
alert with values in the units people use, severity colours, a plain-text body.

- ``alert_rows(n)``: the rows, in ``alert_order`` (firing first, then severity, site, rule), each with
  ``new`` (not in the group's previous message), ``link`` (the entity's ``portal_url`` label) and, for
  a resolved alert, a ``summary`` that gives the value it resolved at (the firing one is ``problem``).
- ``value_texts(alert)``: value and threshold/baseline texts, also used by listings and reports.
- ``plain_text(n)``: a plain-text body.

Part of the public API for notifier authors, with ``mistwatch``, ``mistwatch.hookspecs`` and
``mistwatch.model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from mistwatch.durations import format_duration
from mistwatch.model import Alert, Notification, severity_rank
from mistwatch.sanitize import NAME_LIMIT, TEXT_LIMIT, cap, one_line

#: A summary names a site or device and says what is wrong: a little longer than a name.
SUMMARY_LIMIT = 300

#: Colours per severity (and for resolved), shared by the notifiers so every channel looks alike.
SEVERITY_COLORS: dict[str, str] = {
    "critical": "#b91c1c", "major": "#c2410c", "minor": "#a16207", "info": "#1d4ed8", "resolved": "#15803d",
}


@dataclass(frozen=True)
class AlertRow:
    """One alert as every notifier shows it."""

    key: str
    state: str  # firing | resolved
    severity: str
    color: str
    rule_id: str
    summary: str
    site: str
    device: str
    value: str
    reference: str  # "threshold 80" / "baseline 120" / ""
    since: str
    duration: str  # "for 2h5m" (firing) / "lasted 1h30m" (resolved)
    resolved_at: str
    recommendation: str
    description: str
    new: bool = False  # firing and not in the group's previous message
    #: the page for this alert in the source's own portal (an entity's ``portal_url`` label), or ""
    link: str = ""
    #: the firing summary, also for a resolved row (whose ``summary`` is its resolved line)
    problem: str = ""
    #: a correlation's causes as (rule id, link): the link is the alert's portal page (for
    #: ``site-degraded``, the site's), "" when it has none
    causes: tuple[tuple[str, str], ...] = ()


def alert_order(a: Alert) -> tuple[object, ...]:
    """The one order of alerts in every message and listing: firing before resolved, then the most
    severe first, then by site, rule and device (the key breaks the last ties), so the same alerts
    always read the same way."""
    return (a.state == "resolved", -severity_rank(a.severity), (a.labels.get("site_name") or "").casefold(),
            a.rule_id, (a.labels.get("device_name") or "").casefold(), a.key)


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if float(value).is_integer():
        text = str(int(value))
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    else:
        text = f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}".rstrip("0").rstrip(".")
    if not unit:
        return text
    return f"{text}{unit}" if unit == "%" else f"{text} {unit}"


#: Metrics that are fractions 0..1, shown as percent like the rules' ``pct`` filter: by prefix or suffix.
PERCENT_PREFIXES: tuple[str, ...] = ("sle.",)
PERCENT_SUFFIXES: tuple[str, ...] = ("_ratio",)


def is_flag(a: Alert) -> bool:
    """A yes/no metric (1 connected, 0 not) held against 0.5: its summary says it all ("is offline"),
    and "0 / threshold 0.5" would only puzzle people."""
    return a.threshold == 0.5 and a.value in (0.0, 1.0, None) and not a.annotations.get("unit")


def value_texts(a: Alert) -> tuple[str, str]:
    """The value and ``threshold ..., baseline ...`` texts of an alert, in the units people use, for
    every notifier, listing and report alike.

    Fractions (SLEs, ``*_ratio`` metrics) are percent with no decimals, as the summaries' ``pct``
    shows them (0.551 -> 55%); counts are whole numbers; a yes/no metric shows neither; a change
    rule's threshold is the size of the change (``unit`` absolute: points for a percent value;
    percent: %), not a level of the value."""
    if is_flag(a):
        return "", ""
    unit = str(a.annotations.get("value_unit", "") or "")  # e.g. "ms" if a rule kind provides one
    metric = str(a.annotations.get("metric", "") or "")
    percent = not unit and (metric.startswith(PERCENT_PREFIXES) or metric.endswith(PERCENT_SUFFIXES))
    change = a.annotations.get("unit") if a.annotations.get("unit") in ("absolute", "percent") else None

    def show(v: float | None) -> str:
        if v is None:
            return ""
        return f"{v * 100:.0f}%" if percent else fmt_number(v, unit)

    parts = []
    if a.threshold is not None:
        if change == "percent":
            parts.append(f"change threshold {fmt_number(a.threshold)}%")
        elif change == "absolute" and percent:
            parts.append(f"change threshold {fmt_number(round(a.threshold * 100, 1))} points")
        elif change == "absolute":
            parts.append(f"change threshold {fmt_number(a.threshold, unit)}")
        else:
            parts.append(f"threshold {show(a.threshold)}")
    if a.baseline is not None:
        parts.append(f"baseline {show(a.baseline)}")
    return show(a.value), ", ".join(parts)


_value_and_reference = value_texts  # the name notifiers used before it was public


def resolved_line(a: Alert) -> str:
    """What a resolved alert says: the rule and where, and the value it resolved at, never the
    firing summary (``ap-offline AP-01 at Dublin: resolved, now 97%``)."""
    device = a.labels.get("device_name") or a.labels.get("device_id")
    site = a.labels.get("site_name") or a.labels.get("site_id")
    where = " ".join(x for x in ((device or ""), (f"at {site}" if site else "")) if x)
    value, _ = value_texts(a)
    return f"{a.rule_id}{' ' + where if where else ''}: resolved" + (f", now {value}" if value else "")


def alert_rows(n: Notification) -> list[AlertRow]:
    """One row per alert. Names and texts are capped for display (a 100 KB site name from Mist becomes
    a line ending in an ellipsis); controls and line breaks are removed from names. Escaping for a
    channel's markup is the notifier's job (``mistwatch.sanitize``)."""
    rows = []
    new_keys = set(n.data.get("new") or ())
    for a in sorted(n.alerts, key=alert_order):
        value, reference = value_texts(a)
        start = a.firing_since or a.pending_since
        if a.state == "resolved":
            end = a.resolved_at or n.created_at
            duration = f"lasted {format_duration(end - start)}" if start else ""
        else:
            # a duration under a minute is the cycle that saw it start: "for 0s" says nothing
            duration = f"for {format_duration(n.created_at - start)}" if start and (
                n.created_at - start).total_seconds() >= 60 else ""
        device = one_line(a.labels.get("device_name") or a.labels.get("device_id") or "")
        device_type = one_line(a.labels.get("device_type") or "", 20)
        if device and device_type:
            device = f"{device} ({device_type})"
        rows.append(AlertRow(
            key=a.key, state=a.state, severity=a.severity,
            color=SEVERITY_COLORS["resolved" if a.state == "resolved" else a.severity]
            if (a.state == "resolved" or a.severity in SEVERITY_COLORS) else SEVERITY_COLORS["info"],
            rule_id=a.rule_id,
            summary=one_line(resolved_line(a) if a.state == "resolved" else (a.summary or a.rule_id), SUMMARY_LIMIT),
            # the site name as Mist has it (capped): each channel folds it for its own syntax (9.1)
            site=cap(a.labels.get("site_name") or a.labels.get("site_id") or "", NAME_LIMIT), device=device,
            value=value, reference=reference, since=fmt_time(start), duration=duration,
            resolved_at=fmt_time(a.resolved_at), recommendation=cap(a.recommendation or "", TEXT_LIMIT),
            description=cap(a.description or "", TEXT_LIMIT),
            new=a.state == "firing" and a.key in new_keys, link=alert_link(a),
            problem=one_line(a.summary or a.rule_id, SUMMARY_LIMIT),
            causes=tuple((rule, alert_link(a)) for rule in cause_rule_ids(a))))
    return rows


def cause_rule(key: str) -> str:
    """The rule of a cause, from its alert key (``rule{site_id=...}``)."""
    return one_line(key.split("{", 1)[0], NAME_LIMIT)


def cause_rule_ids(a: Alert) -> list[str]:
    """The rules of a correlation alert's causes, each once, in the order of ``causes``."""
    return list(dict.fromkeys(cause_rule(key) for key in a.causes))


def alert_link(a: Alert) -> str:
    """The alert's ``portal_url`` label (a collector sets it on its entities), if it is a web address."""
    url = str(a.labels.get("portal_url") or "")
    return url if url.startswith(("https://", "http://")) and not any(c in url for c in " \r\n\t<>\"") else ""


def plain_text(n: Notification) -> str:
    """A plain-text body any notifier can use."""
    lines = [one_line(n.title, SUMMARY_LIMIT), ""]
    for title, state in (("Firing", "firing"), ("Resolved", "resolved")):
        rows = [r for r in alert_rows(n) if r.state == state]
        if not rows:
            continue
        lines.append(f"{title}:")
        for r in rows:
            sev = "RESOLVED" if state == "resolved" else r.severity.upper()
            lines.append(f"- [{sev}{', NEW' if r.new else ''}] {r.summary}")
            where = ", ".join(x for x in (r.site, r.device) if x)
            if where:
                lines.append(f"  where: {where}")
            value = r.value + (f" ({r.reference})" if r.reference else "")
            if value.strip():
                lines.append(f"  value{' at resolution' if state == 'resolved' else ''}: {value}")
            if r.since:
                lines.append(f"  since: {r.since}, {r.duration}" if r.duration else f"  since: {r.since}")
            if r.causes:
                lines.append("  causes: " + ", ".join(rule for rule, _link in r.causes))
            if r.link:
                lines.append(f"  open: {r.link}")
            if r.recommendation and state == "firing":
                lines.append(f"  recommendation: {r.recommendation}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


