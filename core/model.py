"""Plain dataclasses passed between the stages: collect -> store -> evaluate -> notify -> report.

Everything here is data, not behaviour: no I/O, no plugin calls. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import ItemsView, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, overload

#: mistwatch's alert severities, lowest first. Index order is severity order. (Collectors map their
#: source's levels onto these; the Mist plugin documents its table in docs/metrics.md.)
SEVERITIES: tuple[str, ...] = ("info", "minor", "major", "critical")

#: Labels that identify an entity; rule identity is the rule id plus these (never values).
IDENTITY_LABELS: tuple[str, ...] = ("org_id", "site_id", "device_id", "peer_id")


def severity_rank(severity: str) -> int:
    """0 for info up to 3 for critical; unknown names rank lowest."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


_V = TypeVar("_V")
_D = TypeVar("_D")


#: Key tuple -> its layout (key -> position), shared by every FrozenMap with those keys in that order.
#: A plain dict, as a weak one costs several times more per map made; bounded instead: past
#: _MAX_LAYOUTS layouts it starts over (maps keep theirs, only new maps stop sharing with old ones).
#: A Mist cycle at 10,000 sites (the simulator's org) has 13.
_LAYOUTS: dict[tuple[str, ...], dict[str, int]] = {}
_MAX_LAYOUTS = 4096


class FrozenMap(Mapping[str, _V]):
    """An immutable mapping for many small maps that share a few key layouts (entity labels and
    metrics): the keys live once per layout in a shared index, each map holds only its values.

    ``FrozenMap(data)`` copies ``data`` (any mapping); it iterates in ``data``'s order and compares
    equal to a dict with the same items. It is not a dict: ``json.dumps`` needs ``m.copy()`` (a dict).

    Size (CPython 3.11, ``sys.getsizeof`` of the map plus its values tuple, keys and values shared):
    10 labels take 168 bytes instead of a dict's 272, 15 metrics 208 bytes instead of 464. The
    labels and metrics of a Mist cycle at 10,000 sites (100,000 entities): 34.4 MB instead of 62.1 MB.
    Reads cost a Python call (``get`` ~65 ns against a dict's ~27 ns); making one ~0.7 us
    (``bench/frozenmap.py``).
    """

    __slots__ = ("_index", "_values")

    _index: dict[str, int]
    _values: tuple[_V, ...]

    # __new__, not __init__: calling __init__ again on a made map would change it
    def __new__(cls, data: Mapping[str, _V] | None = None) -> FrozenMap[_V]:
        self = _new(cls)
        if data is None:
            data = {}
        elif type(data) is FrozenMap:  # nothing to copy: both are immutable
            _set_index(self, data._index)
            _set_values(self, data._values)
            return self
        keys = tuple(data)
        layout = _LAYOUTS.get(keys)
        if layout is None:
            if len(_LAYOUTS) >= _MAX_LAYOUTS:
                _LAYOUTS.clear()
            layout = _LAYOUTS[keys] = dict(zip(keys, range(len(keys)), strict=True))
        _set_index(self, layout)
        # dict.values() is in key order; any other mapping is read key by key, in that same order
        _set_values(self, tuple(data.values() if type(data) is dict else map(data.__getitem__, keys)))
        return self

    def __getitem__(self, key: str) -> _V:
        return self._values[self._index[key]]

    @overload
    def get(self, key: str) -> _V | None: ...
    @overload
    def get(self, key: str, default: _D) -> _V | _D: ...

    def get(self, key: str, default: Any = None) -> Any:
        position = self._index.get(key)
        return default if position is None else self._values[position]

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self):  # type: ignore[override]  # the shared index's own (read-only) view: a set
        return self._index.keys()

    def values(self) -> tuple[_V, ...]:  # type: ignore[override]
        # the values themselves: a read-only sequence, cheaper than a view object (join, sum, in)
        return self._values

    def items(self) -> ItemsView[str, _V]:
        return _Items(self)

    def copy(self) -> dict[str, _V]:
        """A dict with the same items, to change or to hand to ``json.dumps`` (faster than ``dict(m)``)."""
        return dict(zip(self._index, self._values, strict=True))

    def __or__(self, other: Mapping[str, _V]) -> dict[str, _V]:
        """``m | {...}``: a new dict, as ``dict | dict`` gives."""
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: Mapping[str, _V]) -> dict[str, _V]:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = dict(other)
        merged.update(zip(self._index, self._values, strict=True))
        return merged

    def __eq__(self, other: object) -> bool:
        kind = type(other)
        if kind is FrozenMap:
            if other._index is self._index:  # type: ignore[attr-defined]
                return self._values == other._values  # type: ignore[attr-defined]
        elif kind is not dict and not isinstance(other, Mapping):  # (isinstance on an ABC is slow)
            return NotImplemented
        if len(self) != len(other) or self._index.keys() != other.keys():
            return False
        return self._values == tuple(map(other.__getitem__, self._index))

    __hash__ = None  # type: ignore[assignment]  # equal to a dict, so unhashable like one

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("FrozenMap is immutable")

    def __delattr__(self, name: str) -> None:
        raise TypeError("FrozenMap is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self.copy(),))

    def __repr__(self) -> str:
        return repr(self.copy())


# The slots' own setters: FrozenMap.__setattr__ refuses every write, and these are the cheapest way past it.
_new = object.__new__
_set_index = FrozenMap._index.__set__  # type: ignore[attr-defined]
_set_values = FrozenMap._values.__set__  # type: ignore[attr-defined]


class _Items(ItemsView):
    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        mapping = self._mapping
        return zip(mapping._index, mapping._values, strict=True)


@dataclass(frozen=True, slots=True)
class Entity:
    """One monitored thing (the org, a site, a device, or what a plugin adds) at one point in time.

    ``key`` is stable across runs: ``"org:<org_id>"``, ``"site:<site_id>"``, ``"device:<device_id>"``.
    ``metrics`` hold numbers only (booleans as 1.0/0.0). ``labels`` and ``metrics`` are any mapping: a
    dict, or a :class:`FrozenMap` (what the Mist collector gives: 28 MB less than dicts at 10,000
    sites). Read them as mappings; to change one, make a new one (``{**entity.labels, "x": "y"}``);
    ``dict(...)`` them before ``json.dumps``. ``unknown`` lists metric-name patterns
    (``fnmatch``, ``"*"`` for all) whose source failed this cycle: they are neither up nor down.
    """

    key: str
    kind: str
    labels: Mapping[str, str]
    metrics: Mapping[str, float]
    unknown: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.labels.get(f"{self.kind}_name") or self.labels.get("name") or self.key

    def is_unknown(self, metric: str) -> bool:
        return any(fnmatch.fnmatchcase(metric, pattern) for pattern in self.unknown)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: a Mist alarm, a device event, a plugin's own event.

    ``source`` says where it came from (``"mist.alarm"``, ``"mist.device_event"``); ``type`` is the
    source's own type (``"device_down"``, ``"AP_DISCONNECTED"``); ``severity`` is one of SEVERITIES.
    """

    source: str
    type: str
    severity: str
    timestamp: datetime
    labels: Mapping[str, str]
    text: str = ""
    id: str = ""
    count: int = 1


@dataclass(frozen=True, slots=True)
class CollectorError:
    """A part of the collection that failed after its retries.

    ``kinds`` are the entity kinds whose data is incomplete because of it (``"*"`` for all) and
    ``metrics`` the metric patterns it leaves unknown. Rules treat what it covers as unknown:
    never as down, never as healthy.
    """

    collector: str
    endpoint: str
    message: str
    kinds: frozenset[str] = frozenset({"*"})
    metrics: frozenset[str] = frozenset({"*"})

    def covers(self, kind: str, metric: str = "*") -> bool:
        kind_hit = "*" in self.kinds or kind in self.kinds
        return kind_hit and any(fnmatch.fnmatchcase(metric, p) or p == "*" for p in self.metrics)


@dataclass(slots=True)
class Snapshot:
    """What one collection cycle saw. Several collectors' snapshots merge into one."""

    taken_at: datetime
    entities: list[Entity] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    errors: list[CollectorError] = field(default_factory=list)
    api_calls: int = 0
    #: What collectors want back next cycle (e.g. the time of the last event seen), by collector name.
    cursors: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: API budget facts by collector name (calls this cycle and hour, skipped endpoints, ...), for
    #: the run summary and ``status``.
    api_budget: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: API requests this cycle by collector name, then endpoint, then outcome: ``{"mist":
    #: {"/api/v1/orgs/{org_id}/stats/devices": {"200": 3, "503": 1}}}``. The endpoint is the path
    #: template, ids replaced by placeholders and without query (never a token, never one series per
    #: site); the outcome is the HTTP status code, ``timeout`` or ``error`` (no answer). Every attempt
    #: counts, retries included. ``/metrics`` exports it as ``mistwatch_api_requests_total``.
    api_requests: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def is_unknown(self, entity: Entity, metric: str) -> bool:
        """True when this cycle cannot tell the metric's value for the entity."""
        if entity.is_unknown(metric):
            return True
        return any(err.covers(entity.kind, metric) for err in self.errors)

    def kind_unknown(self, kind: str) -> bool:
        """True when a failure means entities of this kind may be missing altogether."""
        return any(err.covers(kind) for err in self.errors)

    def merge(self, other: Snapshot) -> None:
        self.entities.extend(other.entities)
        self.events.extend(other.events)
        self.errors.extend(other.errors)
        self.api_calls += other.api_calls
        self.cursors.update(other.cursors)
        self.api_budget.update(other.api_budget)
        for collector, endpoints in other.api_requests.items():
            mine = self.api_requests.setdefault(collector, {})
            for endpoint, outcomes in endpoints.items():
                counts = mine.setdefault(endpoint, {})
                for outcome, n in outcomes.items():
                    counts[outcome] = counts.get(outcome, 0) + n


@dataclass(slots=True)
class Alert:
    """The persisted state of one alert instance: a rule applied to one entity (or joined group).

    ``key`` is the rule id plus the identity labels, never values, so it is stable across runs.
    ``state`` is one of ``inactive``, ``pending``, ``firing``, ``resolved``.
    """

    key: str
    rule_id: str
    labels: dict[str, str]
    state: str
    severity: str
    value: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    summary: str = ""
    description: str = ""
    recommendation: str = ""
    pending_since: datetime | None = None
    firing_since: datetime | None = None
    resolved_at: datetime | None = None
    last_true_at: datetime | None = None
    last_eval_at: datetime | None = None
    true_count: int = 0
    causes: tuple[str, ...] = ()
    annotations: dict[str, Any] = field(default_factory=dict)

    @property
    def site_name(self) -> str:
        return self.labels.get("site_name", "")


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes
    mimetype: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Notification:
    """One message for one notifier, as written to the outbox before it is sent.

    ``kind`` is ``"alerts"`` (firing and/or resolved alerts of one group), ``"test"`` or ``"digest"``.
    ``title`` already says what it is (severity and site, RESOLVED, digest). ``thread_id`` is the id
    of the first message of the same group, for mail threading; ``None`` on that first message.
    """

    id: str
    notifier: str
    kind: str
    title: str
    created_at: datetime
    group: Mapping[str, str] = field(default_factory=dict)
    alerts: tuple[Alert, ...] = ()
    thread_id: str | None = None
    text: str = ""
    html: str = ""
    attachments: tuple[Attachment, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of sending one notification. ``permanent`` failures are not retried.

    ``retry_after`` (seconds) asks the outbox not to retry sooner (an HTTP 429 ``Retry-After``)."""

    notification_id: str
    ok: bool
    error: str = ""
    permanent: bool = False
    retry_after: float | None = None


@dataclass(slots=True)
class Result:
    """What a kind's check yields for one subject (an entity, an event group, a joined group).

    ``severity`` None means the condition is false. ``recovered`` matters for a firing alert whose
    condition is false: False holds it firing (hysteresis); None lets the rule's ``recover_when``
    expression decide (no expression: recovered). ``key`` is the subject's stable key (an entity key),
    ``identity`` the labels that make the alert identity (default: org_id/site_id/device_id found
    in ``labels``). ``extra`` is passed to templates as ``extra`` and stored in the alert annotations.
    """

    key: str
    labels: Mapping[str, str]
    severity: str | None = None
    value: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    score: float | None = None
    unknown: bool = False
    recovered: bool | None = None
    identity: Mapping[str, str] | None = None
    metrics: Mapping[str, float] | None = None
    causes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def identity_of(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels that identify an entity (org_id, site_id, device_id), from any labels."""
    return {k: labels[k] for k in IDENTITY_LABELS if k in labels}
