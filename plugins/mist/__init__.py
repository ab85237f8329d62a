"""The Juniper Mist plugin: the API client (``client``), the collector (``collector``), the simulated
org served on loopback (``simulator`` with its data in ``simdata``) and the commands built on it
(``commands``: ``mistwatch simulate`` and ``mistwatch demo``).

It registers through the same hooks a third-party plugin uses and imports only mistwatch's public API.
Its modules load when a hook is first called, so ``mistwatch --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mistwatch import Collector, hookimpl

#: The simulated org's scenarios (``plugins/mist/simdata.py``), here so that ``mistwatch simulate``
#: can list them without importing the simulator's data (~6 MB) into every process that loads plugins.
SCENARIOS: tuple[str, ...] = ("healthy", "degraded", "recovered", "upgrade-wave", "wan-link-failure")


@hookimpl
def mistwatch_collectors() -> Iterator[Collector]:
    from mistwatch.plugins.mist.collector import collector

    yield collector()


@hookimpl
def mistwatch_commands() -> Iterator[Any]:
    from mistwatch.plugins.mist.commands import demo, simulate, webhooks

    yield simulate
    yield demo
    yield webhooks
