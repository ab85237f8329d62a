"""A loopback HTTP receiver for the Slack, Teams and webhook notifier tests.

``http_receiver.url("/hook")`` is where to post; ``http_receiver.requests`` holds every request
(method, path, headers, body). ``http_receiver.respond(429, headers={"Retry-After": "1"}, times=1)``
queues answers; when the queue is empty it answers 200 "ok".
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    answers: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def respond(self, status: int, body: str = "", headers: dict[str, str] | None = None, times: int = 1) -> None:
        with self.lock:
            self.answers.extend([(status, dict(headers or {}), body.encode())] * times)

    def next_answer(self) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            return self.answers.pop(0) if self.answers else (200, {}, b"ok")


def _handler(receiver_ref: list[HttpReceiver]) -> type[BaseHTTPRequestHandler]:
    import time

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver = receiver_ref[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.requests.append(Received("POST", self.path, dict(self.headers.items()), body,
                                                  time.monotonic()))
            status, headers, payload = receiver.next_answer()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return None

    return Handler


@pytest.fixture
def http_receiver():
    ref: list[HttpReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ref))
    server.daemon_threads = True
    receiver = HttpReceiver(server)
    ref.append(receiver)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()
