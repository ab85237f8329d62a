"""The notification tables on the Store's connection: the outbox, the notification log and silences.

- ``outbox``: every notification is written here (in one transaction with the log update) *before*
  it is sent, then marked ``sent`` or ``failed``. A sender first *claims* the rows it will send
  (:func:`claim`: its name and a lease), so two processes never send the same row, and records each
  message in its own transaction as soon as the server accepted it, so a crash repeats at most the
  one message in flight; a claim left by a killed process lapses and the row is retried. A failed
  row is retried with exponential backoff (``next_attempt_at``) across cycles and restarts until it
  is sent, fails permanently, or is older than :data:`MAX_RETRY_AGE`. A row marked sent is never picked again.
- ``notify_log``: per (group, notifier), what was last told: when, the firing alerts and their
  severity, and the thread id (the first message of the group) for mail threading.
- ``silences``: matchers with a mandatory expiry, reason and author, managed by ``mistwatch silence``.
- ``attachments``: each attachment's content once, by SHA-256; outbox payloads reference it by digest
  (the same 14 MB report attached to five notifiers is stored once), pruned when unreferenced.

Times are stored as fixed-width ISO 8601 UTC text so they compare correctly as strings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets as _random
import socket
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
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
#: How long a claim holds a row: longer than a send can take (the notifiers' deadlines), short
#: enough that rows claimed by a process killed on another host are retried soon. A claim by a
#: process of this host that no longer runs lapses at once.
CLAIM_LEASE = timedelta(minutes=10)
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


def attachment_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def notification_to_json(n: Notification) -> str:
    """The outbox payload. Attachments are referenced by the SHA-256 of their content, stored once
    in the ``attachments`` table (:func:`insert_notifications`)."""
    data = {
        "id": n.id, "notifier": n.notifier, "kind": n.kind, "title": n.title,
        "created_at": ts(n.created_at), "group": dict(n.group), "thread_id": n.thread_id,
        "alerts": [_alert_to_dict(a) for a in n.alerts], "text": n.text, "html": n.html,
        "attachments": [{"filename": a.filename, "mimetype": a.mimetype, "sha256": attachment_digest(a.content)}
                        for a in n.attachments],
        "data": dict(n.data),
    }
    return json.dumps(data, default=str, sort_keys=True)


def _attachment_content(ref: dict[str, Any], blobs: Mapping[str, bytes]) -> bytes:
    if "content" in ref:  # written before attachments had their own table
        return base64.b64decode(ref["content"])
    return blobs.get(ref.get("sha256", ""), b"")


def notification_from_json(text: str, blobs: Mapping[str, bytes] | None = None) -> Notification:
    """A Notification from an outbox payload; ``blobs`` (digest -> content) gives attachments' content."""
    data = json.loads(text)
    blobs = blobs or {}
    return Notification(
        id=data["id"], notifier=data["notifier"], kind=data["kind"], title=data["title"],
        created_at=parse_ts(data["created_at"]), group=data.get("group") or {},
        alerts=tuple(_alert_from_dict(a) for a in data.get("alerts", [])),
        thread_id=data.get("thread_id"), text=data.get("text", ""), html=data.get("html", ""),
        attachments=tuple(Attachment(a["filename"], _attachment_content(a, blobs), a["mimetype"])
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
    status: str  # pending | sent | failed | superseded (a newer message of its group replaced it unsent)
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


def insert_notifications(db: Any, notifications: Iterable[Notification], now: datetime, *,
                         due: Mapping[str, datetime] | None = None) -> None:
    """Write notifications as pending, due now (or at ``due[id]``: held by group_wait or
    group_interval). Call inside ``store.transaction()``.

    The payload is redacted: a registered secret never reaches the state file. Each attachment's
    content is written once, whatever the number of notifications carrying it."""
    notifications = list(notifications)
    contents = {attachment_digest(a.content): a.content for n in notifications for a in n.attachments}
    db.executemany("INSERT INTO attachments (digest, content, size, created_at) VALUES (?, ?, ?, ?)"
                   " ON CONFLICT (digest) DO NOTHING",
                   [(digest, content, len(content), ts(now)) for digest, content in contents.items()])
    db.executemany(
        "INSERT INTO outbox (id, notifier, kind, group_key, title, payload, status, attempts, last_error,"
        " next_attempt_at, created_at, permanent) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, '', ?, ?, 0)",
        [(n.id, n.notifier, n.kind, str(n.data.get("group_key", "")), redact(n.title),
          redact(notification_to_json(n)), ts((due or {}).get(n.id, now)), ts(n.created_at))
         for n in notifications])


def enqueue(store: Any, notifications: Iterable[Notification], now: datetime) -> None:
    """Write notifications to the outbox in one transaction (for digests, tests and ``notifiers test``)."""
    with store.transaction() as db:
        insert_notifications(db, notifications, now)


#: Rows waiting to be sent whose time has come. A row last tried (or written) *after* ``now`` means
#: the wall clock stepped back: its retry is due now, not when the clock catches up again.
_DUE = ("status IN ('pending', 'failed') AND permanent = 0"
        " AND (next_attempt_at <= ? OR COALESCE(attempted_at, created_at) > ?)")  # params: (now, now)


def next_due(store: Any) -> datetime | None:
    """When the earliest unsent message may be sent (held ones included), or None: for the daemon,
    which sends held messages between cycles."""
    row = store.db.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE status IN ('pending', 'failed')"
                           " AND permanent = 0").fetchone()
    return parse_ts(row[0]) if row and row[0] else None


def due(store: Any, now: datetime, *, ids: Iterable[str] | None = None) -> list[tuple[OutboxItem, Notification]]:
    """Unsent, not permanently failed rows whose next attempt is due, oldest first (claimed or not:
    for ``--dry-run`` and ``status``; senders use :func:`claim`)."""
    rows = store.db.execute(f"SELECT {_ITEM_COLUMNS}, payload FROM outbox WHERE {_DUE} ORDER BY created_at, id",
                            (ts(now), ts(now))).fetchall()
    wanted = set(ids) if ids is not None else None
    rows = [row for row in rows if wanted is None or row[0] in wanted]
    digests = {ref.get("sha256") for row in rows for ref in json.loads(row[12]).get("attachments", [])} - {None}
    blobs = _load_blobs(store.db, digests)
    return [(_item(row), notification_from_json(row[12], blobs)) for row in rows]


def _load_blobs(db: sqlite3.Connection, digests: Iterable[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for digest in digests:
        row = db.execute("SELECT content FROM attachments WHERE digest = ?", (digest,)).fetchone()
        if row is not None:
            out[digest] = bytes(row[0])
    return out


def claimant() -> str:
    """A name for this sender, unique across processes and hosts: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_id(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: trust the lease
    return True


def claim_lapsed(claimed_by: str | None, claimed_at: str | None, claim_until: str | None, now: datetime) -> bool:
    """Whether a row's claim no longer holds: none, its lease is over, it was taken *after* ``now``
    (the clock stepped back), or its owner was a process of this host that is gone (kill -9)."""
    if not claimed_by:
        return True
    if not claim_until or claim_until <= ts(now) or (claimed_at or "") > ts(now):
        return True
    host, _, rest = claimed_by.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def claim(store: Any, now: datetime, owner: str, *, ids: Iterable[str] | None = None,
          lease: timedelta = CLAIM_LEASE) -> list[tuple[OutboxItem, Notification]]:
    """Claim the due rows (or only ``ids``) nobody else holds, for ``owner``; returns them oldest first.

    One write transaction (BEGIN IMMEDIATE): of two processes claiming at once, the second sees the
    first one's claims, so a row is sent by one of them only."""
    wanted = set(ids) if ids is not None else None
    out = []
    busy: set[tuple[str, str]] = set()  # (group, notifier) with an older message in flight elsewhere
    with store.transaction() as db:
        rows = db.execute(f"SELECT {_ITEM_COLUMNS}, payload, claimed_by, claimed_at, claim_until FROM outbox"
                          f" WHERE {_DUE} ORDER BY created_at, id", (ts(now), ts(now))).fetchall()
        for row in rows:
            group = (row[11], row[1])
            if not claim_lapsed(row[13], row[14], row[15], now):
                if row[2] == "alerts":
                    busy.add(group)
                continue
            # a group's messages leave in the order of the states they describe: never overtake
            if (wanted is not None and row[0] not in wanted) or (row[2] == "alerts" and group in busy):
                continue
            db.execute("UPDATE outbox SET claimed_by = ?, claimed_at = ?, claim_until = ? WHERE id = ?",
                       (owner, ts(now), ts(now + lease), row[0]))
            out.append(row)
        digests = {ref.get("sha256") for row in out for ref in json.loads(row[12]).get("attachments", [])} - {None}
        blobs = _load_blobs(db, digests)  # attachments are stored once, apart from the rows
    return [(_item(row), notification_from_json(row[12], blobs)) for row in out]


def unsent_of_group(db: sqlite3.Connection, group_key: str, notifier: str,
                    now: datetime) -> list[tuple[OutboxItem, Notification]]:
    """Alert messages of a (group, notifier) not sent yet and not in flight (their claim lapsed),
    oldest first: what a newer message of the group supersedes."""
    rows = db.execute(
        f"SELECT {_ITEM_COLUMNS}, payload, claimed_by, claimed_at, claim_until FROM outbox WHERE group_key = ?"
        " AND notifier = ? AND kind = 'alerts' AND status IN ('pending', 'failed') AND permanent = 0"
        " ORDER BY created_at, id", (group_key, notifier)).fetchall()
    return [(_item(r), notification_from_json(r[12])) for r in rows if claim_lapsed(r[13], r[14], r[15], now)]


def mark_superseded(db: sqlite3.Connection, outbox_ids: Iterable[str], by: str, now: datetime) -> None:
    """Record that these unsent messages will never be sent: ``by`` (a newer message of their
    group, which carries their news) replaces them. Kept for ``status`` and audits like sent ones."""
    db.executemany("UPDATE outbox SET status = 'superseded', last_error = ?, sent_at = ? WHERE id = ?"
                   " AND status IN ('pending', 'failed')",
                   [(f"superseded by {by}", ts(now), i) for i in outbox_ids])


def claim_locked(store: Any, db: Any, outbox_id: str, now: datetime) -> OutboxItem | None:
    """On a shared store (PostgreSQL), inside ``store.transaction()``: lock one due row for this
    sender until the transaction ends, and return it as it is now; None if it was sent or given up
    meanwhile, or another process holds it (``FOR UPDATE SKIP LOCKED``)."""
    row = db.execute(f"SELECT {_ITEM_COLUMNS} FROM outbox WHERE id = ? AND {_DUE}{store.dialect.claim_suffix}",
                     (outbox_id, ts(now), ts(now))).fetchone()
    return None if row is None else _item(row)


def backoff(attempts: int) -> timedelta:
    """Delay before the next attempt after ``attempts`` failed attempts (1 -> 1 min, 2 -> 2 min, ...)."""
    return min(BACKOFF_FIRST * (2 ** max(attempts - 1, 0)), BACKOFF_MAX)


def mark_sent(db: Any, outbox_id: str, now: datetime) -> None:
    """Record a delivery (and drop the claim). Whoever holds the claim: the message did go out."""
    db.execute("UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?, attempted_at = ?,"
               " last_error = '', claimed_by = NULL, claimed_at = NULL, claim_until = NULL"
               " WHERE id = ? AND status != 'sent'", (ts(now), ts(now), outbox_id))


def mark_failed(db: Any, item: OutboxItem, now: datetime, error: str, *, permanent: bool,
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
               " permanent = ?, attempted_at = ?, claimed_by = NULL, claimed_at = NULL, claim_until = NULL"
               " WHERE id = ? AND status != 'sent'",
               (attempts, error, ts(next_at), int(permanent), ts(now), item.id))
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
    """{"sent": n, "pending": n (waiting to be tried or retried), "failed": n (permanent),
    "superseded": n (replaced unsent by a newer message of their group)}."""
    out = {"sent": 0, "pending": 0, "failed": 0, "superseded": 0}
    for status, permanent, n in store.db.execute(
            "SELECT status, permanent, COUNT(*) FROM outbox GROUP BY status, permanent"):
        if status in ("sent", "superseded"):
            out[status] += n
        elif permanent:
            out["failed"] += n
        else:
            out["pending"] += n
    return out


def prune(db: Any, now: datetime, keep: timedelta = KEEP) -> int:
    """Forget sent and permanently failed messages, and silences, that ended more than ``keep`` ago.
    Call inside ``store.transaction()``; returns the number of rows deleted."""
    cutoff = ts(now - keep)
    deleted = db.execute("DELETE FROM outbox WHERE (status IN ('sent', 'superseded') AND sent_at < ?)"
                         " OR (permanent = 1 AND next_attempt_at < ?)", (cutoff, cutoff)).rowcount
    deleted += db.execute("DELETE FROM silences WHERE ends_at < ? OR expired_at < ?", (cutoff, cutoff)).rowcount
    deleted += prune_attachments(db)
    return deleted


def prune_attachments(db: Any) -> int:
    """Delete attachments no outbox row references any more; returns how many. The references are
    read in Python (the rows that carry any are few), so the SQL is the same on SQLite and PostgreSQL."""
    stored = {row[0] for row in db.execute("SELECT digest FROM attachments").fetchall()}
    if not stored:
        return 0
    referenced = {ref.get("sha256") for (payload,) in db.execute(
        "SELECT payload FROM outbox WHERE payload LIKE '%sha256%'").fetchall()
        for ref in json.loads(payload).get("attachments", [])}
    gone = sorted(stored - referenced)
    for digest in gone:
        db.execute("DELETE FROM attachments WHERE digest = ?", (digest,))
    return len(gone)


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


def save_log(db: Any, entries: Iterable[LogEntry]) -> None:
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
