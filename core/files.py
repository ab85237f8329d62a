"""Owner-only files and folders: the state (the store, its lock), reports and logs hold the network's
inventory, alert history and sometimes secrets' neighbours, so they are created 0600 (folders 0700)
whatever the umask. A mode passed at creation can only lose bits to the umask, never gain them, so
creating with these modes is enough; existing files keep the mode their owner gave them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and missing parents) owner-only; an existing folder is left as it is."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            pass
    if not path.is_dir():
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)  # raises the right error (a file in the way)
    return path


def touch_private(path: str | Path) -> bool:
    """Create ``path`` empty and owner-only if it does not exist; True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def open_private(path: str | Path, mode: str = "a", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)``, creating the file owner-only. ``mode``: "a", "w", "x" (text or "b")."""
    flags = {"a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
             "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}[mode[0]]
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    return open(os.open(path, flags, PRIVATE_FILE), mode, **kwargs)
