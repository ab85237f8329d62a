"""Microsoft Teams notifier: a Workflows ("When a Teams webhook request is received") webhook, one
Adaptive Card per notification. The URL carries a signature, so it is treated as a secret."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from mistwatch.hookspecs import Notifier, hookimpl
from mistwatch.model import Delivery, Notification
from mistwatch.notifiers.webhook import HTTP_SETTINGS, post_json_each
from mistwatch.sanitize import cap_bytes, markdown, one_line

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["webhook_url"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "type": {"const": "teams"},
        "webhook_url": {"type": "string", "pattern": "^https?://", "x-message": "must be the Workflows webhook URL"},
        **HTTP_SETTINGS,
    },
}

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
MAX_ALERTS = 40
#: Teams refuses a message over about 28 KB with HTTP 413 (some tenants at less): alerts that would
#: take the card past this many bytes of JSON are summed up in an "... and N more" line instead.
MAX_CARD_BYTES = 20_000
#: A text without alerts (a test, the digest) is cut to this many bytes for the same reason.
MAX_TEXT = 10_000
#: The title, and each fact of an alert, are cut so that the title and the first alert always fit.
MAX_TITLE = 300
MAX_FACT = 2_000
#: Adaptive Card colours and container styles per severity.
_COLOR = {"critical": "Attention", "major": "Attention", "minor": "Warning", "info": "Accent", "resolved": "Good"}
_STYLE = {"critical": "attention", "major": "attention", "minor": "warning", "info": "accent", "resolved": "good"}


def card(n: Notification) -> dict[str, Any]:
    from mistwatch.render import alert_rows

    severity = str(n.data.get("severity", "info"))
    # TextBlocks and facts are Markdown in Teams: every text from data is escaped ("[x](https://...)"
    # in a site name must not become a link), and capped in bytes (Teams answers 413 over ~28 KB)
    body: list[dict[str, Any]] = [{"type": "TextBlock", "text": _md(one_line(n.title, MAX_TITLE), MAX_TITLE * 4),
                                   "weight": "Bolder", "size": "Medium", "wrap": True,
                                   "color": _COLOR.get(severity, "Default")}]
    rows = alert_rows(n)
    if not rows:
        body.append({"type": "TextBlock", "text": _md(n.text, MAX_TEXT), "wrap": True})
    size, shown = _size(body), 0
    for r in rows[:MAX_ALERTS]:
        state = "resolved" if r.state == "resolved" else r.severity
        facts = [{"title": "Site", "value": r.site}, {"title": "Device", "value": r.device}]
        if r.value:
            facts.append({"title": "Value at resolution" if r.state == "resolved" else "Value",
                          "value": r.value + (f" ({r.reference})" if r.reference else "")})
        if r.since:
            facts.append({"title": "Since", "value": r.since + (f", {r.duration}" if r.duration else "")})
        if r.causes:  # a correlation's (the card links the alert itself, not each cause)
            facts.append({"title": "Causes", "value": ", ".join(rule for rule, _link in r.causes)})
        if r.recommendation and r.state == "firing":
            facts.append({"title": "Recommendation", "value": r.recommendation})
        container: dict[str, Any] = {"type": "Container", "style": _STYLE.get(state, "default"), "items": [
            {"type": "TextBlock", "text": f"{state.upper()}{' (new)' if r.new else ''}: {_md(r.summary, MAX_FACT)}",
             "weight": "Bolder", "wrap": True},
            {"type": "FactSet", "facts": [{"title": f["title"], "value": _md(f["value"], MAX_FACT)}
                                          for f in facts if f["value"]]},
        ]}
        if r.link:
            container["selectAction"] = {"type": "Action.OpenUrl", "url": r.link, "title": "Open in the portal"}
        if shown and size + _size(container) > MAX_CARD_BYTES:
            break
        body.append(container)
        size, shown = size + _size(container), shown + 1
    if len(rows) > shown:
        body.append({"type": "TextBlock", "text": f"... and {len(rows) - shown} more", "wrap": True})
    return {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": "1.4", "msteams": {"width": "Full"}, "body": body}


def _md(text: str, limit: int) -> str:
    """Data as Teams Markdown text: escaped, at most ``limit`` bytes of UTF-8."""
    return cap_bytes(markdown(text), limit)


def _size(item: Any) -> int:
    return len(json.dumps(item, ensure_ascii=False).encode("utf-8"))


def payload(n: Notification) -> dict[str, Any]:
    return {"type": "message", "attachments": [{"contentType": ADAPTIVE_CARD, "contentUrl": None,
                                                "content": card(n)}]}


def send(settings: Mapping[str, Any], notifications: list[Notification]) -> Iterator[Delivery]:
    return post_json_each(settings, notifications, payload)


@hookimpl
def mistwatch_notifiers():
    yield Notifier(type="teams", send=send, settings_schema=SETTINGS_SCHEMA,
                   description="Microsoft Teams Workflows webhook (Adaptive Card).")
