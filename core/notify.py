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

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mistwatch import outbox
from mistwatch.durations import format_duration, parse_duration
from mistwatch.errors import ConfigError
from mistwatch.model import SEVERITIES, Alert, Attachment, Delivery, Notification, severity_rank
from mistwatch.outbox import LogEntry, OutboxItem

DEFAULT_GROUP_BY: tuple[str, ...] = ("site_id",)
DEFAULT_REPEAT = timedelta(hours=4)
TITLE_PREFIX = "[mistwatch]"
#: Colours per severity (and for resolved), shared by the notifiers so every channel looks alike.
SEVERITY_COLORS: dict[str, str] = {
    "critical": "#b91c1c", "major": "#c2410c", "minor": "#a16207", "info": "#1d4ed8", "resolved": "#15803d",
}
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
        for back in (0, 1):  # a window that began yesterday may still be open after midnight
            day = local.date() - timedelta(days=back)
            if day.weekday() not in self.days:
                continue
            begin = datetime.combine(day, self.start, tzinfo=self.zone)
            end_day = day if self.end > self.start else day + timedelta(days=1)
            finish = datetime.combine(end_day, self.end, tzinfo=self.zone)
            if begin <= local < finish:
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
            from mistwatch.yamlfile import load_yaml

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


def _duration(config: Any, key: str, value: Any, default: timedelta) -> timedelta:
    if value is None:
        return default
    try:
        result = parse_duration(value)
    except ValueError as exc:
        raise _error(config, key, str(exc)) from None
    if result.total_seconds() <= 0:
        raise _error(config, key, "must be longer than zero")
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
    from mistwatch.secrets import register

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

    routes_spec = data.get("routes", defaults.get("routes"))
    routes: list[Route] = []
    if routes_spec is None:  # no routes: everything to every notifier
        routes.append(Route("default", [], list(notifiers)))
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


def check_config(config: Any) -> None:
    """Validate the notification settings beyond the JSON Schema (ConfigError on a problem), including
    users' email templates, rendered once with a sample notification."""
    settings = load_settings(config)
    names = [str(e.get("name") or e.get("type")) for e in getattr(config, "notifiers", None) or []]
    for name, entry in settings.notifiers.items():
        if entry.get("type") != "email" or not entry.get("templates_dir"):
            continue
        key = f"notifiers[{names.index(name)}].templates_dir"
        folder = entry["templates_dir"]
        if not os.path.isdir(folder):
            raise _error(config, key, f"not a folder: {folder}")
        from mistwatch.notifiers.email import check_templates

        problem = check_templates(entry, sample_notification(name))
        if problem:
            raise _error(config, key, problem)


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
    """Firing alerts muted by another firing alert, as {alert key: reason}.

    Like Alertmanager, an alert matching both sides of a rule is never muted by another alert that
    does too (so two gateway-down alerts do not mute each other), nor by itself."""
    firing = [(a, alert_labels(a)) for a in alerts if a.state == "firing"]
    out: dict[str, str] = {}
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
                out[target.key] = f"inhibited by {alert_name(source)}"
                break
    return out


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


def plan(settings: NotifySettings, alerts: Sequence[Alert], log: Mapping[tuple[str, str], LogEntry],
         silences: Sequence[outbox.Silence], now: datetime, *, attachments: Sequence[Attachment] = (),
         new_id: Any = outbox.new_id) -> Plan:
    """Decide what to send this cycle. Pure: no I/O."""
    firing = [a for a in alerts if a.state == "firing"]
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
        why = reasons.get(alert.key) or muted(alert, in_force, settings.maintenance, now)
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
    for slot in sorted(current | set(log)):
        gkey, name = slot
        entry = _carry_over(log.get(slot) or LogEntry(gkey, name),
                            [a.key for a in visible.get(slot, [])] + sorted(muted_keys.get(slot, set())),
                            told_before)
        settings_entry = settings.notifiers.get(name)
        now_visible = sorted(visible.get(slot, []), key=lambda a: (-severity_rank(a.severity), a.key))
        hidden = muted_keys.get(slot, set())
        prev = entry.firing
        new = [a for a in now_visible if a.key not in prev]
        raised = [a for a in now_visible
                  if a.key in prev and severity_rank(a.severity) > severity_rank(prev[a.key])]
        gone_resolved = [resolved[k] for k in sorted(prev) if k in resolved]
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
            entry.last_sent_at = now
            if entry.thread_id is None:
                entry.thread_id = n.id
        entries.append(entry)

    warnings = [f"alerts are routed to notifier {name!r}, which is not configured"
                for name in sorted({n for _, n in visible} - set(settings.notifiers))]
    return Plan(notifications, entries, suppressed, warnings)


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
    if len(sites) == 1:
        return f" at {sites[0]}"
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


# -- shared formatting for the notifiers ----------------------------------------------------------

@dataclass(frozen=True)
class AlertRow:
    """One alert as every notifier shows it."""

    key: str
    state: str  # firing | resolved
    severity: str
    color: str
    rule_id: str
    summary: str
    site: str
    device: str
    value: str
    reference: str  # "threshold 80" / "baseline 120" / ""
    since: str
    duration: str  # "for 2h5m" (firing) / "lasted 1h30m" (resolved)
    resolved_at: str
    recommendation: str
    description: str
    new: bool = False  # firing and not in the group's previous message


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if float(value).is_integer():
        text = str(int(value))
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    else:
        text = f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}".rstrip("0").rstrip(".")
    if not unit:
        return text
    return f"{text}{unit}" if unit == "%" else f"{text} {unit}"


def _value_and_reference(a: Alert) -> tuple[str, str]:
    """The value and ``threshold ..., baseline ...`` texts of a row, in the units the summaries use.

    SLE metrics are fractions (0.12) that every summary shows as percent (12%); a change rule's
    threshold is the size of the change (``unit`` absolute or percent), not a level of the value."""
    unit = str(a.annotations.get("value_unit", "") or "")  # e.g. "ms" if a rule kind provides one
    scale = 1.0
    if not unit and str(a.annotations.get("metric", "")).startswith("sle."):
        unit, scale = "%", 100.0
    change = a.annotations.get("unit") if a.annotations.get("unit") in ("absolute", "percent") else None

    def show(v: float | None) -> str:
        return fmt_number(None if v is None else v * scale, unit)

    parts = []
    if a.threshold is not None:
        if change == "percent":
            parts.append(f"change threshold {fmt_number(a.threshold)}%")
        elif change == "absolute" and unit == "%":
            parts.append(f"change threshold {fmt_number(a.threshold * scale)} points")
        elif change == "absolute":
            parts.append(f"change threshold {fmt_number(a.threshold, unit)}")
        else:
            parts.append(f"threshold {show(a.threshold)}")
    if a.baseline is not None:
        parts.append(f"baseline {show(a.baseline)}")
    return show(a.value), ", ".join(parts)


def alert_rows(n: Notification) -> list[AlertRow]:
    rows = []
    new_keys = set(n.data.get("new") or ())
    for a in n.alerts:
        value, reference = _value_and_reference(a)
        start = a.firing_since or a.pending_since
        if a.state == "resolved":
            end = a.resolved_at or n.created_at
            duration = f"lasted {format_duration(end - start)}" if start else ""
        else:
            # a duration under a minute is the cycle that saw it start: "for 0s" says nothing
            duration = f"for {format_duration(n.created_at - start)}" if start and (
                n.created_at - start).total_seconds() >= 60 else ""
        device = a.labels.get("device_name") or a.labels.get("device_id") or ""
        device_type = a.labels.get("device_type")
        if device and device_type:
            device = f"{device} ({device_type})"
        rows.append(AlertRow(
            key=a.key, state=a.state, severity=a.severity,
            color=SEVERITY_COLORS["resolved" if a.state == "resolved" else a.severity]
            if (a.state == "resolved" or a.severity in SEVERITY_COLORS) else SEVERITY_COLORS["info"],
            rule_id=a.rule_id, summary=a.summary or a.rule_id,
            site=a.labels.get("site_name") or a.labels.get("site_id") or "", device=device,
            value=value, reference=reference, since=fmt_time(start), duration=duration,
            resolved_at=fmt_time(a.resolved_at), recommendation=a.recommendation, description=a.description,
            new=a.state == "firing" and a.key in new_keys))
    return rows


def plain_text(n: Notification) -> str:
    """A plain-text body any notifier can use."""
    lines = [n.title, ""]
    for title, state in (("Firing", "firing"), ("Resolved", "resolved")):
        rows = [r for r in alert_rows(n) if r.state == state]
        if not rows:
            continue
        lines.append(f"{title}:")
        for r in rows:
            sev = "RESOLVED" if state == "resolved" else r.severity.upper()
            lines.append(f"- [{sev}{', NEW' if r.new else ''}] {r.summary}")
            where = ", ".join(x for x in (r.site, r.device) if x)
            if where:
                lines.append(f"  where: {where}")
            value = r.value + (f" ({r.reference})" if r.reference else "")
            if value.strip():
                lines.append(f"  value{' at resolution' if state == 'resolved' else ''}: {value}")
            if r.since:
                lines.append(f"  since: {r.since}, {r.duration}" if r.duration else f"  since: {r.since}")
            if r.recommendation and state == "firing":
                lines.append(f"  recommendation: {r.recommendation}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


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
        outbox.insert_notifications(db, p.notifications, now)
        outbox.save_log(db, p.log)
        outbox.prune(db, now)
    result.merge(send_outbox(config, host, store, now, settings=settings))
    return result


def send_outbox(config: Any, host: Any, store: Any, now: datetime, *, ids: Sequence[str] | None = None,
                settings: NotifySettings | None = None) -> NotifyResult:
    """Deliver every due outbox row (or only ``ids``), one batch per notifier, and record each outcome.

    A notifier that raises fails its whole batch temporarily; results are committed right after each
    batch, so a crash can at worst repeat the batch in flight (at-least-once), never lose it."""
    settings = settings or load_settings(config)
    result = NotifyResult()
    types = host.notifiers()
    batches: dict[str, list[tuple[OutboxItem, Notification]]] = {}
    for item, n in outbox.due(store, now, ids=ids):
        batches.setdefault(item.notifier, []).append((item, n))
    for name, batch in batches.items():
        entry = settings.notifiers.get(name)
        deliveries: dict[str, Delivery] = {}
        if entry is None:
            error = f"notifier {name!r} is no longer configured"
            deliveries = {n.id: Delivery(n.id, ok=False, error=error, permanent=True) for _, n in batch}
        elif entry.get("type") not in types:
            error = f"notifier type {entry.get('type')!r} is not available (is its plugin installed and loaded?)"
            deliveries = {n.id: Delivery(n.id, ok=False, error=error) for _, n in batch}
        else:
            try:
                got = types[entry["type"]].send(entry, [n for _, n in batch]) or []
                deliveries = {d.notification_id: d for d in got}
            except Exception as exc:  # a notifier that raises fails its batch, temporarily
                error = f"{type(exc).__name__}: {exc}"
                deliveries = {n.id: Delivery(n.id, ok=False, error=error) for _, n in batch}
        with store.transaction() as db:
            for item, n in batch:
                d = deliveries.get(n.id) or Delivery(n.id, ok=False, error="the notifier returned no result")
                if d.ok:
                    outbox.mark_sent(db, item.id, now)
                    result.sent.append(OutboxItem(**{**item.__dict__, "status": "sent", "sent_at": now,
                                                     "attempts": item.attempts + 1}))
                    continue
                # a test message reports its failure now instead of lingering for retries
                permanent = d.permanent or item.kind == "test"
                failed = outbox.mark_failed(db, item, now, d.error or "failed", permanent=permanent,
                                            retry_after=getattr(d, "retry_after", None))
                (result.permanent_failures if failed.permanent else result.failed).append(failed)
    for item in result.failed:
        result.warnings.append(f"{item.notifier}: {item.title} not delivered (attempt {item.attempts}, "
                               f"retry at {fmt_time(item.next_attempt_at)}): {item.last_error}")
    result.pending = outbox.counts(store)["pending"]
    return result


def print_notify_summary(console: Any, result: NotifyResult) -> None:
    """One line of counts, then a red line per permanent failure and a yellow one per warning."""
    from rich.markup import escape

    if result.dry_run:
        console.print(f"[bold]Notifications (dry run):[/] {len(result.planned)} would be sent, "
                      f"{len(result.suppressed)} suppressed")
        for n in result.planned:
            console.print(f"  would send to {escape(n.notifier)}: {escape(n.title)}")
    else:
        parts = [f"{len(result.sent)} sent"]
        parts.append(f"[red]{len(result.failed)} failed (will retry)[/]" if result.failed else "0 failed")
        if result.permanent_failures:
            parts.append(f"[bold red]{len(result.permanent_failures)} failed permanently[/]")
        parts.append(f"{result.pending} pending in outbox")
        if result.suppressed:
            parts.append(f"{len(result.suppressed)} suppressed")
        console.print("[bold]Notifications:[/] " + ", ".join(parts))
        for item in result.sent:
            console.print(f"  [green]sent[/] to {escape(item.notifier)}: {escape(item.title)}")
    for item in result.permanent_failures:
        console.print(f"  [bold red]FAILED permanently[/] {escape(item.notifier)}: {escape(item.title)}: "
                      f"{escape(item.last_error)}")
    by_reason: dict[str, list[str]] = {}
    for s in result.suppressed:
        by_reason.setdefault(s.reason, []).append(s.name or s.alert_key)
    for reason, names in list(by_reason.items())[:10]:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        console.print(f"  [dim]suppressed ({escape(reason)}): {escape(shown)}[/]")
    if len(by_reason) > 10:
        console.print(f"  [dim]... and {len(by_reason) - 10} more reasons[/]")
    for warning in result.warnings:
        console.print(f"  [yellow]warning:[/] {escape(warning)}")


__all__ = [
    "SEVERITIES", "AlertRow", "Matcher", "NotifyResult", "NotifySettings", "Suppressed", "alert_rows",
    "check_config", "headline", "inhibited", "load_settings", "notify", "parse_matcher", "plain_text",
    "plan", "print_notify_summary", "send_outbox", "test_notification",
]
