"""`mistwatch init [DIR]`: a commented config.yaml and a copy of the shipped rules with their tests,
to start from after `pipx install mistwatch` (no repository checkout needed)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import click

from mistwatch.errors import MistwatchError


def _copy(source, target: Path, written: list[Path]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    written.append(target)


@click.command(help="Write a commented config.yaml and a copy of the default rules (with their tests) "
                    "into DIR (default: the current folder), to edit and run.")
@click.argument("folder", metavar="[DIR]", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite config.yaml and the rule files if they exist.")
def init(folder: Path, force: bool) -> None:
    config = folder / "config.yaml"
    rules = folder / "rules"
    pack = files("mistwatch.rulepack")
    rule_files = sorted((p for p in pack.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)
    test_files = sorted((p for p in pack.joinpath("tests").iterdir() if p.name.endswith(".yaml")),
                        key=lambda p: p.name)
    targets = [config] + [rules / p.name for p in rule_files] + [rules / "tests" / p.name for p in test_files]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise MistwatchError(f"{existing[0]} already exists (and {len(existing) - 1} more): nothing written; "
                             "use --force to overwrite")
    written: list[Path] = []
    _copy(files("mistwatch").joinpath("templates", "config.yaml"), config, written)
    for p in rule_files:
        _copy(p, rules / p.name, written)
    for p in test_files:
        _copy(p, rules / "tests" / p.name, written)
    click.echo(f"Wrote {config} and {len(written) - 1} rule files under {rules}.")
    click.echo("Next:\n"
               "  export MIST_API_TOKEN=...   # an org API token with the read role\n"
               "  export MIST_ORG_ID=...\n"
               f"  mistwatch config check --config {config}\n"
               f"  mistwatch rules test {rules / 'tests' / '*.yaml'}\n"
               f"  mistwatch run --config {config}")
