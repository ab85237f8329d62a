"""FrozenMap against dict: bytes of one map, the cost of its reads and of making one, and the bytes of
the labels and metrics of a whole Mist cycle (the simulator's org, collected over loopback HTTP).

    python bench/frozenmap.py                # one map's figures, and a cycle at 1,000 sites
    python bench/frozenmap.py --sites 10000  # the cycle at 10,000 sites (~100,000 entities)

Sizes are ``sys.getsizeof`` of the containers (a FrozenMap plus its values tuple; the keys, shared by
both, and the values are not counted). Times are the best of five runs of ``timeit``.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import timeit
from datetime import datetime, timezone

from mistwatch.hookspecs import CollectContext
from mistwatch.model import _LAYOUTS, FrozenMap
from mistwatch.plugins.mist.client import MistClient
from mistwatch.plugins.mist.collector import MistCollector
from mistwatch.plugins.mist.simulator import SimulatedOrg, serve


def size(mapping) -> int:
    if isinstance(mapping, FrozenMap):
        return sys.getsizeof(mapping) + sys.getsizeof(mapping._values)
    return sys.getsizeof(mapping)


def best_ns(stmt: str, names: dict, number: int = 200_000) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5, globals=names)) * 1e9 / number


def one_map() -> None:
    labels = {f"label_{i}": f"value {i}" for i in range(10)}
    metrics = {f"device.metric_{i}": i + 0.5 for i in range(15)}
    for name, data in (("10 labels", labels), ("15 metrics", metrics)):
        print(f"{name}: dict {size(data)} bytes, FrozenMap {size(FrozenMap(data))} bytes")
    names = {"d": metrics, "f": FrozenMap(metrics), "FrozenMap": FrozenMap}
    for what, stmt in (("get (present)", "{}.get('device.metric_7')"), ("get (missing)", "{}.get('nope')"),
                       ("[key]", "{}['device.metric_7']"), ("in", "'device.metric_7' in {}"),
                       ("items() loop", "for k, v in {}.items(): pass"), ("copy()", "{}.copy()")):
        print(f"{what:>14}: dict {best_ns(stmt.format('d'), names):6.0f} ns, "
              f"FrozenMap {best_ns(stmt.format('f'), names):6.0f} ns")
    print(f"{'make':>14}: FrozenMap(dict of 15) {best_ns('FrozenMap(d)', names):6.0f} ns")


def cycle(sites: int) -> None:
    now = datetime(2026, 1, 5, 9, tzinfo=timezone.utc)
    with serve(SimulatedOrg(sites=sites)) as server:
        server.org.now = now
        collector = MistCollector(client_factory=functools.partial(MistClient, sleep=lambda seconds: None))
        settings = {"base_url": server.url, "token": server.token, "org_id": server.org.org_id}
        snap = collector.collect(CollectContext(settings=settings, now=now, cursor={}, state={}))
    frozen = sum(size(e.labels) + size(e.metrics) for e in snap.entities)
    as_dicts = sum(size(e.labels.copy()) + size(e.metrics.copy()) for e in snap.entities)
    print(f"cycle at {sites:,} sites: {len(snap.entities):,} entities, {len(_LAYOUTS)} key layouts; labels and "
          f"metrics {as_dicts / 1e6:.1f} MB as dicts, {frozen / 1e6:.1f} MB as FrozenMaps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    one_map()
    cycle(args.sites)


if __name__ == "__main__":
    main()
