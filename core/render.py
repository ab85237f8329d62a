"""Rendering a notification for people, shared by every notifier (built-in or third-party): one row per
alert with values in the units people use, severity colours, a plain-text body.

Part of the public API for notifier authors, with ``mistwatch``, ``mistwatch.hookspecs`` and
``mistwatch.model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from mistwatch.durations import format_duration
from mistwatch.model import Alert, Notification
from mistwatch.sanitize import TEXT_LIMIT, cap, one_line

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


def _value_and_reference(a: Alert) -> tuple[str, str]:
    """The value and ``threshold ..., baseline ...`` texts of a row, in the units the summaries use.

    SLE metrics are fractions (0.12) that every summary shows as percent (12%); a change rule's
    threshold is the size of the change (``unit`` absolute or percent), not a level of the value."""
    unit = str(a.annotations.get("value_unit", "") or "")  # e.g. "ms" if a rule kind provides one
    scale = 1.0
    if not unit and str(a.annotations.get("metric", "")).startswith("sle."):
        unit, scale = "%", 100.0
    change = a.annotations.get("unit") if a.annotations.get("unit") in ("absolute", "percent") else None

    def show(v: float | None) -> str:
        return fmt_number(None if v is None else v * scale, unit)

    parts = []
    if a.threshold is not None:
        if change == "percent":
            parts.append(f"change threshold {fmt_number(a.threshold)}%")
        elif change == "absolute" and unit == "%":
            parts.append(f"change threshold {fmt_number(a.threshold * scale)} points")
        elif change == "absolute":
            parts.append(f"change threshold {fmt_number(a.threshold, unit)}")
        else:
            parts.append(f"threshold {show(a.threshold)}")
    if a.baseline is not None:
        parts.append(f"baseline {show(a.baseline)}")
    return show(a.value), ", ".join(parts)


def alert_rows(n: Notification) -> list[AlertRow]:
    """One row per alert. Names and texts are capped for display (a 100 KB site name from Mist becomes
    a line ending in an ellipsis); controls and line breaks are removed from names. Escaping for a
    channel's markup is the notifier's job (``mistwatch.sanitize``)."""
    rows = []
    new_keys = set(n.data.get("new") or ())
    for a in n.alerts:
        value, reference = _value_and_reference(a)
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
            rule_id=a.rule_id, summary=one_line(a.summary or a.rule_id, SUMMARY_LIMIT),
            site=one_line(a.labels.get("site_name") or a.labels.get("site_id") or ""), device=device,
            value=value, reference=reference, since=fmt_time(start), duration=duration,
            resolved_at=fmt_time(a.resolved_at), recommendation=cap(a.recommendation or "", TEXT_LIMIT),
            description=cap(a.description or "", TEXT_LIMIT),
            new=a.state == "firing" and a.key in new_keys))
    return rows


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
            if r.recommendation and state == "firing":
                lines.append(f"  recommendation: {r.recommendation}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


