"""Durations as people write them in config and on the command line: 90s, 15m, 2h, 1d, 1w, 1h30m."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float) -> timedelta:
    """``"1h30m"`` -> 5400 s. A bare number is seconds. Raises ValueError with the text on bad input."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return timedelta(seconds=float(text))
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return timedelta(seconds=float(value))
    pos, seconds = 0, 0.0
    for match in _PART.finditer(value):
        if value[pos:match.start()].strip():
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or value[pos:].strip():
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 1d, 1w)")
    return timedelta(seconds=seconds)


def parse_time(text: str) -> datetime:
    """ISO 8601 to an aware UTC datetime; a time without zone is taken as UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def format_duration(delta: timedelta | float) -> str:
    """5400 s -> ``"1h30m"``; for messages ("lasted 1h30m"). A negative span (the wall clock stepped
    back between its two ends) is ``"0s"``: "lasted -7200s" would only confuse."""
    seconds = max(0, int(delta.total_seconds() if isinstance(delta, timedelta) else delta))
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
