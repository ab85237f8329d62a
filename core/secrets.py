"""Keeps secrets (the Mist API token, SMTP passwords, webhook URLs' keys) out of every output.

Anything that loads a secret registers it here; ``redact`` replaces every registered secret in a
string. Logging is filtered through ``RedactingFilter`` so no log line can carry one.
"""

from __future__ import annotations

import logging

_SECRETS: set[str] = set()
MASK = "***"


class Secret(str):
    """A str whose repr never shows the value (it still works as the value where needed)."""

    def __repr__(self) -> str:
        return "Secret('***')"


def register(value: str | None) -> Secret | None:
    if not value:
        return None
    if len(value) >= 4:  # very short values would mask ordinary words
        _SECRETS.add(str(value))
    return Secret(value)


def redact(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
