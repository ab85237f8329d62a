"""One cycle, as data flows: collect -> store -> evaluate -> report -> notify.

The engine owns no policy: each stage is a module of its own (collectors are plugins; ``rules``,
``lifecycle``, ``report``, ``notify`` are pure or I/O-at-the-edge functions). This module wires them,
guards each plugin call, and records the run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mistwatch.errors import CollectionFailed
from mistwatch.hookspecs import CollectContext
from mistwatch.memory import release_free_memory
from mistwatch.model import Attachment, CollectorError, Snapshot
from mistwatch.notify.pipeline import notify, send_outbox
from mistwatch.secrets import redact

log = logging.getLogger("mistwatch.engine")

MODES = ("monitor", "insights", "report", "all")
#: Pruning thins history; it need not run every cycle.
PRUNE_EVERY = timedelta(hours=1)


@dataclass
class App:
    """Everything a cycle needs, built once; the daemon rebuilds it on reload."""

    config: Any  # mistwatch.config.Config
    host: Any  # mistwatch.host.PluginHost
    store: Any  # mistwatch.store.database.Store
    ruleset: Any  # mistwatch.rules.loader.RuleSet
    console: Any = None  # rich.console.Console


@dataclass
class CycleResult:
    run_id: int | None
    mode: str
    started_at: datetime
    finished_at: datetime | None = None
    status: str = "ok"  # ok | partial | failed
    snapshot: Snapshot | None = None
    rules: Any = None  # mistwatch.rules.lifecycle.RulesOutcome
    health: Any = None  # mistwatch.report.health.HealthResult
    notify: Any = None  # mistwatch.notify.pipeline.NotifyResult
    report: Any = None  # mistwatch.report.build.ReportPaths
    errors: list[str] = field(default_factory=list)
    api_calls: int = 0
    #: API requests by collector, endpoint and status (``Snapshot.api_requests``), also of a
    #: collection that failed outright (for /metrics and run --json)
    api_requests: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    api_calls_per_hour_allowed: int = 0  # the smallest budget the enabled collectors declare; 0: none
    duration_s: float = 0.0
    digest_sent: bool = False
    clock_start: float = field(default_factory=time.perf_counter)
    #: Seconds each stage took (collect, store, rules, health, report, notify), in order run;
    #: ``stage_errors`` names the stages that raised. The daemon's /metrics exports both.
    stages: dict[str, float] = field(default_factory=dict)
    stage_errors: list[str] = field(default_factory=list)
    #: Collectors that failed outright this cycle (their data is unknown), by name.
    collectors_failed: list[str] = field(default_factory=list)
    #: Collectors that raised CollectionFailed (a refused token, no rights on the org): the cycle
    #: goes on with the others' data, but exits 1, since this needs a person whatever else worked.
    collectors_refused: list[str] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            self.stage_errors.append(name)
            raise
        finally:
            release_free_memory()  # what the stage built and dropped, so the next starts from less
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "failed" or self.collectors_refused else 0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def open_app(config_path: str | Path, *, console: Any = None) -> App:
    """Load config (ConfigError on any problem), plugins, the store and the rules."""
    from mistwatch.config import host_for_config, load_config
    from mistwatch.memory import keep_large_blocks_unmappable
    from mistwatch.rules.loader import load_rules
    from mistwatch.store.database import Store

    keep_large_blocks_unmappable()  # lower peak RSS of big cycles (see mistwatch.memory)
    host = host_for_config(config_path)
    config = load_config(config_path, host)
    known = {m for c in host.collectors().values() for m in c.metrics}
    ruleset = load_rules(config.rule_paths, host.rule_kinds(), known_metrics=known or None)
    store = Store.open(config.store_target)
    return App(config=config, host=host, store=store, ruleset=ruleset, console=console)


def close_app(app: App) -> None:
    app.store.close()


def enabled_collectors(app: App) -> list[Any]:
    available = app.host.collectors()
    names = app.config.data.get("collectors") or list(available)
    return [available[name] for name in names if name in available]


def collect(app: App, now: datetime, progress: Callable[[str, int, int | None], None] | None = None,
            refused: list[str] | None = None) -> Snapshot:
    """Run every enabled collector in config order, each guarded; merge their snapshots.

    A collector that raises marks what it covers as unknown. If every collector failed, raise
    CollectionFailed (exit 1): there is nothing to evaluate. The names of collectors that raised
    CollectionFailed themselves (a refused token) are appended to ``refused``.
    """
    snapshot = Snapshot(taken_at=now)
    collectors = enabled_collectors(app)
    if not collectors:
        raise CollectionFailed("no collector is enabled (check `collectors:` in the config)")
    cursors = app.store.kv_get("cursors", {}) or {}
    failures: list[str] = []
    for collector in collectors:
        settings = app.config.data.get(collector.config_key, {}) if collector.config_key else {}
        state_key = f"collector-state:{collector.name}"
        state = app.store.kv_get(state_key, {}) or {}
        saved = json.dumps(state, sort_keys=True, default=str)
        ctx = CollectContext(settings=settings, now=now, cursor=cursors.get(collector.name, {}),
                             state=state, **({"progress": progress} if progress else {}))
        try:
            part = collector.collect(ctx)
        except Exception as exc:  # isolate the plugin; its data is unknown, not down
            if isinstance(exc, CollectionFailed) and refused is not None:
                refused.append(collector.name)
            message = redact(str(exc)) or type(exc).__name__
            failures.append(f"{collector.name}: {message}")
            snapshot.errors.append(CollectorError(collector=collector.name, endpoint="*", message=message))
            spent = getattr(exc, "api_requests", None)  # what a CollectionFailed says was asked before
            if isinstance(spent, dict):
                snapshot.merge(Snapshot(taken_at=now, api_requests=spent))
            continue
        finally:
            # Saved whatever happened (also in a dry run): it records the outside world, such as the
            # API calls this cycle spent, which a failed or dry cycle spent all the same.
            if json.dumps(state, sort_keys=True, default=str) != saved:
                app.store.kv_set(state_key, state)
        snapshot.merge(part)
        snapshot.taken_at = now
    if len(failures) == len(collectors):
        raise CollectionFailed("collection failed: " + "; ".join(failures), api_requests=snapshot.api_requests)
    return snapshot


def run_cycle(app: App, *, mode: str = "all", now: datetime | None = None, dry_run: bool = False,
              progress: Callable[[str, int, int | None], None] | None = None,
              observe: Callable[[CycleResult], None] | None = None) -> CycleResult:
    """Run one cycle in ``mode`` (monitor | insights | report | all). ``dry_run`` changes nothing:
    no history, no alert state, no reports, no notifications; it shows what would happen.
    ``observe(result)`` is called at the end even when a stage raised (the daemon's metrics)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    now = now or utcnow()
    store = app.store
    result = CycleResult(run_id=None, mode=mode, started_at=now)
    if not dry_run:
        result.run_id = store.start_run(now, mode)
    try:
        _cycle(app, result, now, dry_run, progress)
    except CollectionFailed as exc:
        result.status = "failed"
        result.errors.append(str(exc))
        if mode == "all" and not dry_run:  # the outbox still retries what earlier cycles left
            result.notify = _send_outbox(app, now)
    finally:
        result.duration_s = time.perf_counter() - result.clock_start
        result.finished_at = now + timedelta(seconds=result.duration_s)
        try:
            if result.run_id is not None:
                store.finish_run(result.run_id, finished_at=result.finished_at, status=result.status,
                                 api_calls=result.api_calls, errors=result.errors, summary=run_summary(result))
        finally:
            if observe is not None:
                observe(result)
    return result


def _cycle(app: App, result: CycleResult, now: datetime, dry_run: bool,
           progress: Callable[[str, int, int | None], None] | None) -> None:
    store, mode = app.store, result.mode
    try:
        with result.stage("collect"):
            snapshot = collect(app, now, progress, refused=result.collectors_refused)
    except CollectionFailed as exc:
        result.collectors_failed = [c.name for c in enabled_collectors(app)]
        result.api_requests = exc.api_requests
        raise
    result.collectors_failed = sorted({e.collector for e in snapshot.errors if e.endpoint == "*"})
    from mistwatch.rules.derived import derive

    derive(app.ruleset.metrics, snapshot)  # metrics: of the rule files, stored and evaluated like the others
    result.snapshot = snapshot
    result.api_calls = snapshot.api_calls
    result.api_requests = snapshot.api_requests
    budgets = [c.calls_per_hour for c in enabled_collectors(app) if c.calls_per_hour]
    result.api_calls_per_hour_allowed = min(budgets, default=0)
    result.errors.extend(f"{e.collector} {e.endpoint}: {e.message}" for e in snapshot.errors)
    if snapshot.errors:
        result.status = "partial"
    if not dry_run:
        with result.stage("store"):
            store.write_snapshot(result.run_id, snapshot)
            store.kv_set("cursors", snapshot.cursors)
            store.roll_up(now)  # the hours completed since the last cycle, for seasonal and trend rules

    if mode in ("insights", "report", "all"):
        from mistwatch.notify.pipeline import inhibitors
        from mistwatch.notify.settings import load_settings
        from mistwatch.rules.lifecycle import run_rules

        inhibit_rules = load_settings(app.config).inhibit
        with result.stage("rules"):
            # inhibition is decided here, not only when notifying, so the alerts carry it into the
            # store, the report and `mistwatch alerts` (the rules stage may not import notify)
            result.rules = run_rules(store, app.ruleset, snapshot, now, dry_run=dry_run,
                                     inhibit=lambda alerts: inhibitors(alerts, inhibit_rules))
        with result.stage("health"):
            _health(app, result, now, dry_run)

    attachments: tuple[Attachment, ...] = ()
    if mode in ("report", "all"):
        with result.stage("report"):
            attachments = _report(app, result, now, dry_run)

    if mode == "all":
        with result.stage("notify"):
            result.notify = notify(app.config, app.host, store, result.rules.alerts, now,
                                   dry_run=dry_run, attachments=attachments)

    if not dry_run:
        _maybe_prune(app, now)


def _health(app: App, result: CycleResult, now: datetime, dry_run: bool) -> None:
    """Score sites and devices once the alerts are known, and keep the scores as history: every
    insights, report and all run adds a point, so trends do not depend on when reports are written."""
    from mistwatch.report.health import compute_health, health_metrics

    alerts = result.rules.alerts if result.rules else []
    weights = (app.config.data.get("health") or {}).get("weights")
    result.health = compute_health(result.snapshot, alerts, weights)
    if not dry_run:
        app.store.write_metrics(now, health_metrics(result.health))


def _report(app: App, result: CycleResult, now: datetime, dry_run: bool) -> tuple[Attachment, ...]:
    from mistwatch.report.build import build_report, write_reports

    store, config = app.store, app.config
    alerts = result.rules.alerts if result.rules else []
    if dry_run:
        return ()
    run_meta = {"started_at": now, "duration_s": round(time.perf_counter() - result.clock_start, 3),
                "api_calls": result.api_calls, "errors": list(result.errors), "mode": result.mode}
    notes = result.rules.notes if result.rules else []
    report = build_report(store, result.snapshot, result.health, alerts, notes, run_meta, now)
    reports_cfg = config.data.get("reports", {})
    result.report = write_reports(report, config.reports_dir, now, reports_cfg.get("retention_days", 7))

    from mistwatch.notify.digest import digest_due, send_digest

    if digest_due(config, store, now):
        result.digest_sent = send_digest(config, app.host, store, report, result.report, now)
    attach = []
    if any(n.get("attach_report") for n in config.notifiers):
        attach = [Attachment("mistwatch-report.html", result.report.html.read_bytes(), "text/html")]
    return tuple(attach)


def _send_outbox(app: App, now: datetime) -> Any:
    try:
        return send_outbox(app.config, app.host, app.store, now)
    except Exception as exc:  # never let a notifier problem hide the collection failure
        log.warning("outbox retry failed: %s", exc)
        return None


def _maybe_prune(app: App, now: datetime) -> None:
    last = app.store.kv_get("last_prune")
    if last is not None and now.timestamp() - float(last) < PRUNE_EVERY.total_seconds():
        return
    history = app.config.data.get("history", {}) or {}
    keys = ("raw_hours", "hourly_days", "retention_days", "rollup_days")
    app.store.prune(now, **{k: history[k] for k in keys if k in history})
    app.store.kv_set("last_prune", now.timestamp())


def run_summary(result: CycleResult) -> dict[str, Any]:
    """A small JSON-able record of the cycle, kept with the run in the store."""
    summary: dict[str, Any] = {"duration_s": round(result.duration_s, 3)}
    if result.snapshot is not None:
        kinds: dict[str, int] = {}
        for entity in result.snapshot.entities:
            kinds[entity.kind] = kinds.get(entity.kind, 0) + 1
        summary["entities"] = kinds
        if result.snapshot.api_budget:  # calls this cycle and clock hour, skipped endpoints (for status)
            summary["api_budget"] = result.snapshot.api_budget
    if result.rules is not None:
        states: dict[str, int] = {}
        for alert in result.rules.alerts:
            states[alert.state] = states.get(alert.state, 0) + 1
        summary["alerts"] = states
    if result.notify is not None:
        summary["notifications"] = {
            "sent": len(getattr(result.notify, "sent", []) or []),
            "failed": len(getattr(result.notify, "failed", []) or []),
        }
    return summary
