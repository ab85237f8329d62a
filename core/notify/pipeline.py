"""The notification pipeline: route -> inhibit -> silence/maintenance -> group -> dedup/repeat -> outbox -> send.

``notify`` is called once per cycle with every alert that is not inactive (pending, firing, resolved).
Deciding what to send is a pure function (:func:`plan`) of the config, those alerts, the active
silences and the notification log; the outbox write and the log update happen in one transaction,
then :func:`send_outbox` delivers everything due, including retries of earlier failures.

Dedup follows Alertmanager's notification log: per (group, notifier) a message goes out when the
group has a new firing alert, a severity went up, a notified alert resolved, or the repeat interval
elapsed with alerts still firing; otherwise nothing. A resolved message is only sent for alerts the
notifier was told were firing, so a problem that began and ended inside a maintenance window (or a
silence) sends no recovery mail either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from mistwatch.hookspecs import Notifier
from mistwatch.model import Alert, Attachment, Delivery, Notification, severity_rank
from mistwatch.notify import outbox
from mistwatch.notify.outbox import LogEntry, OutboxItem
from mistwatch.notify.settings import (
    DEFAULT_REPEAT,
    InhibitRule,
    MaintenanceWindow,
    Matcher,
    NotifySettings,
    Route,
    _error,
    alert_labels,
    alert_name,
    load_settings,
    matches_all,
    parse_matcher,
)
from mistwatch.render import alert_order, fmt_time, plain_text
from mistwatch.sanitize import one_line

TITLE_PREFIX = "[mistwatch]"


# -- results --------------------------------------------------------------------------------------

@dataclass
class Suppressed:
    """A firing alert that sent nothing, and why (inhibited / silenced / maintenance / no route)."""

    alert_key: str
    reason: str
    name: str = ""  # for people: "ap-offline AP-01 at Dublin HQ"

    @property
    def title(self) -> str:
        return f"{self.name or self.alert_key}: {self.reason}"


@dataclass
class NotifyResult:
    planned: list[Notification] = field(default_factory=list)
    sent: list[OutboxItem] = field(default_factory=list)
    failed: list[OutboxItem] = field(default_factory=list)  # temporary: will be retried
    permanent_failures: list[OutboxItem] = field(default_factory=list)
    suppressed: list[Suppressed] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pending: int = 0  # still waiting in the outbox after this call
    dry_run: bool = False

    def merge(self, other: NotifyResult) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.permanent_failures += other.permanent_failures
        self.warnings += other.warnings
        self.pending = other.pending


# -- pipeline stages (pure) -----------------------------------------------------------------------

def inhibited(alerts: Sequence[Alert], rules: Sequence[InhibitRule]) -> dict[str, str]:
    """Firing alerts muted by another firing alert, as {alert key: reason}."""
    return {key: f"inhibited by {alert_name(source)}" for key, source in inhibitors(alerts, rules).items()}


def inhibitors(alerts: Sequence[Alert], rules: Sequence[InhibitRule]) -> dict[str, Alert]:
    """Firing alerts muted by another firing alert, as {alert key: the alert muting it}.

    Like Alertmanager, an alert matching both sides of a rule is never muted by another alert that
    does too (so two gateway-down alerts do not mute each other), nor by itself."""
    firing = [(a, alert_labels(a)) for a in alerts if a.state == "firing"]
    out: dict[str, Alert] = {}
    for rule in rules:
        # sources by their values of the `equal` labels: a target only looks at its own bucket
        sources: dict[tuple[str, ...], list[tuple[Alert, dict[str, str]]]] = {}
        for a, lab in firing:
            if matches_all(rule.source, lab):
                sources.setdefault(tuple(lab.get(k, "") for k in rule.equal), []).append((a, lab))
        if not sources:
            continue
        for target, labels in firing:
            if target.key in out or not matches_all(rule.target, labels):
                continue
            both = matches_all(rule.source, labels)
            for source, slabels in sources.get(tuple(labels.get(k, "") for k in rule.equal), ()):
                if source.key == target.key or (both and matches_all(rule.target, slabels)):
                    continue
                out[target.key] = source
                break
    return out


def superseded_reason(alert: Alert) -> str | None:
    """Why a firing alert is held back because a more telling alert of the same entity replaces it
    (the rules stage marks it: ``supersedes:`` in the rules)."""
    rule = alert.annotations.get("superseded_by_rule")
    if not rule:
        return None
    site = alert.labels.get("site_name") or alert.labels.get("site_id")
    return f"superseded by {rule}" + (f" at {site}" if site else "")


def active_silences(silences: Sequence[outbox.Silence], now: datetime) -> list[tuple[outbox.Silence, list[Matcher]]]:
    """The silences in force at ``now`` with their parsed matchers (a stored matcher that no longer
    parses is skipped rather than muting everything)."""
    out = []
    for silence in silences:
        if silence.active(now):
            try:
                out.append((silence, [parse_matcher(m) for m in silence.matchers]))
            except ValueError:
                continue
    return out


def muted(alert: Alert, silences: Sequence[tuple[outbox.Silence, list[Matcher]]],
          windows: Sequence[MaintenanceWindow], now: datetime) -> str | None:
    """Why an alert is muted now by a silence (from :func:`active_silences`) or a maintenance window."""
    labels = alert_labels(alert)
    for silence, matchers in silences:
        if _silence_matches(matchers, labels):
            return f"silenced by {silence.id} ({silence.reason})"
    for window in windows:
        if window.applies(labels, now):
            return f"maintenance window {window.name}"
    return None


def _silence_matches(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    # a silence with no matchers would mute everything: never allowed
    return bool(matchers) and matches_all(matchers, labels)


def route_targets(alert: Alert, routes: Sequence[Route]) -> list[tuple[Route, str, tuple[tuple[str, str], ...]]]:
    """(route, notifier name, group labels) for each notifier the alert goes to; first route wins per
    notifier."""
    labels = alert_labels(alert)
    out, seen = [], set()
    for route in routes:
        if not matches_all(route.matchers, labels):
            continue
        group = tuple((k, labels.get(k, "")) for k in route.group_by)
        for name in route.notifiers:
            if name not in seen:
                seen.add(name)
                out.append((route, name, group))
        if not route.continue_:
            break
    return out


def group_key(route: Route, group: tuple[tuple[str, str], ...]) -> str:
    return route.name + "|" + "|".join(f"{k}={v}" for k, v in group)


@dataclass
class Plan:
    notifications: list[Notification]
    log: list[LogEntry]  # entries to save (an entry with nothing firing is deleted)
    suppressed: list[Suppressed]
    warnings: list[str]
    #: notification id -> when it may be sent (group_wait / group_interval); missing: now
    due: dict[str, datetime] = field(default_factory=dict)


def plan(settings: NotifySettings, alerts: Sequence[Alert], log: Mapping[tuple[str, str], LogEntry],
         silences: Sequence[outbox.Silence], now: datetime, *, attachments: Sequence[Attachment] = (),
         new_id: Any = outbox.new_id) -> Plan:
    """Decide what to send this cycle. Pure: no I/O."""
    firing = sorted((a for a in alerts if a.state == "firing"), key=alert_order)
    resolved = {a.key: a for a in alerts if a.state == "resolved"}
    reasons = inhibited(firing, settings.inhibit)
    in_force = active_silences(silences, now)
    suppressed: list[Suppressed] = []

    # (group key, notifier) -> visible firing alerts / keys of muted firing alerts / the route
    visible: dict[tuple[str, str], list[Alert]] = {}
    muted_keys: dict[tuple[str, str], set[str]] = {}
    routes: dict[tuple[str, str], tuple[Route, tuple[tuple[str, str], ...]]] = {}
    for alert in firing:
        targets = route_targets(alert, settings.routes)
        why = reasons.get(alert.key) or superseded_reason(alert) or muted(alert, in_force, settings.maintenance, now)
        if why:
            suppressed.append(Suppressed(alert.key, why, alert_name(alert)))
        elif not targets:
            suppressed.append(Suppressed(alert.key, "no route matches", alert_name(alert)))
        for route, name, group in targets:
            slot = (group_key(route, group), name)
            routes[slot] = (route, group)
            if why:
                muted_keys.setdefault(slot, set()).add(alert.key)
            else:
                visible.setdefault(slot, []).append(alert)

    # A renamed, reordered or regrouped route gives alerts new group keys. What the notifier was told
    # under a key no alert uses any more carries over, so a config change re-sends nothing.
    current = set(visible) | set(muted_keys)
    told_before: dict[tuple[str, str], LogEntry] = {}  # (notifier, alert key) -> its orphaned log entry
    for old_slot, old_entry in log.items():
        if old_slot not in current:
            for key in old_entry.firing:
                told_before[(old_entry.notifier, key)] = old_entry

    notifications: list[Notification] = []
    entries: list[LogEntry] = []
    due: dict[str, datetime] = {}
    by_name = {r.name: r for r in settings.routes}  # a group with only resolved alerts left has no route_info
    for slot in sorted(current | set(log)):
        gkey, name = slot
        entry = _carry_over(log.get(slot) or LogEntry(gkey, name),
                            [a.key for a in visible.get(slot, [])] + sorted(muted_keys.get(slot, set())),
                            told_before)
        settings_entry = settings.notifiers.get(name)
        now_visible = sorted(visible.get(slot, []), key=alert_order)
        hidden = muted_keys.get(slot, set())
        prev = entry.firing
        new = [a for a in now_visible if a.key not in prev]
        raised = [a for a in now_visible
                  if a.key in prev and severity_rank(a.severity) > severity_rank(prev[a.key])]
        gone_resolved = sorted((resolved[k] for k in prev if k in resolved), key=alert_order)
        send_resolved = bool(settings_entry.get("send_resolved", True)) if settings_entry else False
        route_info = routes.get(slot)
        repeat = route_info[0].repeat_interval if route_info else DEFAULT_REPEAT
        repeat_due = bool(now_visible) and entry.last_sent_at is not None and now - entry.last_sent_at >= repeat
        told_resolved = gone_resolved if send_resolved else []

        entry.firing = {a.key: a.severity for a in now_visible}
        entry.firing.update({k: prev[k] for k in hidden if k in prev})
        if settings_entry is not None and (new or raised or told_resolved or repeat_due):
            why = ("new" if new else "") or ("severity raised" if raised else "") or (
                "resolved" if told_resolved else "repeat")
            group = dict(route_info[1]) if route_info else _group_from_key(gkey)
            n = build_notification(
                new_id(), name, now_visible, told_resolved, group, gkey, now, thread_id=entry.thread_id,
                reminder=why == "repeat", reason=why,
                attachments=attachments if settings_entry.get("attach_report") else (),
                # a follow-up marks what it adds; in the first message of a group everything is new
                new_keys=[a.key for a in new] if prev else ())
            notifications.append(n)
            # a group's first message waits for the group to fill; later ones batch per interval
            route = route_info[0] if route_info else by_name.get(gkey.split("|", 1)[0])
            if route is not None:
                due[n.id] = now + route.group_wait if entry.last_sent_at is None else max(
                    now, entry.last_sent_at + route.group_interval)
            entry.last_sent_at = now
            if entry.thread_id is None:
                entry.thread_id = n.id
        entries.append(entry)

    notifications.sort(key=_message_order)
    warnings = [f"alerts are routed to notifier {name!r}, which is not configured"
                for name in sorted({n for _, n in visible} - set(settings.notifiers))]
    return Plan(notifications, entries, suppressed, warnings, due)


def _message_order(n: Notification) -> tuple[object, ...]:
    """Messages in the order of their first alert (the most severe, then site, then rule), then by
    notifier: a cycle's messages arrive in the same order every time."""
    first = min(n.alerts, key=alert_order) if n.alerts else None
    return (alert_order(first) if first is not None else (), n.notifier)


def _carry_over(entry: LogEntry, keys: Sequence[str], told_before: Mapping[tuple[str, str], LogEntry]) -> LogEntry:
    """A copy of a group's log entry that also knows what its notifier was told about these alert
    keys under old group keys (taking the latest send time and, if it has none, their thread)."""
    out = LogEntry(entry.group_key, entry.notifier, entry.last_sent_at, entry.thread_id, dict(entry.firing))
    for key in keys:
        old = told_before.get((entry.notifier, key))
        if old is None or key in out.firing:
            continue
        out.firing[key] = old.firing[key]
        if old.last_sent_at is not None and (out.last_sent_at is None or old.last_sent_at > out.last_sent_at):
            out.last_sent_at = old.last_sent_at
        out.thread_id = out.thread_id or old.thread_id
    return out


def _group_from_key(gkey: str) -> dict[str, str]:
    parts = gkey.split("|")[1:]
    return dict(p.split("=", 1) for p in parts if "=" in p)


# -- building a notification ----------------------------------------------------------------------

def _where(alerts: Sequence[Alert]) -> str:
    sites = sorted({a.labels.get("site_name") or a.labels.get("site_id") or "" for a in alerts} - {""})
    if len(sites) == 1:  # a title names the site: one line, capped (the full name stays in the alert)
        return f" at {one_line(sites[0])}"
    if len(sites) > 1:
        return f" at {len(sites)} sites"
    rules = {a.rule_id for a in alerts}
    return f" for {next(iter(rules))}" if len(rules) == 1 else ""


def headline(firing: Sequence[Alert], resolved: Sequence[Alert], *, reminder: bool = False) -> str:
    """``CRITICAL: 2 firing, 1 resolved at Dublin HQ`` or ``RESOLVED: 1 alert at Dublin HQ``."""
    where = _where([*firing, *resolved])
    if firing:
        top = max((a.severity for a in firing), key=severity_rank)
        text = f"{top.upper()}: {len(firing)} firing"
        if resolved:
            text += f", {len(resolved)} resolved"
        text += where
        return text + (" (reminder)" if reminder else "")
    return f"RESOLVED: {len(resolved)} alert{'s' if len(resolved) != 1 else ''}{where}"


def build_notification(notification_id: str, notifier: str, firing: Sequence[Alert], resolved: Sequence[Alert],
                       group: Mapping[str, str], gkey: str, now: datetime, *, thread_id: str | None = None,
                       reminder: bool = False, reason: str = "",
                       attachments: Sequence[Attachment] = (), new_keys: Sequence[str] = ()) -> Notification:
    head = headline(firing, resolved, reminder=reminder)
    alerts = (*firing, *resolved)
    n = Notification(
        id=notification_id, notifier=notifier, kind="alerts", title=f"{TITLE_PREFIX} {head}", created_at=now,
        group=dict(group), alerts=tuple(alerts), thread_id=thread_id, attachments=tuple(attachments),
        data={"headline": head, "group_key": gkey, "reminder": reminder, "reason": reason,
              "firing": len(firing), "resolved": len(resolved), "new": sorted(new_keys),
              "severity": max((a.severity for a in firing), key=severity_rank) if firing else "resolved"},
    )
    return Notification(**{**_fields(n), "text": plain_text(n)})


def _fields(n: Notification) -> dict[str, Any]:
    return {name: getattr(n, name) for name in Notification.__dataclass_fields__}


def test_notification(notifier: str, now: datetime, notification_id: str | None = None) -> Notification:
    """The message ``mistwatch notifiers test NAME`` sends."""
    head = f"TEST: notifier {notifier} works"
    n = Notification(id=notification_id or outbox.new_id(), notifier=notifier, kind="test",
                     title=f"{TITLE_PREFIX} {head}", created_at=now,
                     data={"headline": head, "group_key": f"test|{notifier}", "firing": 0, "resolved": 0,
                           "severity": "info"})
    text = (f"This is a test message from mistwatch to the notifier {notifier!r}, sent at "
            f"{fmt_time(now)}.\nIf you can read it, alerts will reach you here.\n")
    return Notification(**{**_fields(n), "text": text})


def _supersede(db: Any, n: Notification, log: Sequence[LogEntry], due: dict[str, datetime],
               now: datetime) -> Notification:
    """Replace the group's older unsent messages (relay down, retry not due yet) by ``n``: they are
    marked ``superseded`` and ``n`` also reports what only they said (alerts that resolved since),
    so the group never gets an older state after a newer one ("MAJOR: 1 firing" after "RESOLVED").
    ``n`` keeps the earliest send time of those it replaces (``due`` is updated), so a message held
    by group_wait is not held again by group_interval. Messages in flight in another process are
    left alone. Call inside the outbox transaction."""
    gkey = str(n.data.get("group_key", ""))
    older = outbox.unsent_of_group(db, gkey, n.notifier, now) if n.kind == "alerts" else []
    if not older:
        return n
    outbox.mark_superseded(db, [item.id for item, _ in older], n.id, now)
    due[n.id] = min([due.get(n.id, now), *(item.next_attempt_at for item, _ in older)])
    dropped = {old.id for _, old in older}
    told = {a.key for a in n.alerts}
    firing = [a for a in n.alerts if a.state == "firing"]
    resolved = [a for a in n.alerts if a.state == "resolved"]
    for _, old in older:
        for a in old.alerts:
            if a.state == "resolved" and a.key not in told:
                resolved.append(a)
                told.add(a.key)
    thread_id = n.thread_id
    if thread_id in dropped:  # the group's first message never went out: this one starts the thread
        thread_id = next((old.thread_id for _, old in older if old.id == thread_id), None)
        for entry in log:
            if entry.group_key == gkey and entry.notifier == n.notifier and entry.thread_id in dropped:
                entry.thread_id = thread_id or n.id
    merged = build_notification(
        n.id, n.notifier, firing, resolved, n.group, gkey, n.created_at, thread_id=thread_id,
        reminder=bool(n.data.get("reminder")), reason=str(n.data.get("reason", "")),
        attachments=n.attachments, new_keys=n.data.get("new") or ())
    return merged


def _record(store: Any, result: NotifyResult, item: OutboxItem, d: Delivery, now: datetime) -> None:
    """Commit one message's outcome, in its own transaction, and add it to ``result``."""
    with store.transaction() as db:
        _mark(db, result, item, d, now)


def _mark(db: Any, result: NotifyResult, item: OutboxItem, d: Delivery, now: datetime) -> None:
    """Mark one message sent or failed (inside the caller's transaction) and add it to ``result``."""
    if d.ok:
        outbox.mark_sent(db, item.id, now)
        result.sent.append(OutboxItem(**{**item.__dict__, "status": "sent", "sent_at": now,
                                         "attempts": item.attempts + 1}))
        return
    # a test message reports its failure now instead of lingering for retries
    permanent = d.permanent or item.kind == "test"
    failed = outbox.mark_failed(db, item, now, d.error or "failed", permanent=permanent,
                                retry_after=getattr(d, "retry_after", None))
    (result.permanent_failures if failed.permanent else result.failed).append(failed)


def check_config(config: Any, notifier_types: Mapping[str, Notifier]) -> None:
    """Validate the notification settings beyond the JSON Schema (ConfigError on a problem), and let
    each notifier type with a ``check`` (email: users' templates) try its settings on a sample."""
    settings = load_settings(config)
    names = [str(e.get("name") or e.get("type")) for e in getattr(config, "notifiers", None) or []]
    for name, entry in settings.notifiers.items():
        descriptor = notifier_types.get(str(entry.get("type")))
        if descriptor is None or descriptor.check is None:
            continue
        problem = descriptor.check(entry, sample_notification(name))
        if problem:
            key, _, text = problem.partition(": ") if problem.split(": ", 1)[0] in entry else ("", "", problem)
            where = f"notifiers[{names.index(name)}]" + (f".{key}" if key else "")
            raise _error(config, where, text)


def sample_notification(notifier: str, now: datetime | None = None) -> Notification:
    """A notification with one firing and one resolved alert, for checking templates."""
    now = now or datetime(2026, 1, 1, 9, 0, tzinfo=timezone.utc)
    labels = {"site_id": "s1", "site_name": "Sample site", "device_id": "d1", "device_name": "AP-1",
              "device_type": "ap"}
    firing = Alert(key="sample|s1|d1", rule_id="ap-offline", labels=labels, state="firing", severity="critical",
                   value=0.0, threshold=0.5, summary="AP-1 is offline", recommendation="Check its switch port.",
                   firing_since=now - timedelta(minutes=20))
    done = Alert(key="sample|s1|d2", rule_id="ap-offline", labels={**labels, "device_name": "AP-2"},
                 state="resolved", severity="major", value=1.0, threshold=0.5, summary="AP-2 is offline",
                 firing_since=now - timedelta(hours=2), resolved_at=now - timedelta(minutes=5))
    return build_notification("sample", notifier, [firing], [done], {"site_id": "s1"}, "sample|site_id=s1", now)


# -- I/O: the store and the notifiers -------------------------------------------------------------

def notify(config: Any, host: Any, store: Any, alerts: Sequence[Alert], now: datetime, *,
           dry_run: bool = False, attachments: Sequence[Attachment] = ()) -> NotifyResult:
    """Build notifications for what changed, write them to the outbox with the log update in one
    transaction, then send everything due. ``dry_run``: return what would be sent, change nothing."""
    settings = load_settings(config)
    log = outbox.load_log(store)
    active = [s for s in outbox.silences(store, now) if s.active(now)]
    p = plan(settings, alerts, log, active, now, attachments=attachments)
    result = NotifyResult(planned=p.notifications, suppressed=p.suppressed, warnings=list(p.warnings),
                          dry_run=dry_run)
    if dry_run:
        waiting = outbox.due(store, now)
        if waiting:
            result.warnings.append(f"{len(waiting)} earlier notification(s) in the outbox would be retried")
        result.pending = len(waiting)
        return result
    with store.transaction() as db:
        queued = [_supersede(db, n, p.log, p.due, now) for n in p.notifications]
        outbox.insert_notifications(db, queued, now, due=p.due)
        outbox.save_log(db, p.log)
        outbox.prune(db, now)
    result.merge(send_outbox(config, host, store, now, settings=settings))
    return result


def send_outbox(config: Any, host: Any, store: Any, now: datetime, *, ids: Sequence[str] | None = None,
                settings: NotifySettings | None = None) -> NotifyResult:
    """Deliver every due outbox row (or only ``ids``), one batch per notifier, and record each outcome.

    Rows are claimed first (:func:`outbox.claim`), so a row another process is sending is left to
    it. Each outcome is committed in its own transaction as soon as the notifier reports it (a
    notifier may yield its deliveries one by one), so a crash can at worst repeat the message in
    flight (at-least-once), never lose it. A notifier that raises fails the rest of its batch,
    temporarily.

    On a shared store (PostgreSQL, where a standby may take over) each message is instead locked
    (``FOR UPDATE SKIP LOCKED``), sent and marked in one transaction: the lock dies with a killed
    sender's connection, so the standby sends the message at once."""
    settings = settings or load_settings(config)
    result = NotifyResult()
    types = host.notifiers()
    batches: dict[str, list[tuple[OutboxItem, Notification]]] = {}
    shared = getattr(store, "dialect", None) is not None and store.dialect.shared
    rows = outbox.due(store, now, ids=ids) if shared else outbox.claim(store, now, outbox.claimant(), ids=ids)
    for item, n in rows:
        batches.setdefault(item.notifier, []).append((item, n))
    for name, batch in batches.items():
        if shared:
            for item, n in batch:
                with store.transaction() as db:
                    claimed = outbox.claim_locked(store, db, item.id, now)
                    if claimed is not None:
                        _record_batch(db, [(claimed, n)], _deliver(name, settings, types, [(claimed, n)]), now,
                                      result)
            continue
        items = {n.id: item for item, n in batch}
        entry = settings.notifiers.get(name)
        if entry is None:
            error = f"notifier {name!r} is no longer configured"
            for n_id in list(items):
                _record(store, result, items.pop(n_id), Delivery(n_id, ok=False, error=error, permanent=True), now)
            continue
        if entry.get("type") not in types:
            error = f"notifier type {entry.get('type')!r} is not available (is its plugin installed and loaded?)"
        else:
            error = "the notifier returned no result"
            try:
                for d in types[entry["type"]].send(entry, [n for _, n in batch]) or []:
                    if d.notification_id in items:
                        _record(store, result, items.pop(d.notification_id), d, now)
            except Exception as exc:  # a notifier that raises fails the rest of its batch, temporarily
                error = f"{type(exc).__name__}: {exc}"
        for n_id in list(items):
            _record(store, result, items.pop(n_id), Delivery(n_id, ok=False, error=error), now)
    for item in result.failed:
        result.warnings.append(f"{item.notifier}: {item.title} not delivered (attempt {item.attempts}, "
                               f"retry at {fmt_time(item.next_attempt_at)}): {item.last_error}")
    result.pending = outbox.counts(store)["pending"]
    return result


def _deliver(name: str, settings: NotifySettings, types: dict[str, Any],
             batch: Sequence[tuple[OutboxItem, Notification]]) -> dict[str, Delivery]:
    """Hand a batch to its notifier; the outcome per notification id."""
    entry = settings.notifiers.get(name)
    if entry is None:
        error = f"notifier {name!r} is no longer configured"
        return {n.id: Delivery(n.id, ok=False, error=error, permanent=True) for _, n in batch}
    if entry.get("type") not in types:
        error = f"notifier type {entry.get('type')!r} is not available (is its plugin installed and loaded?)"
        return {n.id: Delivery(n.id, ok=False, error=error) for _, n in batch}
    try:
        got = types[entry["type"]].send(entry, [n for _, n in batch]) or []
        return {d.notification_id: d for d in got}
    except Exception as exc:  # a notifier that raises fails its batch, temporarily
        error = f"{type(exc).__name__}: {exc}"
        return {n.id: Delivery(n.id, ok=False, error=error) for _, n in batch}


def _record_batch(db: Any, batch: Sequence[tuple[OutboxItem, Notification]], deliveries: dict[str, Delivery],
            now: datetime, result: NotifyResult) -> None:
    """Mark each message of a batch sent or failed (inside the caller's transaction)."""
    for item, n in batch:
        missing = Delivery(n.id, ok=False, error="the notifier returned no result")
        _mark(db, result, item, deliveries.get(n.id) or missing, now)
