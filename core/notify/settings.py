"""Notification settings: routes, matchers, inhibit rules, maintenance windows, repeat and grouping,
read from ``config.yaml`` and checked beyond its JSON Schema."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mistwatch.durations import parse_duration
from mistwatch.errors import ConfigError
from mistwatch.model import Alert
from mistwatch.secrets import register
from mistwatch.yamlfile import load_yaml

DEFAULT_GROUP_BY: tuple[str, ...] = ("site_id",)
DEFAULT_REPEAT = timedelta(hours=4)
#: Alertmanager's grouping timers, chosen for a 5-15 minute cycle. The first message of a group waits
#: ``group_wait`` for the group to fill (the daemon sends it between cycles; after a one-shot `run`,
#: the next run does: it stays in the outbox). Later changes of the group wait until
#: ``group_interval`` after its previous message, so an incident whose alerts go from pending to
#: firing over 2-3 cycles of 5 minutes makes one follow-up, not one mail per cycle.
DEFAULT_GROUP_WAIT = timedelta(seconds=30)
DEFAULT_GROUP_INTERVAL = timedelta(minutes=15)
#: Secret-bearing settings of notifier entries: registered with mistwatch.secrets when read.
SECRET_SETTINGS = ("password", "secret", "webhook_url", "token")


# -- matchers -------------------------------------------------------------------------------------

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(=~|!~|!=|==|=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Matcher:
    """``label=value``, ``label!=value``, ``label=~regex``, ``label!~regex`` (regexes match the whole
    value). A missing label is the empty string, so ``device_id!=`` means "has a device"."""

    label: str
    op: str
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = str(labels.get(self.label, "") or "")
        if self.op in ("=", "=="):
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.pattern is not None
        hit = self.pattern.fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.label}{self.op}{self.value}"


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher; ValueError with the reason on bad input."""
    m = _MATCHER.match(str(text))
    if not m:
        raise ValueError(f"not a matcher: {text!r} (use label=value, label!=value, label=~regex, label!~regex)")
    label, op, value = m.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    pattern = None
    if op in ("=~", "!~"):
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regular expression in {text!r}: {exc}") from None
    return Matcher(label, op, value, pattern)


def matches_all(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


def alert_name(alert: Alert) -> str:
    """``ap-offline AP-01 at Dublin HQ``: the rule, the device (if any) and the site, for summaries."""
    device = alert.labels.get("device_name") or alert.labels.get("device_id")
    site = alert.labels.get("site_name") or alert.labels.get("site_id")
    return alert.rule_id + (f" {device}" if device else "") + (f" at {site}" if site else "")


def alert_labels(alert: Alert) -> dict[str, str]:
    """The labels matchers see: the alert's labels plus ``severity``, ``rule_id`` and ``state``."""
    labels = {k: "" if v is None else str(v) for k, v in alert.labels.items()}
    labels.update(severity=alert.severity, rule_id=alert.rule_id, alertname=alert.rule_id, state=alert.state)
    return labels


# -- configuration --------------------------------------------------------------------------------

@dataclass
class Route:
    name: str
    matchers: list[Matcher]
    notifiers: list[str]
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    repeat_interval: timedelta = DEFAULT_REPEAT
    continue_: bool = False
    group_wait: timedelta = DEFAULT_GROUP_WAIT
    group_interval: timedelta = DEFAULT_GROUP_INTERVAL


@dataclass
class InhibitRule:
    source: list[Matcher]
    target: list[Matcher]
    equal: tuple[str, ...] = ("site_id",)
    name: str = ""


_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


@dataclass
class MaintenanceWindow:
    """A weekly window (``days`` + ``start``/``end`` wall-clock times, crossing midnight when end <= start)
    or a one-off window (``starts``/``ends``), in an IANA time zone, scoped by matchers."""

    name: str
    zone: ZoneInfo
    matchers: list[Matcher] = field(default_factory=list)
    days: frozenset[int] = frozenset(range(7))
    start: time | None = None
    end: time | None = None
    starts: datetime | None = None
    ends: datetime | None = None

    def active(self, at: datetime) -> bool:
        if self.starts is not None and self.ends is not None:
            return self.starts <= at < self.ends
        assert self.start is not None and self.end is not None
        local = at.astimezone(self.zone)
        # Compared as instants (UTC): datetimes sharing a tzinfo compare by wall clock, so on the
        # autumn change a window inside the repeated hour was open twice. Wall-clock times that occur
        # twice mean their first occurrence (fold=0), so the window is open once for its local span.
        now = at.astimezone(timezone.utc)
        for back in (0, 1):  # a window that began yesterday may still be open after midnight
            day = local.date() - timedelta(days=back)
            if day.weekday() not in self.days:
                continue
            begin = datetime.combine(day, self.start, tzinfo=self.zone).astimezone(timezone.utc)
            end_day = day if self.end > self.start else day + timedelta(days=1)
            finish = datetime.combine(end_day, self.end, tzinfo=self.zone).astimezone(timezone.utc)
            if begin <= now < finish:
                return True
        return False

    def applies(self, labels: Mapping[str, str], at: datetime) -> bool:
        return matches_all(self.matchers, labels) and self.active(at)


@dataclass
class NotifySettings:
    routes: list[Route]
    inhibit: list[InhibitRule]
    maintenance: list[MaintenanceWindow]
    notifiers: dict[str, dict[str, Any]]  # name -> entry {name, type, ...settings}


def _defaults() -> dict[str, Any]:
    import json
    from importlib import resources

    text = resources.files("mistwatch").joinpath("schemas/config-notify.json").read_text(encoding="utf-8")
    return json.loads(text).get("defaults", {})


def _error(config: Any, key: str, message: str) -> ConfigError:
    path = getattr(config, "path", None)
    line = None
    if path:
        try:  # errors are rare: read the file again for the line number
            parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", key)]
            line = load_yaml(path)[1].line(parts)
        except Exception:  # a line number is a nicety; never fail on it
            line = None
    return ConfigError(message, file=str(path) if path else None, line=line, key=key)


def _matchers(config: Any, key: str, items: Any) -> list[Matcher]:
    if items is None:
        return []
    if isinstance(items, (str, Mapping)):
        items = [items]
    out = []
    for i, item in enumerate(items):
        # a mapping {label: value} is shorthand for label=value matchers
        texts = [f"{k}={v}" for k, v in item.items()] if isinstance(item, Mapping) else [item]
        for text in texts:
            try:
                out.append(parse_matcher(text))
            except ValueError as exc:
                raise _error(config, f"{key}[{i}]", str(exc)) from None
    return out


def _duration(config: Any, key: str, value: Any, default: timedelta, *, zero: bool = False) -> timedelta:
    if value is None:
        return default
    try:
        result = parse_duration(value)
    except ValueError as exc:
        raise _error(config, key, str(exc)) from None
    if result.total_seconds() < 0 or (result.total_seconds() == 0 and not zero):
        raise _error(config, key, "must be longer than zero" if not zero else "must not be negative")
    return result


def _clock(config: Any, key: str, value: Any) -> time:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 22:00 as the base-60 integer 1320
        value = f"{value // 60:02d}:{value % 60:02d}"
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise _error(config, key, f"not a time of day: {value!r} (use \"HH:MM\")") from None


def _moment(config: Any, key: str, value: Any, zone: ZoneInfo) -> datetime:
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise _error(config, key, f"not a date and time: {value!r} (use 2026-12-03T01:00)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(timezone.utc)


def _window(config: Any, key: str, spec: Mapping[str, Any]) -> MaintenanceWindow:
    tz_name = spec.get("timezone", "UTC")
    try:
        zone = ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError):
        raise _error(config, f"{key}.timezone", f"unknown time zone {tz_name!r} (use an IANA name such as "
                                                 "Europe/Dublin)") from None
    name = str(spec.get("name") or key)
    matchers = _matchers(config, f"{key}.matchers", spec.get("matchers"))
    if "from" in spec or "to" in spec:
        starts = _moment(config, f"{key}.from", spec.get("from"), zone)
        ends = _moment(config, f"{key}.to", spec.get("to"), zone)
        if ends <= starts:
            raise _error(config, f"{key}.to", "must be after 'from'")
        return MaintenanceWindow(name, zone, matchers, starts=starts, ends=ends)
    if "start" not in spec or "end" not in spec:
        raise _error(config, key, "a maintenance window needs start and end times (weekly) or from and to")
    days = spec.get("days") or list(_DAYS)
    try:
        day_set = frozenset(_DAYS[str(d).strip().lower()[:3]] for d in days)
    except KeyError:
        raise _error(config, f"{key}.days", f"unknown day in {days!r} (use mon, tue, ... sun)") from None
    # end at or before start ends the next day, so start == end is a whole day ("00:00" to "00:00")
    start, end = _clock(config, f"{key}.start", spec["start"]), _clock(config, f"{key}.end", spec["end"])
    return MaintenanceWindow(name, zone, matchers, days=day_set, start=start, end=end)


def load_settings(config: Any) -> NotifySettings:
    """Read ``routes``, ``inhibit``, ``maintenance`` and ``notifiers`` from the config.

    Raises ConfigError (file, key) for a bad matcher, duration, time zone or unknown notifier name;
    ``config check`` calls this too."""
    data = getattr(config, "data", {}) or {}
    defaults = _defaults()
    entries = list(getattr(config, "notifiers", None) or data.get("notifiers") or [])
    notifiers: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        name = str(entry.get("name") or entry.get("type") or "")
        if not name:
            raise _error(config, f"notifiers[{i}]", "a notifier needs a name")
        if name in notifiers:
            raise _error(config, f"notifiers[{i}].name", f"duplicate notifier name {name!r}")
        for key in SECRET_SETTINGS:
            if isinstance(entry.get(key), str):
                register(entry[key])
        notifiers[name] = dict(entry, name=name)
        resolve = getattr(config, "resolve", None)
        if entry.get("templates_dir") and callable(resolve):  # relative to the config file, not the cwd
            notifiers[name]["templates_dir"] = str(resolve(entry["templates_dir"]))

    # top-level group_wait / group_interval: the default of every route (0 sends at once)
    group_wait = _duration(config, "group_wait", data.get("group_wait"), DEFAULT_GROUP_WAIT, zero=True)
    group_interval = _duration(config, "group_interval", data.get("group_interval"), DEFAULT_GROUP_INTERVAL,
                               zero=True)
    routes_spec = data.get("routes", defaults.get("routes"))
    routes: list[Route] = []
    if routes_spec is None:  # no routes: everything to every notifier
        routes.append(Route("default", [], list(notifiers), group_wait=group_wait, group_interval=group_interval))
    for i, spec in enumerate(routes_spec or []):
        key = f"routes[{i}]"
        names = spec.get("notifiers")
        names = list(notifiers) if names is None else ([names] if isinstance(names, str) else list(names))
        for j, name in enumerate(names):
            if name not in notifiers:
                known = ", ".join(sorted(notifiers)) or "none configured"
                raise _error(config, f"{key}.notifiers[{j}]", f"unknown notifier {name!r} (known: {known})")
        group_by = spec.get("group_by")
        routes.append(Route(
            name=str(spec.get("name") or f"route{i + 1}"),
            matchers=_matchers(config, f"{key}.matchers", spec.get("matchers", spec.get("match"))),
            notifiers=names,
            group_by=DEFAULT_GROUP_BY if group_by is None else tuple(group_by),
            repeat_interval=_duration(config, f"{key}.repeat_interval", spec.get("repeat_interval"),
                                      DEFAULT_REPEAT),
            continue_=bool(spec.get("continue", False)),
            group_wait=_duration(config, f"{key}.group_wait", spec.get("group_wait"), group_wait, zero=True),
            group_interval=_duration(config, f"{key}.group_interval", spec.get("group_interval"), group_interval,
                                     zero=True),
        ))

    inhibit = []
    for i, spec in enumerate(data.get("inhibit", defaults.get("inhibit")) or []):
        key = f"inhibit[{i}]"
        inhibit.append(InhibitRule(
            source=_matchers(config, f"{key}.source", spec.get("source")),
            target=_matchers(config, f"{key}.target", spec.get("target")),
            equal=tuple(spec.get("equal", ("site_id",))),
            name=str(spec.get("name") or key),
        ))

    windows = [_window(config, f"maintenance[{i}]", spec)
               for i, spec in enumerate(data.get("maintenance", defaults.get("maintenance")) or [])]
    return NotifySettings(routes, inhibit, windows, notifiers)
