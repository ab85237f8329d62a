"""Records the store returns (runs, entities, transitions) and how values are encoded (epoch times,
packed arrays, canonical JSON, label digests)."""


from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mistwatch.errors import MistwatchError

_UTC = timezone.utc
_BIG_ENDIAN = sys.byteorder == "big"
_DAY = 86400
_HOUR = 3600


@dataclass
class RunRecord:
    id: int
    started_at: datetime
    finished_at: datetime | None
    mode: str
    status: str  # running | ok | partial | failed
    api_calls: int = 0
    errors: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class EntityRecord:
    key: str
    kind: str
    labels: dict[str, str]
    first_seen: datetime
    last_seen: datetime


@dataclass
class Transition:
    alert_key: str
    rule_id: str
    at: datetime
    from_state: str
    to_state: str
    severity: str
    value: float | None


#: The columns of :class:`HourlyRollups` a reader can ask for.
HOURLY_STATS: tuple[str, ...] = ("mins", "maxs", "means", "counts")


def hourly_columns(stats: Collection[str]) -> list[str]:
    """The columns named in ``stats``, in HOURLY_STATS order; ValueError for a name it has not."""
    unknown = set(stats) - set(HOURLY_STATS)
    if unknown:
        raise ValueError(f"unknown roll-up columns {sorted(unknown)} (known: {', '.join(HOURLY_STATS)})")
    return [name for name in HOURLY_STATS if name in stats]


@dataclass(frozen=True)
class HourlyRollups:
    """Hourly roll-ups of one metric over a window, column by column: hour ``hours[i]`` (epoch seconds
    of the UTC hour's start, oldest first) holds the entities ``rows[i]`` (indexes into ``keys``) with
    their ``mins[i]``, ``maxs[i]``, ``means[i]`` and sample ``counts[i]``, all arrays in that order.

    Plain arrays, so a rule kind can hand them to numpy (``numpy.frombuffer``) without a copy per value.
    Only the columns asked for (``stats``, see :data:`HOURLY_STATS`) are filled; the others stay empty:
    at 10,000 sites each column of a day is ~12 MB."""

    metric: str
    keys: list[str]
    hours: list[int] = field(default_factory=list)
    rows: list[array] = field(default_factory=list)
    mins: list[array] = field(default_factory=list)
    maxs: list[array] = field(default_factory=list)
    means: list[array] = field(default_factory=list)
    counts: list[array] = field(default_factory=list)


# conversions -----------------------------------------------------------------------------------
def _epoch(dt: datetime) -> float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)
    return dt.timestamp()


def _epoch_or_none(dt: datetime | None) -> float | None:
    return None if dt is None else _epoch(dt)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=_UTC)


def _dt_or_none(epoch: float | None) -> datetime | None:
    return None if epoch is None else _dt(epoch)


def _sample_ts(dt: datetime) -> int:
    """Sample rows are keyed by whole seconds."""
    return round(_epoch(dt))


def _pack(typecode: str, values: Iterable[Any]) -> bytes:
    arr = array(typecode, values)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


def _unpack(typecode: str, blob: bytes) -> array:
    arr = array(typecode)
    arr.frombytes(blob)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MistwatchError(f"cannot store {what}: not JSON-serialisable ({exc})") from None


_JSON_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _labels_json(key: str, labels: Mapping[str, str]) -> str:
    try:
        return _JSON_ENCODE(labels if isinstance(labels, dict) else dict(labels))
    except (TypeError, ValueError) as exc:
        raise MistwatchError(f"cannot store labels of {key}: not JSON-serialisable ({exc})") from None


def _labels_digest(kind: str, labels: Mapping[str, str]) -> bytes:
    """A 64-bit fingerprint of (kind, labels), stable across processes. Joining the strings is
    several times cheaper than JSON-encoding them, which matters at 70,000 entities per run."""
    try:
        text = "\x00".join(labels) + "\x01" + "\x00".join(labels.values()) + "\x01" + kind
    except TypeError:  # a non-string label value
        text = _JSON_ENCODE(sorted((str(k), str(v)) for k, v in labels.items())) + "\x01" + kind
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _digest_code(digest: bytes | None) -> int:
    """A stored labels_digest as the int kept in the id cache; 0 for none (and for the one digest
    that reads as 0, which then only costs rewriting its labels)."""
    if not isinstance(digest, bytes) or len(digest) != 8:
        return 0
    return int.from_bytes(digest, "little", signed=True)


def _is_number(value: Any) -> bool:
    """Values that can go into history: numbers, not NaN (NaN means "no value")."""
    return value is not None and value == value
