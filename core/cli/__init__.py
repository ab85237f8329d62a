"""The ``mistwatch`` command line. Built-in subcommands live in ``mistwatch.cli`` and load lazily, so
``mistwatch --help`` imports nothing heavy; plugins add theirs with the ``mistwatch_commands`` hook
(the Mist plugin's ``demo`` and ``simulate`` among them)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from mistwatch.errors import MistwatchError
from mistwatch.sanitize import strip_controls

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("mistwatch.cli.run", "run"),
    "daemon": ("mistwatch.cli.daemon", "daemon"),
    "status": ("mistwatch.cli.daemon", "status"),
    "alerts": ("mistwatch.cli.alerts", "alerts"),
    "init": ("mistwatch.cli.init", "init"),
    "rules": ("mistwatch.cli.rules", "rules"),
    "config": ("mistwatch.cli.config", "config"),
    "plugins": ("mistwatch.cli.plugins", "plugins"),
    "silence": ("mistwatch.cli.silence", "silence"),
    "notifiers": ("mistwatch.cli.notifiers", "notifiers"),
    "store": ("mistwatch.cli.store", "store"),
}

HELP: dict[str, str] = {
    "run": "Run one cycle: collect, store, evaluate, notify, report.",
    "daemon": "Run cycles on a fixed schedule until stopped.",
    "status": "Show the last cycles and the state of alerts and the outbox.",
    "alerts": "List alerts from the store, filtered by state, severity and site.",
    "init": "Write a commented config.yaml and a copy of the default rules to start from.",
    "rules": "Check, test and describe rule files.",
    "config": "Check the configuration file.",
    "plugins": "List plugins with source, version, status and hooks.",
    "silence": "Add, list and expire silences.",
    "notifiers": "Test configured notifiers.",
    "store": "Migrate the state database, or copy it (SQLite to PostgreSQL).",
}


class LazyGroup(click.Group):
    """Built-in commands by name (imported only when run); plugin commands from the plugin host,
    which is built only when a name is not a built-in or the command list is wanted."""

    _plugin_commands: dict[str, click.Command] | None = None

    def plugin_commands(self) -> dict[str, click.Command]:
        if self._plugin_commands is None:
            from mistwatch.host import make_host

            found = make_host().commands()  # a plugin that fails is reported by `mistwatch plugins`
            self._plugin_commands = {name: cmd for name, cmd in found.items() if name not in SUBCOMMANDS}
        return self._plugin_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*SUBCOMMANDS, *self.plugin_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return self.plugin_commands().get(cmd_name)
        module_name, attr = SUBCOMMANDS[cmd_name]
        if ctx.resilient_parsing or "--help" in sys.argv[1:2]:
            # top-level help lists commands: don't import them all just for their summaries
            return click.Command(cmd_name, help=HELP[cmd_name], short_help=HELP[cmd_name])
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = {name: HELP[name] for name in SUBCOMMANDS}
        for name, cmd in self.plugin_commands().items():
            rows[name] = cmd.get_short_help_str(limit=80)
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows.items()))


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
    cli._plugin_commands = None  # plugins are found anew at each invocation (tests call main() repeatedly)
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
        click.echo(f"mistwatch: {strip_controls(str(exc))}", err=True)  # may quote a file or an API answer
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
