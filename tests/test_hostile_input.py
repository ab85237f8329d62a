"""Hostile configuration and rule files: bounded before anything is built, refused in one line that
names the file (exit 2), in little memory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mistwatch.errors import ConfigError
from mistwatch.yamlfile import MAX_FILE_BYTES, load_yaml

#: 342 bytes that expand to 9**9 (387 million) strings.
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi", strict=True))


def _refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    return str(caught.value)


# The child reports its own peak (VmHWM of its own address space): ru_maxrss of a forked child keeps
# the parent's high-water mark across exec, so under a full pytest run it measured pytest, not us.
_MEASURE = """
import os, sys
from mistwatch.cli import main
try:
    main(sys.argv[1:])
finally:
    hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))
    open(os.environ['MISTWATCH_TEST_PEAK'], 'w').write(hwm.split()[1])
"""


def _peak_mb_and_result(*args: str, cwd: Path) -> tuple[float, int, str]:
    """Run the CLI in a child process: (its own peak RSS in MB, exit code, stderr)."""
    import subprocess

    peak = cwd / "peak.txt"
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "MISTWATCH_TEST_PEAK": str(peak)})
    return int(peak.read_text()) / 1024, done.returncode, done.stderr


def test_an_alias_bomb_in_the_config_exits_2_naming_the_file_in_little_memory(tmp_path):
    (tmp_path / "config.yaml").write_text(BOMB, encoding="utf-8")
    peak_mb, code, stderr = _peak_mb_and_result("config", "check", "--config", "config.yaml", cwd=tmp_path)
    assert code == 2
    assert stderr.strip().splitlines() == [
        "mistwatch: config.yaml:6: too large with its aliases expanded (more than 200000 nodes)"]
    assert peak_mb < 150


def test_an_alias_bomb_in_a_rule_file_is_refused_at_its_line(tmp_path):
    (tmp_path / "bomb.yaml").write_text("rules: []\n" + BOMB, encoding="utf-8")
    assert "bomb.yaml:7: too large with its aliases expanded" in _refusal(tmp_path / "bomb.yaml")


def test_a_file_over_the_size_cap_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "items.yaml"
    path.write_text("rules:\n" + "  - item\n" * (MAX_FILE_BYTES // 9 + 1), encoding="utf-8")
    assert _refusal(path).endswith("items.yaml: file too large (over 1024 KB)")


def test_a_file_of_too_many_nodes_is_refused(tmp_path):
    path = tmp_path / "nodes.yaml"
    path.write_text("rules: [" + ",".join("1" for _ in range(150_000)) + "]\n", encoding="utf-8")
    assert "nodes.yaml:1: too many YAML nodes (more than 100000)" in _refusal(path)


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("rules: &a [*a]\n", encoding="utf-8")
    assert _refusal(path).endswith("loop.yaml:1: recursive alias *a")


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("rules: " + "[" * 100 + "]" * 100 + "\n", encoding="utf-8")
    assert "deep.yaml:1: nested too deep" in _refusal(path)


def test_anchors_aliases_and_merge_keys_of_ordinary_size_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {severity: major, for: 10m}\nrules:\n  - {<<: *b, id: one}\n  - {<<: *b, id: two}\n",
                    encoding="utf-8")
    data, _ = load_yaml(path)
    assert data["rules"][1] == {"severity": "major", "for": "10m", "id": "two"}


def test_an_error_quoting_a_hostile_key_reaches_the_terminal_without_its_escapes(tmp_path):
    import subprocess

    (tmp_path / "r.yaml").write_text('"x\\e]0;owned\\a\\e[2J": 1\n"x\\e]0;owned\\a\\e[2J": 2\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mistwatch", "rules", "check", "r.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "duplicate key" in done.stderr
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr
