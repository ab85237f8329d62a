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

from mistwatch.secrets import RedactingFilter, redact

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = "_mistwatch_handler"


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted record, tracebacks included (the filter sees only the message)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


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
        path = resolve(settings["file"]) if resolve else Path(settings["file"])
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            path, maxBytes=int(settings.get("max_bytes", 10 * 1024 * 1024)),
            backupCount=int(settings.get("backups", 5)), encoding="utf-8", delay=True))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        setattr(handler, _OURS, True)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handlers


def setup_console_logging(verbosity: int) -> None:
    """-v: info, -vv: debug; always through the secret-redacting filter."""
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("mistwatch")
    root.handlers[:] = [handler]
    root.setLevel(level)


