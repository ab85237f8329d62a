"""The demo's bad morning, run once per test session: the simulated org on loopback, the default rule
pack, a console notifier (its output discarded), the demo's timeline up to its last degraded cycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class DemoMorning:
    result: Any  # the last degraded cycle's CycleResult
    notified: list[Any] = field(default_factory=list)  # every firing alert any message carried


@pytest.fixture(scope="session")
def demo_morning(tmp_path_factory) -> DemoMorning:
    import contextlib
    import io
    from datetime import datetime, timezone

    from mistwatch import close_app, open_app, run_cycle
    from mistwatch.plugins.mist.commands import DEMO_TIMELINE, write_demo_config
    from mistwatch.plugins.mist.simulator import SimulatedOrg, serve

    start = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
    org = SimulatedOrg(sites=12, now=start)
    morning = DemoMorning(result=None)
    with serve(org) as server:
        app = open_app(write_demo_config(tmp_path_factory.mktemp("demo"), server))
        try:
            for scenario, offset, _ in DEMO_TIMELINE[:6]:  # up to the last degraded cycle
                org.set_scenario(scenario)
                org.now = start + offset
                with contextlib.redirect_stdout(io.StringIO()):
                    morning.result = run_cycle(app, mode="all", now=org.now)
                morning.notified += [a for n in morning.result.notify.planned for a in n.alerts
                                     if a.state == "firing"]
        finally:
            close_app(app)
    return morning
