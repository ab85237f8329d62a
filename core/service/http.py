"""The daemon's optional HTTP face: health, readiness, Prometheus metrics, a small JSON API, the
latest report, and webhook intake.

Two parts. :func:`make_app` is the WSGI application: a function of a :class:`ServiceView` (what the
daemon knows: live counters, a store it may read from HTTP threads, the config), with no server in
it, so it is tested with real requests over loopback through :class:`HttpServer` or any WSGI server.
:class:`HttpServer` runs it under waitress (pure Python, runs on Windows) in a background thread,
bound to loopback unless configured otherwise, and stops gracefully: it stops accepting, lets
requests in flight finish (up to a grace period), then closes.

Limits: request bodies over ``max_body_bytes`` get 413 (waitress refuses them before the app runs);
a connection idle for ``request_timeout`` seconds (a client that stalls mid-request) is closed.
With ``token`` set, every path but ``/healthz`` and the webhook intake (which checks its own HMAC
signature, since Mist cannot send a bearer token) needs ``Authorization: Bearer <token>``.
Every request is logged through the ``mistwatch.service.http`` logger (secrets redacted like all
mistwatch logs); scrapes and probes at debug level, so they do not flood the log.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from mistwatch.errors import ConfigError
from mistwatch.service.live import LiveState

log = logging.getLogger("mistwatch.service.http")

DEFAULT_PORT = 9108
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_TIMEOUT_S = 10
DEFAULT_THREADS = 4
#: Readiness fails when a message has waited this long in the outbox: notifications are not leaving.
DEFAULT_OUTBOX_STUCK = timedelta(hours=1)
QUIET_PATHS = ("/healthz", "/readyz", "/metrics")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
Response = tuple[int, dict[str, str], bytes]


# -- settings --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    request_timeout_s: int = DEFAULT_TIMEOUT_S
    threads: int = DEFAULT_THREADS
    outbox_stuck_after: timedelta = DEFAULT_OUTBOX_STUCK

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str, where: str = "http.listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or a bare ``PORT`` (loopback). Raises ConfigError."""
    text = str(text).strip()
    host, port = "127.0.0.1", text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ConfigError(f"{text!r} is not HOST:PORT (an IPv6 host goes in brackets: [::1]:9108)", key=where)
        host, port = text[1:end], text[end + 2:]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT with a port from 0 to 65535, e.g. 127.0.0.1:9108", key=where)
    return host, int(port)


def http_settings(data: Mapping[str, Any] | None, listen: str | None = None) -> HttpSettings | None:
    """The HTTP settings from the config's ``http:`` section and ``--listen`` (which wins);
    None when neither asks for a listener (the HTTP face is opt-in)."""
    from mistwatch.durations import parse_duration

    data = data or {}
    where = "--listen" if listen else "http.listen"
    listen = listen or data.get("listen")
    if not listen:
        return None
    host, port = parse_listen(listen, where)
    stuck = DEFAULT_OUTBOX_STUCK
    if data.get("outbox_stuck_after") is not None:
        try:
            stuck = parse_duration(data["outbox_stuck_after"])
        except ValueError as exc:
            raise ConfigError(str(exc), key="http.outbox_stuck_after") from None
    return HttpSettings(host=host, port=port, token=data.get("token") or None,
                        max_body_bytes=int(data.get("max_body_bytes", DEFAULT_MAX_BODY)),
                        request_timeout_s=int(data.get("request_timeout", DEFAULT_TIMEOUT_S)),
                        threads=int(data.get("threads", DEFAULT_THREADS)), outbox_stuck_after=stuck)


# -- what the app reads ----------------------------------------------------------------------------

@dataclass
class ServiceView:
    """What the HTTP face may see of the daemon.

    ``config()`` returns the current config (it changes on reload). The store is a connection of
    its own, opened on first use and used by one HTTP thread at a time (a ``Store`` is not
    thread-safe); the daemon keeps writing through its own. ``webhook(source, headers, body)``,
    when set, takes a webhook request and returns ``(status, JSON-able answer)``."""

    config: Callable[[], Any]
    live: LiveState
    settings: HttpSettings = field(default_factory=HttpSettings)
    collectors: Callable[[], list[str]] = list
    webhook: Callable[[str, Mapping[str, str], bytes], tuple[int, dict[str, Any]]] | None = None
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    _store: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _registry: Any = field(default=None, init=False, repr=False)

    def read_store(self, fn: Callable[[Any], Any]) -> Any:
        with self._lock:
            if self._store is None:
                from mistwatch.store.database import Store

                self._store = Store.open(self.config().store_target)
            return fn(self._store)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def metrics(self, accept: str = "") -> tuple[bytes, str]:
        """One scrape, in the format the scraper's Accept header asks for (the library negotiates:
        Prometheus text 0.0.4 by default, OpenMetrics when asked)."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        from mistwatch.service.metrics import StateCollector

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(StateCollector(self.live, self.read_store, self.collectors, self.now))
        encode, content_type = choose_encoder(accept)
        return encode(self._registry), content_type

    def readiness(self) -> tuple[bool, str]:
        """(ready, one-line reason): a good collection within 3 intervals, a writable store, an
        outbox whose oldest waiting message is younger than ``outbox_stuck_after``."""
        from mistwatch.durations import format_duration
        from mistwatch.notify import outbox

        now = self.now()
        interval = self.live.snapshot().interval_s
        last, oldest, path = self.read_store(
            lambda s: (s.last_successful_run(), outbox.oldest_unsent(s), s.path))
        if last is None or last.finished_at is None:
            return False, "no successful collection yet"
        age = (now - last.finished_at).total_seconds()
        if age > 3 * interval:
            return False, (f"last successful collection {format_duration(timedelta(seconds=round(age)))} ago, "
                           f"more than 3 intervals ({format_duration(timedelta(seconds=3 * interval))})")
        if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            return False, "the state store is not writable"
        if oldest is not None and now - oldest > self.settings.outbox_stuck_after:
            waited = format_duration(timedelta(seconds=round((now - oldest).total_seconds())))
            return False, f"the outbox is stuck: a notification has waited {waited}"
        return True, f"last successful collection {format_duration(timedelta(seconds=round(age)))} ago"


# -- the WSGI application --------------------------------------------------------------------------

REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
           415: "Unsupported Media Type", 500: "Internal Server Error", 503: "Service Unavailable"}
ROUTES: dict[str, tuple[str, ...]] = {"/": ("GET", "HEAD"), "/healthz": ("GET", "HEAD"), "/readyz": ("GET", "HEAD"),
                                      "/metrics": ("GET", "HEAD"), "/api/v1/alerts": ("GET", "HEAD"),
                                      "/api/v1/status": ("GET", "HEAD")}
WEBHOOK_PREFIX = "/webhooks/"


def _json(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Response:
    body = (json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


def _authorized(environ: Environ, token: str | None) -> bool:
    if not token:
        return True
    given = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _read_body(environ: Environ, limit: int) -> bytes | Response:
    length_text = environ.get("CONTENT_LENGTH") or ""
    if not length_text:
        return b""
    if not length_text.isdigit():
        return _error(400, "bad Content-Length")
    length = int(length_text)
    if length > limit:
        return _error(413, f"the body is larger than {limit} bytes")
    body = environ["wsgi.input"].read(length)
    if len(body) != length:
        return _error(400, "the body is shorter than its Content-Length")
    return body


def _route(view: ServiceView, environ: Environ) -> Response:
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "/") or "/"
    if path.startswith(WEBHOOK_PREFIX):
        if view.webhook is None:
            return _error(404, "webhooks are not enabled")
        if method != "POST":
            return _error(405, "use POST", {"Allow": "POST"})
        body = _read_body(environ, view.settings.max_body_bytes)
        if isinstance(body, tuple):
            return body
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        status, answer = view.webhook(path[len(WEBHOOK_PREFIX):], headers, body)
        return _json(status, answer)
    allowed = ROUTES.get(path)
    if allowed is None:
        return _error(404, f"no such path: {path[:100]}")
    if method not in allowed:
        return _error(405, f"use {' or '.join(allowed)}", {"Allow": ", ".join(allowed)})
    if path == "/healthz":
        return _json(200, {"status": "ok"})
    if not _authorized(environ, view.settings.token):
        return _error(401, "a bearer token is required (Authorization: Bearer <http.token>)",
                      {"WWW-Authenticate": 'Bearer realm="mistwatch"'})
    if path == "/readyz":
        ready, reason = view.readiness()
        return _json(200 if ready else 503, {"status": "ready" if ready else "not ready", "reason": reason})
    if path == "/metrics":
        body, content_type = view.metrics(environ.get("HTTP_ACCEPT", ""))
        return 200, {"Content-Type": content_type}, body
    if path == "/api/v1/alerts":
        return _alerts(view, environ)
    if path == "/api/v1/status":
        from mistwatch.service.status import status_data

        config = view.config()
        return _json(200, view.read_store(lambda s: status_data(config, s, view.now())))
    return _report(view)


def _alerts(view: ServiceView, environ: Environ) -> Response:
    from mistwatch.service.status import alert_filters, alert_json, query_alerts

    try:
        params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=50)
        filters = alert_filters(params)
    except ValueError as exc:
        return _error(400, str(exc)[:200])
    alerts = view.read_store(lambda s: list(s.load_alerts().values()))
    chosen = query_alerts(alerts, **filters)
    return _json(200, {"alerts": [alert_json(a) for a in chosen], "count": len(chosen)})


def _report(view: ServiceView) -> Response:
    path: Path = view.config().reports_dir / "latest.html"
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        return _error(404, "no report yet: the first cycle writes it")
    # the report is self-contained (inline CSS and SVG, no script): forbid everything else
    return 200, {"Content-Type": "text/html; charset=utf-8",
                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                 "X-Content-Type-Options": "nosniff"}, body


def make_app(view: ServiceView) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """The WSGI application over ``view``. Every answer is complete and small, so it is built
    before ``start_response``; an exception becomes a 500 with a one-line JSON reason."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        t0 = time.perf_counter()
        try:
            status, headers, body = _route(view, environ)
        except Exception as exc:  # a broken store must not take the listener down: answer and log
            from mistwatch.secrets import redact

            log.error("%s %s failed: %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                      type(exc).__name__, redact(str(exc)))
            status, headers, body = _error(500, f"internal error: {type(exc).__name__}")
        if environ.get("REQUEST_METHOD") == "HEAD":
            headers = {**headers, "Content-Length": str(len(body))}
            body = b""
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("Cache-Control", "no-store")
        start_response(f"{status} {REASONS.get(status, 'Unknown')}", list(headers.items()))
        path = environ.get("PATH_INFO", "")
        level = logging.DEBUG if path in QUIET_PATHS and status < 400 else logging.INFO
        log.log(level, "%s %s %s %d %d bytes %.1f ms", environ.get("REMOTE_ADDR", "-"),
                environ.get("REQUEST_METHOD"), path[:200], status, len(body), (time.perf_counter() - t0) * 1000)
        return [body]

    return app


# -- the server ------------------------------------------------------------------------------------

class HttpServer:
    """A waitress server for ``app`` in a background thread: ``start()``, then ``stop()``.

    ``stop(grace)`` closes the listening socket first (new connections are refused), waits up to
    ``grace`` seconds for requests in flight to be answered and flushed, then closes everything."""

    def __init__(self, app: Callable[..., Any], settings: HttpSettings) -> None:
        self.app, self.settings = app, settings
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._exit = threading.Event()

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self) -> HttpServer:
        from waitress.server import create_server

        try:
            self._server = create_server(
                self.app, host=self.settings.host, port=self.settings.port, threads=self.settings.threads,
                channel_timeout=self.settings.request_timeout_s, cleanup_interval=1,
                max_request_body_size=self.settings.max_body_bytes, max_request_header_size=64 * 1024,
                connection_limit=100, ident="mistwatch", expose_tracebacks=False, asyncore_use_poll=True)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.settings.address}: {exc.strerror or exc}",
                              key="http.listen") from None
        self._thread = threading.Thread(target=self._loop, name="mistwatch-http", daemon=True)
        self._thread.start()
        log.info("listening on %s", self.url)
        return self

    def _loop(self) -> None:
        from waitress import wasyncore

        server = self._server
        while not self._exit.is_set():
            if self._closing.is_set() and server.accepting:
                server.accepting = False
                wasyncore.dispatcher.close(server)  # the listening socket only; the trigger stays
            wasyncore.loop(timeout=0.1, map=server._map, use_poll=True, count=1)
        wasyncore.close_all(server._map)

    def _busy(self) -> bool:
        channels = list(self._server.active_channels.values())
        return any(ch.requests or ch.total_outbufs_len for ch in channels)

    def stop(self, grace: float = 5.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._closing.set()
        self._server.pull_trigger()
        deadline = time.monotonic() + grace
        time.sleep(0.05)
        while self._busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._exit.set()
        self._server.pull_trigger()
        self._thread.join(timeout=5)
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        self._server = None
        log.info("HTTP listener stopped")
