"""The ``mistwatch`` command line. Subcommands live in ``mistwatch.commands`` and load lazily,
so ``mistwatch --help`` imports nothing heavy."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from mistwatch.errors import MistwatchError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("mistwatch.commands.run", "demo"),
    "run": ("mistwatch.commands.run", "run"),
    "daemon": ("mistwatch.commands.daemon", "daemon"),
    "status": ("mistwatch.commands.daemon", "status"),
    "simulate": ("mistwatch.commands.simulate", "simulate"),
    "rules": ("mistwatch.commands.rules", "rules"),
    "config": ("mistwatch.commands.config", "config"),
    "plugins": ("mistwatch.commands.plugins", "plugins"),
    "silence": ("mistwatch.commands.silence", "silence"),
    "notifiers": ("mistwatch.commands.notifiers", "notifiers"),
}

HELP: dict[str, str] = {
    "demo": "Run cycles against a built-in simulated Mist org and show the result.",
    "run": "Run one cycle: collect, store, evaluate, notify, report.",
    "daemon": "Run cycles on a fixed schedule until stopped.",
    "status": "Show the last cycles and the state of alerts and the outbox.",
    "simulate": "Serve a Mist-compatible API on loopback, for trying rules.",
    "rules": "Check, test and describe rule files.",
    "config": "Check the configuration file.",
    "plugins": "List plugins with source, version, status and hooks.",
    "silence": "Add, list and expire silences.",
    "notifiers": "Test configured notifiers.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        module_name, attr = SUBCOMMANDS[cmd_name]
        if ctx.resilient_parsing or "--help" in sys.argv[1:2]:
            # top-level help lists commands: don't import them all just for their summaries
            return click.Command(cmd_name, help=HELP[cmd_name], short_help=HELP[cmd_name])
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in sorted(SUBCOMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mistwatch")
def cli() -> None:
    """Monitoring and alerting for Juniper Mist networks.

    \b
    Quick start:  mistwatch demo
    Real org:     MIST_API_TOKEN=... MIST_ORG_ID=... mistwatch run --config config.yaml
    Exit codes:   0 the cycle ran, 1 collection failed or internal error, 2 config/rule/usage error.
    """


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="mistwatch", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: click's own message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except MistwatchError as exc:
        click.echo(f"mistwatch: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last resort: one line; -v or MISTWATCH_DEBUG shows the traceback
        from mistwatch.secrets import redact

        if "-v" in (argv or sys.argv) or "MISTWATCH_DEBUG" in __import__("os").environ:
            import traceback

            click.echo(redact(traceback.format_exc()), err=True)
        click.echo(f"mistwatch: internal error: {type(exc).__name__}: {redact(str(exc))}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
