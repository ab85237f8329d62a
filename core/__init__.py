"""mistwatch: monitoring and alerting for Juniper Mist networks.

The public API for plugin authors is what this module exports.
"""

from mistwatch.hookspecs import CollectContext, Collector, Notifier, RuleKind, hookimpl
from mistwatch.model import (
    SEVERITIES,
    Alert,
    Attachment,
    CollectorError,
    Delivery,
    Entity,
    Event,
    Notification,
    Snapshot,
)

__version__ = "0.1.0"

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
    "Notification",
    "Notifier",
    "RuleKind",
    "Snapshot",
    "__version__",
    "hookimpl",
]
