"""Fixtures for the Mist API simulator: a running server over loopback HTTP.

``simulator``: a 12-site healthy org served for one test (``simulator.url``, ``simulator.token``,
``simulator.org``). ``make_simulator(**kwargs)``: builds ``SimulatedOrg(**kwargs)`` and serves it; every
server made is closed after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from mistwatch.plugins.mist.simulator import SimulatedOrg, SimulatorServer, serve


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., SimulatorServer]]:
    servers: list[SimulatorServer] = []

    def make(*, token: str = "sim-token", **org_kwargs: object) -> SimulatorServer:
        server = serve(SimulatedOrg(**org_kwargs), token=token)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with serve(SimulatedOrg(sites=12)) as server:
        yield server
