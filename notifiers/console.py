"""Console notifier: prints each notification as a rich panel with a severity-coloured table (stdout)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mistwatch.hookspecs import Notifier, hookimpl
from mistwatch.model import Delivery, Notification
from mistwatch.sanitize import TEXT_LIMIT, terminal
from mistwatch.secrets import redact

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "type": {"const": "console"},
        "send_resolved": {"type": "boolean", "description": "Show resolved messages (default true)."},
        "width": {"type": "integer", "minimum": 40, "description": "Fixed width (default: the terminal's)."},
        "recommendations": {"type": "boolean",
                            "description": "Show each firing alert's recommendation (default: no)."},
    },
}

_STYLES = {"critical": "bold red", "major": "red", "minor": "yellow", "info": "blue", "resolved": "green"}


def _safe(text: str, limit: int | None = None, *, lines: bool = False) -> Any:
    """Data as a rich Text (never markup), without terminal controls: a site name holding ESC ]52
    would otherwise write the reader's clipboard. Names are already capped by alert_rows."""
    from rich.text import Text

    return Text(terminal(redact(text), limit, keep_newlines=lines))


#: Below this width (80 columns, a log file, ``| cat``) an alert is one row of two columns, its facts
#: on a second line: seven columns there wrapped every cell one word per line.
NARROW = 120


def render(n: Notification, *, recommendations: bool = False, width: int | None = None) -> Any:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from mistwatch.render import alert_rows

    rows = alert_rows(n)
    style = _STYLES.get(str(n.data.get("severity", "info")), "blue")
    if not rows:
        return Panel(_safe(n.text, 20 * TEXT_LIMIT, lines=True), title=_safe(n.title, 300), border_style=style)
    if width is not None and width < NARROW:
        return _render_narrow(n, rows, style, recommendations)
    table = Table(expand=True, show_lines=False)
    for column in ("State", "Alert", "Site", "Device", "Value", "Threshold / baseline", "Since"):
        table.add_column(column)
    for r in rows:
        state = Text("RESOLVED" if r.state == "resolved" else r.severity.upper(),
                     style=_STYLES.get("resolved" if r.state == "resolved" else r.severity, ""))
        if r.new:  # as email, Slack and Teams do: what this message adds to the group's last one
            state.append("\nNEW", style="bold reverse")
        summary = _safe(r.summary)
        if recommendations and r.recommendation and r.state == "firing":
            summary.append("\n" + terminal(redact(r.recommendation), None, keep_newlines=True), style="dim")
        if r.link:
            summary.append("\n" + r.link, style=f"dim link {r.link}")
        table.add_row(state, summary, _safe(r.site), _safe(r.device), Text(r.value),
                      Text(r.reference), Text(f"{r.since}\n{r.duration}".strip()))
    return Panel(table, title=_safe(n.title, 300), border_style=style)


def _render_narrow(n: Notification, rows: list[Any], style: str, recommendations: bool) -> Any:
    from rich import box
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=True, padding=(0, 1))
    table.add_column("State", no_wrap=True)
    table.add_column("Alert", ratio=1)
    for r in rows:
        state = Text("RESOLVED" if r.state == "resolved" else r.severity.upper(),
                     style=_STYLES.get("resolved" if r.state == "resolved" else r.severity, ""))
        if r.new:
            state.append("\nNEW", style="bold reverse")
        text = _safe(r.summary)
        facts = " · ".join(x for x in (r.site, r.device, " ".join(filter(None, (r.value, r.reference))),
                                       " ".join(filter(None, (r.since, r.duration)))) if x)
        text.append("\n" + terminal(redact(facts), None), style="dim")
        if recommendations and r.recommendation and r.state == "firing":
            text.append("\n" + terminal(redact(r.recommendation), None, keep_newlines=True), style="dim")
        if r.link:
            text.append("\n" + r.link, style=f"dim link {r.link}")
        table.add_row(state, text)
    return Panel(table, title=_safe(n.title, 300), border_style=style)


def send(settings: Mapping[str, Any], notifications: list[Notification]) -> list[Delivery]:
    from rich.console import Console

    console = Console(width=settings.get("width"), highlight=False)
    results = []
    for n in notifications:
        try:
            console.print(render(n, recommendations=bool(settings.get("recommendations")), width=console.width))
            results.append(Delivery(n.id, ok=True))
        except OSError as exc:  # stdout closed or broken pipe
            results.append(Delivery(n.id, ok=False, error=f"cannot write to the console: {exc}"))
    return results


@hookimpl
def mistwatch_notifiers():
    yield Notifier(type="console", send=send, settings_schema=SETTINGS_SCHEMA,
                   description="Print notifications to the terminal (rich).")
