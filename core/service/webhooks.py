"""Webhook intake: accept on the HTTP thread, evaluate on the daemon's thread.

``POST /webhooks/<collector>`` goes to :meth:`WebhookHub.receive`: the collector's own ``webhook``
callable verifies and reads it (the core knows no source's format or signature), items already
seen are dropped (a source may resend, and an org and a site webhook may both deliver the same
event), the rest are queued, the daemon is woken, and the answer (202) leaves at once: the
source's few-second deadline never waits for rules or notifiers.

On the daemon's thread, :meth:`WebhookHub.run` applies the queued partial entity states on top of
what the store knows and runs only the rules that read the metrics they carry, only for those
entities, with the usual ``for:``: a condition seen by webhook is pending from the event's time,
and fires as soon as ``for:`` has elapsed (the hub asks the daemon to wake then), without waiting
for the next poll. Then the notification pipeline runs as after a cycle. Polling stays the source
of truth: when a cycle completes, pushed states received before it started are forgotten, and
the cycle's evaluation decides.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mistwatch.hookspecs import WebhookItem, WebhookRequest
from mistwatch.model import Entity, Snapshot
from mistwatch.secrets import redact

log = logging.getLogger("mistwatch.service.webhooks")

#: Item ids remembered for de-duplication (oldest forgotten first). Mist resends within minutes.
MAX_SEEN = 200_000
#: Items waiting for the daemon thread; beyond this the intake answers 503 (the source retries).
MAX_QUEUED = 50_000


@dataclass
class Pushed:
    entity: Entity
    at: datetime  # when it happened
    received: datetime


class WebhookHub:
    """``receive`` (any HTTP thread) and ``next_due``/``run`` (the daemon thread).

    ``app()`` returns the daemon's current App (config, host, store, ruleset); ``wake()`` makes
    the daemon loop look at ``next_due`` again; ``record(source, outcome)`` counts for /metrics."""

    def __init__(self, app: Callable[[], Any], wake: Callable[[], None],
                 record: Callable[[str, str], None] = lambda source, outcome: None,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 on_notify: Callable[[Any], None] = lambda result: None) -> None:
        self.app, self.wake, self.record, self.now, self.on_notify = app, wake, record, now, on_notify
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._queue: deque[tuple[WebhookItem, datetime]] = deque()
        # daemon-thread state: pushed entity states by key, and when a pending condition may fire
        self._pushed: dict[str, Pushed] = {}
        self._followups: list[tuple[datetime, str]] = []
        self.evaluations = 0

    # -- the HTTP side ----------------------------------------------------------------------------
    def receive(self, source: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        app = self.app()
        collector = app.host.collectors().get(source)
        if collector is None or collector.webhook is None:
            return 404, {"error": f"no webhook intake named {source[:50]!r}"}
        settings = app.config.data.get(collector.config_key, {}) if collector.config_key else {}
        received = self.now()
        request = WebhookRequest(headers={k.lower(): v for k, v in headers.items()}, body=body,
                                 settings=settings, received_at=received)
        try:
            items = list(collector.webhook(request))
        except PermissionError as exc:
            self.record(source, "rejected")
            log.warning("webhook %s refused: %s", source, redact(str(exc)))
            return 401, {"error": redact(str(exc))[:200]}
        except ValueError as exc:
            self.record(source, "invalid")
            return 400, {"error": redact(str(exc))[:200]}
        except Exception as exc:  # a plugin bug: answer, log, keep serving
            self.record(source, "invalid")
            log.error("webhook %s failed: %s: %s", source, type(exc).__name__, redact(str(exc)))
            return 500, {"error": f"internal error: {type(exc).__name__}"}
        with self._lock:
            fresh = [i for i in items if i.id not in self._seen]
            if len(self._queue) + len(fresh) > MAX_QUEUED:
                return 503, {"error": "too many webhook items waiting; retry later"}
            for item in fresh:
                self._seen[item.id] = None
                self._queue.append((item, received))
            while len(self._seen) > MAX_SEEN:
                self._seen.popitem(last=False)
        self.record(source, "accepted" if fresh or not items else "duplicate")
        if any(item.entities for item in fresh):
            self.wake()
        return 202, {"accepted": len(fresh), "duplicates": len(items) - len(fresh)}

    # -- the daemon side --------------------------------------------------------------------------
    def next_due(self, now: datetime) -> datetime | None:
        with self._lock:
            if any(item.entities for item, _ in self._queue):
                return now
        return self._followups[0][0] if self._followups else None

    def polled(self, started_at: datetime) -> None:
        """A cycle completed: what it collected replaces pushed states received before it began."""
        self._pushed = {k: p for k, p in self._pushed.items() if p.received >= started_at}
        self._followups = [(at, k) for at, k in self._followups if k in self._pushed]
        heapq.heapify(self._followups)

    def run(self, now: datetime) -> Any:
        """Evaluate what was pushed and what is due to fire; notify. Returns the NotifyResult or None."""
        with self._lock:
            drained = list(self._queue)
            self._queue.clear()
        changed: set[str] = set()
        for item, received in drained:
            for entity in item.entities:
                old = self._pushed.get(entity.key)
                if old is None or item.at >= old.at:
                    self._pushed[entity.key] = Pushed(entity, item.at, received)
                    changed.add(entity.key)
        while self._followups and self._followups[0][0] <= now:
            changed.add(heapq.heappop(self._followups)[1])
        changed &= set(self._pushed)
        if not changed:
            return None
        return self._evaluate([self._pushed[k] for k in sorted(changed)], now)

    def _evaluate(self, pushed: list[Pushed], now: datetime) -> Any:
        from mistwatch.notify.pipeline import notify
        from mistwatch.rules.evaluator import Evaluation, alert_key, evaluate, identity_of
        from mistwatch.rules.lifecycle import advance
        from mistwatch.rules.loader import RuleSet

        app = self.app()
        store = app.store
        metrics = {m for p in pushed for m in p.entity.metrics}
        # rules counting polls (`for_cycles`) are left to the polls: a webhook is not a cycle
        rules = [r for r in app.ruleset.rules if r.enabled and not r.for_cycles and r.metrics & metrics]
        if not rules:
            return None
        subset = RuleSet(rules=rules)
        previous = store.load_alerts()
        saved, transitions = [], []
        # each pushed state is evaluated at its own event time (pending from then), then at `now`
        # (fires if `for:` has elapsed since); states sharing a time are evaluated together
        for at in sorted({min(p.at, now) for p in pushed}):
            group = [p for p in pushed if min(p.at, now) == at]
            keys = {p.entity.key for p in group}
            expected = {alert_key(r.id, identity_of(p.entity.labels)) for r in rules for p in group}
            snapshot = Snapshot(taken_at=at, entities=[p.entity for p in group])
            evaluation = evaluate(subset, snapshot, store, at, alerts=previous)
            findings = [f for f in evaluation.findings if f.subject in keys and f.key in expected]
            # only alerts this evaluation has a finding for move: the others wait for the poll
            found = {f.key for f in findings}
            mine = {k: a for k, a in previous.items() if k in found}
            for when in (at, now) if at < now else (at,):
                step = Evaluation(at=when, findings=findings)
                alerts, moved = advance(mine, step, subset, when)
                mine = {a.key: a for a in alerts}
                transitions.extend(moved)
            saved.extend(mine.values())
            by_id = subset.by_id
            for alert in mine.values():
                rule = by_id.get(alert.rule_id)
                if alert.state == "pending" and alert.pending_since and rule is not None:
                    subject = next((p.entity.key for p in group if alert_key(rule.id, identity_of(p.entity.labels))
                                    == alert.key), None)
                    if subject is not None:
                        heapq.heappush(self._followups, (alert.pending_since + rule.for_duration, subject))
        store.save_alerts(saved, transitions)
        self.evaluations += 1
        for t in transitions:
            log.info("webhook: %s %s -> %s", t.alert_key, t.from_state, t.to_state)
        if not transitions:
            return None
        current = [a for a in store.load_alerts().values() if a.state != "inactive"]
        result = notify(app.config, app.host, store, current, now)
        self.on_notify(result)
        return result
