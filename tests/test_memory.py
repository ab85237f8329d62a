"""The allocator settings: applied when an app opens, and freed memory given back between stages."""

from __future__ import annotations

import os
import platform

import pytest

from mistwatch.memory import keep_large_blocks_unmappable, release_free_memory


def test_the_mmap_threshold_is_fixed_on_glibc_and_left_alone_elsewhere():
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_large_blocks_unmappable() is on_glibc
    assert keep_large_blocks_unmappable() is on_glibc  # a second call is harmless


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"), reason="glibc only")
def test_release_free_memory_gives_freed_heap_pages_back_to_the_os():
    keep_large_blocks_unmappable()
    blocks = [bytearray(2000) for _ in range(40_000)]  # ~80 MB of heap blocks below the mmap threshold
    pin = bytearray(2000)  # allocated last, so the freed ones are not at the heap's top
    del blocks
    held = _rss_mb()
    assert release_free_memory() is True
    assert held - _rss_mb() > 40
    del pin


def test_release_free_memory_is_a_no_op_where_the_c_library_is_not_glibc(monkeypatch):
    import mistwatch.memory as memory

    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.release_free_memory() is False
