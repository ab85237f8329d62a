"""Fixtures for the notification tests: alerts built directly, a config file on disk loaded by the
real config loader, the real plugin host and a real Store in tmp_path."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from mistwatch.model import Alert

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)  # a Monday


def make_alert(rule_id: str = "ap_offline", *, site: str = "Dublin HQ", site_id: str = "site-1",
               device: str | None = "AP-01", device_id: str | None = "dev-1", device_type: str = "ap",
               severity: str = "critical", state: str = "firing", value: float | None = 0.0,
               threshold: float | None = 1.0, baseline: float | None = None,
               firing_since: datetime | None = T0, resolved_at: datetime | None = None,
               summary: str | None = None, recommendation: str = "Check the AP's power and uplink.",
               description: str = "", **labels: str) -> Alert:
    all_labels = {"org_id": "org-1", "site_id": site_id, "site_name": site, **labels}
    if device_id:
        all_labels.update(device_id=device_id, device_name=device or device_id, device_type=device_type)
    key = f"{rule_id}|org-1|{site_id}|{device_id or ''}"
    return Alert(key=key, rule_id=rule_id, labels=all_labels, state=state, severity=severity, value=value,
                 threshold=threshold, baseline=baseline,
                 summary=summary if summary is not None else f"{device or site} is offline",
                 description=description, recommendation=recommendation,
                 firing_since=firing_since, resolved_at=resolved_at, last_eval_at=T0)


def resolved(alert: Alert, at: datetime, value: float | None = 1.0) -> Alert:
    """The same alert, resolved at ``at`` with the value at resolution."""
    from dataclasses import replace

    return replace(alert, state="resolved", resolved_at=at, value=value)


class NotifyEnv:
    """A config file, the real plugin host, and a Store under tmp_path."""

    def __init__(self, tmp_path: Path, store_target: str | Path | None = None) -> None:
        from mistwatch.host import make_host
        from mistwatch.store.database import Store

        self.dir = tmp_path
        (tmp_path / "rules").mkdir(exist_ok=True)
        self.host = make_host(entry_points=False)
        self.store_target = store_target or tmp_path / "var"  # a state folder, or a postgresql:// URL
        self.store = Store.open(self.store_target)
        self.config: Any = None

    def configure(self, notifiers: list[dict[str, Any]], **sections: Any) -> Any:
        """Write config.yaml with these notifiers and sections (routes, inhibit, maintenance) and load it.
        Messages go out at once (group_wait and group_interval 0) unless the test sets them."""
        from mistwatch.config import load_config

        data = {"collectors": [], "state_dir": "./var", "rules": ["rules/"], "notifiers": notifiers,
                "group_wait": 0, "group_interval": 0, **sections}
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        self.config = load_config(path, self.host)
        return self.config

    def notify(self, alerts: list[Alert], now: datetime, **kwargs: Any) -> Any:
        from mistwatch.notify.pipeline import notify

        return notify(self.config, self.host, self.store, alerts, now, **kwargs)

    def send_outbox(self, now: datetime) -> Any:
        from mistwatch.notify.pipeline import send_outbox

        return send_outbox(self.config, self.host, self.store, now)

    def reopen(self) -> None:
        """Close the store and open it again, as a new process would."""
        from mistwatch.store.database import Store

        self.store.close()
        self.store = Store.open(self.store_target)

    def outbox_rows(self) -> list[tuple]:
        return self.store.db.execute(
            "SELECT notifier, status, attempts, permanent, last_error FROM outbox ORDER BY created_at").fetchall()


@pytest.fixture
def notify_env(tmp_path: Path):
    env = NotifyEnv(tmp_path)
    yield env
    env.store.close()


__all__ = ["T0", "NotifyEnv", "make_alert", "resolved", "timedelta"]
