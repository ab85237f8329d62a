"""The notification tables on the Store's connection: the outbox, the notification log and silences.

- ``outbox``: every notification is written here (in one transaction with the log update) *before*
  it is sent, then marked ``sent`` or ``failed``. A failed row is retried with exponential backoff
  (``next_attempt_at``) across cycles and restarts until it is sent, fails permanently, or is older
  than :data:`MAX_RETRY_AGE`. A row marked sent is never picked again.
- ``notify_log``: per (group, notifier), what was last told: when, the firing alerts and their
  severity, and the thread id (the first message of the group) for mail threading.
- ``silences``: matchers with a mandatory expiry, reason and author, managed by ``mistwatch silence``.

Times are stored as fixed-width ISO 8601 UTC text so they compare correctly as strings.
"""

from __future__ import annotations

import base64
import json
import secrets as _random
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from mistwatch.model import Alert, Attachment, Notification
from mistwatch.secrets import redact

#: Backoff of temporary failures: 1 min, 2, 4, ... capped at 1 h.
BACKOFF_FIRST = timedelta(minutes=1)
BACKOFF_MAX = timedelta(hours=1)
#: A message still failing this long after it was written is given up and marked permanent.
MAX_RETRY_AGE = timedelta(hours=24)
#: How long sent and failed messages and ended silences are kept (for `status` and audits).
KEEP = timedelta(days=30)

def ts(value: datetime) -> str:
    """A fixed-width UTC ISO string (sorts and compares as text)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def new_id(nbytes: int = 8) -> str:
    return _random.token_hex(nbytes)


# -- serialising a Notification (the outbox payload) ----------------------------------------------

def _alert_to_dict(alert: Alert) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(Alert):
        value = getattr(alert, f.name)
        if isinstance(value, datetime):
            value = ts(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


_ALERT_TIMES = {f.name for f in fields(Alert) if "datetime" in str(f.type)}


def _alert_from_dict(data: dict[str, Any]) -> Alert:
    known = {f.name for f in fields(Alert)}
    values = {k: v for k, v in data.items() if k in known}
    for name in _ALERT_TIMES & values.keys():
        values[name] = parse_ts(values[name])
    if "causes" in values:
        values["causes"] = tuple(values["causes"])
    return Alert(**values)


def notification_to_json(n: Notification) -> str:
    data = {
        "id": n.id, "notifier": n.notifier, "kind": n.kind, "title": n.title,
        "created_at": ts(n.created_at), "group": dict(n.group), "thread_id": n.thread_id,
        "alerts": [_alert_to_dict(a) for a in n.alerts], "text": n.text, "html": n.html,
        "attachments": [{"filename": a.filename, "mimetype": a.mimetype,
                         "content": base64.b64encode(a.content).decode("ascii")} for a in n.attachments],
        "data": dict(n.data),
    }
    return json.dumps(data, default=str, sort_keys=True)


def notification_from_json(text: str) -> Notification:
    data = json.loads(text)
    return Notification(
        id=data["id"], notifier=data["notifier"], kind=data["kind"], title=data["title"],
        created_at=parse_ts(data["created_at"]), group=data.get("group") or {},
        alerts=tuple(_alert_from_dict(a) for a in data.get("alerts", [])),
        thread_id=data.get("thread_id"), text=data.get("text", ""), html=data.get("html", ""),
        attachments=tuple(Attachment(a["filename"], base64.b64decode(a["content"]), a["mimetype"])
                          for a in data.get("attachments", [])),
        data=data.get("data") or {},
    )


# -- outbox ---------------------------------------------------------------------------------------

@dataclass
class OutboxItem:
    """One outbox row, without its payload."""

    id: str
    notifier: str
    kind: str
    title: str
    status: str  # pending | sent | failed
    attempts: int
    last_error: str
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    permanent: bool
    group_key: str = ""

    @property
    def error(self) -> str:
        return self.last_error


_ITEM_COLUMNS = ("id, notifier, kind, title, status, attempts, last_error, next_attempt_at, created_at, "
                 "sent_at, permanent, group_key")


def _item(row: Sequence[Any]) -> OutboxItem:
    return OutboxItem(id=row[0], notifier=row[1], kind=row[2], title=row[3], status=row[4],
                      attempts=row[5], last_error=row[6], next_attempt_at=parse_ts(row[7]),
                      created_at=parse_ts(row[8]), sent_at=parse_ts(row[9]), permanent=bool(row[10]),
                      group_key=row[11])


def insert_notifications(db: sqlite3.Connection, notifications: Iterable[Notification], now: datetime) -> None:
    """Write notifications as pending, due now. Call inside ``store.transaction()``.

    The payload is redacted: a registered secret never reaches the state file."""
    db.executemany(
        "INSERT INTO outbox (id, notifier, kind, group_key, title, payload, status, attempts, last_error,"
        " next_attempt_at, created_at, permanent) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, '', ?, ?, 0)",
        [(n.id, n.notifier, n.kind, str(n.data.get("group_key", "")), redact(n.title),
          redact(notification_to_json(n)), ts(now), ts(n.created_at)) for n in notifications])


def enqueue(store: Any, notifications: Iterable[Notification], now: datetime) -> None:
    """Write notifications to the outbox in one transaction (for digests, tests and ``notifiers test``)."""
    with store.transaction() as db:
        insert_notifications(db, notifications, now)


def due(store: Any, now: datetime, *, ids: Iterable[str] | None = None) -> list[tuple[OutboxItem, Notification]]:
    """Unsent, not permanently failed rows whose next attempt is due, oldest first."""
    rows = store.db.execute(
        f"SELECT {_ITEM_COLUMNS}, payload FROM outbox WHERE status != 'sent' AND permanent = 0"
        " AND next_attempt_at <= ? ORDER BY created_at, id", (ts(now),)).fetchall()
    wanted = set(ids) if ids is not None else None
    return [(_item(row), notification_from_json(row[12])) for row in rows
            if wanted is None or row[0] in wanted]


def backoff(attempts: int) -> timedelta:
    """Delay before the next attempt after ``attempts`` failed attempts (1 -> 1 min, 2 -> 2 min, ...)."""
    return min(BACKOFF_FIRST * (2 ** max(attempts - 1, 0)), BACKOFF_MAX)


def mark_sent(db: sqlite3.Connection, outbox_id: str, now: datetime) -> None:
    db.execute("UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?, last_error = ''"
               " WHERE id = ?", (ts(now), outbox_id))


def mark_failed(db: sqlite3.Connection, item: OutboxItem, now: datetime, error: str, *, permanent: bool,
                retry_after: float | None = None) -> OutboxItem:
    """Record a failed attempt; returns the updated item (``permanent`` may be set by the age limit)."""
    attempts = item.attempts + 1
    delay = backoff(attempts)
    if retry_after:
        delay = max(delay, timedelta(seconds=retry_after))
    next_at = now + delay
    if not permanent and next_at - item.created_at > MAX_RETRY_AGE:
        permanent = True
        error = f"gave up after {attempts} attempts over {MAX_RETRY_AGE}: {error}"
    error = redact(error)[:1000]
    db.execute("UPDATE outbox SET status = 'failed', attempts = ?, last_error = ?, next_attempt_at = ?,"
               " permanent = ? WHERE id = ?", (attempts, error, ts(next_at), int(permanent), item.id))
    return OutboxItem(**{**item.__dict__, "status": "failed", "attempts": attempts, "last_error": error,
                         "next_attempt_at": next_at, "permanent": permanent})


def items(store: Any, *, status: str | None = None, permanent: bool | None = None,
          since: datetime | None = None, limit: int = 100) -> list[OutboxItem]:
    """Outbox rows, newest first, for ``status`` and summaries."""
    where, args = [], []
    if status is not None:
        where.append("status = ?")
        args.append(status)
    if permanent is not None:
        where.append("permanent = ?")
        args.append(int(permanent))
    if since is not None:
        where.append("created_at >= ?")
        args.append(ts(since))
    sql = f"SELECT {_ITEM_COLUMNS} FROM outbox"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id LIMIT ?"
    return [_item(row) for row in store.db.execute(sql, [*args, limit]).fetchall()]


def counts(store: Any) -> dict[str, int]:
    """{"sent": n, "pending": n (waiting to be tried or retried), "failed": n (permanent)}."""
    out = {"sent": 0, "pending": 0, "failed": 0}
    for status, permanent, n in store.db.execute(
            "SELECT status, permanent, COUNT(*) FROM outbox GROUP BY status, permanent"):
        if status == "sent":
            out["sent"] += n
        elif permanent:
            out["failed"] += n
        else:
            out["pending"] += n
    return out


def prune(db: sqlite3.Connection, now: datetime, keep: timedelta = KEEP) -> int:
    """Forget sent and permanently failed messages, and silences, that ended more than ``keep`` ago.
    Call inside ``store.transaction()``; returns the number of rows deleted."""
    cutoff = ts(now - keep)
    deleted = db.execute("DELETE FROM outbox WHERE (status = 'sent' AND sent_at < ?)"
                         " OR (permanent = 1 AND next_attempt_at < ?)", (cutoff, cutoff)).rowcount
    deleted += db.execute("DELETE FROM silences WHERE ends_at < ? OR expired_at < ?", (cutoff, cutoff)).rowcount
    return deleted


# -- notification log -----------------------------------------------------------------------------

@dataclass
class LogEntry:
    """What a (group, notifier) was last told."""

    group_key: str
    notifier: str
    last_sent_at: datetime | None = None
    thread_id: str | None = None
    #: alert key -> severity of every firing alert the notifier was told about and not yet told resolved
    firing: dict[str, str] = field(default_factory=dict)


def load_log(store: Any) -> dict[tuple[str, str], LogEntry]:
    out = {}
    for group_key, notifier, last_sent_at, thread_id, firing in store.db.execute(
            "SELECT group_key, notifier, last_sent_at, thread_id, firing FROM notify_log"):
        out[(group_key, notifier)] = LogEntry(group_key, notifier, parse_ts(last_sent_at), thread_id,
                                              json.loads(firing or "{}"))
    return out


def save_log(db: sqlite3.Connection, entries: Iterable[LogEntry]) -> None:
    """Upsert log entries; an entry with nothing firing and no thread is deleted (the group is over)."""
    import hashlib

    for e in entries:
        if not e.firing:
            db.execute("DELETE FROM notify_log WHERE group_key = ? AND notifier = ?", (e.group_key, e.notifier))
            continue
        firing = json.dumps(e.firing, sort_keys=True)
        digest = hashlib.sha256(firing.encode()).hexdigest()[:16]
        db.execute(
            "INSERT INTO notify_log (group_key, notifier, last_sent_at, firing_hash, thread_id, firing)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (group_key, notifier) DO UPDATE SET"
            " last_sent_at = excluded.last_sent_at, firing_hash = excluded.firing_hash,"
            " thread_id = excluded.thread_id, firing = excluded.firing",
            (e.group_key, e.notifier, ts(e.last_sent_at) if e.last_sent_at else None, digest, e.thread_id,
             firing))


# -- silences -------------------------------------------------------------------------------------

@dataclass
class Silence:
    id: str
    matchers: list[str]
    starts_at: datetime
    ends_at: datetime
    reason: str
    author: str
    created_at: datetime
    expired_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        end = min(self.ends_at, self.expired_at) if self.expired_at else self.ends_at
        return self.starts_at <= now < end


def add_silence(store: Any, matchers: Sequence[str], *, starts_at: datetime, ends_at: datetime, reason: str,
                author: str, now: datetime) -> Silence:
    if ends_at <= starts_at:
        raise ValueError("a silence must end after it starts")
    silence = Silence(new_id(4), list(matchers), starts_at, ends_at, reason, author, now)
    with store.transaction() as db:
        db.execute("INSERT INTO silences (id, matchers, starts_at, ends_at, reason, author, created_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (silence.id, json.dumps(silence.matchers), ts(starts_at), ts(ends_at), reason, author,
                    ts(now)))
    return silence


def _silence(row: Sequence[Any]) -> Silence:
    return Silence(row[0], json.loads(row[1]), parse_ts(row[2]), parse_ts(row[3]), row[4], row[5],
                   parse_ts(row[6]), parse_ts(row[7]))


def silences(store: Any, now: datetime | None = None, *, include_ended: bool = False) -> list[Silence]:
    """Silences not yet ended at ``now`` (active or scheduled), soonest ending first; all with ``include_ended``."""
    rows = store.db.execute("SELECT id, matchers, starts_at, ends_at, reason, author, created_at, expired_at"
                            " FROM silences ORDER BY ends_at, id").fetchall()
    found = [_silence(r) for r in rows]
    if include_ended or now is None:
        return found
    return [s for s in found if s.expired_at is None and s.ends_at > now]


def expire_silence(store: Any, silence_id: str, now: datetime) -> Silence | None:
    """End a silence now. Returns it, or None if no silence has that id (or a unique prefix of it)."""
    silence_id = silence_id.strip().lower()
    if not silence_id or any(c not in "0123456789abcdef" for c in silence_id):
        return None
    rows = store.db.execute("SELECT id FROM silences WHERE id LIKE ?", (silence_id + "%",)).fetchall()
    if len(rows) != 1:
        return None
    with store.transaction() as db:
        db.execute("UPDATE silences SET expired_at = ? WHERE id = ? AND expired_at IS NULL",
                   (ts(now), rows[0][0]))
    row = store.db.execute("SELECT id, matchers, starts_at, ends_at, reason, author, created_at, expired_at"
                           " FROM silences WHERE id = ?", (rows[0][0],)).fetchone()
    return _silence(row)


def oldest_unsent(store: Any) -> datetime | None:
    """When the oldest message still waiting to be sent (not permanently failed) was created."""
    row = store.db.execute("SELECT MIN(created_at) FROM outbox WHERE status != 'sent' AND permanent = 0").fetchone()
    return parse_ts(row[0]) if row and row[0] else None
