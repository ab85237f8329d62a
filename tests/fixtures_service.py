"""The daemon's HTTP face served for real over loopback (waitress), on a real store in tmp_path.

``http_face(token=..., **settings)`` returns a :class:`Face`: ``face.get("/metrics")``,
``face.post("/webhooks/mist", body, headers)`` (requests), ``face.env`` (a NotifyEnv: config on disk
and the store the "daemon" writes), ``face.live`` (the LiveState it records cycles in) and
``face.view``. Every face is stopped after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from mistwatch.service.http import HttpServer, HttpSettings, ServiceView, make_app
from mistwatch.service.live import LiveState


@dataclass
class Face:
    env: Any
    live: LiveState
    view: ServiceView
    server: HttpServer

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.url + path, headers=headers, timeout=10, **kwargs)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.post(self.url + path, data=body, headers=headers or {}, timeout=10)


@pytest.fixture
def http_face(notify_env) -> Iterator[Callable[..., Face]]:
    faces: list[Face] = []

    def make(*, webhook: Any = None, collectors: list[str] | None = None, now: Any = None,
             app: Any = None, **settings: Any) -> Face:
        if notify_env.config is None:
            notify_env.configure([{"name": "console", "type": "console"}])
        live = LiveState(interval_s=900)
        web = HttpSettings(port=0, **settings)
        view = ServiceView(config=lambda: notify_env.config, live=live, settings=web,
                           collectors=lambda: list(collectors or ["mist"]), webhook=webhook,
                           **({"now": now} if now else {}))
        server = HttpServer(app or make_app(view), web).start()
        face = Face(notify_env, live, view, server)
        faces.append(face)
        return face

    yield make
    for face in faces:
        face.server.stop(grace=1)
        face.view.close()
