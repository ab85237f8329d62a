"""What rule templates and ``when:``/``recover_when:`` expressions see: the variables of one subject."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type only: the loader imports this module to test-render templates
    from mistwatch.rules.loader import Rule


def display_name(labels: Mapping[str, str]) -> str:
    return (labels.get("device_name") or labels.get("site_name") or labels.get("org_name")
            or labels.get("name") or "")


def template_variables(rule: Rule, labels: Mapping[str, str], *, severity: str | None,
                       value: float | None, threshold: float | None = None,
                       baseline: float | None = None, score: float | None = None,
                       metrics: Mapping[str, float] | None = None, causes: Sequence[str] = (),
                       extra: Mapping[str, Any] | None = None,
                       now: datetime | str | None = None) -> dict[str, Any]:
    """What templates and ``when:``/``recover_when:`` expressions see."""
    sample = bool(extra and extra.get("sample"))
    if sample:  # the test render of `rules check`: any metric or kind-specific extra resolves
        metrics, extra = _SampleMetrics(), _SampleExtra(extra or {})
    return {
        "labels": labels, "value": value, "threshold": threshold, "baseline": baseline,
        "score": score, "change": score, "severity": severity or rule.severity, "rule_id": rule.id,
        "rule_description": rule.description, "metric": rule.spec.get("metric"),
        "name": display_name(labels), "site": labels.get("site_name", ""), "causes": list(causes),
        "extra": extra if sample else dict(extra or {}), "metrics": metrics if metrics is not None else {},
        "now": now.isoformat() if isinstance(now, datetime) else (now or ""),
    }


class _SampleMetrics(dict):
    """For the test render in ``rules check``: any metric reads as 0.5."""

    def __missing__(self, key: str) -> float:
        return 0.5


class _SampleExtra(dict):
    def __missing__(self, key: str) -> str:
        return "sample"
