"""Slack notifier: an incoming webhook, one Block Kit message per notification.

The webhook URL is a secret (its path is the key): it is registered with mistwatch.secrets and never
appears in errors. Delivery (timeout, 429 Retry-After) is shared with the webhook notifier.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mistwatch.hookspecs import Notifier, hookimpl
from mistwatch.model import Delivery, Notification
from mistwatch.notifiers.webhook import HTTP_SETTINGS, post_json_each
from mistwatch.sanitize import cap, one_line, slack

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["webhook_url"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "type": {"const": "slack"},
        "webhook_url": {"type": "string", "pattern": "^https?://", "x-message": "must be the incoming webhook URL"},
        **HTTP_SETTINGS,
    },
}

#: Slack allows 50 blocks per message; keep room for the header, context and the "more" line.
MAX_ALERT_BLOCKS = 40
#: Slack's limits: a header's plain text 150 characters, a section's text 3000; the top-level text
#: (the notification preview) is cut by Slack at 40,000 but only its first line is ever shown.
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_TEXT = 1000
_MARKS = {"critical": ":red_circle:", "major": ":large_orange_circle:", "minor": ":large_yellow_circle:",
          "info": ":large_blue_circle:", "resolved": ":white_check_mark:"}


def escape(text: str) -> str:
    """Slack mrkdwn control characters (kept for plugins that import it: ``mistwatch.sanitize.slack``)."""
    return slack(text)


def _section(text: str) -> dict[str, Any]:
    # Slack refuses the whole message when a section is over its limit (an entity cut in half by
    # the cap shows as text: harmless)
    return {"type": "section", "text": {"type": "mrkdwn", "text": cap(text, MAX_SECTION)}}


def payload(n: Notification) -> dict[str, Any]:
    from mistwatch.render import alert_rows

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": one_line(n.title, MAX_HEADER), "emoji": True}}]
    rows = alert_rows(n)
    if not rows:
        blocks.append(_section(slack(cap(n.text, MAX_SECTION))))
    for r in rows[:MAX_ALERT_BLOCKS]:
        state = "resolved" if r.state == "resolved" else r.severity
        lines = [f"{_MARKS.get(state, '')} *{escape(state.upper())}*{' (new)' if r.new else ''} {escape(r.summary)}"]
        where = ", ".join(x for x in (r.site, r.device) if x)
        if where:
            lines.append(f"*Where:* {escape(where)}")
        if r.value:
            label = "Value at resolution" if r.state == "resolved" else "Value"
            ref = f" ({escape(r.reference)})" if r.reference else ""
            lines.append(f"*{label}:* {escape(r.value)}{ref}")
        if r.since:
            lines.append(f"*Since:* {escape(r.since)}" + (f", {escape(r.duration)}" if r.duration else ""))
        if r.causes:  # a correlation's: each cause linked to its portal page where it has one
            lines.append("*Causes:* " + ", ".join(f"<{escape(link)}|{escape(rule)}>" if link else escape(rule)
                                                  for rule, link in r.causes))
        if r.recommendation and r.state == "firing":
            lines.append(f"_{escape(r.recommendation)}_")
        if r.link:
            lines.append(f"<{escape(r.link)}|Open in the portal>")
        blocks.append(_section("\n".join(lines)))
    if len(rows) > MAX_ALERT_BLOCKS:
        more = len(rows) - MAX_ALERT_BLOCKS
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"... and {more} more"}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "Sent by mistwatch"}]})
    # the top-level text is mrkdwn too (notifications, old clients): "<!channel>" in a site name
    # would page the whole channel
    return {"text": slack(one_line(n.title, MAX_TEXT)), "blocks": blocks}


def send(settings: Mapping[str, Any], notifications: list[Notification]) -> Iterator[Delivery]:
    return post_json_each(settings, notifications, payload)


@hookimpl
def mistwatch_notifiers():
    yield Notifier(type="slack", send=send, settings_schema=SETTINGS_SCHEMA,
                   description="Slack incoming webhook (Block Kit).")
