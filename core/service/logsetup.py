"""Logging for long-running use: stderr plus an optional rotating file, both redacting secrets.

Config (``log:``)::

    log: {file: ./var/mistwatch.log, level: info, max_bytes: 10485760, backups: 5}

Every handler carries :class:`mistwatch.secrets.RedactingFilter`, so a registered secret (the Mist
token, an SMTP password) never reaches a log line, whichever logger wrote it.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mistwatch.files import open_private, private_dir
from mistwatch.sanitize import strip_controls
from mistwatch.secrets import RedactingFilter, redact

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = "_mistwatch_handler"


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted record, tracebacks included (the filter sees only the message), and
    strips terminal control characters: a log line quoting a site name must not drive the terminal
    of whoever tails the log."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_controls(redact(super().format(record)))


class JsonFormatter(logging.Formatter):
    """One JSON object a line (``--log-format json``, for journald, Loki, Elastic): ``time`` (UTC ISO
    8601), ``level``, ``logger``, ``message`` and ``exception`` when there is one; redacted like text."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import datetime, timezone

        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, ensure_ascii=False))


def setup_logging(settings: Mapping[str, Any] | None = None, *, resolve: Callable[[str], Path] | None = None,
                  verbose: bool = False, stream: Any = None, json_lines: bool = False) -> list[logging.Handler]:
    """(Re)configure the ``mistwatch`` logger: stderr, plus ``settings["file"]`` rotated by size.

    Calling it again (after a config reload) replaces the handlers it installed before. ``resolve``
    turns the configured file name into a path (``Config.resolve``: relative to the config file).
    ``json_lines``: one JSON object a line instead of text, on every handler. Returns the handlers installed."""
    settings = settings or {}
    level_name = "DEBUG" if verbose else str(settings.get("level", "info")).upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        level = logging.INFO
    logger = logging.getLogger("mistwatch")
    for handler in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(handler)
        handler.close()
    formatter = JsonFormatter() if json_lines else RedactingFormatter(FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if settings.get("file"):
        handlers.append(file_handler(settings, resolve=resolve))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        setattr(handler, _OURS, True)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handlers


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log whose files (the current one and each new one after a rollover) are owner-only."""

    def _open(self) -> Any:
        return open_private(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors)


def file_handler(settings: Mapping[str, Any], *, resolve: Callable[[str], Path] | None = None) -> logging.Handler:
    """The rotating file handler of ``log.file`` (created owner-only, in an owner-only folder if new)."""
    path = resolve(settings["file"]) if resolve else Path(settings["file"])
    private_dir(path.parent)
    return _PrivateRotatingFileHandler(
        path, maxBytes=int(settings.get("max_bytes", 10 * 1024 * 1024)),
        backupCount=int(settings.get("backups", 5)), encoding="utf-8", delay=True)


def setup_console_logging(verbosity: int, settings: Mapping[str, Any] | None = None, *,
                          resolve: Callable[[str], Path] | None = None) -> None:
    """-v: info, -vv: debug on stderr; always through the secret-redacting filter. With ``settings``
    (the config's ``log:``) and a ``file`` in it, the log file gets its configured level too, as
    the daemon's does (``run`` from cron leaves its trace where the daemon would)."""
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(RedactingFormatter(FORMAT))
    handler.setLevel(level)
    handlers: list[logging.Handler] = [handler]
    if settings and settings.get("file"):
        file_level = logging.getLevelName(str(settings.get("level", "info")).upper())
        to_file = file_handler(settings, resolve=resolve)
        to_file.setFormatter(RedactingFormatter(FORMAT))
        to_file.addFilter(RedactingFilter())
        to_file.setLevel(file_level if isinstance(file_level, int) else logging.INFO)
        handlers.append(to_file)
    root = logging.getLogger("mistwatch")
    for old in root.handlers:
        old.close()
    root.handlers[:] = handlers
    root.setLevel(min(h.level for h in handlers))


