"""The console summary of a cycle (rich) and its JSON twin for scripts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mistwatch.durations import parse_duration
from mistwatch.model import Entity, Snapshot
from mistwatch.report.insights import console_text, insights_json, print_insights

UNKNOWN = None


@dataclass
class SiteRow:
    key: str
    name: str
    ap: tuple[float | None, float | None]
    switch: tuple[float | None, float | None]
    gateway: tuple[float | None, float | None]
    clients: float | None
    wifi_sle: tuple[str, float] | None  # the worst wifi SLE and its value
    health: float | None = None
    devices_down: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @property
    def problem_weight(self) -> float:
        weight = 10.0 * len(self.devices_down) + 5.0 * len(self.unknown)
        if self.wifi_sle is not None:
            weight += max(0.0, 0.9 - self.wifi_sle[1]) * 100
        if self.health is not None:
            weight += (100 - self.health) / 5
        return weight


def _metric(snapshot: Snapshot, entity: Entity, name: str) -> float | None:
    if snapshot.is_unknown(entity, name):
        return UNKNOWN
    return entity.metrics.get(name)


def site_rows(snapshot: Snapshot, health: Any = None) -> list[SiteRow]:
    """One row per site, the sites with problems first."""
    down: dict[str, list[str]] = {}
    for entity in snapshot.entities:
        if entity.kind == "device" and entity.metrics.get("device.connected") == 0.0:
            down.setdefault(entity.labels.get("site_id", ""), []).append(entity.name)
    rows = []
    for entity in snapshot.entities:
        if entity.kind != "site":
            continue
        wifi = [(name.removeprefix("sle.wifi."), value) for name, value in entity.metrics.items()
                if name.startswith("sle.wifi.") and not snapshot.is_unknown(entity, name)]
        unknown = sorted({p for p in ("site.ap_total", "sle.wifi.coverage", "site.clients")
                          if snapshot.is_unknown(entity, p)})
        score = None
        if health is not None and entity.key in getattr(health, "sites", {}):
            score = health.sites[entity.key].score
        rows.append(SiteRow(
            key=entity.key, name=entity.name,
            ap=(_metric(snapshot, entity, "site.ap_connected"), _metric(snapshot, entity, "site.ap_total")),
            switch=(_metric(snapshot, entity, "site.switch_connected"),
                    _metric(snapshot, entity, "site.switch_total")),
            gateway=(_metric(snapshot, entity, "site.gateway_connected"),
                     _metric(snapshot, entity, "site.gateway_total")),
            clients=_metric(snapshot, entity, "site.clients"),
            wifi_sle=min(wifi, key=lambda item: item[1]) if wifi else None,
            health=score, devices_down=sorted(down.get(entity.labels.get("site_id", ""), [])),
            unknown=unknown))
    rows.sort(key=lambda r: (-r.problem_weight, r.name.lower()))
    return rows


def totals(snapshot: Snapshot) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    clients: float | None = 0.0
    for entity in snapshot.entities:
        if entity.kind == "device":
            per_type = counts.setdefault(entity.labels.get("device_type", "other"), {"total": 0, "connected": 0})
            per_type["total"] += 1
            per_type["connected"] += int(entity.metrics.get("device.connected") == 1.0)
        elif entity.kind == "site" and clients is not None:
            if snapshot.is_unknown(entity, "site.clients"):
                clients = None  # a collector that failed is unknown, never zero clients
            else:
                clients += entity.metrics.get("site.clients", 0.0) or 0.0
    sites = sum(1 for e in snapshot.entities if e.kind == "site")
    return {"sites": sites, "devices": counts, "clients": None if clients is None else int(clients)}


def health_sparkline(past: list[float | None] | None, today: float | None) -> str:
    """A site's daily health scores then today's, as unicode blocks on the fixed 0-100 scale (so a
    flat 100 and a flat 30 look different); days without a score are blanks."""
    from mistwatch.report.sparkline import spark_unicode

    return spark_unicode([*(past or []), today], lo=0, hi=100)


DEVICE_TYPE_PLURALS = {"ap": "APs", "switch": "switches", "gateway": "gateways"}


def devices_up_text(devices: dict[str, dict[str, int]]) -> str:
    """``{"switch": {"connected": 29, "total": 30}}`` -> ``"29/30 switches up"`` (types in name order)."""
    return ", ".join(f"{v['connected']}/{v['total']} {DEVICE_TYPE_PLURALS.get(k, k + 's')} up"
                     for k, v in sorted(devices.items()))


def hourly_projection(api_calls: int, interval_s: float) -> int:
    """API calls per hour at this cycle's cost and the configured interval."""
    return round(api_calls * 3600 / max(interval_s, 1))


def _ratio(pair: tuple[float | None, float | None]) -> str:
    up, total = pair
    if up is None or total is None:
        return "?"
    if total == 0:
        return "-"
    text = f"{int(up)}/{int(total)}"
    return text if up == total else f"[bold red]{text}[/]"


def _sle(value: tuple[str, float] | None) -> str:
    if value is None:
        return "?"
    name, number = value
    colour = "green" if number >= 0.9 else "yellow" if number >= 0.75 else "red"
    return f"[{colour}]{number:.0%}[/] {name.replace('_', ' ')}"


#: Below this many columns (a log file, ``| cat``, an 80-column terminal) tables drop their grid and
#: outer padding so every column keeps its words on one line.
NARROW = 120


def compact_table(console: Any, *, tight: bool = False, **kwargs: Any) -> Any:
    """A rich Table that fits ``console``: boxed when wide, gridless with one-space gutters when
    narrow (the box and padding cost three columns per column, which is what wrapped one word per
    line at 80 columns). ``tight``: one space between columns instead of two."""
    from rich import box
    from rich.table import Table

    if getattr(console, "width", 80) >= NARROW:
        return Table(title_justify="left", **kwargs)
    return Table(title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0 if tight else 1), pad_edge=False,
                 collapse_padding=True, show_edge=False, **kwargs)


def local_time(value: datetime) -> str:
    """A time as people read it in a terminal: the machine's local zone, short, zone named."""
    local = value.astimezone()
    return f"{local:%a %d %b %H:%M} {local.tzname() or ''}".rstrip()


def name_column_width(names: list[str], cap: int = 30) -> int:
    """Room for the longest name (up to ``cap``), so names that share a prefix ("Seattle Branch 1",
    "Seattle Store 1") are never cut to the same few characters."""
    return min(cap, max((len(n) for n in names), default=4))


def print_summary(console: Any, result: Any, *, interval_s: float = 900, max_sites: int = 25,
                  verbose: bool = False, health_past: dict[str, list[float | None]] | None = None) -> None:
    """Per site: APs, switches, gateways up/total, clients, worst wifi SLE, health (with its last 7 days
    as a unicode sparkline when ``health_past``, site key -> daily scores oldest first, is given);
    in monitor mode the devices (those with problems, every one with ``verbose``); totals; errors;
    API budget."""

    snapshot: Snapshot | None = result.snapshot
    if snapshot is None:  # collection failed: the command reports the error on stderr
        return
    rows = site_rows(snapshot, result.health)
    shown = rows if verbose else rows[:max_sites]
    table = compact_table(console, title=f"Sites at {local_time(snapshot.taken_at)}", tight=True)
    width = name_column_width([r.name for r in shown])
    narrow = getattr(console, "width", 80) < NARROW
    table.add_column("Site", no_wrap=True, min_width=width, max_width=max(width, 30), overflow="ellipsis")
    for column in (("APs", "Sw", "GW") if narrow else ("APs", "Switches", "Gateways")) + ("Clients",):
        table.add_column(column, justify="right", no_wrap=True)
    # the one column that gives way when names are long: it wraps between words
    table.add_column("Worst Wi-Fi SLE", min_width=12)
    if result.health is not None:
        table.add_column("Health", justify="right", no_wrap=True)
        if health_past is not None:
            table.add_column("7 days", no_wrap=True, min_width=8)
    for row in shown:
        cells = [console_text(row.name), _ratio(row.ap), _ratio(row.switch), _ratio(row.gateway),
                 "?" if row.clients is None else f"{int(row.clients)}", _sle(row.wifi_sle)]
        if result.health is not None:
            cells.append("?" if row.health is None else f"{row.health:.0f}")
            if health_past is not None:
                cells.append(health_sparkline(health_past.get(row.key), row.health))
        table.add_row(*cells)
    if len(rows) > len(shown):
        table.caption = f"{len(rows) - len(shown)} more sites without problems (-v shows all)"
    console.print(table)
    if getattr(result, "mode", None) == "monitor":
        print_devices(console, snapshot, result.health, verbose=verbose)

    t = totals(snapshot)
    device_text = devices_up_text(t["devices"])
    device_text = device_text or ("devices ?" if snapshot.kind_unknown("device") else "no devices")
    console.print(f"[bold]Totals:[/] {t['sites']} sites, {device_text}, "
                  f"{'?' if t['clients'] is None else t['clients']} clients")
    for error in snapshot.errors:
        console.print(f"[yellow]Collector error[/] {console_text(error.collector)} "
                      f"{console_text(error.endpoint, 300)}: {console_text(error.message, 1000)} "
                      "(affected data shown as ?)")
    per_hour = hourly_projection(result.api_calls, interval_s)
    if len(snapshot.api_budget) > 1:
        # several tokens (orgs), each with its own hourly budget: the total is not held against any
        # one of them; each budget line below carries its own check
        console.print(f"[bold]API:[/] {result.api_calls} calls this cycle over {len(snapshot.api_budget)} "
                      f"tokens, each checked against its own budget below ({result.duration_s:.2f} s)")
    else:
        allowed = getattr(result, "api_calls_per_hour_allowed", 0)
        colour = "green" if not allowed or per_hour < allowed * 0.5 else "yellow" if per_hour < allowed else "red"
        of = f" of the {allowed} allowed per token" if allowed else ""
        console.print(f"[bold]API:[/] {result.api_calls} calls this cycle; at a {interval_s / 60:g} min interval "
                      f"[{colour}]{per_hour} calls/hour[/]{of} ({result.duration_s:.2f} s)")
    several = len(snapshot.api_budget) > 1  # with one token the API line above has the check
    for name, budget in sorted(snapshot.api_budget.items()):
        console.print(f"[bold]API budget ({console_text(name)}):[/] "
                      f"{console_text(budget_text(budget, interval_s if several else None), 1000)}")


def budget_check(budget: dict[str, Any], interval_s: float) -> dict[str, Any]:
    """One token's budget held against its own calls: ``calls_per_hour`` at this cycle's calls and
    the interval, and ``within_budget`` (None when the budget or the calls are not known)."""
    calls, limit = budget.get("calls_cycle"), budget.get("hourly_budget")
    if not isinstance(calls, int):
        return {"calls_per_hour": None, "within_budget": None}
    per_hour = hourly_projection(calls, interval_s)
    return {"calls_per_hour": per_hour, "within_budget": per_hour <= limit if isinstance(limit, int) else None}


def budget_text(budget: dict[str, Any], interval_s: float | None = None) -> str:
    """One line on a collector's (or one org's token's) API budget: calls this cycle and clock hour,
    with ``interval_s`` the calls per hour at that interval against this token's budget, the shortest
    interval the org's size allows, what was skipped to save calls, and when a spent budget comes back."""
    parts = [f"{budget.get('calls_cycle', '?')} calls this cycle, {budget.get('calls_hour', '?')} this clock hour"
             + (f" of {budget['hourly_budget']}" if budget.get("hourly_budget") else "")]
    if interval_s is not None:
        check = budget_check(budget, interval_s)
        if check["calls_per_hour"] is not None:
            verdict = {True: "within", False: "over", None: "no known"}[check["within_budget"]]
            parts.append(f"at a {interval_s / 60:g} min interval {check['calls_per_hour']} calls/hour, "
                         f"{verdict} this token's budget")
    fastest = budget.get("min_interval_s")
    if "min_interval_s" in budget:
        parts.append("no interval fits the budget" if fastest is None
                     else f"shortest interval at this size {float(fastest) / 60:g} min")
    if budget.get("skipped"):
        parts.append("skipped to save the budget: " + ", ".join(map(str, budget["skipped"])))
    if budget.get("blocked_until"):
        parts.append(f"budget spent (HTTP 429): no calls until {budget['blocked_until']}")
    return "; ".join(parts)


@dataclass
class DeviceRow:
    site: str
    name: str
    type: str
    state: str  # up | down | ?
    clients: float | None
    problems: list[str]


def device_rows(snapshot: Snapshot, health: Any = None, *, every: bool = False) -> list[DeviceRow]:
    """The devices with a problem (down, state unknown, CPU or memory high, a health below 100), or
    every device with ``every``; by site name, problem devices first within a site, then by name."""
    cpu_from, memory_from = 80.0, 85.0  # where the health score starts to take points off
    rows = []
    for e in snapshot.entities:
        if e.kind != "device":
            continue
        connected = _metric(snapshot, e, "device.connected")
        state = "?" if connected is None else "up" if connected >= 0.5 else "down"
        problems = [] if state == "up" else ["disconnected" if state == "down" else "state unknown"]
        for metric, start, label in (("device.cpu", cpu_from, "CPU"), ("device.memory", memory_from, "memory")):
            value = _metric(snapshot, e, metric)
            if value is not None and value >= start:
                problems.append(f"{label} {value:.0f}%")
        score = getattr(health, "devices", {}).get(e.key) if health is not None else None
        if score is not None and score.score is not None and score.score < 100 and not problems:
            problems.extend(d for _, lost, d in score.components if lost > 0)
        if problems or every:
            rows.append(DeviceRow(site=e.labels.get("site_name", ""), name=e.name,
                                  type=e.labels.get("device_type", ""), state=state,
                                  clients=_metric(snapshot, e, "device.clients"), problems=problems))
    rows.sort(key=lambda r: (r.site.lower(), not r.problems, r.name.lower()))
    return rows


def print_devices(console: Any, snapshot: Snapshot, health: Any = None, *, verbose: bool = False) -> None:
    """`run --mode monitor`: the problem devices of each site (every device with ``verbose``)."""
    from rich.markup import escape

    rows = device_rows(snapshot, health, every=verbose)
    if not rows:
        console.print("[green]Devices: every device is up and well.[/]")
        return
    title = "Devices" if verbose else "Devices with problems (-v shows all)"
    table = compact_table(console, title=title)
    site_width = name_column_width([r.site for r in rows], 24)
    table.add_column("Site", no_wrap=True, min_width=site_width, overflow="ellipsis")
    table.add_column("Device", no_wrap=True, min_width=name_column_width([r.name for r in rows], 24),
                     overflow="ellipsis")
    table.add_column("Type", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Clients", justify="right", no_wrap=True)
    table.add_column("Problem", ratio=1)
    previous = None
    for row in rows:
        state = {"down": "[bold red]down[/]", "?": "[yellow]?[/]"}.get(row.state, "up")
        site = "" if row.site == previous else escape(row.site)  # each site named once
        previous = row.site
        table.add_row(site, escape(row.name), escape(row.type), state,
                      "" if row.clients is None else f"{int(row.clients)}", escape("; ".join(row.problems)))
    console.print(table)


def summary_json(result: Any, interval_s: float | None = None) -> dict[str, Any]:
    """The same facts for scripts (`run --json`). With ``interval_s`` each API budget (one per
    token: per org with ``mist: {orgs: ...}``) carries its own check (see :func:`budget_check`)."""
    out: dict[str, Any] = {
        "mode": result.mode,
        "status": result.status,
        "started_at": result.started_at.isoformat(),
        "duration_s": round(result.duration_s, 3),
        "api_calls": result.api_calls,
        # collector -> endpoint template -> status -> count (also when collection failed)
        "api_requests": getattr(result, "api_requests", {}),
        "errors": list(result.errors),
    }
    snapshot = result.snapshot
    if snapshot is not None:
        out["api_budget"] = {name: {**budget, **(budget_check(budget, interval_s) if interval_s else {})}
                             for name, budget in snapshot.api_budget.items()}
        out["totals"] = totals(snapshot)
        out["sites"] = [
            {"site_key": r.key, "site_name": r.name,
             "ap": {"connected": r.ap[0], "total": r.ap[1]},
             "switch": {"connected": r.switch[0], "total": r.switch[1]},
             "gateway": {"connected": r.gateway[0], "total": r.gateway[1]},
             "clients": r.clients,
             "worst_wifi_sle": None if r.wifi_sle is None else {"name": r.wifi_sle[0], "value": r.wifi_sle[1]},
             "health": r.health, "devices_down": r.devices_down, "unknown": r.unknown}
            for r in site_rows(snapshot, result.health)]
        out["collector_errors"] = [
            {"collector": e.collector, "endpoint": e.endpoint, "message": e.message} for e in snapshot.errors]
    if result.rules is not None:
        out["insights"] = insights_json(result.rules)
    if result.notify is not None:
        out["notifications"] = {
            name: [getattr(n, "title", str(n)) for n in (getattr(result.notify, name, None) or [])]
            for name in ("planned", "sent", "failed", "permanent_failures")}
    if result.report is not None:
        out["report"] = {"json": str(result.report.json), "html": str(result.report.html)}
    return out


def show_result(console: Any, app: Any, result: Any, *, verbose: bool = False) -> None:
    health_past = None
    if result.health is not None:  # a week of stored scores behind today's, for the sparklines
        from mistwatch.report.build import past_values  # the report module is only needed with health

        health_past = past_values(app.store, "site.health", result.started_at)
    print_summary(console, result, interval_s=interval_seconds(app.config), verbose=verbose, health_past=health_past)
    if result.rules is not None:
        print_insights(console, result.rules, now=result.started_at)
    if result.notify is not None:
        print_notify_summary(console, result.notify)
    if result.report is not None:
        console.print(f"[bold]Report:[/] {result.report.html}  (JSON: {result.report.json})")
    if result.digest_sent:
        console.print("[bold]Daily digest sent.[/]")


def print_notify_summary(console: Any, result: Any) -> None:
    """One line of counts, then a red line per permanent failure and a yellow one per warning."""

    if result.dry_run:
        console.print(f"[bold]Notifications (dry run):[/] {len(result.planned)} would be sent, "
                      f"{len(result.suppressed)} suppressed")
        for n in result.planned:
            console.print(f"  would send to {console_text(n.notifier)}: {console_text(n.title, 300)}")
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
            console.print(f"  [green]sent[/] to {console_text(item.notifier)}: {console_text(item.title, 300)}")
    for item in result.permanent_failures:
        console.print(f"  [bold red]FAILED permanently[/] {console_text(item.notifier)}: "
                      f"{console_text(item.title, 300)}: {console_text(item.last_error, 1000)}")
    by_reason: dict[str, list[str]] = {}
    for s in result.suppressed:
        by_reason.setdefault(s.reason, []).append(s.name or s.alert_key)
    for reason, names in list(by_reason.items())[:10]:
        names_text = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        console.print(f"  [dim]suppressed ({console_text(reason, 300)}): {console_text(names_text, 1000)}[/]")
    if len(by_reason) > 10:
        console.print(f"  [dim]... and {len(by_reason) - 10} more reasons[/]")
    for warning in result.warnings:
        console.print(f"  [yellow]warning:[/] {console_text(warning, 1000)}")


def interval_seconds(config: Any) -> float:
    """The configured cycle interval (``daemon.interval``, default 15 min), in seconds."""
    daemon = config.data.get("daemon") or {}
    try:
        return parse_duration(daemon.get("interval", "15m")).total_seconds()
    except ValueError:
        return 900.0


