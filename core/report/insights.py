"""The insights view of ``run --mode insights|all``: alerts by severity and site, then notes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from mistwatch.durations import format_duration
from mistwatch.model import Alert, severity_rank
from mistwatch.render import value_texts
from mistwatch.sanitize import NAME_LIMIT, TEXT_LIMIT, terminal

_SEVERITY_STYLE = {"critical": "bold red", "major": "red", "minor": "yellow", "info": "cyan"}
_STATE_STYLE = {"firing": "bold", "pending": "dim", "resolved": "green"}


def console_text(text: Any, limit: int | None = NAME_LIMIT, *, lines: bool = False) -> str:
    """Data for rich console markup: no terminal controls (a site name holding ESC ]52 writes the
    reader's clipboard), capped, with rich markup escaped ("[link=...]" in a name stays text)."""
    from rich.markup import escape

    return escape(terminal(str(text), limit, keep_newlines=lines))


def _since(alert: Alert) -> datetime | None:
    if alert.state == "resolved":
        return alert.resolved_at
    if alert.state == "firing":
        return alert.firing_since
    return alert.pending_since


def _order(alert: Alert) -> tuple[Any, ...]:
    state_rank = {"firing": 0, "pending": 1, "resolved": 2}.get(alert.state, 3)
    return (state_rank, -severity_rank(alert.severity), alert.labels.get("site_name", ""),
            alert.rule_id, alert.labels.get("device_name", ""))


def versus(alert: Alert) -> str:
    """``value / threshold`` or ``value (was baseline)`` as one short cell, in the units and format of
    the notifications (``mistwatch.render.value_texts``); empty for a yes/no metric."""
    value, _ = value_texts(alert)
    if not value:
        return ""
    if alert.baseline is not None:
        return f"{value} (was {value_texts(replace(alert, value=alert.baseline, threshold=None))[0]})"
    if alert.threshold is not None and not alert.annotations.get("unit"):
        return f"{value} / {value_texts(replace(alert, value=alert.threshold))[0]}"
    return value


def print_insights(console: Any, outcome: Any, *, now: datetime) -> None:
    """A rich table of alerts (firing, pending, resolved) by severity and site, then what to do
    (each rule's recommendation once) and the notes (insufficient history, unknown data).

    On a very wide console (>= 200 columns) summary and recommendation are a column of the table."""

    alerts = sorted(outcome.alerts, key=_order)
    wide = getattr(console, "width", 80) >= 200
    if not alerts:
        console.print("[green]No findings: every rule is quiet.[/green]")
    else:
        from mistwatch.report.console import compact_table, name_column_width

        counts = {state: sum(1 for a in alerts if a.state == state) for state in ("firing", "pending", "resolved")}
        title = "Insights: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        table = compact_table(console, title=title, expand=wide)
        narrow = getattr(console, "width", 80) < 120
        table.add_column("severity", no_wrap=True)
        # rule ids and device names are identifiers: never broken mid-word (they were folded at 80 columns)
        table.add_column("rule", no_wrap=True, min_width=name_column_width([a.rule_id for a in alerts]))
        if narrow:  # site and device share a cell, which wraps between words
            table.add_column("where", min_width=16)
        else:
            table.add_column("site")
            table.add_column("device", no_wrap=True)
        table.add_column("value" if narrow else "value vs threshold/baseline", justify="right",
                         min_width=11 if narrow else None)
        if not narrow:
            table.add_column("state", no_wrap=True)
        table.add_column("since", no_wrap=True)
        if wide:
            table.add_column("summary / recommendation", ratio=1)
        for alert in alerts:
            since = _since(alert)
            ago = format_duration(now - since) if since is not None and now >= since else ""
            site = console_text(alert.labels.get("site_name", ""))
            device = console_text(alert.labels.get("device_name", ""))
            rule = console_text(alert.rule_id)
            if alert.state == "firing" and alert.annotations.get("superseded_by_rule"):
                rule += f"\n[dim](superseded by {console_text(alert.annotations['superseded_by_rule'])})[/dim]"
            if alert.state == "firing" and alert.annotations.get("inhibited_by_rule"):
                rule += f"\n[dim](inhibited by {console_text(alert.annotations['inhibited_by_rule'])})[/dim]"
            row = [f"[{_SEVERITY_STYLE.get(alert.severity, '')}]{alert.severity}[/]", rule]
            if narrow:
                row.append(f"{site} · {device}" if device else site)
                row.append(versus(alert).replace(" (was", "\n(was"))
                row.append(f"{ago} ago" if alert.state == "firing" else
                           f"[{_STATE_STYLE.get(alert.state, '')}]{alert.state}[/] {ago}")
            else:
                row += [site, device, versus(alert),
                        f"[{_STATE_STYLE.get(alert.state, '')}]{alert.state}[/]", f"{ago} ago" if ago else ""]
            if wide:
                text = console_text(alert.summary, 300)
                if alert.recommendation and alert.state != "resolved":
                    text += f"\n[dim]{console_text(alert.recommendation, TEXT_LIMIT, lines=True)}[/dim]"
                if alert.causes:
                    text += f"\n[dim]causes: {console_text(', '.join(alert.causes), 300)}[/dim]"
                row.append(text)
            table.add_row(*row)
        console.print(table)
        if not wide:
            advice: dict[str, str] = {}
            for alert in alerts:
                if alert.state != "resolved" and alert.recommendation:
                    advice.setdefault(alert.rule_id, alert.recommendation)
            if advice:
                console.print("[bold]What to do[/bold]")
                for rule_id, text in advice.items():
                    advice_text = console_text(text, TEXT_LIMIT, lines=True)
                    console.print(f"  [bold]{console_text(rule_id)}[/bold]: {advice_text}", highlight=False)
    notes = list(outcome.notes)
    if notes:
        console.print(f"[bold]Notes[/bold] ({len(notes)})")
        by_kind: dict[str, list[Any]] = {}
        for note in notes:
            by_kind.setdefault(note.kind, []).append(note)
        for kind, group in by_kind.items():
            if len(group) <= 3:
                for note in group:
                    note_text = console_text(note.text, TEXT_LIMIT)
                    console.print(f"  [dim]{kind}[/dim] {console_text(note.rule_id)}: {note_text}", highlight=False)
            else:  # a fresh store gives every trend rule the same note: say it once
                rules = console_text(", ".join(note.rule_id for note in group), TEXT_LIMIT)
                example = console_text(group[0].text, TEXT_LIMIT)
                console.print(f"  [dim]{kind}[/dim] {len(group)} rules ({rules}); e.g. {example}",
                              highlight=False)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def insights_json(outcome: Any) -> dict[str, Any]:
    """The same as JSON: alerts (sorted like the table), counts by state and severity, notes."""
    alerts = sorted(outcome.alerts, key=_order)
    by_state: dict[str, int] = {}
    by_severity: dict[str, int] = {}
    for alert in alerts:
        by_state[alert.state] = by_state.get(alert.state, 0) + 1
        if alert.state != "resolved":
            by_severity[alert.severity] = by_severity.get(alert.severity, 0) + 1
    return {
        "counts": {"by_state": by_state, "by_severity": by_severity},
        "alerts": [{
            "key": a.key, "rule": a.rule_id, "state": a.state, "severity": a.severity,
            "site": a.labels.get("site_name", ""), "device": a.labels.get("device_name", ""),
            "labels": dict(a.labels), "value": a.value, "threshold": a.threshold, "baseline": a.baseline,
            "summary": a.summary, "description": a.description, "recommendation": a.recommendation,
            "pending_since": _iso(a.pending_since), "firing_since": _iso(a.firing_since),
            "resolved_at": _iso(a.resolved_at), "causes": list(a.causes),
            "superseded_by": a.annotations.get("superseded_by") if a.state == "firing" else None,
            "inhibited_by": a.annotations.get("inhibited_by") if a.state == "firing" else None,
            "inhibited_by_rule": a.annotations.get("inhibited_by_rule") if a.state == "firing" else None,
        } for a in alerts],
        "notes": [{"rule": n.rule_id, "kind": n.kind, "text": n.text} for n in outcome.notes],
    }
