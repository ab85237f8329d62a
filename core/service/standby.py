"""Active/standby daemons on one shared (PostgreSQL) store.

Exactly one daemon is active: the one whose store session holds the store's advisory lock
(``Store.try_become_active``). The others are standbys: they write nothing, and try the lock again
every ``poll`` seconds. The lock lives on the active daemon's own store connection, so it is
released by the server the moment that process dies or its connection is lost, and every write of
the active daemon goes through the session that holds it (a daemon cut off from the database cannot
write behind a new active one's back). Before each cycle the active daemon checks it still holds
the lock; if not, it stops (exit 1) rather than risk a second writer.

A daemon killed mid-cycle leaves its transaction rolled back by the server and its run row
``running``: the new active daemon marks such runs failed, and its outbox claims (``FOR UPDATE SKIP
LOCKED``) make sure every pending message is sent once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from mistwatch.errors import MistwatchError
from mistwatch.secrets import redact

log = logging.getLogger("mistwatch.service.standby")


def session_name(role: str) -> str:
    """What ``status`` shows for this daemon's store session (PostgreSQL ``application_name``)."""
    return f"mistwatch daemon {role} pid {os.getpid()} on {socket.gethostname()}"[:63]


def standby_poll(interval_s: float) -> float:
    """How often a standby tries the lock: a tenth of the interval, between 0.2 and 5 seconds, so a
    takeover happens well within one interval."""
    return max(0.2, min(5.0, interval_s / 10))


def wait_until_active(store: Any, poll: float, stopping: Callable[[], bool],
                      reopen: Callable[[], Any] | None = None, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Block until ``store`` holds the active lock; return the store then (``reopen()``'s if the
    connection had to be made again), or None once ``stopping()``."""
    announced = False
    while not stopping():
        try:
            if store.try_become_active():
                return store
            if not announced:
                log.info("standby: another daemon is active on %s; trying every %.1f s", store.where, poll)
                store.describe_session(session_name("standby"))
                announced = True
        except MistwatchError as exc:  # the database restarted or the network dropped: connect again
            log.warning("standby: %s", redact(str(exc)))
            if reopen is not None:
                try:
                    store.close()
                    store = reopen()
                    announced = False
                except MistwatchError as again:
                    log.warning("standby: reconnecting failed: %s", redact(str(again)))
        sleep(poll)
    return None


def took_over(store: Any, started: float | None = None) -> None:
    """Now active: say so in the session name and mark runs a killed predecessor left running."""
    store.describe_session(session_name("active"))
    abandoned = store.abandon_running_runs("interrupted: the daemon running it stopped mid-cycle")
    waited = f" after {time.monotonic() - started:.1f} s as standby" if started is not None else ""
    log.info("active on %s%s%s", store.where, waited,
             f"; marked {abandoned} interrupted run(s) failed" if abandoned else "")
