"""mistwatch: monitoring and alerting for Juniper Mist networks.

The public API for plugin authors is what this module exports, with ``mistwatch.hookspecs`` (the hooks
and descriptors), ``mistwatch.model`` (the dataclasses passed between stages), ``mistwatch.render``
(showing a notification to people) and ``mistwatch.sanitize`` (escaping and capping data from Mist
for each channel: terminal, Slack, Teams, HTML). Built-in plugins use nothing else, as a third-party plugin would.

- Plugins: ``hookimpl``, ``Collector``, ``Notifier``, ``RuleKind``, ``CollectContext`` and the model
  (``FrozenMap``: compact read-only labels and metrics for many entities).
- Rule kinds: ``Result``, ``RuleContext``, ``RuleSpecError``, ``duration_schema``, ``spec_duration``, ``identity_of``.
- Embedding and commands (``mistwatch_commands``): ``open_app``, ``run_cycle``, ``close_app``,
  ``show_result``, ``result_json``, ``setup_console_logging``; ``Store`` (``Store.open(state_dir)``:
  the store, for commands that write history, like ``mistwatch simulate --backfill``).
"""

from __future__ import annotations

import importlib
from typing import Any

from mistwatch.hookspecs import (
    CollectContext,
    Collector,
    Notifier,
    RuleKind,
    RuleSpecError,
    WebhookItem,
    WebhookRequest,
    duration_schema,
    hookimpl,
    spec_duration,
)
from mistwatch.model import (
    SEVERITIES,
    Alert,
    Attachment,
    CollectorError,
    Delivery,
    Entity,
    Event,
    FrozenMap,
    Notification,
    Result,
    Snapshot,
    identity_of,
)

__version__ = "0.1.0"

# Loaded on first use, so `import mistwatch` (every plugin, `mistwatch --help`) stays light.
_LAZY: dict[str, tuple[str, str]] = {
    "RuleContext": ("mistwatch.rules.evaluator", "RuleContext"),
    "Store": ("mistwatch.store.database", "Store"),
    "open_app": ("mistwatch.engine", "open_app"),
    "run_cycle": ("mistwatch.engine", "run_cycle"),
    "close_app": ("mistwatch.engine", "close_app"),
    "show_result": ("mistwatch.report.console", "show_result"),
    "result_json": ("mistwatch.report.console", "summary_json"),
    "setup_console_logging": ("mistwatch.service.logsetup", "setup_console_logging"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mistwatch' has no attribute {name!r}")


__all__ = [
    "SEVERITIES",
    "Alert",
    "Attachment",
    "CollectContext",
    "Collector",
    "CollectorError",
    "Delivery",
    "Entity",
    "Event",
    "FrozenMap",
    "Notification",
    "Notifier",
    "RuleKind",
    "Snapshot",
    "WebhookItem",
    "WebhookRequest",
    "__version__",
    "hookimpl",
    "Result",
    "RuleSpecError",
    "duration_schema",
    "spec_duration",
    "identity_of",
    *_LAZY,
]
