"""Mist org and site webhooks: signature check and the topics mistwatch uses.

Mist POSTs ``{"topic": "<topic>", "events": [...]}`` and, when the webhook has a secret, signs the
raw body: ``X-Mist-Signature-v2`` is the hex HMAC-SHA256 of the body keyed with the secret. With
``mist.webhook_secret`` configured, a request without a matching signature is refused; without it,
every webhook is refused (an unsigned intake would let anyone on the network mark devices down).

Topics: ``device-updowns`` (``AP_DISCONNECTED``, ``SW_CONNECTED``, ...) become partial device
states (``device.connected`` 0 or 1) that the core evaluates at once; ``alarms`` and
``device-events`` become events, de-duplicated and counted, and collected by the next poll as usual.
Other topics are accepted and ignored. Everything in the body is hostile: only known fields of the
right type are read, texts are capped, a timestamp in the future counts as now.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from mistwatch import Entity, Event, WebhookItem, WebhookRequest

SIGNATURE_HEADER = "x-mist-signature-v2"
TOPICS = ("device-updowns", "device-events", "alarms")
#: Mist's device ids are this prefix and the MAC (what stats/devices returns as ``id``).
DEVICE_ID_PREFIX = "00000000-0000-0000-1000-"
DEVICE_TYPES = {"AP": "ap", "SW": "switch", "GW": "gateway"}
MAX_EVENTS = 1000  # one delivery; Mist batches far fewer
MAX_TEXT = 256


def sign(secret: str, body: bytes) -> str:
    """The ``X-Mist-Signature-v2`` value Mist sends for ``body``."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str | None, body: bytes, signature: str | None) -> None:
    """Raise PermissionError unless ``signature`` is the body's HMAC under ``secret``."""
    if not secret:
        raise PermissionError("webhooks are refused: set mist.webhook_secret (the secret of the Mist webhook)")
    if not signature:
        raise PermissionError(f"no {SIGNATURE_HEADER} header")
    if not hmac.compare_digest(sign(secret, body).encode(), signature.strip().lower().encode("ascii", "replace")):
        raise PermissionError(f"the {SIGNATURE_HEADER} signature does not match")


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    text = " ".join(str(value).split())  # no line breaks or tabs in a label
    return text[:MAX_TEXT] or None


def _time(value: Any, received: datetime) -> datetime:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return received
    seconds = value / 1000 if value > 1e11 else value  # Mist sends seconds, some topics milliseconds
    try:
        at = datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return received
    return min(at, received)


def _item_id(topic: str, event: Mapping[str, Any]) -> str:
    """The same for the same happening however often and through whichever webhook it arrives."""
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(f"{topic}\n{canonical}".encode()).hexdigest()[:32]


def _device(event: Mapping[str, Any], org_id: str) -> tuple[str, dict[str, str]] | None:
    mac = _text(event.get("mac")) or _text(event.get("ap"))
    device_id = _text(event.get("device_id")) or (DEVICE_ID_PREFIX + mac.lower() if mac else None)
    site_id = _text(event.get("site_id"))
    if device_id is None or site_id is None:
        return None
    labels = {"org_id": org_id, "site_id": site_id, "device_id": device_id}
    kind = str(event.get("type", ""))[:2]
    for label, value in (("site_name", event.get("site_name")),
                         ("device_name", event.get("device_name") or event.get("ap_name")),
                         ("device_type", event.get("device_type") or DEVICE_TYPES.get(kind)), ("mac", mac)):
        text = _text(value)
        if text is not None:
            labels[label] = text
    return f"device:{device_id}", labels


def _items(topic: str, events: list[Any], org_id: str, received: datetime) -> Iterator[WebhookItem]:
    for event in events[:MAX_EVENTS]:
        if not isinstance(event, dict):
            continue
        if _text(event.get("org_id")) not in (None, org_id):
            continue  # another org's webhook pointed here: not ours to judge
        at = _time(event.get("timestamp"), received)
        kind = _text(event.get("type")) or ""
        item_id = _item_id(topic, event)
        if topic == "device-updowns":
            device = _device(event, org_id)
            if device is None:
                continue
            key, labels = device
            if kind.endswith("_DISCONNECTED"):
                connected = 0.0
            elif kind.endswith("_CONNECTED"):
                connected = 1.0
            else:
                continue
            yield WebhookItem(item_id, at, entities=(Entity(key, "device", labels, {"device.connected": connected}),))
        elif topic in ("alarms", "device-events"):
            labels = {k: t for k in ("org_id", "site_id", "site_name", "device_name", "mac")
                      if (t := _text(event.get(k))) is not None}
            source = "mist.alarm" if topic == "alarms" else "mist.device_event"
            severity = _text(event.get("severity"))
            yield WebhookItem(item_id, at, events=(Event(
                source=source, type=kind or "unknown", timestamp=at, labels={**labels, "org_id": org_id},
                severity=severity if severity in ("info", "minor", "major", "critical") else "info",
                text=_text(event.get("text") or event.get("reason")) or "", id=_text(event.get("id")) or item_id),))


def handle(request: WebhookRequest) -> list[WebhookItem]:
    """``Collector.webhook`` of the Mist collector (see :class:`mistwatch.hookspecs.WebhookRequest`)."""
    settings = request.settings
    verify(settings.get("webhook_secret"), request.body, request.headers.get(SIGNATURE_HEADER))
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("topic"), str) or not isinstance(data.get("events"), list):
        raise ValueError('the body is not a Mist webhook: {"topic": "...", "events": [...]} expected')
    org_id = str(settings.get("org_id") or "")
    return list(_items(data["topic"], data["events"], org_id, request.received_at))


def sample(org_id: str, site_id: str, mac: str, *, connected: bool = False, at: float | None = None,
           site_name: str = "", device_name: str = "", device_type: str = "ap") -> bytes:
    """A ``device-updowns`` body for one device, as Mist sends it (``webhooks test``, the simulator)."""
    prefix = {v: k for k, v in DEVICE_TYPES.items()}.get(device_type, "AP")
    event = {"type": f"{prefix}_{'CONNECTED' if connected else 'DISCONNECTED'}", "mac": mac, "org_id": org_id,
             "site_id": site_id, "site_name": site_name, "device_name": device_name, "device_type": device_type,
             "timestamp": int(at if at is not None else datetime.now(timezone.utc).timestamp())}
    return json.dumps({"topic": "device-updowns", "events": [event]}).encode()
