"""Analytics rule kinds, over the store's hourly roll-ups (``RuleContext.hourly``) and raw samples.

- ``anomaly``: the metric now against the entity's own seasonal baseline: the values at the same
  local weekday and hour in earlier weeks (until five weeks are stored, with the same hour on the
  same kind of day in the last week); while fewer than ``min_weeks`` (3) weeks are stored, a
  plain daily profile: the same hour on earlier days of the same kind (weekday or weekend) in the
  last two weeks. Median and MAD, not mean and standard deviation, so a past outage does not drag
  the baseline. ``deviations:`` (per tier) is how many robust standard deviations count as abnormal,
  ``direction:`` ``below`` (default), ``above`` or ``both``, ``min_change:`` the smallest absolute
  difference that may alert (3 -> 1 clients at night is not an incident), ``min_change_pct:`` the
  smallest difference in percent of the usual value (a busy site's ordinary bad hour), ``min_history:`` how long
  an entity must have history before it may fire (less, or no baseline yet: a note, never an alert;
  default 1d), ``noise_floor:`` the smallest relative spread assumed (0.05: 5 % off the usual is one
  deviation at least, however steady the history). The alert explains itself: ``extra.explanation``
  reads "142, usual for a Tuesday 10:00 is 310 (280-335)". Local time comes from the entity's
  ``timezone`` label (UTC without one). ``widespread: {by: country_code, share: 0.5, min_sites: 5}``:
  when at least that share (and number) of the entities sharing the label are abnormal at once while
  another group is as usual, it is a holiday: no alert per entity, one note; except an entity that
  would alert even against its own quietest weekday at this hour (a shop open on the holiday with an
  outage). No group as usual (an outage everywhere, or an org in one country): every entity alerts.
- ``forecast``: a robust (Theil-Sen) line through the hourly means of the last ``window`` and the
  value now; fires when the line reaches the tier's ``above:``/``below:`` value within ``horizon``
  (or is past it), with the projected time in ``extra.eta``; resolves when it no longer does.
- ``flapping``: an entity whose ``metric`` (default ``device.connected``) changed value at least
  ``changes:`` times within ``window`` (raw samples, so at most the store's ``raw_hours``): one alert
  per flapping entity.

- ``upstream``: when at least ``share`` (default 10 %) and ``min_sites`` (5) of the entities in scope
  sharing the ``by`` label (``org_id``) have the condition of the same one of the ``any_of`` rules at
  once, one alert for the group citing them ("likely upstream"): route it, and inhibit the per-site
  alerts with it in ``inhibit:`` if wanted.

numpy is imported when a rule is evaluated, never when mistwatch starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mistwatch import Result, RuleSpecError, duration_schema
from mistwatch.durations import format_duration
from mistwatch.hookspecs import RuleKind, hookimpl, spec_duration
from mistwatch.model import Entity, severity_rank

if TYPE_CHECKING:  # the evaluator loads with the rules, not when `mistwatch --help` lists plugins
    from mistwatch import RuleContext

Check = Callable[["RuleContext"], Iterator[Result]]

_DURATION = duration_schema()
_HOUR = 3600
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: Weeks of history from which the same weekday and hour alone make a robust enough median.
_FULL_WEEKS = 5
#: MAD * 1.4826 estimates the standard deviation of normally distributed values.
_MAD_SCALE = 1.4826


def _hour_start(at: datetime) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // _HOUR * _HOUR, tz=timezone.utc)


def _num(x: float) -> str:
    """A value for people: 310, 42.5, 0.953."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _zone(name: str | None) -> Any:
    if not name:
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # a label from Mist we cannot trust
        return timezone.utc


@functools.lru_cache(maxsize=1 << 16)
def _local_hour(zone: Any, hour: int) -> tuple[int, int]:
    """(hour of the week 0..167, ordinal of that week's Monday) of a UTC hour start, in ``zone``."""
    t = datetime.fromtimestamp(hour, tz=zone)
    return t.weekday() * 24 + t.hour, t.toordinal() - t.weekday()


def _local_hours(zone: Any, hours: Any) -> tuple[Any, Any]:
    import numpy as np

    pairs = [_local_hour(zone, int(h)) for h in hours]
    return np.array([p[0] for p in pairs], dtype=int), np.array([p[1] for p in pairs], dtype=int)


def _rows_of(rollups: Any, keys: list[str]) -> Any:
    """For each of ``keys``, its row in ``rollups`` (-1: the roll-ups do not hold it)."""
    import numpy as np

    row_of = {key: i for i, key in enumerate(rollups.keys)}
    return np.array([row_of.get(key, -1) for key in keys], dtype=np.intp)


def _matrix(rollups: Any, rows: Any, extra: int = 0) -> Any:
    """The roll-ups' means of the roll-up ``rows`` (from :func:`_rows_of`; -1: none) as a
    (rows x hours + ``extra``) float matrix, NaN where a row has no value for an hour (and in the
    ``extra`` columns). The kinds build it a chunk of rows at a time: at 10,000 sites a matrix of
    every site over a week, or of every device over a day, is ~13 MB more than the roll-ups."""
    import numpy as np

    out = np.full((len(rows), len(rollups.hours) + extra), np.nan)
    if not len(rows) or not rollups.keys:
        return out
    target = np.full(len(rollups.keys), -1, dtype=np.intp)  # roll-up row -> row of ``out`` (-1: not asked)
    asked = rows >= 0
    target[rows[asked]] = np.flatnonzero(asked)
    for i, (ids, means) in enumerate(zip(rollups.rows, rollups.means, strict=True)):
        if len(ids):
            dest = target[np.frombuffer(ids, dtype=np.int32 if ids.itemsize == 4 else np.int64)]
            wanted = dest >= 0
            out[dest[wanted], i] = np.frombuffer(means, dtype=np.float64)[wanted]
    return out


def _unknown(ctx: RuleContext, entity: Entity, metric: str, all_unknown: bool) -> bool:
    return all_unknown or (bool(entity.unknown) and entity.is_unknown(metric))


def _candidates(ctx: RuleContext, metric: str) -> tuple[list[Entity], bool]:
    """The entities in scope with a value now, and whether the metric is unknown for all of them."""
    all_unknown = ctx.count_unknown(metric)
    return [e for e in ctx.entities() if e.metrics.get(metric) is not None], all_unknown


def _inactive(ctx: RuleContext, metric: str, all_unknown: bool, done: set[str]) -> Iterator[Result]:
    """Results for the tracked subjects not decided above: unknown, or inactive."""
    for subject in ctx.tracked_subjects:
        if subject in done:
            continue
        entity = ctx.in_scope(subject)
        if entity is not None:
            yield Result(entity.key, entity.labels, None, value=entity.metrics.get(metric),
                         unknown=_unknown(ctx, entity, metric, all_unknown))
    if ctx.complete:
        for entity in ctx.entities():
            if entity.key not in done and entity.key not in ctx.tracked_subjects:
                yield Result(entity.key, entity.labels, None, value=entity.metrics.get(metric),
                             unknown=_unknown(ctx, entity, metric, all_unknown))


def _tier_values(spec: Mapping[str, Any], key: str, default: float | None) -> list[tuple[str, float]]:
    """(severity, value of ``key``) per tier, highest severity first; checks the more severe tier asks
    for more (or it could never apply)."""
    tiers = []
    for tier in spec["tiers"]:
        value = tier.get(key, default)
        if value is None:
            where = f"tiers.{tier.get('_index', 0)}" if spec.get("_tiers_given") else None
            raise RuleSpecError(f"needs {key}:", key=where)
        tiers.append((tier["severity"], float(value)))
    for i, (severity, value) in enumerate(tiers):
        for higher, higher_value in tiers[:i]:
            if severity_rank(higher) > severity_rank(severity) and higher_value <= value:
                where = f"tiers.{spec['tiers'][i].get('_index', 0)}.{key}" if spec.get("_tiers_given") else key
                raise RuleSpecError(f"tier {severity} ({key} {value:g}) can never apply: {higher} "
                                    f"({key} {higher_value:g}) matches first; give the more severe tier "
                                    f"the larger {key}", key=where)
    return tiers


# --- anomaly -------------------------------------------------------------------------------------------

class _Baseline:
    """Per entity (rows of the candidates): expected value, usual range, robust sigma, basis, history."""

    def __init__(self, n: int) -> None:
        import numpy as np

        self.expected = np.full(n, np.nan)
        self.low = np.full(n, np.nan)
        self.high = np.full(n, np.nan)
        self.sigma = np.full(n, np.nan)
        self.points = np.zeros(n, dtype=int)
        self.seasonal = np.zeros(n, dtype=bool)
        self.history_hours = np.zeros(n)
        #: the median at this local hour on the entity's quietest weekday (its usual day off, if it has one)
        self.quiet = np.full(n, np.nan)
        #: the entity's relative noise (sigma / expected)
        self.relative = np.zeros(n)


#: Rows (entities) of a timezone group whose baselines are computed at once. Every step is per row,
#: and the relative noise works on an (entities x weeks x 168 hours) cube with six temporaries of
#: its size: for 10,000 sites in one timezone and five weeks, ~70 MB each; for 256 rows ~2 MB.
_BASELINE_ROWS = 256


def _baselines(rollups: Any, entities: list[Entity], now: datetime, *, min_weeks: int, daily_days: int,
               noise_floor: float, quiet: bool = False) -> tuple[_Baseline, dict[str, tuple[int, int]]]:
    """Seasonal baselines of ``entities`` from ``rollups``; and per timezone the local (weekday, hour)
    of ``now``. Vectorised per timezone group: 1,000 sites x 35 days is a few numpy calls, not a loop.
    ``quiet``: also the median at this hour on each entity's quietest weekday (for holidays)."""
    import numpy as np

    rows = _rows_of(rollups, [e.key for e in entities])  # entities[i] is roll-up row rows[i]
    hours = np.asarray(rollups.hours, dtype=np.int64)
    out = _Baseline(len(entities))
    local_now: dict[str, tuple[int, int]] = {}
    groups: dict[str, list[int]] = {}
    for i, entity in enumerate(entities):
        groups.setdefault(entity.labels.get("timezone") or "", []).append(i)
    for tz_name, members in groups.items():
        zone = _zone(tz_name)
        here = now.astimezone(zone)
        local_now[tz_name] = (here.weekday(), here.hour)
        present = [i for i in members if rows[i] >= 0]
        if not present or not len(hours):
            continue
        for first in range(0, len(present), _BASELINE_ROWS):
            targets = np.array(present[first:first + _BASELINE_ROWS])
            _fill_baselines(out, targets, _matrix(rollups, rows[targets]), hours, zone, here, min_weeks=min_weeks,
                            daily_days=daily_days, noise_floor=noise_floor, quiet=quiet)
    return out, local_now


def _fill_baselines(out: _Baseline, targets: Any, sub: Any, hours: Any, zone: Any, here: datetime, *,
                    min_weeks: int, daily_days: int, noise_floor: float, quiet: bool) -> None:
    """The baselines of the entities ``targets`` (rows of ``out``), whose hourly means are ``sub``
    (rows x ``hours``), all in ``zone``, where it is ``here`` now."""
    import numpy as np

    now_ts = here.timestamp()
    slot = _local_hours(zone, hours)[0]
    hour_of_day = slot % 24
    have = ~np.isnan(sub)
    first = np.where(have.any(axis=1), have.argmax(axis=1), len(hours))
    out.history_hours[targets] = np.where(first < len(hours),
                                          (now_ts - hours[np.minimum(first, len(hours) - 1)]) / _HOUR, 0)
    target_slot = here.weekday() * 24 + here.hour
    weekly = sub[:, slot == target_slot]
    # the fallback: the same hour on the same kind of day (weekday or weekend) in the last two
    # weeks, so even the first weeks do not take a quiet Saturday for an outage
    weekend = (slot // 24) >= 5
    daily = sub[:, (hour_of_day == here.hour) & (weekend == (here.weekday() >= 5))
                & (hours >= now_ts - daily_days * 86400)]
    weekly_n = (~np.isnan(weekly)).sum(axis=1)
    use_weekly = weekly_n >= min_weeks
    # Three or four weeks make a fragile median: one past outage and one holiday at this weekday
    # and hour and it is off by half. Until five weeks are stored, the same hour on the days of
    # the same kind in the last week (its weekdays, or its weekend) joins them.
    recent = sub[:, (hour_of_day == here.hour) & (weekend == (here.weekday() >= 5))
                 & (hours >= now_ts - 7 * 86400)]
    weekly = np.where((weekly_n < _FULL_WEEKS)[:, None], np.hstack([weekly, recent]),
                      _pad(weekly, weekly.shape[1] + recent.shape[1]))
    chosen = np.where(use_weekly[:, None], _pad(weekly, daily.shape[1]), _pad(daily, weekly.shape[1]))
    n = (~np.isnan(chosen)).sum(axis=1)
    ok = n >= 1
    if not ok.any():
        return
    with np.errstate(all="ignore"), _quiet():
        expected = _nanmedian(chosen, axis=1)
        low, high = _nanquantile(chosen, 0.25), _nanquantile(chosen, 0.75)
        mad = _nanmedian(np.abs(chosen - expected[:, None]), axis=1) * _MAD_SCALE
        relative = np.fmax(_relative_noise(sub, hours, zone), noise_floor)
    # The entity's usual relative noise (over all its busy hours), at least ``noise_floor``, times
    # the expected value. Not the spread of this weekday-hour's own four or five values: one past
    # holiday or outage among them would widen it enough to hide the next outage. Until two weeks
    # are stored (no relative noise yet), that spread is all there is.
    sigma = np.where(relative > noise_floor, relative * np.abs(expected), np.fmax(mad, relative * np.abs(expected)))
    if quiet:  # the same hour on each weekday, the quietest of the seven: what a day off looks like here
        by_day = np.stack([_nanmedian(_pad(sub[:, slot == d * 24 + here.hour], 1), axis=1)
                           for d in range(7)], axis=1)
        with _quiet():
            out.quiet[targets] = np.nanmin(by_day, axis=1)
    out.relative[targets] = relative
    out.expected[targets] = np.where(ok, expected, np.nan)
    out.low[targets], out.high[targets] = low, high
    out.sigma[targets] = sigma
    out.points[targets] = n
    out.seasonal[targets] = use_weekly


def _pad(values: Any, width: int) -> Any:
    """``values`` padded with NaN columns to at least ``width`` columns (to pick between two sets)."""
    import numpy as np

    if values.shape[1] >= width:
        return values
    return np.hstack([values, np.full((values.shape[0], width - values.shape[1]), np.nan)])


class _quiet:
    """Silence numpy's "All-NaN slice" warnings: an entity without values is expected here."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _nanmedian(values: Any, axis: int) -> Any:
    """The median along ``axis`` skipping NaN (NaN where all are). numpy's own nanmedian goes through
    masked arrays for short axes, 100 times slower on the (sites x weeks x hours) cubes here."""
    import numpy as np

    ordered = np.sort(values, axis=axis)  # NaN sort last
    n = (~np.isnan(values)).sum(axis=axis, keepdims=True)
    lo = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0), axis=axis)
    hi = np.take_along_axis(ordered, np.maximum(n // 2, 0), axis=axis)
    with np.errstate(all="ignore"):
        return np.squeeze(np.where(n > 0, (lo + hi) / 2, np.nan), axis=axis)


def _nanquantile(values: Any, q: float) -> Any:
    """Per row, the ``q`` quantile (linear interpolation) skipping NaN; NaN where a row has none.
    numpy's nanquantile loops over the rows in Python."""
    import numpy as np

    ordered = np.sort(values, axis=1)
    n = (~np.isnan(values)).sum(axis=1)
    position = np.maximum(n - 1, 0) * q
    lo = np.floor(position).astype(int)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    rows = np.arange(values.shape[0])
    if values.shape[1] == 0:
        return np.full(values.shape[0], np.nan)
    a, b = ordered[rows, lo], ordered[rows, hi]
    with np.errstate(all="ignore"):
        return np.where(n > 0, a + (b - a) * (position - lo), np.nan)


def _median_variance() -> Any:
    """The variance of the median of k normal values, in units of one value's (k = 0..8): 1, 1/2 (a
    mean of two), then about pi / 2k."""
    import numpy as np

    return np.array([np.inf, 1.0, 0.5, 0.449, 0.343, 0.287, 0.236, 0.207, 0.181])


def _relative_noise(sub: Any, hours: Any, zone: Any) -> Any:
    """Per entity, a robust relative sigma: the median relative distance of an hour's value from the
    median of the same weekday and hour in the *other* weeks (leave-one-out, so a value is never
    compared with a median it is part of, which would understate the spread), over the busy hours
    (that median at least 60 % of the entity's typical level, where the relative noise is what it is
    at the levels alerts are about), times 1.4826. Median over all
    busy hours of five weeks, so a past outage or holiday barely moves it, where the spread of one
    weekday-hour's four or five values would. On an (entities x weeks x 168 hours) cube."""
    import numpy as np

    slot, monday = _local_hours(zone, hours)
    week = (monday - monday.min()) // 7
    weeks = int(week.max()) + 1
    cube = np.full((sub.shape[0], weeks, 168), np.nan)
    cube[:, week, slot] = sub
    if weeks < 2:
        return np.zeros(sub.shape[0])
    others = np.stack([_nanmedian(np.delete(cube, w, axis=1), axis=1) for w in range(weeks)], axis=1)
    # A value's distance from the others' median carries the noise of that median too (with two or
    # three other weeks, half as much again as the value's own): take it out, or small histories
    # overstate the noise by a fifth and hide the drops that matter.
    have = ~np.isnan(cube)
    k = have.sum(axis=1, keepdims=True) - have  # per cell, how many other weeks hold a value
    variances = _median_variance()
    median_var = variances[np.minimum(k, len(variances) - 1)]
    with np.errstate(all="ignore"), _quiet():
        level = _nanquantile(sub, 0.9)[:, None, None]
        busy = (others >= 0.6 * level) & (others > 0)
        rel = np.where(busy, np.abs(cube - others) / np.where(others > 0, others, 1) / np.sqrt(1 + median_var),
                       np.nan)
    return np.nan_to_num(_nanmedian(rel.reshape(rel.shape[0], -1), axis=1) * _MAD_SCALE, nan=0.0)


def _calm_widespread(ctx: RuleContext, results: list[Result], evaluated: Mapping[str, int],
                     off: Mapping[str, int], witnesses: Mapping[str, int], witnesses_off: Mapping[str, int],
                     by: str, share: float, min_sites: int, closed_anyway: Collection[str] = ()) -> None:
    """When a large share of a peer group (the sites of one country, say) is off its usual at once
    while another group (a witness, with at least ``min_sites`` peers) is as usual, it is the calendar
    (a public holiday, in one country or several): their results become inactive and one note says
    so, instead of dozens of alerts. With no group as usual (a RADIUS or cloud outage everywhere, or
    an org in one country) nothing is calmed: an outage must alert, the upstream kind can group it.
    ``off`` counts per group the entities at least half the lowest tier's deviations off in the
    rule's direction, min_change or not, so a holiday evening, when only the big sites would alert,
    is still seen as one; ``evaluated`` the entities whose usual value could alert at all. A group is
    as usual when fewer than ``share`` of its ``witnesses`` (entities that would show a drop to zero
    as off, however small) are off. ``closed_anyway``: entities abnormal even against their own
    quietest weekday at this hour (a shop that opens on the holiday and has an outage): a holiday does
    not explain them, they alert."""
    abnormal: dict[str, list[Result]] = {}
    for result in results:
        if result.severity is not None:
            abnormal.setdefault(result.labels.get(by, ""), []).append(result)
    as_usual = {group for group, total in witnesses.items()
                if total >= min_sites and witnesses_off.get(group, 0) / total < share}
    for group, found in sorted(abnormal.items()):
        total, peers_off = evaluated.get(group, 0), off.get(group, 0)
        witness = bool(as_usual - {group})
        if peers_off >= min_sites and total and peers_off / total >= share and witness:
            for result in found:
                if result.key in closed_anyway:
                    continue
                result.severity = None
                result.extra = {**result.extra, "widespread": f"{peers_off} of {total} with {by}={group}"}
            ctx.note(f"{peers_off} of {total} {ctx.rule.scope}(s) with {by}={group or '(none)'} are off their "
                     f"usual {ctx.rule.spec.get('metric')} at once while others are as usual: a holiday or a "
                     "local closure, not alerted per site", "info")


def _below_day_off(value: float, quiet: float, relative: float, min_change: float, min_change_pct: float,
                   deviations: float) -> bool:
    """Whether ``value`` would alert even against the entity's quietest weekday at this hour
    (``quiet``): then a holiday, which makes a site look like its day off, does not explain it."""
    import math

    if math.isnan(quiet) or quiet <= 0:
        return False
    drop = quiet - value
    sigma = max(relative, 1e-9) * quiet
    return drop >= min_change and drop >= min_change_pct / 100 * quiet and drop / sigma >= deviations


def compile_anomaly(spec: Mapping[str, Any]) -> Check:
    import math

    metric = spec["metric"]
    direction = spec.get("direction", "below")
    tiers = _tier_values(spec, "deviations", 4.0)
    if any(value <= 0 for _, value in tiers):
        raise RuleSpecError("deviations must be positive", key="deviations")
    min_change = float(spec.get("min_change", 0))
    min_change_pct = float(spec.get("min_change_pct", 0))
    history = spec_duration(spec, "history", "35d")
    min_history = spec_duration(spec, "min_history", "1d")
    noise_floor = float(spec.get("noise_floor", 0.0))
    assert history is not None and min_history is not None
    if min_history > history:
        raise RuleSpecError(f"min_history ({format_duration(min_history)}) is longer than the history "
                            f"read ({format_duration(history)})", key="min_history")
    min_weeks = int(spec.get("min_weeks", 3))
    recover = spec.get("recover_when") if isinstance(spec.get("recover_when"), Mapping) else {}
    recover_at = float(recover["deviations"]) if "deviations" in recover else None
    sign = {"below": -1, "above": 1, "both": 0}[direction]
    widespread = spec.get("widespread") or {}
    widespread_by = widespread.get("by")
    widespread_share = float(widespread.get("share", 0.5))
    widespread_min = int(widespread.get("min_sites", 5))

    def check(ctx: RuleContext) -> Iterator[Result]:
        candidates, all_unknown = _candidates(ctx, metric)
        done: set[str] = set()
        if all_unknown:
            yield from _inactive(ctx, metric, all_unknown, done)
            return
        candidates = [e for e in candidates if not _unknown(ctx, e, metric, False)]
        end = _hour_start(ctx.now)
        rollups = ctx.hourly(metric, end - history, end, stats=("means",))
        if not rollups.hours or ctx.now.timestamp() - rollups.hours[0] < min_history.total_seconds():
            # less history in the window than min_history (a new store): nobody has a baseline, and
            # saying so needs no numpy (~13 MB a process keeps once imported)
            if candidates:
                short_note(ctx, len(candidates))
            yield from _inactive(ctx, metric, all_unknown, done)
            return
        base, local_now = _baselines(rollups, candidates, ctx.now, min_weeks=min_weeks, daily_days=14,
                                      noise_floor=noise_floor, quiet=bool(widespread_by) and sign < 0)
        short = 0
        results: list[Result] = []
        evaluated: dict[str, int] = {}  # peer group -> entities with a baseline
        off: dict[str, int] = {}  # peer group -> entities well off their usual (see _calm_widespread)
        witnesses: dict[str, int] = {}
        witnesses_off: dict[str, int] = {}
        closed_anyway: set[str] = set()
        for i, entity in enumerate(candidates):
            value = float(entity.metrics[metric])
            expected, sigma = float(base.expected[i]), float(base.sigma[i])
            if base.history_hours[i] < min_history.total_seconds() / _HOUR or math.isnan(expected):
                short += 1
                continue
            done.add(entity.key)
            # peers count only where a drop could alert at all (usual >= min_change): at a holiday's
            # edges most small sites cannot, and would hide that every big one is quiet
            peer = bool(widespread_by) and (abs(expected) >= min_change or sign > 0)
            group = entity.labels.get(widespread_by, "") if widespread_by else ""
            if peer:
                evaluated[group] = evaluated.get(group, 0) + 1
            diff = value - expected
            z = diff / sigma if sigma > 0 else (math.copysign(math.inf, diff) if diff else 0.0)
            directed = abs(z) if sign == 0 else z * sign
            if peer and directed >= tiers[-1][1] / 2:
                off[group] = off.get(group, 0) + 1
            # a witness that its group is as usual: any entity that would show as off if it dropped to
            # zero, small or not (at night, small sites are what there is to see an outage with)
            if widespread_by and (sign >= 0 or expected >= tiers[-1][1] / 2 * sigma > 0):
                witnesses[group] = witnesses.get(group, 0) + 1
                if directed >= tiers[-1][1] / 2:
                    witnesses_off[group] = witnesses_off.get(group, 0) + 1
            weekday, hour = local_now[entity.labels.get("timezone") or ""]
            when = f"a {_DAYS[weekday]} {hour:02d}:00" if base.seasonal[i] else f"{hour:02d}:00"
            usual = f"{_num(expected)} ({_num(float(base.low[i]))}–{_num(float(base.high[i]))})"
            extra = {"usual": expected, "usual_low": float(base.low[i]), "usual_high": float(base.high[i]),
                     "deviations": round(z, 2), "basis": "weekly" if base.seasonal[i] else "daily",
                     "when": when, "usual_text": usual,
                     "explanation": f"{_num(value)}, usual for {when} is {usual}"}
            severity = None
            bound = None
            if abs(diff) >= min_change and diff != 0 and abs(diff) >= min_change_pct / 100 * abs(expected):
                for tier_severity, k in tiers:  # highest severity first
                    if directed >= k:
                        severity, bound = tier_severity, expected + (k * sigma if diff > 0 else -k * sigma)
                        break
            if severity is not None and widespread_by and sign < 0 and _below_day_off(
                    value, float(base.quiet[i]), float(base.relative[i]), min_change, min_change_pct, tiers[-1][1]):
                closed_anyway.add(entity.key)
            if severity is None and not ctx.wants(entity.key):
                continue
            recovered = None
            if severity is None and recover_at is not None:
                recovered = directed < recover_at
            results.append(Result(entity.key, entity.labels, severity, value=value, baseline=expected,
                                  threshold=bound if bound is not None else
                                  expected + (sign or -1) * tiers[-1][1] * sigma,
                                  score=z, metrics=entity.metrics, recovered=recovered, extra=extra))
        if widespread_by:
            _calm_widespread(ctx, results, evaluated, off, witnesses, witnesses_off, widespread_by,
                             widespread_share, widespread_min, closed_anyway)
        yield from results
        if short:
            short_note(ctx, short)
        yield from _inactive(ctx, metric, all_unknown, done)

    def short_note(ctx: RuleContext, short: int) -> None:
        ctx.note(f"{short} {ctx.rule.scope}(s) without a baseline for {metric} yet (less than "
                 f"{format_duration(min_history)} of history, or none at this hour on this kind of day): "
                 "not evaluated", "insufficient_history")

    return check


ANOMALY = RuleKind(
    name="anomaly",
    compile=compile_anomaly,
    description="the metric against the entity's own weekday-and-hour baseline (median/MAD)",
    condition_keys=("deviations",),
    default_scope="site",
    schema={"required": ["metric"], "properties": {
        "metric": {"type": "string", "minLength": 1},
        "deviations": {"type": "number", "exclusiveMinimum": 0},
        "direction": {"enum": ["below", "above", "both"]},
        "min_change": {"type": "number", "minimum": 0},
        "min_change_pct": {"type": "number", "minimum": 0},
        "min_history": _DURATION,
        "history": _DURATION,
        "min_weeks": {"type": "integer", "minimum": 1, "maximum": 8},
        "noise_floor": {"type": "number", "minimum": 0, "maximum": 1},
        "widespread": {"type": "object", "additionalProperties": False, "required": ["by"], "properties": {
            "by": {"type": "string", "minLength": 1}, "share": {"type": "number", "exclusiveMinimum": 0,
                                                                "maximum": 1},
            "min_sites": {"type": "integer", "minimum": 2}}}}},
)


# --- forecast ------------------------------------------------------------------------------------------

#: Theil-Sen over n points costs n^2/2 slopes; the window is averaged down to at most this many.
_MAX_POINTS = 48


#: Rows of the pairwise-slope matrix built at once: it is rows x 1,176 pairs (49 points) of float64,
#: and at 6,000 devices (1,000 sites) a matrix of all rows was ~56 MB, twice over while divided, and
#: ten times that at 10,000 sites. Row by row the medians are the same; this many rows is ~5 MB.
_THEIL_SEN_ROWS = 512


def _theil_sen(times: Any, values: Any) -> tuple[Any, Any]:
    """Per row, the median of pairwise slopes and the median intercept; NaN values are skipped."""
    import numpy as np

    i, j = np.triu_indices(values.shape[1], k=1)
    dt = times[j] - times[i]
    slopes = np.empty(values.shape[0])
    intercepts = np.empty(values.shape[0])
    with np.errstate(all="ignore"), _quiet():
        for start in range(0, values.shape[0], _THEIL_SEN_ROWS):
            rows = values[start:start + _THEIL_SEN_ROWS]
            pairs = rows[:, j] - rows[:, i]
            pairs /= dt
            part = slopes[start:start + _THEIL_SEN_ROWS] = _nanmedian(pairs, axis=1)
            del pairs
            intercepts[start:start + _THEIL_SEN_ROWS] = _nanmedian(rows - part[:, None] * times[None, :], axis=1)
    return slopes, intercepts


#: Candidates whose trends are computed at once (a (rows x hours) matrix each; at 60,000 devices a
#: matrix of all was ~12 MB on top of the roll-ups).
_FORECAST_ROWS = 4096


def _trend(values: Any, times: Any, current: Any) -> tuple[Any, Any, Any]:
    """Per row of ``values`` (hourly means at ``times``, hours before now, and a last column to take
    the value now ``current``): the points it has, and the Theil-Sen slope and level now."""
    import numpy as np

    hours = len(times)
    counts = (~np.isnan(values[:, :hours])).sum(axis=1) + 1
    if hours > _MAX_POINTS:  # average consecutive hours down to _MAX_POINTS points
        edges = np.linspace(0, hours, _MAX_POINTS + 1).astype(int)
        with _quiet():
            values = np.stack([np.nanmean(values[:, a:b], axis=1) for a, b in pairwise(edges)] + [current], axis=1)
        times = np.array([times[a:b].mean() for a, b in pairwise(edges)])
    else:
        values[:, hours] = current
    slopes, intercepts = _theil_sen(np.append(times, 0.0), values)
    return counts, slopes, intercepts


def compile_forecast(spec: Mapping[str, Any]) -> Check:
    import math

    metric = spec["metric"]
    window = spec_duration(spec, "window", "24h")
    horizon = spec_duration(spec, "horizon", None)
    assert window is not None and horizon is not None
    if not timedelta(hours=6) <= window <= timedelta(days=14):
        raise RuleSpecError("window must be between 6h and 14d", key="window")
    min_samples = int(spec.get("min_samples", 6))
    tiers = []
    for tier in spec["tiers"]:
        keys = [k for k in ("above", "below") if k in tier]
        if len(keys) != 1:
            where = f"tiers.{tier.get('_index', 0)}" if spec.get("_tiers_given") else "above"
            raise RuleSpecError("needs one of above or below (the value the projection must reach)", key=where)
        tiers.append((tier["severity"], keys[0], float(tier[keys[0]])))

    def reaches(level: float, slope: float, key: str, limit: float) -> float | None:
        """Hours from now until the line reaches ``limit`` (0: already past); None: not within reach."""
        past = level >= limit if key == "above" else level <= limit
        if past:
            return 0.0
        toward = slope > 0 if key == "above" else slope < 0
        if not toward:
            return None
        return (limit - level) / slope

    def check(ctx: RuleContext) -> Iterator[Result]:
        candidates, all_unknown = _candidates(ctx, metric)
        done: set[str] = set()
        if all_unknown:
            yield from _inactive(ctx, metric, all_unknown, done)
            return
        candidates = [e for e in candidates if not _unknown(ctx, e, metric, False)]
        end = _hour_start(ctx.now)
        rollups = ctx.hourly(metric, ctx.now - window, end, stats=("means",))
        if len(rollups.hours) + 1 < min_samples:  # too few hours in the window (a new store) for anyone
            # to have min_samples points with the value now; said without numpy (~13 MB once imported)
            if candidates:
                short_note(ctx, len(candidates))
            yield from _inactive(ctx, metric, all_unknown, done)
            return
        import numpy as np

        now_h = ctx.now.timestamp() / _HOUR
        times = (np.asarray(rollups.hours, dtype=float) + _HOUR / 2) / _HOUR - now_h  # hours, now = 0
        rows = _rows_of(rollups, [e.key for e in candidates])
        current = np.array([float(e.metrics[metric]) for e in candidates])
        counts = np.empty(len(candidates), dtype=int)
        slopes, intercepts = np.empty(len(candidates)), np.empty(len(candidates))
        for first in range(0, len(candidates), _FORECAST_ROWS):
            part = slice(first, first + _FORECAST_ROWS)
            counts[part], slopes[part], intercepts[part] = _trend(_matrix(rollups, rows[part], extra=1), times,
                                                                   current[part])
        short = 0
        for i, entity in enumerate(candidates):
            slope, level = float(slopes[i]), float(intercepts[i])  # the line's value now (t = 0)
            if counts[i] < min_samples or math.isnan(slope):
                short += 1
                continue
            done.add(entity.key)
            value = float(current[i])
            found = None
            for severity, key, limit in tiers:
                eta = reaches(level, slope, key, limit)
                if eta is not None and eta <= horizon.total_seconds() / _HOUR:
                    found = (severity, limit, eta)
                    break
            if found is None and not ctx.wants(entity.key):
                continue
            extra: dict[str, Any] = {"rate": f"{slope:+.3g}/h", "slope_per_hour": slope, "level": level,
                                     "window": format_duration(window), "horizon": format_duration(horizon)}
            if found is not None:
                severity, limit, eta = found
                at = ctx.now + timedelta(hours=eta)
                extra.update(eta=at.isoformat(), eta_hours=round(eta, 1),
                             eta_text="now" if eta == 0 else f"in {format_duration(timedelta(hours=round(eta, 2)))}",
                             explanation=(f"{_num(value)}, trend {slope:+.3g}/h over {format_duration(window)}: "
                                          + (f"past {_num(limit)} now" if eta == 0 else
                                             f"projected to reach {_num(limit)} at {at:%Y-%m-%d %H:%M} UTC "
                                             f"(in {format_duration(timedelta(hours=round(eta, 2)))})")))
                yield Result(entity.key, entity.labels, severity, value=value, threshold=limit, baseline=level,
                             score=slope, metrics=entity.metrics, extra=extra)
            else:
                yield Result(entity.key, entity.labels, None, value=value, threshold=tiers[-1][2],
                             baseline=level, score=slope, metrics=entity.metrics, extra=extra)
        if short:
            short_note(ctx, short)
        yield from _inactive(ctx, metric, all_unknown, done)

    def short_note(ctx: RuleContext, short: int) -> None:
        ctx.note(f"{short} {ctx.rule.scope}(s) with fewer than {min_samples} hourly values of {metric} in "
                 f"the last {format_duration(window)}: not evaluated", "insufficient_history")

    return check


FORECAST = RuleKind(
    name="forecast",
    compile=compile_forecast,
    description="a robust trend (Theil-Sen) of the metric reaching above/below a value within a horizon",
    condition_keys=("above", "below"),
    default_scope="device",
    schema={"required": ["metric", "horizon"], "properties": {
        "metric": {"type": "string", "minLength": 1},
        "above": {"type": "number"}, "below": {"type": "number"},
        "window": _DURATION, "horizon": _DURATION,
        "min_samples": {"type": "integer", "minimum": 2}}},
)


# --- flapping ------------------------------------------------------------------------------------------

def compile_flapping(spec: Mapping[str, Any]) -> Check:
    metric = spec.get("metric", "device.connected")
    window = spec_duration(spec, "window", "1h")
    assert window is not None
    tiers = _tier_values(spec, "changes", 4)
    if any(value < 2 for _, value in tiers):
        raise RuleSpecError("changes must be at least 2 (one change is a state change, not flapping)",
                            key="changes")

    def check(ctx: RuleContext) -> Iterator[Result]:
        all_unknown = ctx.count_unknown(metric)
        done: set[str] = set()
        if not all_unknown:
            counts = ctx.state_changes(metric, ctx.now - window, ctx.now)
            for entity in ctx.entities():
                changes = counts.get(entity.key, 0)
                severity = next((sev for sev, n in tiers if changes >= n), None)
                if severity is None and not ctx.wants(entity.key):
                    continue
                done.add(entity.key)
                yield Result(entity.key, entity.labels, severity, value=float(changes), threshold=tiers[-1][1],
                             metrics=entity.metrics,
                             extra={"changes": changes, "window": format_duration(window)})
        yield from _inactive(ctx, metric, all_unknown, done)

    return check


FLAPPING = RuleKind(
    name="flapping",
    compile=compile_flapping,
    description="an entity whose state (e.g. device.connected) changed at least N times within a window",
    condition_keys=("changes",),
    default_scope="device",
    schema={"properties": {
        "metric": {"type": "string", "minLength": 1},
        "changes": {"type": "integer", "minimum": 2},
        "window": _DURATION}},
)

# --- upstream ------------------------------------------------------------------------------------------

def _upstream_refs(spec: Mapping[str, Any]) -> list[str]:
    value = spec.get("any_of") or []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def compile_upstream(spec: Mapping[str, Any]) -> Check:
    rules = _upstream_refs(spec)
    if not rules:
        raise RuleSpecError("needs any_of: the rules whose alerts count", key="any_of")
    if spec["id"] in rules:
        raise RuleSpecError("an upstream rule cannot count itself", key="any_of")
    by = str(spec.get("by", "org_id"))
    share = float(spec.get("share", 0.1))
    least = int(spec.get("min_sites", 5))
    severity = spec["tiers"][0]["severity"]

    def check(ctx: RuleContext) -> Iterator[Result]:
        totals: dict[str, int] = {}
        for entity in ctx.entities():
            group = entity.labels.get(by)
            if group is not None:
                totals[group] = totals.get(group, 0) + 1
        emitted = set()
        for group in sorted(totals):
            best: tuple[int, str, list[Any]] | None = None
            for rule_id in rules:  # "the same way": entities with the same rule's condition now
                found = {f.subject: f for f in ctx.findings(rule_id) if f.labels.get(by) == group}
                if len(found) >= least and len(found) >= share * totals[group] and (
                        best is None or len(found) > best[0]):
                    best = (len(found), rule_id, sorted(found.values(), key=lambda f: f.subject))
            if best is None:
                continue
            count, rule_id, findings = best
            subject = f"{by}={group}"
            emitted.add(subject)
            names = [f.labels.get("site_name") or f.labels.get("device_name") or f.subject for f in findings]
            yield Result(subject, {by: group, **({"org_id": findings[0].labels["org_id"]}
                                                 if by != "org_id" and "org_id" in findings[0].labels else {})},
                         severity, value=float(count), threshold=share * totals[group], identity={by: group},
                         causes=tuple(f.key for f in findings),
                         extra={"rule": rule_id, "count": count, "total": totals[group],
                                "share": round(100 * count / totals[group]), "names": names[:20],
                                "more": max(0, len(names) - 20)})
        for subject, alert in ctx.tracked().items():
            if subject not in emitted:
                unknown = any(ctx.rule_unknown(r) for r in rules)
                yield Result(subject, alert.labels, None, value=0.0, identity={by: alert.labels.get(by, "")},
                             unknown=unknown)

    return check


UPSTREAM = RuleKind(
    name="upstream",
    compile=compile_upstream,
    description="many entities of a group with the same rule's condition at once: one 'likely upstream' alert",
    references=_upstream_refs,
    default_scope="site",
    schema={"required": ["any_of"], "properties": {
        "any_of": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "by": {"type": "string", "minLength": 1},
        "share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "min_sites": {"type": "integer", "minimum": 1}}},
)

ANALYTICS_KINDS = (ANOMALY, FORECAST, FLAPPING, UPSTREAM)


@hookimpl
def mistwatch_rule_kinds() -> Iterator[RuleKind]:
    yield from ANALYTICS_KINDS


def analytics_kinds() -> dict[str, RuleKind]:
    """The analytics kinds by name, without a plugin host (tests, tools)."""
    return {k.name: k for k in ANALYTICS_KINDS}
