"""Webhook notifier: POSTs each notification as JSON with a documented, versioned schema
(``docs/webhook.md``), optionally signed with HMAC-SHA256 in ``X-Mistwatch-Signature: sha256=<hex>``.

Also home of :func:`post`, the HTTP delivery shared with the Slack and Teams notifiers: a timeout,
HTTP 429 (and 503) ``Retry-After`` honoured up to a bound, 4xx other than 429 permanent, and error
messages that never carry the URL (its path is often the secret).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from mistwatch.hookspecs import Notifier, hookimpl
from mistwatch.model import Delivery, Notification
from mistwatch.secrets import redact, register

SCHEMA_NAME = "mistwatch.notification"
SCHEMA_VERSION = 1
SIGNATURE_HEADER = "X-Mistwatch-Signature"
DEFAULT_TIMEOUT = 10.0
#: The longest Retry-After we wait for inside one cycle; longer ones become the outbox retry time.
DEFAULT_MAX_RETRY_AFTER = 30.0

HTTP_SETTINGS: dict[str, Any] = {
    "timeout": {"type": "number", "exclusiveMinimum": 0,
                "description": "Seconds a request may take in total, connecting to last byte (default 10)."},
    "max_retry_after": {"type": "number", "minimum": 0,
                        "description": "Longest 429 Retry-After to wait within a cycle, seconds (default 30)."},
    "send_resolved": {"type": "boolean", "description": "Send resolved messages (default true)."},
}

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "type": {"const": "webhook"},
        "url": {"type": "string", "pattern": "^https?://", "x-message": "must be an http(s) URL"},
        "secret": {"type": "string", "description": "HMAC-SHA256 key for the X-Mistwatch-Signature header."},
        "headers": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Extra request headers (e.g. Authorization: ${TOKEN})."},
        **HTTP_SETTINGS,
    },
}


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - (now or datetime.now(timezone.utc))).total_seconds(), 0.0)


class _DeadlinePassed(Exception):
    pass


def _post_by(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Any:
    """``requests.post`` that returns or raises within ``timeout`` seconds in *total*.

    requests' own timeout bounds each socket read, so a server dripping a byte a second would keep
    us (and the cycle) busy for as long as it likes and then count as a success. The request runs
    in a daemon thread we stop waiting for at the deadline; that thread ends at its next read
    timeout or when the server gives up, and its answer, if one ever comes, is ignored."""
    import requests

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["response"] = requests.post(url, data=body, headers=dict(headers), timeout=timeout)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="mistwatch-http-post", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise _DeadlinePassed
    if "error" in outcome:
        raise outcome["error"]
    return outcome["response"]


def tls_problem(exc: BaseException) -> str | None:
    """Which certificate check failed ("certificate has expired", "Hostname mismatch, ...", "unable
    to get local issuer certificate"), from an exception or anything it wraps; None if no TLS error."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate check failed: {e.verify_message or e.reason or e}"
        if isinstance(e, ssl.SSLError):
            return f"TLS error: {e.reason or e}"
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return None


def post(settings: Mapping[str, Any], url: str, notification_id: str, body: bytes, headers: Mapping[str, str],
         *, ok_statuses: tuple[int, ...] = ()) -> Delivery:
    """POST ``body`` to ``url``; one Delivery. Each attempt has ``timeout`` seconds in total, from
    connecting to the last byte of the answer. Waits out a bounded Retry-After and tries again.
    ``settings`` gives ``timeout`` and ``max_retry_after``."""
    import requests

    url = str(url)
    register(url)
    host = urlsplit(url).netloc or "?"
    timeout = float(settings.get("timeout", DEFAULT_TIMEOUT))
    max_wait = float(settings.get("max_retry_after", DEFAULT_MAX_RETRY_AFTER))
    waited = 0.0
    while True:
        try:
            response = _post_by(url, body, headers, timeout)
        except (requests.Timeout, _DeadlinePassed):
            return Delivery(notification_id, ok=False, error=f"{host}: no answer within {timeout:g}s")
        except requests.RequestException as exc:
            problem = tls_problem(exc) or f"cannot connect ({type(exc).__name__})"
            return Delivery(notification_id, ok=False, error=redact(f"{host}: {problem}"))
        status = response.status_code
        if 200 <= status < 300 or status in ok_statuses:
            return Delivery(notification_id, ok=True)
        detail = redact(f"{host}: HTTP {status} {response.reason or ''}: {response.text[:200]}".strip())
        if status in (429, 503):
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is not None and waited + wait <= max_wait:
                time.sleep(wait)
                waited += wait
                continue
            return Delivery(notification_id, ok=False, error=detail, retry_after=wait)
        return Delivery(notification_id, ok=False, error=detail, permanent=400 <= status < 500)


def post_each(settings: Mapping[str, Any], url: str, notifications: list[Notification],
              request: Callable[[Notification], tuple[bytes, Mapping[str, str]]]) -> Iterator[Delivery]:
    """POST each notification (``request(n)`` gives body and headers), yielding each Delivery as soon
    as it is known (the host records it at once). After a temporary failure the rest are not tried
    this cycle (the endpoint is down or throttling us: each would wait for its own timeout); they
    stay in the outbox and are retried with it."""
    for i, n in enumerate(notifications):
        body, headers = request(n)
        delivery = post(settings, url, n.id, body, headers)
        yield delivery
        if not delivery.ok and not delivery.permanent:
            for m in notifications[i + 1:]:
                yield Delivery(m.id, ok=False, error=f"not tried: {delivery.error}", retry_after=delivery.retry_after)
            return


def post_json_each(settings: Mapping[str, Any], notifications: list[Notification],
                   payload: Callable[[Notification], Any]) -> Iterator[Delivery]:
    """POST ``payload(n)`` as JSON to the chat webhook of ``settings["webhook_url"]`` (Slack, Teams)."""
    register(settings.get("webhook_url"))

    def request(n: Notification) -> tuple[bytes, dict[str, str]]:
        body = redact(json.dumps(payload(n), ensure_ascii=False)).encode("utf-8")
        return body, {"Content-Type": "application/json; charset=utf-8"}

    return post_each(settings, str(settings["webhook_url"]), notifications, request)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def payload(n: Notification) -> dict[str, Any]:
    """The JSON document of docs/webhook.md (version 1)."""
    alerts = []
    for a in n.alerts:
        start = a.firing_since or a.pending_since
        end = a.resolved_at if a.state == "resolved" else None
        alerts.append({
            "key": a.key, "rule_id": a.rule_id, "state": a.state, "severity": a.severity,
            "summary": a.summary, "description": a.description, "recommendation": a.recommendation,
            "labels": dict(a.labels), "value": a.value, "threshold": a.threshold, "baseline": a.baseline,
            "firing_since": _iso(a.firing_since), "resolved_at": _iso(a.resolved_at),
            # never negative, even if the wall clock stepped back while the alert fired
            "duration_seconds": max(0, round((end - start).total_seconds())) if (start and end) else None,
        })
    firing = sum(1 for a in n.alerts if a.state == "firing")
    if n.kind != "alerts":  # a test or the daily digest carries no alerts: "resolved" would mislead
        status = n.kind
    else:
        status = "firing" if firing else "resolved"
    return {
        "schema": SCHEMA_NAME, "version": SCHEMA_VERSION, "id": n.id, "kind": n.kind, "status": status,
        "title": n.title, "headline": n.data.get("headline", n.title), "severity": n.data.get("severity"),
        "reminder": bool(n.data.get("reminder")), "created_at": _iso(n.created_at),
        "group": dict(n.group), "group_key": n.data.get("group_key", ""), "thread_id": n.thread_id,
        "counts": {"firing": firing, "resolved": len(n.alerts) - firing},
        "alerts": alerts, "text": n.text,
    }


def sign(secret: str, body: bytes) -> str:
    """The X-Mistwatch-Signature value: ``sha256=`` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


#: Header names whose values are credentials, kept out of logs and errors. Other headers (a
#: User-Agent of "mistwatch", a tenant name) are not: registering them masked every occurrence of
#: their value, so "mistwatch" showed as "***" in logs.
_SECRET_HEADER = re.compile(r"authorization|token|secret|password|passwd|api[-_]?key|(^|-)key$|signature|cookie"
                            r"|credential|session|auth", re.IGNORECASE)


def is_secret_header(name: str) -> bool:
    """True for a header that carries a credential (Authorization, X-Api-Key, X-Auth-Token, Cookie ...)."""
    return bool(_SECRET_HEADER.search(name))


def send(settings: Mapping[str, Any], notifications: list[Notification]) -> Iterator[Delivery]:
    secret = settings.get("secret")
    register(secret)
    for name, value in (settings.get("headers") or {}).items():
        if is_secret_header(str(name)):
            register(value)

    def request(n: Notification) -> tuple[bytes, dict[str, str]]:
        body = redact(json.dumps(payload(n), ensure_ascii=False, sort_keys=True)).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "mistwatch",
                   "X-Mistwatch-Notification": n.id, **(settings.get("headers") or {})}
        if secret:
            headers[SIGNATURE_HEADER] = sign(str(secret), body)
        return body, headers

    return post_each(settings, str(settings["url"]), notifications, request)


@hookimpl
def mistwatch_notifiers():
    yield Notifier(type="webhook", send=send, settings_schema=SETTINGS_SCHEMA,
                   description="POST JSON (docs/webhook.md) to a URL, optionally HMAC-signed.")
