"""Shared fixtures. Each area keeps its fixtures in ``tests/fixtures_<area>.py``; they load here."""

from pathlib import Path

pytest_plugins = sorted(p.stem for p in Path(__file__).parent.glob("fixtures_*.py"))
