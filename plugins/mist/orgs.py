"""Several Mist orgs in one mistwatch: ``mist: {orgs: [...]}``.

Each org has its own API host (``cloud`` or ``base_url``), token and name; the other ``mist:``
settings (timeout, page_limit, ...) apply to all. Orgs are collected in parallel (one thread and
one HTTP client each), each with its own calls and API budget (a Mist budget is per token), and
every entity carries ``org_id`` and ``org_name``, so rules can group and route by org.

An org that cannot be collected at all (token refused, host unreachable) re-appears with the
entities it had last cycle, all metrics unknown, so its devices are neither down nor missing while
the other orgs are evaluated as usual; only when every org fails does the collection fail. (Before
its first good cycle in this process, nothing is known of it: then the whole cycle's data is
unknown, the safe side.) An endpoint failing inside one org makes what it feeds unknown on that
org's entities only (see ``_scope_errors``) and is reported with the org's name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from mistwatch.errors import CollectionFailed
from mistwatch.hookspecs import CollectContext
from mistwatch.model import CollectorError, Entity, FrozenMap, Snapshot

log = logging.getLogger("mistwatch.plugins.mist.orgs")
#: At most this many orgs are collected at once (each is mostly waiting on the network).
MAX_PARALLEL = 8
_ALL_UNKNOWN = frozenset({"*"})


def orgs_schema() -> dict[str, Any]:
    """JSON Schema of ``mist.orgs``."""
    return {
        "type": "array", "minItems": 1,
        "description": "several orgs, each with its own API host, token and name (instead of token/org_id)",
        "items": {
            "type": "object", "additionalProperties": False,
            "required": ["org_id", "token"],
            "anyOf": [{"required": ["cloud"]}, {"required": ["base_url"]}],
            "properties": {
                "name": {"type": "string", "minLength": 1, "description": "the org's name in alerts and reports"},
                "org_id": {"type": "string", "minLength": 1},
                "token": {"type": "string", "minLength": 1, "description": "an API token of this org, e.g. ${TOKEN_A}"},
                "cloud": {"type": "string", "minLength": 1},
                "base_url": {"type": "string", "format": "uri", "pattern": "^https?://"},
            },
        },
    }


class _LastSeen:
    """Per org, the entities of its last cycles (labels only), to stand in for what a failure hides."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entities: dict[str, dict[str, Entity]] = {}

    def remember(self, org_id: str, entities: list[Entity], *, complete: bool) -> None:
        """``complete``: the cycle had no error, so these are all the org's entities (the ones not
        listed are gone); otherwise they are added to what was known."""
        slim = {e.key: Entity(e.key, e.kind, e.labels, {}, _ALL_UNKNOWN) for e in entities}
        with self._lock:
            if complete or org_id not in self._entities:
                self._entities[org_id] = slim
            else:
                self._entities[org_id].update(slim)

    def recall(self, org_id: str) -> list[Entity] | None:
        with self._lock:
            known = self._entities.get(org_id)
            return None if known is None else list(known.values())


def _scope_errors(snapshot: Snapshot, org_id: str, last: _LastSeen) -> None:
    """Keep one org's endpoint errors inside that org: what an error covers becomes unknown on the
    org's own entities, and entities of a covered kind that the failure hid stand in from last
    cycles; the error stays listed but covers nothing else. Without a last cycle to stand in from,
    the error keeps its snapshot-wide effect (the safe side)."""
    known = last.recall(org_id)
    if known is None or not snapshot.errors:
        return
    present = {e.key for e in snapshot.entities}
    patterns: dict[str, set[str]] = {}  # kind ("*": all) -> metric patterns now unknown
    for err in snapshot.errors:
        for kind in err.kinds:
            patterns.setdefault(kind, set()).update(err.metrics)
    entities = []
    for entity in snapshot.entities:
        extra = patterns.get("*", set()) | patterns.get(entity.kind, set())
        entities.append(replace(entity, unknown=entity.unknown | frozenset(extra)) if extra else entity)
    hidden = [e for e in known if e.key not in present and ("*" in patterns or e.kind in patterns)]
    snapshot.entities = entities + hidden
    snapshot.errors = [replace(err, kinds=frozenset(), metrics=frozenset()) for err in snapshot.errors]


_LAST = _LastSeen()


def collect_orgs(collect_one: Callable[[CollectContext], Snapshot], ctx: CollectContext,
                 last: _LastSeen = _LAST) -> Snapshot:
    """Collect every org of ``ctx.settings["orgs"]`` with ``collect_one`` (the one-org collector),
    in parallel, and merge them. The cursor is kept per org id."""
    shared = {k: v for k, v in ctx.settings.items() if k != "orgs"}
    orgs = [{**shared, **org} for org in ctx.settings["orgs"]]
    cursors = ctx.cursor.get("orgs") if isinstance(ctx.cursor.get("orgs"), Mapping) else {}
    lock = threading.Lock()

    def progress(stage: str, done: int, total: int | None) -> None:
        with lock:  # the progress bar is not thread-safe
            ctx.progress(stage, done, total)

    def one(settings: dict[str, Any]) -> Snapshot | BaseException:
        org_id = str(settings["org_id"])
        sub = replace(ctx, settings=settings, cursor=cursors.get(org_id) or {}, progress=progress)
        try:
            return collect_one(sub)
        except Exception as exc:  # one org failing must not take the others down
            return exc

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(orgs)), thread_name_prefix="mist-org") as pool:
        outcomes = list(pool.map(one, orgs))

    merged = Snapshot(taken_at=ctx.now)
    budget_names: set[str] = set()  # two orgs of one name still get a budget line each
    new_cursors: dict[str, Any] = {}
    failures: list[str] = []
    for settings, outcome in zip(orgs, outcomes, strict=True):
        org_id = str(settings["org_id"])
        if isinstance(outcome, BaseException):
            name = str(settings.get("name") or org_id)
            message = f"org {name}: {outcome}"
            failures.append(message)
            stand_in = last.recall(org_id)
            if stand_in is None:  # never seen in this process: cannot say which entities it has
                merged.errors.append(CollectorError(collector="mist", endpoint=f"org {name}", message=message))
            else:
                merged.entities.extend(stand_in)
                merged.errors.append(CollectorError(collector="mist", endpoint=f"org {name}", message=message,
                                                    kinds=frozenset(), metrics=frozenset()))
            if cursors.get(org_id):
                new_cursors[org_id] = cursors[org_id]
            spent = getattr(outcome, "api_requests", None)  # the calls the failed org made all the same
            if isinstance(spent, dict):
                merged.merge(Snapshot(taken_at=ctx.now, api_requests=spent))
            continue
        name = _org_name(settings, outcome, org_id)
        log.info("org %s: %d API calls", name, outcome.api_calls)  # each org's token has its own budget
        outcome.entities = _named(outcome.entities, name)
        outcome.events = _named(outcome.events, name)
        outcome.errors = [replace(err, message=f"org {name}: {err.message}") for err in outcome.errors]
        complete = not outcome.errors
        _scope_errors(outcome, org_id, last)
        last.remember(org_id, [e for e in outcome.entities if e.unknown != _ALL_UNKNOWN or e.metrics],
                      complete=complete)
        new_cursors[org_id] = outcome.cursors.get("mist", {})
        outcome.cursors = {}
        label = name if name not in budget_names else f"{name} ({org_id})"
        budget_names.add(label)
        outcome.api_budget = _per_org_budget(outcome.api_budget, org_id, label)
        merged.merge(outcome)
    if len(failures) == len(orgs):
        raise CollectionFailed("; ".join(failures), api_requests=merged.api_requests)
    merged.cursors["mist"] = {"orgs": new_cursors}
    return merged


def _per_org_budget(budgets: Mapping[str, Any], org_id: str, label: str) -> dict[str, Any]:
    """The org's budget facts under a key of its own (``mist org <label>``): each org has its own token
    and hourly budget, so merging them under one ``mist`` key would keep only the last org's."""
    return {f"{collector} org {label}": {**facts, "org_id": org_id, "org_name": label}
            for collector, facts in budgets.items()}


def _named(items: list[Any], name: str) -> list[Any]:
    """Entities or events with ``org_name`` in their labels. The collector's label dicts (events')
    are its own, so they are updated in place; frozen labels (entities') are copied and frozen again."""
    out = []
    for item in items:
        if isinstance(item.labels, dict):
            item.labels["org_name"] = name
            out.append(item)
        elif isinstance(item.labels, FrozenMap):
            out.append(replace(item, labels=FrozenMap({**item.labels, "org_name": name})))
        else:
            out.append(replace(item, labels={**item.labels, "org_name": name}))
    return out


def _org_name(settings: Mapping[str, Any], snapshot: Snapshot, org_id: str) -> str:
    """The configured name, else the name Mist gave (on the org entity), else the id."""
    if settings.get("name"):
        return str(settings["name"])
    for entity in snapshot.entities:
        if entity.kind == "org":
            return str(entity.labels.get("org_name") or org_id)
    return org_id


def describe_orgs(settings: Mapping[str, Any], where: Callable[[Mapping[str, Any]], str]) -> list[tuple[str, str]]:
    """``config check`` lines: one per org (never the token)."""
    lines = []
    for org in settings.get("orgs") or []:
        merged = {**settings, **org}
        token = "token set" if org.get("token") else "no token"
        label = f"Org {org.get('name') or org.get('org_id')}"
        lines.append((label, f"{org.get('org_id')} at {where(merged)}, {token}"))
    return lines
