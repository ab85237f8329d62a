"""The allocator setting applied when an app opens."""

from __future__ import annotations

import platform

from mistwatch.memory import keep_large_blocks_unmappable


def test_the_mmap_threshold_is_fixed_on_glibc_and_left_alone_elsewhere():
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_large_blocks_unmappable() is on_glibc
    assert keep_large_blocks_unmappable() is on_glibc  # a second call is harmless
