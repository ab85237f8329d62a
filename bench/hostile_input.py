"""Hostile input benchmark: wall time, peak RSS and exit code of `mistwatch config check` and
`mistwatch rules check` on hostile YAML files (alias bombs, 300,000 items, deep nesting), and of
`mistwatch rules check` on rules whose templates or expressions try to exhaust CPU or memory.

Each command runs in its own process; peak RSS is that child's ``ru_maxrss``. The bound the issue
sets is 150 MB for any input file, and exit 2 with one line naming the file.

    python bench/hostile_input.py
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi", strict=True))


def _files(folder: Path) -> list[tuple[str, list[str]]]:
    """(label, mistwatch arguments) per hostile input, written into ``folder``."""
    rules = folder / "rules"
    rules.mkdir()
    (folder / "config-bomb.yaml").write_text(BOMB, encoding="utf-8")
    (rules / "bomb.yaml").write_text(BOMB, encoding="utf-8")
    (folder / "items.yaml").write_text("rules:\n" + "".join(f"  - item{i}\n" for i in range(300_000)),
                                       encoding="utf-8")
    (folder / "nodes.yaml").write_text("rules: [" + ",".join("1" for _ in range(150_000)) + "]\n", encoding="utf-8")
    (folder / "under.yaml").write_text("rules:\n" + "".join(f"  - {{id: r{i}, kind: threshold}}\n"
                                                            for i in range(19_000)), encoding="utf-8")
    (folder / "deep.yaml").write_text("rules: " + "[" * 10_000 + "]" * 10_000 + "\n", encoding="utf-8")
    (folder / "recursive.yaml").write_text("rules: &a [*a]\n", encoding="utf-8")
    head = "id: x\nkind: threshold\nmetric: site.clients\nbelow: 1\n"
    templates = {"macro": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "center": "{{ 'x' | center(600000000) }}",
                 "loops": "{% for a in [1] * 100000 %}{% for b in [1] * 100000 %}{{ a }}{% endfor %}{% endfor %}",
                 "power": "{{ ((9**1000)**1000)**1000 }}"}
    for name, template in templates.items():
        (folder / f"tpl-{name}.yaml").write_text(head + f"summary: \"{template}\"\n", encoding="utf-8")
    return [
        ("config alias bomb (342 B)", ["config", "check", "--config", str(folder / "config-bomb.yaml")]),
        ("rule file alias bomb (342 B)", ["rules", "check", str(rules / "bomb.yaml")]),
        ("rule file of 300,000 items (4.4 MB)", ["rules", "check", str(folder / "items.yaml")]),
        ("rule file of 150,000 nodes (300 KB)", ["rules", "check", str(folder / "nodes.yaml")]),
        ("rule file within the bounds (95,000 nodes)", ["rules", "check", str(folder / "under.yaml")]),
        ("rule file nested 10,000 deep", ["rules", "check", str(folder / "deep.yaml")]),
        ("recursive alias", ["rules", "check", str(folder / "recursive.yaml")]),
        ("summary: a recursive macro", ["rules", "check", str(folder / "tpl-macro.yaml")]),
        ("summary: center(600000000)", ["rules", "check", str(folder / "tpl-center.yaml")]),
        ("summary: nested loops over [1]*100000", ["rules", "check", str(folder / "tpl-loops.yaml")]),
        ("summary: ((9**1000)**1000)**1000", ["rules", "check", str(folder / "tpl-power.yaml")]),
    ]


def _measure(args: list[str]) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in MB, exit code, first line of stderr) of one mistwatch command."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: exec so that its ru_maxrss is mistwatch's alone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        err = os.open(ERR, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(err, 2)
        os.execv(sys.executable, [sys.executable, "-m", "mistwatch", *args])
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    rss_mb = usage.ru_maxrss / 1024 if platform.system() != "Darwin" else usage.ru_maxrss / 1e6
    line = Path(ERR).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return seconds, rss_mb, os.waitstatus_to_exitcode(status), line[0] if line else ""


ERR = ""


def console_with_huge_names() -> None:
    """The run summary, insights and a console notification with 100 KB site names (wall time)."""
    import io
    from datetime import datetime, timezone

    from rich.console import Console

    from mistwatch.engine import CycleResult
    from mistwatch.model import Alert, Entity, Notification, Snapshot
    from mistwatch.notifiers.console import render
    from mistwatch.report.console import print_summary
    from mistwatch.report.insights import print_insights
    from mistwatch.rules.lifecycle import RulesOutcome

    now = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)
    names = ["Dublin " * 15_000, "x" * 100_000 + " 10.0.0.1 2026-11-20"]
    sites = [Entity(f"site:s{i}", "site", {"site_id": f"s{i}", "site_name": name}, {"site.clients": 3.0})
             for i, name in enumerate(names)]
    alerts = [Alert(key=f"k{i}", rule_id="r", labels=dict(s.labels), state="firing", severity="major",
                    summary=f"{s.labels['site_name']} is degraded", firing_since=now) for i, s in enumerate(sites)]
    start = time.perf_counter()
    out = io.StringIO()
    console = Console(file=out, width=120, highlight=False)
    print_summary(console, CycleResult(run_id=None, mode="all", started_at=now, snapshot=Snapshot(now, sites)))
    print_insights(console, RulesOutcome(alerts=alerts), now=now)
    console.print(render(Notification(id="n", notifier="c", kind="alerts", title="t", created_at=now,
                                      alerts=tuple(alerts))))
    print(f"console output with two 100 KB site names: {time.perf_counter() - start:.2f} s, "
          f"{len(out.getvalue()) / 1024:.0f} KB printed")


def main() -> None:
    global ERR
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # an unbounded loader fails rather than swaps
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ERR = str(folder / "stderr.txt")
        print(f"{'input':40} {'s':>6} {'MB':>7} exit  message")
        for label, args in _files(folder):
            seconds, rss, code, line = _measure(args)
            print(f"{label:40} {seconds:6.2f} {rss:7.1f} {code:>4}  {line.replace(tmp, '<tmp>')[:90]}")
    console_with_huge_names()
    print(f"({platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
