"""Pausing CPython's cyclic garbage collector while millions of long-lived objects are made.

Folding a million events (or unpickling their state) creates millions of objects without cycles;
the cyclic collector would rescan all of them at every generation-2 collection (a tenant's first
load took 67 s with it, 29 s without). Reference counting still frees everything meanwhile.

A pause that leaves a great many new objects (a state loaded, a log folded) ends with
`gc.freeze()`: they are the process's long-lived state, and left in the youngest generation the
next collections would scan all of them at some random later moment (a query or a projection
batch then waited a second or more). Small pauses leave the collector's generations alone.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

FREEZE_ABOVE = 200_000  # new tracked objects that make a pause's end freeze them


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_count()[0] > FREEZE_ABOVE:
            gc.freeze()
        if was_enabled:
            gc.enable()
