"""``/metrics``: the daemon's state in the Prometheus exposition format, read at scrape time.

A custom ``prometheus_client`` collector in a registry of its own (not the global one, so nothing
else in the process leaks in and two daemons in one test process do not collide). Nothing is kept
up to date between scrapes: counters come from :class:`~mistwatch.service.live.LiveState`, gauges
from the store (alerts, outbox), so a scrape always shows the state as it is. docs/metrics.md lists
every series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from mistwatch.model import SEVERITIES
from mistwatch.service.live import LiveState

#: Alert states exported (``inactive`` rows are bookkeeping).
STATES = ("firing", "pending", "resolved")
STAGES = ("collect", "store", "rules", "health", "report", "notify")


class StateCollector:
    """``collect()`` yields metric families; ``prometheus_client`` calls it on every scrape.

    ``read_store(fn)`` runs ``fn(store)`` on a store the caller may use from this thread; ``collectors``
    returns the enabled collectors' names; ``last_good`` the finish time of the newest successful run
    (for collectors that have not run since the daemon started)."""

    def __init__(self, live: LiveState, read_store: Callable[[Callable[[Any], Any]], Any],
                 collectors: Callable[[], list[str]], now: Callable[[], datetime] | None = None) -> None:
        self.live, self.read_store, self.collectors = live, read_store, collectors
        self.now = now or (lambda: datetime.now(timezone.utc))

    def describe(self) -> list[Any]:
        return []  # no describe-time work: the registry must not call collect() at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from mistwatch.notify import outbox

        now = self.now()
        live = self.live.snapshot()

        def read(store: Any) -> tuple[dict[tuple[str, str], int], dict[str, int], datetime | None, Any]:
            return store.alert_counts(), outbox.counts(store), outbox.oldest_unsent(store), store.last_successful_run()

        alerts, box, oldest, last_run = self.read_store(read)

        g = GaugeMetricFamily("mistwatch_start_time_seconds", "When the daemon started, Unix time.")
        g.add_metric([], live.started_at)
        yield g
        g = GaugeMetricFamily("mistwatch_interval_seconds", "The daemon's cycle interval.")
        g.add_metric([], live.interval_s)
        yield g

        c = CounterMetricFamily("mistwatch_cycles", "Cycles run since start, by outcome "
                                "(ok, partial: some data unknown, failed: collection failed, error: a stage raised).",
                                labels=["outcome"])
        for outcome in ("ok", "partial", "failed", "error"):
            c.add_metric([outcome], live.cycles.get(outcome, 0))
        yield c
        g = GaugeMetricFamily("mistwatch_cycle_duration_seconds", "Duration of the last cycle.")
        if live.last_cycle_seconds is not None:
            g.add_metric([], live.last_cycle_seconds)
        yield g
        g = GaugeMetricFamily("mistwatch_last_cycle_timestamp_seconds", "When the last cycle started, Unix time.")
        if live.last_cycle_at is not None:
            g.add_metric([], live.last_cycle_at.timestamp())
        yield g
        g = GaugeMetricFamily("mistwatch_cycle_stage_duration_seconds", "Duration of each stage of the last cycle.",
                              labels=["stage"])
        for stage, seconds in live.last_stage_seconds.items():
            g.add_metric([stage], seconds)
        yield g
        c = CounterMetricFamily("mistwatch_cycle_stage_seconds", "Time spent in each stage since start.",
                                labels=["stage"])
        for stage, seconds in sorted(live.stage_seconds_total.items()):
            c.add_metric([stage], seconds)
        yield c
        c = CounterMetricFamily("mistwatch_cycle_stages", "Stage runs since start, by stage and outcome (ok, error).",
                                labels=["stage", "outcome"])
        for (stage, outcome), n in sorted(live.stage_runs.items()):
            c.add_metric([stage, outcome], n)
        yield c
        g = GaugeMetricFamily("mistwatch_rule_evaluation_seconds", "Time the last cycle spent evaluating rules.")
        if "rules" in live.last_stage_seconds:
            g.add_metric([], live.last_stage_seconds["rules"])
        yield g

        c = CounterMetricFamily("mistwatch_api_calls", "API calls made by the collectors since start.")
        c.add_metric([], live.api_calls_total)
        yield c
        c = CounterMetricFamily("mistwatch_api_requests", "API requests made by the collectors since start, by "
                                "collector, endpoint (path template without ids) and status (HTTP status code, "
                                "timeout, error: no answer); retries count.",
                                labels=["collector", "endpoint", "status"])
        for (collector, endpoint, status), n in sorted(live.api_requests.items()):
            c.add_metric([collector, endpoint, status], n)
        yield c
        g = GaugeMetricFamily("mistwatch_cycle_api_calls", "API calls made by the collectors in the last cycle.")
        if live.last_cycle_at is not None:
            g.add_metric([], live.last_api_calls)
        yield g

        g = GaugeMetricFamily("mistwatch_collection_age_seconds",
                              "Seconds since each collector last collected without failing outright.",
                              labels=["collector"])
        fallback = last_run.finished_at if last_run is not None else None
        for name in self.collectors():
            when = live.collector_last_ok.get(name, fallback)
            if when is not None:
                g.add_metric([name], max(0.0, (now - when).total_seconds()))
        yield g

        g = GaugeMetricFamily("mistwatch_alerts", "Alerts by state and severity.", labels=["state", "severity"])
        for state in STATES:
            for severity in SEVERITIES:
                g.add_metric([state, severity], alerts.get((state, severity), 0))
        yield g

        g = GaugeMetricFamily("mistwatch_outbox_messages", "Outbox messages by status (pending: waiting to be "
                              "sent or retried; failed: given up).", labels=["status"])
        g.add_metric(["pending"], box["pending"])
        g.add_metric(["failed"], box["failed"])
        yield g
        g = GaugeMetricFamily("mistwatch_outbox_oldest_pending_age_seconds",
                              "Age of the oldest message still waiting in the outbox (0 when none waits).")
        g.add_metric([], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        yield g
        c = CounterMetricFamily("mistwatch_notifications", "Notification delivery attempts since start, by "
                                "notifier and outcome (sent, failed: will retry, permanent: given up).",
                                labels=["notifier", "outcome"])
        for (notifier, outcome), n in sorted(live.notifications.items()):
            c.add_metric([notifier, outcome], n)
        yield c

        c = CounterMetricFamily("mistwatch_webhooks", "Webhook requests since start, by source and outcome "
                                "(accepted, duplicate, rejected, invalid).", labels=["source", "outcome"])
        for (source, outcome), n in sorted(live.webhooks.items()):
            c.add_metric([source, outcome], n)
        yield c
        c = CounterMetricFamily("mistwatch_heartbeats", "Heartbeat pings since start, by outcome (ok, fail: the "
                                "/fail ping after a failed cycle, error: the ping itself failed).",
                                labels=["outcome"])
        for outcome, n in sorted(live.heartbeat.items()):
            c.add_metric([outcome], n)
        yield c

