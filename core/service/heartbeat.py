"""Dead man's switch: ping a healthchecks.io-style URL after each cycle.

After a good cycle the URL itself gets a POST (healthchecks.io takes GET or POST alike); after a
failed one, the URL with ``/fail`` appended. If pings stop coming (the daemon died, the host is
down) the receiving service raises the alarm, which mistwatch itself cannot do. Pings go out from
a background thread with a short timeout, so a slow or dead ping service never delays or fails a
cycle; when a ping is still in flight, a newer one replaces the queued one (only the latest state
matters). The URL is a secret (it is the credential to the check): it is registered for redaction
and never logged.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from mistwatch.secrets import redact, register

log = logging.getLogger("mistwatch.service.heartbeat")

TIMEOUT_S = (3.05, 5.0)  # (connect, read): short, the ping must never hold anything up


def fail_url(url: str) -> str:
    return url.rstrip("/") + "/fail"


class Heartbeat:
    """``ping(ok)`` returns at once; ``close()`` waits briefly for the last ping to go out."""

    def __init__(self, url: str, *, record: Callable[[str], None] | None = None,
                 timeout: tuple[float, float] = TIMEOUT_S) -> None:
        register(url)
        self.url, self.timeout, self.record = url, timeout, record or (lambda outcome: None)
        self._queue: queue.Queue[bool | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="mistwatch-heartbeat", daemon=True)
        self._thread.start()

    def ping(self, ok: bool) -> None:
        while True:
            try:
                self._queue.put_nowait(ok)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # drop the stale one: the newest state wins
                except queue.Empty:
                    pass

    def _run(self) -> None:
        import requests

        session = requests.Session()
        while True:
            ok = self._queue.get()
            if ok is None:
                return
            try:
                response = session.post(self.url if ok else fail_url(self.url), timeout=self.timeout)
                if response.status_code >= 400:
                    raise OSError(f"HTTP {response.status_code}")
                self.record("ok" if ok else "fail")
            except Exception as exc:  # never let the ping service matter to the daemon
                self.record("error")
                log.warning("heartbeat ping failed: %s", redact(f"{type(exc).__name__}: {exc}")[:200])

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
