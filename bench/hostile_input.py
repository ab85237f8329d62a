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
    return [
        ("config alias bomb (342 B)", ["config", "check", "--config", str(folder / "config-bomb.yaml")]),
        ("rule file alias bomb (342 B)", ["rules", "check", str(rules / "bomb.yaml")]),
        ("rule file of 300,000 items (4.4 MB)", ["rules", "check", str(folder / "items.yaml")]),
        ("rule file of 150,000 nodes (300 KB)", ["rules", "check", str(folder / "nodes.yaml")]),
        ("rule file within the bounds (95,000 nodes)", ["rules", "check", str(folder / "under.yaml")]),
        ("rule file nested 10,000 deep", ["rules", "check", str(folder / "deep.yaml")]),
        ("recursive alias", ["rules", "check", str(folder / "recursive.yaml")]),
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
    print(f"({platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
