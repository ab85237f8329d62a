"""Derived metrics: ``metrics:`` in a rule file defines metrics computed from the collected ones, per
entity, every cycle before the snapshot is stored. Rules, history, roll-ups, anomaly and forecast
rules then use them like any collected metric::

    metrics:
      - name: site.clients_per_ap
        scope: site                   # the entity kind (default: site)
        expr: "metrics['site.clients'] / metrics['site.ap_connected']"
        description: wireless clients per connected AP

``expr`` is the rules' sandboxed expression language over ``metrics`` and ``labels``. An entity that
does not report a metric the expression reads gets no value (as a threshold on a missing metric is
not a breach); one whose input is unknown this cycle (its collection failed) gets the derived metric
unknown too; an expression that fails for an entity (a division by zero) gives no value. Metrics are
derived in file order, so a later one may read an earlier one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mistwatch.model import Entity, FrozenMap, Snapshot
from mistwatch.rules.expr import Expression, ExpressionError


@dataclass(frozen=True)
class DerivedMetric:
    name: str
    scope: str
    expr: Expression
    description: str = ""
    file: str = ""
    line: int | None = None

    @property
    def reads(self) -> frozenset[str]:
        return frozenset(self.expr.metric_names())


def derive(metrics: Sequence[DerivedMetric], snapshot: Snapshot) -> None:
    """Add the derived metrics to the entities of ``snapshot`` (in place: entities are replaced)."""
    if not metrics:
        return
    by_scope: dict[str, list[DerivedMetric]] = {}
    for metric in metrics:
        by_scope.setdefault(metric.scope, []).append(metric)
    for index, entity in enumerate(snapshot.entities):
        defined = by_scope.get(entity.kind)
        if not defined:
            continue
        values = dict(entity.metrics)
        unknown = set(entity.unknown)
        for metric in defined:
            reads = metric.reads
            if any(name in unknown or snapshot.is_unknown(entity, name) for name in reads):
                unknown.add(metric.name)
                continue
            if any(name not in values for name in reads):
                continue
            try:
                value = metric.expr.evaluate({"metrics": values, "labels": entity.labels})
            except ExpressionError:
                continue
            if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
                values[metric.name] = float(value)
        if len(values) != len(entity.metrics) or len(unknown) != len(entity.unknown):
            snapshot.entities[index] = Entity(entity.key, entity.kind, entity.labels, FrozenMap(values),
                                              frozenset(unknown))
