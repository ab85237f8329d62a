"""What a non-editable install (a wheel) holds: every package of the source tree.

An editable install finds a package folder that pyproject.toml does not list, so nothing else in
the suite notices when one is missing from ``[tool.setuptools] packages``; a wheel then lacks it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_folder_with_an_init_is_a_listed_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    found = {".".join((package, *init.parent.relative_to(ROOT / folder).parts))
             for package, folder in setuptools["package-dir"].items()
             for init in (ROOT / folder).rglob("__init__.py") if "__pycache__" not in init.parts}
    assert found - set(setuptools["packages"]) == set()
