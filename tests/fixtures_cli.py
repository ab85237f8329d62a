"""Driving the CLI as a user would, in process: ``run_cli(["rules", "check", "x.yaml"], capsys)``."""

from __future__ import annotations

import pytest

from mistwatch.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``mistwatch <args>``: its exit code, standard output and standard error."""
    try:
        code = int(main(args) or 0)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
