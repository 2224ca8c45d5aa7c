"""adapters.heap: after large pieces of work (a projection runner's long catch-up) a process
hands the heap memory it freed back to the system, so its resident memory is what it holds."""

from __future__ import annotations

import sys

import pytest

from adapters.heap import release_freed


def _anon_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_freed_heap_memory_leaves_the_resident_set_once_released() -> None:
    blocks = [bytes(2000) for _ in range(30_000)]  # ~60 MB in glibc's heap (not pymalloc's)
    pin = bytes(2000)  # above them: the heap's top is not free, so free() keeps the pages
    held = _anon_kb()
    del blocks
    freed = _anon_kb()
    assert release_freed()
    released = _anon_kb()
    assert held - freed < 20_000, "glibc returned the pages by itself: nothing to prove"
    assert freed - released > 40_000
    del pin
