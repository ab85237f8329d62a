"""The daemon loop: cycles on a fixed schedule, the digest at its time, reload and stop on request.

Schedule: slot k starts at ``start + k * interval`` on the *monotonic* clock, so a step of the wall
clock (NTP, an operator, a VM restored from a snapshot) neither stops cycles for the hour the clock
went back nor runs a burst of them when it jumps ahead; cycles still get the wall-clock time.
After a cycle the next slot is the first one not yet begun, so a slow cycle skips the slots it
overran (and says so) instead of piling cycles up or drifting the schedule. Between cycles the loop
waits on a ``threading.Event`` with a timeout: no polling, no CPU. A stop request (SIGINT, SIGTERM,
SIGBREAK) lets the current cycle finish, then the loop returns; a reload request (SIGHUP) is handled
between cycles and a failed reload keeps the old configuration. The clock, the cycle, the reload
and the digest are all injected, so the schedule is tested with a fake clock and no processes.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from mistwatch.durations import format_duration
from mistwatch.secrets import redact

log = logging.getLogger("mistwatch.service.daemon")

#: Longest single wait: the loop re-reads the clocks at least this often, so a wall-clock jump
#: (suspend, NTP step) delays the digest by at most this much. One wake-up a minute costs nothing.
#: On Windows a signal cannot interrupt a wait (CPython runs handlers only when it returns), so
#: waits there are short enough for Ctrl+C / Ctrl+Break to take effect within a second.
MAX_WAIT_S = 1.0 if sys.platform == "win32" else 60.0
#: Least time between two sends of held messages: a message due but claimed by another process
#: must not make the loop spin.
MIN_FLUSH_GAP = timedelta(seconds=10)
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGBREAK")  # SIGBREAK exists on Windows only
RELOAD_SIGNALS = ("SIGHUP",)  # POSIX only


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (the schedule runs on it). A clock without this
        method is scheduled on ``now()``."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Block until ``event`` is set or ``seconds`` pass; True if the event was set."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class DigestHook(Protocol):
    def next_due(self, now: datetime) -> datetime | None: ...

    def send(self, now: datetime) -> Any: ...


class Job(Protocol):
    """Work between cycles (webhook evaluations): run whenever due, as often as it is due."""

    def next_due(self, now: datetime) -> datetime | None: ...

    def run(self, now: datetime) -> Any: ...


@dataclass
class DaemonStats:
    cycles: int = 0
    failed_cycles: int = 0
    skipped_slots: int = 0
    reloads: int = 0
    failed_reloads: int = 0
    digests: int = 0
    slots: list[datetime] = field(default_factory=list)  # start of each cycle run, for tests and logs
    flushes: int = 0  # sends of held notifications between cycles


class Daemon:
    """``Daemon(cycle, interval).run()`` until ``request_stop()``.

    ``cycle(now)`` runs one cycle; an exception is logged and the schedule goes on. ``reload()``
    loads the new configuration and swaps it in, or raises (the old one stays); it may return a new
    interval. ``digest`` (optional) says when the digest is next due and sends it. ``flush(now)``
    (optional) sends the notifications due now (held by group_wait, or retries) and returns when
    the next one is due (None: none waiting); it is asked after each cycle and called between
    cycles when that time comes."""

    def __init__(self, cycle: Callable[[datetime], Any], interval: timedelta, *, clock: Clock | None = None,
                 reload: Callable[[], timedelta | None] | None = None, digest: DigestHook | None = None,
                 flush: Callable[[datetime], datetime | None] | None = None,
                 max_wait_s: float = MAX_WAIT_S, jobs: list[Job] | None = None) -> None:
        if interval.total_seconds() <= 0:
            raise ValueError("the interval must be positive")
        self.cycle, self.interval, self.reload, self.digest = cycle, interval, reload, digest
        self.flush = flush
        self.clock: Clock = clock or SystemClock()
        self.max_wait_s = max_wait_s
        self.jobs: list[Job] = list(jobs or [])
        self.stats = DaemonStats()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self.stop_reason = ""

    # requests (safe from signal handlers and other threads) ------------------------------------
    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def wake(self) -> None:
        """Look at the jobs again now (a webhook arrived)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # the loop ---------------------------------------------------------------------------------
    def _mono(self) -> float:
        monotonic = getattr(self.clock, "monotonic", None)
        return monotonic() if callable(monotonic) else self.clock.now().timestamp()

    def run(self, *, max_cycles: int | None = None) -> int:
        """Run until stopped (or ``max_cycles`` cycles ran); returns the exit code, 0."""
        start = self._mono()  # the schedule: monotonic seconds
        k = 0
        digest_tried = False
        ask_flush, flush_at = False, None  # ask after each cycle when held messages are due
        log.info("daemon started: a cycle every %s from %s", format_duration(self.interval),
                 self.clock.now().isoformat(timespec="seconds"))
        while True:
            self._wake.clear()  # before checking the flags, so a request that lands now still wakes us
            if self._stop.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                start, k = self._do_reload(start, k)
                continue
            now, mono = self.clock.now(), self._mono()
            interval_s = self.interval.total_seconds()
            slot = start + k * interval_s
            due = None
            if self.digest is not None and not digest_tried:
                due = self._guard("checking the digest", self.digest.next_due, now)
                if due is not None and due <= now:
                    digest_tried = True  # once per cycle at most, whatever the outcome
                    if self._guard("sending the digest", self.digest.send, now):
                        self.stats.digests += 1
                    continue
            if mono < slot and self.flush is not None and (ask_flush or (flush_at is not None and flush_at <= now)):
                if not ask_flush:
                    self.stats.flushes += 1
                ask_flush = False
                flush_at = self._guard("sending held notifications", self.flush, now)
                if flush_at is not None:
                    flush_at = max(flush_at, now + MIN_FLUSH_GAP)
                continue
            job_due = None
            if mono < slot:
                job_due = self._run_due_jobs(now)
                if job_due is not None and job_due <= now:
                    continue  # a job ran: the clock moved and more may be due
            if mono < slot:
                wait = slot - mono
                for when in (due, flush_at, job_due):
                    if when is not None:
                        wait = min(wait, (when - now).total_seconds())
                self.clock.wait(self._wake, min(self.max_wait_s, wait))
                continue
            self._run_cycle(now)
            digest_tried = False
            ask_flush = True
            if max_cycles is not None and self.stats.cycles >= max_cycles:
                break
            end = self._mono()
            k_next = max(k + 1, math.ceil((end - start) / interval_s))
            skipped = k_next - k - 1
            if skipped:
                self.stats.skipped_slots += skipped
                log.warning("the cycle took %.0f s, longer than the %s interval: skipping %d slot(s), "
                            "next in %s", end - mono, format_duration(self.interval), skipped,
                            format_duration(start + k_next * interval_s - end))
            k = k_next
        log.info("daemon stopped (%s) after %d cycle(s)", self.stop_reason or "done", self.stats.cycles)
        return 0

    def _guard(self, doing: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # the digest must not take the daemon down either
            log.error("%s failed: %s: %s", doing, type(exc).__name__, redact(str(exc)))
            return None

    def _run_due_jobs(self, now: datetime) -> datetime | None:
        """Run the jobs due now; returns ``now`` if one ran, else the earliest time one is due."""
        earliest = None
        for job in self.jobs:
            when = self._guard("checking a job", job.next_due, now)
            if when is None:
                continue
            if when <= now:
                self._guard("running a job", job.run, now)
                return now
            earliest = when if earliest is None else min(earliest, when)
        return earliest

    def _run_cycle(self, now: datetime) -> None:
        self.stats.slots.append(now)
        self.stats.cycles += 1
        try:
            self.cycle(now)
        except Exception as exc:  # the daemon outlives a bad cycle; the next slot tries again
            self.stats.failed_cycles += 1
            log.error("cycle failed: %s: %s", type(exc).__name__, redact(str(exc)))

    def _do_reload(self, start: float, k: int) -> tuple[float, int]:
        if self.reload is None:
            log.info("reload requested: nothing to reload")
            return start, k
        try:
            new_interval = self.reload()
        except Exception as exc:  # a broken new config is reported; the running one stays
            self.stats.failed_reloads += 1
            log.error("reload failed, keeping the previous configuration: %s", redact(str(exc)))
            return start, k
        self.stats.reloads += 1
        log.info("configuration reloaded")
        if new_interval and new_interval != self.interval and new_interval.total_seconds() > 0:
            # re-anchor on the last slot that ran, so the new interval counts from it
            anchor = start + max(0, k - 1) * self.interval.total_seconds()
            self.interval = new_interval
            elapsed = self._mono() - anchor
            log.info("interval is now %s", format_duration(new_interval))
            return anchor, max(1, math.ceil(elapsed / new_interval.total_seconds()))
        return start, k


def install_signal_handlers(daemon: Daemon) -> dict[int, Any]:
    """Stop on SIGINT/SIGTERM/SIGBREAK (a second one exits at once), reload on SIGHUP where it exists.
    Returns the previous handlers, for ``restore_signal_handlers``. Call from the main thread."""
    previous: dict[int, Any] = {}

    def on_stop(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if daemon.stopping:
            log.warning("%s again: exiting without finishing the cycle", name)
            raise SystemExit(1)
        log.info("%s received: finishing the current cycle, then exiting", name)
        daemon.request_stop(name)

    def on_reload(signum: int, _frame: Any) -> None:
        log.info("%s received: reloading configuration and rules", signal.Signals(signum).name)
        daemon.request_reload()

    for names, handler in ((STOP_SIGNALS, on_stop), (RELOAD_SIGNALS, on_reload)):
        for name in names:
            signum = getattr(signal, name, None)
            if signum is not None:
                previous[signum] = signal.signal(signum, handler)
    return previous


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        # None means the old handler was not set from Python: the default is the best we can restore
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)
