"""The whole plugin contract of mistwatch.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names are the hooks below.
Every hook takes no arguments and yields frozen descriptors; the host picks the ones enabled in
``config.yaml`` and calls them itself, one at a time, each guarded. The contract grows by adding
fields with defaults to the descriptors, never by changing a hook's signature.

Plugins are found in three places, in this order: the built-ins (``mistwatch.plugins``,
``mistwatch.notifiers``), installed packages that declare an entry point in the ``mistwatch`` group::

    [project.entry-points.mistwatch]
    my_plugin = "mistwatch_my_plugin"

and ``*.py`` files in the optional ``plugins_dir`` of ``config.yaml``. Import heavy modules inside
your callables, not at module top: ``mistwatch --help`` must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pluggy

from mistwatch.durations import parse_duration
from mistwatch.model import Delivery, Entity, Event, Notification, Snapshot

PROJECT = "mistwatch"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def _no_progress(stage: str, done: int, total: int | None) -> None:
    return None


@dataclass(frozen=True, slots=True)
class CollectContext:
    """What a collector is given each cycle.

    ``settings`` is the collector's own config section (for the Mist collector: ``mist:``), already
    validated against its ``settings_schema`` with ``${VAR}`` expanded. ``cursor`` is what the
    collector returned in ``Snapshot.cursors[name]`` last cycle (empty on the first run).
    ``progress(stage, done, total)`` drives the console progress bar; calling it is optional.
    ``state`` is the collector's own persistent dict of JSON values: unlike ``cursor`` it is saved
    whatever happens to the cycle (failed, dry run) - for facts about the outside world that stay
    true, such as API calls already spent this hour. Keep it small.
    """

    settings: Mapping[str, Any]
    now: datetime
    cursor: Mapping[str, Any] = field(default_factory=dict)
    progress: Callable[[str, int, int | None], None] = _no_progress
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A webhook delivery to ``POST /webhooks/<collector name>``, given to ``Collector.webhook``.

    ``headers`` have lower-case names; ``body`` is the raw bytes (verify signatures over these, not
    over re-encoded JSON); ``settings`` is the collector's validated config section (where its
    webhook secret lives); ``received_at`` is when the daemon received it."""

    headers: Mapping[str, str]
    body: bytes
    settings: Mapping[str, Any]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookItem:
    """One thing a webhook reported, as mistwatch can use it.

    ``id`` must be the same whenever the same happening is delivered again (the source retries,
    or both an org and a site webhook deliver it): mistwatch drops items whose id it has seen.
    ``at`` is when it happened (rules' ``for:`` counts from it). ``entities`` are partial entity
    states: the entity's usual ``key`` and identity labels, and only the metrics this item tells
    (``{"device.connected": 0.0}``); the rules reading those metrics run for those entities at once.
    ``events`` are kept for counting; the next poll collects them as usual."""

    id: str
    at: datetime
    entities: tuple[Entity, ...] = ()
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class Collector:
    """A source of entities, metrics and events.

    ``collect(ctx)`` returns a :class:`~mistwatch.Snapshot`. It should not raise for a partial
    failure: record a :class:`~mistwatch.CollectorError` in ``snapshot.errors`` naming what it
    covers, so those entities become *unknown*. Raising marks everything the collector covers unknown.
    ``metrics`` declares the metric names it produces (name -> description), so ``rules check``
    can flag a rule that names a metric nobody collects. ``config_key`` is the top-level key of
    ``config.yaml`` holding its settings, validated against ``settings_schema`` (a JSON Schema); a
    property's ``default`` fills a missing key, and a default such as ``"${MIST_API_TOKEN}"`` is
    expanded from the environment (unless the section holds a key the schema lists in
    ``"x-no-defaults-with"``: another form of the section, such as the Mist collector's ``orgs``).
    ``calls_per_hour`` is the API budget its source allows (0: none), so the run summary can show
    how much of it the current interval uses. A collector calling an HTTP API reports its calls in
    ``snapshot.api_calls`` and, by endpoint and outcome, in ``snapshot.api_requests[name]``
    (``{"/api/v1/orgs/{org_id}/stats/devices": {"200": 2, "503": 1, "timeout": 1}}``: path templates
    without ids or query, every attempt counted, retries included), which ``/metrics`` exports as
    ``mistwatch_api_requests_total``; a ``CollectionFailed(..., api_requests=...)`` carries those
    made before the failure (a refused token's 401). ``describe(settings)``, optional, returns
    ``(label, value)`` lines for ``config check`` (never a secret's value).
    """

    name: str
    collect: Callable[[CollectContext], Snapshot]
    metrics: Mapping[str, str] = field(default_factory=dict)
    config_key: str = ""
    settings_schema: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    calls_per_hour: int = 0
    describe: Callable[[Mapping[str, Any]], list[tuple[str, str]]] | None = None
    webhook: Callable[[WebhookRequest], list[WebhookItem]] | None = None


@dataclass(frozen=True, slots=True)
class Notifier:
    """A way to deliver notifications (email, chat, webhook, console).

    ``type`` is what ``config.yaml`` names in ``notifiers: [{name: ..., type: <type>}]``; the
    entry's other keys are the settings, validated against ``settings_schema``.
    ``send(settings, notifications)`` delivers a batch and returns (or yields) one
    :class:`~mistwatch.Delivery` per notification; mark ``permanent=True`` when retrying cannot help
    (e.g. SMTP 550). Prefer a generator that yields each Delivery as soon as the server has taken
    that message: the host records each one at once, in its own transaction, so a crash re-sends at
    most the message in flight (with a returned list, the whole batch). Raising counts as a
    temporary failure of every notification not yet reported: they stay in the outbox and are retried.
    ``check(settings, sample)``, optional, is called by ``config check`` and every command that loads
    the config, with a sample notification: return a one-line problem (start it with the setting's
    key, ``"templates_dir: ..."``, to have it named) or None. The email notifier renders users'
    templates here, so a broken template is a config error, not a lost mail.
    """

    type: str
    send: Callable[[Mapping[str, Any], list[Notification]], Iterable[Delivery]]
    settings_schema: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    check: Callable[[Mapping[str, Any], Notification], str | None] | None = None


@dataclass(frozen=True, slots=True)
class RuleKind:
    """A kind of rule condition, named by the rule file's ``kind:`` key.

    ``compile(spec)`` is called once per rule, when the rule files load, with the rule as a dict
    (``spec["tiers"]`` is always a list of ``{severity, <condition keys>}``, highest severity first,
    built from ``severity:`` and the top-level condition keys when the rule has no ``tiers:``).
    Raise ``mistwatch.RuleSpecError(message, key=...)`` for a rule you cannot accept. It returns
    ``check(ctx)``, a pure function called every cycle with a :class:`mistwatch.RuleContext`
    (the snapshot, batched history queries, the previous alerts) that yields
    :class:`mistwatch.Result` objects: one per subject whose condition holds
    (``severity`` set), and, only when ``ctx.wants(key)``, inactive (``severity=None``) or
    ``unknown=True`` ones, so existing alerts can resolve or freeze.

    ``schema`` is the JSON Schema of the kind's own keys (merged into the rule file schema, so
    ``rules check`` validates them; list required keys in ``required``). ``condition_keys`` are the
    keys that may also appear in each ``tiers`` entry and in ``recover_when``; ``recover_schema``
    adds keys only ``recover_when`` may use. ``references(spec)`` returns the ids of other rules the
    rule reads (checked to exist; the rule is evaluated after them). ``default_scope`` is used when
    a rule gives no ``scope:``. ``metric:`` in a rule names the metric it reads (checked against
    what the collectors declare).

    Example, a kind that fires when a metric is exactly zero::

        from mistwatch import hookimpl, Result, RuleKind

        def compile_zero(spec):
            metric = spec["metric"]
            severity = spec["tiers"][0]["severity"]

            def check(ctx):
                for entity in ctx.entities():
                    value = entity.metrics.get(metric)
                    if value == 0:
                        yield Result(entity.key, entity.labels, severity, value=value, metrics=entity.metrics)
                    elif ctx.wants(entity.key):
                        yield Result(entity.key, entity.labels, None, value=value,
                                     unknown=ctx.snapshot.is_unknown(entity, metric))
            return check

        @hookimpl
        def mistwatch_rule_kinds():
            yield RuleKind(name="zero", compile=compile_zero, default_scope="site", schema={
                "required": ["metric", "scope"], "properties": {"metric": {"type": "string"}}})

    The built-in kinds (threshold, change, absence, event, correlation, expression) are in
    ``mistwatch.plugins.rulekinds``.
    """

    name: str
    compile: Callable[[Mapping[str, Any]], Callable[..., Iterable[Any]]]
    schema: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    condition_keys: tuple[str, ...] = ()
    recover_schema: Mapping[str, Any] = field(default_factory=dict)
    references: Callable[[Mapping[str, Any]], Iterable[str]] | None = None
    default_scope: str = ""


# --- for rule kinds: rejecting a rule, and the schema of a duration ------------------------------

DURATION_PATTERN = r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d|w)\s*)+$"
DURATION_MESSAGE = "must be a duration like 90s, 10m, 2h, 1d (or a number of seconds)"


class RuleSpecError(ValueError):
    """Raised by a kind's ``compile`` for a rule it cannot accept; ``key`` names the offending key."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def spec_duration(spec: Mapping[str, Any], key: str, default: str | None = None) -> timedelta | None:
    """A rule's duration key (``spec[key]``, else ``default``) as a timedelta, for a kind's
    ``compile``; a malformed value raises :class:`RuleSpecError` naming the key. None if neither."""
    value = spec.get(key, default)
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise RuleSpecError(str(exc), key=key) from None


def duration_schema(description: str = "") -> dict[str, Any]:
    """A duration: ``"90s"``, ``"10m"``, ``"1h30m"``, ``"7d"``, or a number of seconds."""
    return {"description": description, "oneOf": [
        {"type": "string", "pattern": DURATION_PATTERN, "x-message": DURATION_MESSAGE},
        {"type": "number", "minimum": 0, "x-message": DURATION_MESSAGE},
    ], "x-message": DURATION_MESSAGE}


class MistwatchSpec:
    """Hook specifications. Each returns an iterable of descriptors; yield as many as you like."""

    @hookspec
    def mistwatch_collectors(self) -> Iterable[Collector]:
        """Register collectors.

        Example, a collector that reports one metric per site from a local file::

            from mistwatch import hookimpl, Collector, Entity, Snapshot

            def collect(ctx):
                snap = Snapshot(taken_at=ctx.now)
                snap.entities.append(Entity(
                    key="site:lab", kind="site", labels={"site_id": "lab", "site_name": "Lab"},
                    metrics={"lab.temperature": 21.5}))  # dicts, or FrozenMap(...) for many entities
                return snap

            @hookimpl
            def mistwatch_collectors():
                yield Collector(name="lab", collect=collect, metrics={"lab.temperature": "degC"})
        """

    @hookspec
    def mistwatch_notifiers(self) -> Iterable[Notifier]:
        """Register notifier types.

        Example, a notifier that appends each notification's title to a file::

            from mistwatch import hookimpl, Notifier, Delivery

            def send(settings, notifications):
                with open(settings["path"], "a", encoding="utf-8") as out:
                    for n in notifications:
                        out.write(n.title + "\\n")
                return [Delivery(n.id, ok=True) for n in notifications]

            @hookimpl
            def mistwatch_notifiers():
                yield Notifier(type="file", send=send, settings_schema={
                    "type": "object", "required": ["path"], "properties": {"path": {"type": "string"}}})
        """

    @hookspec
    def mistwatch_rule_kinds(self) -> Iterable[RuleKind]:
        """Register rule kinds. See :class:`RuleKind` for a complete example."""

    @hookspec
    def mistwatch_commands(self) -> Iterable[Any]:
        """Register CLI commands: yield ``click.Command`` objects (what llm's and datasette's
        ``register_commands`` add to their group). Each becomes ``mistwatch <name>``, listed in
        ``mistwatch --help`` under its own short help. A built-in command's name cannot be taken.
        Import what a command needs inside it, so ``mistwatch --help`` stays fast. The Mist plugin's
        ``simulate`` and ``demo`` are registered this way.

        Example, ``mistwatch outbox-size`` printing how many messages wait in the outbox::

            import click
            from mistwatch import hookimpl

            @click.command("outbox-size", help="Print how many notifications wait in the outbox.")
            @click.option("--state-dir", default="var", show_default=True)
            def outbox_size(state_dir):
                import sqlite3
                from pathlib import Path

                db = sqlite3.connect(Path(state_dir) / "mistwatch.db")
                click.echo(db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0])

            @hookimpl
            def mistwatch_commands():
                yield outbox_size
        """
