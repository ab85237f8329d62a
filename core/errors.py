"""Errors that end a command with a clear one-line message instead of a traceback."""

from __future__ import annotations


class MistwatchError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(MistwatchError):
    """A config, rule or usage problem the user must fix: exit 2, one line naming where."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.file, self.line, self.key, self.message = file, line, key, message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            where += f" {self.key}" if where else self.key
        return f"{where}: {self.message}" if where else self.message


class CollectionFailed(MistwatchError):
    """Collection failed entirely (every call failed, or the token was refused): exit 1.

    ``api_requests`` holds the API requests made before it failed, in the form of
    ``Snapshot.api_requests`` (collector -> endpoint -> status -> count), so ``/metrics`` still
    counts the refused calls (a 401, a 429) that made it fail."""

    exit_code = 1

    def __init__(self, *args: object, api_requests: dict[str, dict[str, dict[str, int]]] | None = None) -> None:
        super().__init__(*args)
        self.api_requests = api_requests or {}


class LockHeld(MistwatchError):
    """Another mistwatch process holds the state directory."""

    exit_code = 1
