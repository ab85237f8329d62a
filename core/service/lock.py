"""One writer per state directory: ``StateLock`` on ``state_dir/mistwatch.service.lock``.

The lock is an OS file lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows), so the
operating system releases it when the holder exits or crashes: a stale lock file never blocks anyone.
The file's text names the holder (pid, host, since) so the second process can say who has it.
Both kinds of lock conflict between two handles even inside one process, so two ``StateLock``
objects on the same folder exclude each other in a test as they do between processes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from mistwatch.errors import LockHeld
from mistwatch.files import open_private, private_dir

LOCK_FILENAME = "mistwatch.service.lock"
#: Windows locks a byte range; lock one byte far past the holder's text so others can still read it.
_WIN_LOCK_OFFSET = 1 << 20


def _try_lock(fh: IO[Any]) -> bool:
    if sys.platform == "win32":
        import msvcrt

        fh.seek(_WIN_LOCK_OFFSET)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            fh.seek(0)
        return True
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fh: IO[Any]) -> None:
    if sys.platform == "win32":
        import msvcrt

        fh.seek(_WIN_LOCK_OFFSET)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
        return
    import fcntl

    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class StateLock:
    """``with StateLock(state_dir, purpose="daemon"):`` holds the state directory or raises LockHeld."""

    def __init__(self, state_dir: str | Path, *, purpose: str = "run") -> None:
        self.path = Path(state_dir) / LOCK_FILENAME
        self.purpose = purpose
        self._fh: IO[Any] | None = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its holder (empty if unreadable)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> StateLock:
        if self._fh is not None:
            return self
        private_dir(self.path.parent)
        # "a+" never truncates: the holder's text stays readable until we own the lock
        fh = open_private(self.path, "a+", encoding="utf-8")  # held open for the lock's life
        if not _try_lock(fh):
            fh.close()
            raise LockHeld(self._held_message())
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                             "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.seek(0)
            fh.truncate()  # nobody holds it now; leave no misleading name behind
            _unlock(fh)
        finally:
            fh.close()

    def _held_message(self) -> str:
        info = self.holder()
        who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
        if info.get("purpose"):
            who = f"a mistwatch {info['purpose']} ({who}"
            who += f", since {info['since']})" if info.get("since") else ")"
        else:
            who = f"another mistwatch process ({who})"
        return (f"the state directory {self.path.parent} is in use by {who}; "
                f"stop it or wait for it to finish, then try again")

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
