"""Process-wide memory settings for big cycles (glibc only; elsewhere nothing is done).

A cycle at 10,000 sites allocates and frees many blocks: page bodies of ~1.5 MB, dicts and arrays
of 70,000 entries, a forecast's matrices, a report's 70,000 dicts. glibc keeps what is freed:

- Blocks above a threshold (128 KiB) come from their own mappings, unmapped on free; but after the
  first such free glibc raises the threshold to that block's size, so later blocks come from the
  heap. :func:`keep_large_blocks_unmappable` fixes the threshold at its default (~7 MB less peak).
- Smaller blocks freed in the middle of the heap stay resident (only its top is given back), so
  each stage would start from the previous one's high-water mark. :func:`release_free_memory`
  gives those pages back (``malloc_trim``); the engine calls it after each stage and the evaluator
  after each rule: at 10,000 sites with a week of history, 15-40 MB each time, in well under 1 ms.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from typing import Any

#: glibc's mallopt parameter number for the mmap threshold (malloc.h: M_MMAP_THRESHOLD -3).
_M_MMAP_THRESHOLD = -3
#: glibc's default threshold; set explicitly only to switch off its dynamic raising.
MMAP_THRESHOLD = 128 * 1024

_done = False


@functools.cache
def _glibc() -> Any:
    """glibc, or None where the C library is another (musl, macOS, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_large_blocks_unmappable() -> bool:
    """Fix glibc's mmap threshold at its default (once per process); True if it was set."""
    global _done
    libc = _glibc()
    if _done or libc is None:
        return _done
    try:
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except AttributeError:
        return False
    return _done


def release_free_memory() -> bool:
    """Give the heap pages freed so far back to the OS; True if the C library could be asked."""
    libc = _glibc()
    if libc is None:
        return False
    try:
        libc.malloc_trim(0)
    except AttributeError:
        return False
    return True
