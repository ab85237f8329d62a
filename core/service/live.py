"""What the running daemon knows that the store does not: counters since start, the last cycle's
stage timings, when each collector last worked. The daemon thread writes it after each cycle; HTTP
threads read it at scrape time. One lock, held only to copy numbers in or out.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


@dataclass
class LiveSnapshot:
    """A consistent copy of the live state, for one scrape or one readiness check."""

    started_at: float
    interval_s: float
    cycles: Counter  # outcome -> count (ok, partial, failed, error)
    stage_runs: Counter  # (stage, outcome) -> count
    stage_seconds_total: Counter  # stage -> seconds, summed over cycles
    last_stage_seconds: dict[str, float]
    last_cycle_seconds: float | None
    last_cycle_at: datetime | None
    last_cycle_outcome: str | None
    api_calls_total: int
    last_api_calls: int
    api_requests: Counter  # (collector, endpoint template, outcome) -> count; outcome: status | timeout | error
    collector_last_ok: dict[str, datetime]
    notifications: Counter  # (notifier, outcome) -> count; outcome sent | failed | permanent
    webhooks: Counter  # (source, outcome) -> count
    heartbeat: Counter  # outcome -> count


@dataclass
class LiveState:
    interval_s: float = 900.0
    started_at: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cycles: Counter = field(default_factory=Counter)
    _stage_runs: Counter = field(default_factory=Counter)
    _stage_seconds: Counter = field(default_factory=Counter)
    _last_stages: dict[str, float] = field(default_factory=dict)
    _last_cycle_seconds: float | None = None
    _last_cycle_at: datetime | None = None
    _last_outcome: str | None = None
    _api_calls_total: int = 0
    _last_api_calls: int = 0
    _api_requests: Counter = field(default_factory=Counter)
    _collector_ok: dict[str, datetime] = field(default_factory=dict)
    _notifications: Counter = field(default_factory=Counter)
    _webhooks: Counter = field(default_factory=Counter)
    _heartbeat: Counter = field(default_factory=Counter)

    def set_interval(self, interval: timedelta) -> None:
        with self._lock:
            self.interval_s = interval.total_seconds()

    def record_cycle(self, result: Any, collectors: list[str]) -> None:
        """Take in a ``CycleResult``; ``collectors`` are the names of the collectors it ran."""
        outcome = result.status if not result.stage_errors or result.status == "failed" else "error"
        with self._lock:
            self._cycles[outcome] += 1
            self._last_outcome = outcome
            self._last_cycle_seconds = result.duration_s
            self._last_cycle_at = result.started_at
            self._last_stages = dict(result.stages)
            for stage, seconds in result.stages.items():
                self._stage_seconds[stage] += seconds
                self._stage_runs[(stage, "error" if stage in result.stage_errors else "ok")] += 1
            self._api_calls_total += result.api_calls
            self._last_api_calls = result.api_calls
            for collector, endpoints in (getattr(result, "api_requests", None) or {}).items():
                for endpoint, outcomes in endpoints.items():
                    for outcome, n in outcomes.items():
                        self._api_requests[(collector, endpoint, outcome)] += n
            for name in collectors:
                if name not in result.collectors_failed:
                    self._collector_ok[name] = result.started_at
            self._count_notifications(result.notify)

    def record_notify(self, notify_result: Any) -> None:
        with self._lock:
            self._count_notifications(notify_result)

    def _count_notifications(self, notify_result: Any) -> None:
        if notify_result is None:
            return
        for outcome, items in (("sent", notify_result.sent), ("failed", notify_result.failed),
                               ("permanent", notify_result.permanent_failures)):
            for item in items:
                self._notifications[(item.notifier, outcome)] += 1

    def record_webhook(self, source: str, outcome: str) -> None:
        with self._lock:
            self._webhooks[(source, outcome)] += 1

    def record_heartbeat(self, outcome: str) -> None:
        with self._lock:
            self._heartbeat[outcome] += 1

    def snapshot(self) -> LiveSnapshot:
        with self._lock:
            return LiveSnapshot(
                started_at=self.started_at, interval_s=self.interval_s, cycles=Counter(self._cycles),
                stage_runs=Counter(self._stage_runs), stage_seconds_total=Counter(self._stage_seconds),
                last_stage_seconds=dict(self._last_stages), last_cycle_seconds=self._last_cycle_seconds,
                last_cycle_at=self._last_cycle_at, last_cycle_outcome=self._last_outcome,
                api_calls_total=self._api_calls_total, last_api_calls=self._last_api_calls,
                api_requests=Counter(self._api_requests),
                collector_last_ok=dict(self._collector_ok), notifications=Counter(self._notifications),
                webhooks=Counter(self._webhooks), heartbeat=Counter(self._heartbeat))
