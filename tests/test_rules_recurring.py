"""Alerts that fire at about the same local time on 3 of the last 7 days are labelled recurring=true,
through run_rules on a real store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fixtures_rules import rules_from, site

from mistwatch.model import Snapshot
from mistwatch.rules.lifecycle import run_rules
from mistwatch.store.database import Store

DAY0 = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)
RULE = """
    id: backup-window
    kind: threshold
    scope: site
    metric: site.clients
    below: 10
    severity: minor
"""


def episode(store, ruleset, start: datetime, tz: str = "") -> dict[str, str]:
    """The site drops below 10 at ``start`` and recovers an hour later; the labels while it fired."""
    def snapshot(at, clients):
        entity = site(site__clients=clients)
        if tz:
            entity.labels["timezone"] = tz
        return Snapshot(taken_at=at, entities=[entity])

    outcome = run_rules(store, ruleset, snapshot(start, 2), start)
    (alert,) = [a for a in outcome.alerts if a.state == "firing"]
    run_rules(store, ruleset, snapshot(start + timedelta(hours=1), 50), start + timedelta(hours=1))
    return alert.labels


def test_the_fourth_firing_at_the_same_hour_is_labelled_recurring(tmp_path):
    ruleset = rules_from(tmp_path, RULE)
    with Store.open(tmp_path / "state") as store:
        labels = [episode(store, ruleset, DAY0 + timedelta(days=d, hours=2, minutes=5 * d)) for d in range(4)]
        firing = store.load_alerts()
    assert ["recurring" in lab for lab in labels] == [False, False, False, True]
    assert next(iter(firing.values())).annotations["recurring"] == "also fired around 02:15 on 3 of the last 7 days"


def test_firings_at_different_hours_are_not_recurring(tmp_path):
    ruleset = rules_from(tmp_path, RULE)
    with Store.open(tmp_path / "state") as store:
        labels = [episode(store, ruleset, DAY0 + timedelta(days=d, hours=3 * d)) for d in range(5)]
    assert not any("recurring" in lab for lab in labels)


def test_recurring_compares_local_times_in_the_site_timezone(tmp_path):
    # 08:00 in Paris is 07:00 UTC before the clocks change on 29 March 2026 and 06:00 UTC after:
    # an hour apart in UTC (more than the 45 minutes of "about the same time"), the same locally
    ruleset = rules_from(tmp_path, RULE)
    days = [datetime(2026, 3, 27, 7, tzinfo=timezone.utc), datetime(2026, 3, 28, 7, tzinfo=timezone.utc),
            datetime(2026, 3, 29, 6, tzinfo=timezone.utc), datetime(2026, 3, 30, 6, tzinfo=timezone.utc)]
    with Store.open(tmp_path / "state") as store:
        labels = [episode(store, ruleset, day, tz="Europe/Paris") for day in days]
    assert labels[-1].get("recurring") == "true"
