"""Plugin-host fixtures: a fresh host, the fake installed distribution, and known built-ins.

- ``pm_host``: a fresh host with the real built-ins only (no entry points).
- ``fake_dist``: puts ``tests/data/fakedist`` (a ``mistwatch-fake`` dist-info declaring the entry points
  ``fake_good``, ``fake_broken``, ``fake_raises``) on ``sys.path`` for one test. It is kept off the
  session-wide path on purpose: every other test that builds a host would otherwise load them.
- ``known_builtins``: replaces ``host.BUILTINS`` by in-memory modules, so tests do not depend on which
  real built-ins exist yet; it also blocks installed entry points (``MISTWATCH_LOAD_PLUGINS=``).
  Its collector ``testmist`` owns the ``mist:`` section and its notifier types are ``console`` and
  ``testmail`` (schemas below), enough to exercise every config check.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mistwatch import Collector, Delivery, Notifier, Snapshot, hookimpl
from mistwatch.host import PluginHost, make_host

FAKEDIST = Path(__file__).parent / "data" / "fakedist"
FAKE_MODULES = ("mistwatch_fake_good", "mistwatch_fake_broken", "mistwatch_fake_raises", "mistwatch_fake_command")

TESTMIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["token", "org_id"],
    "anyOf": [{"required": ["cloud"]}, {"required": ["base_url"]}],
    "properties": {
        "cloud": {"type": "string", "enum": ["global01", "eu"]},
        "base_url": {"type": "string", "pattern": "^https?://"},
        "token": {"type": "string", "minLength": 1, "default": "${MIST_API_TOKEN}"},
        "org_id": {"type": "string", "minLength": 1, "default": "${MIST_ORG_ID}"},
        "page_limit": {"type": "integer", "minimum": 1, "default": 1000},
    },
}

TESTMAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["smtp_host", "to"],
    "properties": {
        "smtp_host": {"type": "string"},
        "smtp_port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 25},
        "starttls": {"type": "boolean"},
        "username": {"type": "string"},
        "password": {"type": "string"},
        "to": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    },
}


def _send(settings: Any, notifications: list) -> list[Delivery]:
    return [Delivery(n.id, ok=True) for n in notifications]


def make_module(name: str, **hooks: Any) -> ModuleType:
    """An in-memory plugin module whose attributes are the given (already @hookimpl-marked) hooks."""
    module = ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, function)
    return module


@hookimpl
def _testmist_collectors() -> Iterator[Collector]:
    yield Collector(name="testmist", collect=lambda ctx: Snapshot(taken_at=ctx.now), config_key="mist",
                    settings_schema=TESTMIST_SCHEMA, metrics={"device.connected": "1 when connected"},
                    describe=lambda s: [("Org id", s["org_id"]), ("Token", s["token"])])


@hookimpl
def _test_notifiers() -> Iterator[Notifier]:
    yield Notifier(type="console", send=_send)
    yield Notifier(type="testmail", send=_send, settings_schema=TESTMAIL_SCHEMA)


KNOWN_BUILTINS = {
    "mwtest_builtin_collect": {"mistwatch_collectors": _testmist_collectors},
    "mwtest_builtin_notify": {"mistwatch_notifiers": _test_notifiers},
}


@pytest.fixture
def pm_host() -> PluginHost:
    """A fresh host with the built-ins only (no entry points, no plugins_dir)."""
    return make_host(entry_points=False)


@pytest.fixture
def fake_dist(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake installed distribution ``mistwatch-fake`` on sys.path, its modules not yet imported."""
    for name in FAKE_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(FAKEDIST))
    importlib.invalidate_caches()
    yield FAKEDIST
    for name in FAKE_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def known_builtins(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """``host.BUILTINS`` replaced by two in-memory modules; installed entry points blocked."""
    from mistwatch import host

    for name, hooks in KNOWN_BUILTINS.items():
        monkeypatch.setitem(sys.modules, name, make_module(name, **hooks))
    monkeypatch.setattr(host, "BUILTINS", tuple(KNOWN_BUILTINS))
    monkeypatch.setenv("MISTWATCH_LOAD_PLUGINS", "")
    monkeypatch.delenv("MISTWATCH_DISABLE_PLUGINS", raising=False)
    return tuple(KNOWN_BUILTINS)
