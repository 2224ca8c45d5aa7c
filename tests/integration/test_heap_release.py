"""adapters.heap: a process that folds a long log (a rebuild, a projection runner) hands the heap
memory it freed back to the system, so its resident memory is what it holds."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")

ANON = ("def anon():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('RssAnon:'):\n"
        "            return int(line.split()[1])\n")
# large blocks, each followed by a small one that stays: the layout of a growing state among
# a batch's buffers; prints the kB given back when the large ones are freed
INTERLEAVED = ANON + (
    "import sys\nfrom adapters.heap import map_large_blocks\n"
    "if sys.argv[1] == 'mapped':\n    assert map_large_blocks()\n"
    "big = b'x' * (8 << 20)\ndel big  # past glibc's threshold: it raises it unless fixed\n"
    "large, small = 200_000, 1000  # not constants: a constant's repeat is made once\n"
    "pairs = [(b'x' * large, b'y' * small) for _ in range(200)]\n"
    "held = anon()\nkept = [small for _, small in pairs]\ndel pairs\n"
    "print(held - anon())\n")


def _given_back_kb(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", INTERLEAVED, mode], check=True,
                          capture_output=True, text=True)
    return int(done.stdout)


# many small blocks freed below one that stays (the heap's top is not free, so free() keeps
# their pages); prints the kB held, then after the free, then after `release_freed`
TRIMMED = ANON + (
    "from adapters.heap import release_freed\n"
    "size = 2000  # not a constant: a constant's repeat is made once\n"
    "blocks = [b'x' * size for _ in range(30_000)]  # ~60 MB in glibc's heap, not pymalloc's\n"
    "pin = b'x' * size\n"
    "held = anon()\ndel blocks\nfreed = anon()\nassert release_freed()\n"
    "print(held, freed, anon())\n")


def test_freed_heap_memory_leaves_the_resident_set_once_released() -> None:
    # in a fresh interpreter: what the test process allocated before cannot shape its heap
    done = subprocess.run([sys.executable, "-c", TRIMMED], check=True, capture_output=True,
                          text=True)
    held, freed, released = (int(kb) for kb in done.stdout.split())
    assert held - freed < 20_000, "glibc returned the pages by itself: nothing to prove"
    assert freed - released > 40_000


def test_large_blocks_mapped_on_their_own_are_given_back_when_freed() -> None:
    assert _given_back_kb("mapped") > 35_000  # of ~40 MB
    assert _given_back_kb("default") < 10_000  # in the heap, between blocks that stay
