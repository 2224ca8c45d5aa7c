"""Handing freed heap memory back to the system (glibc's `malloc_trim`).

A process that folded a long log (a projection runner's first catch-up) freed much of what it
allocated on the way (batches of events, rows, buffers of the reader and writer threads), but
glibc keeps freed pages of its heap mapped: the process's resident memory stays at its peak.
`malloc_trim(0)` returns the free pages anywhere in the heap; it costs a walk of the free lists
(milliseconds), so callers do it after large pieces of work only.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _trim() -> Callable[[int], int] | None:
    try:
        found: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None
    return found


_TRIM = _trim()


def release_freed() -> bool:
    """Return freed heap pages to the system; False where there is no glibc to ask."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
