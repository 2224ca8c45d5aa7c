"""How a long-running process's heap hands memory back to the system (glibc).

A process that folds a long log (a rebuild, a projection runner's first catch-up) frees much of
what it allocates on the way (batches of events, rows, buffers of the reader and writer
threads), but glibc keeps freed pages of its heap mapped:

- `release_freed` (`malloc_trim(0)`) returns the free pages anywhere in the heap; it costs a
  walk of the free lists (milliseconds), so callers do it after large pieces of work only.
- `map_large_blocks` keeps blocks of 128 KB and more in mappings of their own, as glibc does
  until a process frees such a block: it then raises that threshold up to 32 MB, and the
  state's growing arrays (packed messages, tables) move through the heap, each move leaving a
  hole the transient batches cannot always fill. Set once per process, by its entrypoint.
"""

from __future__ import annotations

import ctypes


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to call
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()
_M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
LARGE_BLOCK = 128 * 1024  # glibc's default threshold, kept fixed


def release_freed() -> bool:
    """Return freed heap pages to the system; False where there is no glibc to ask."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True


def map_large_blocks() -> bool:
    """Blocks of `LARGE_BLOCK` bytes and more are mapped on their own from now on, in this
    process; False where there is no glibc to ask."""
    return _LIBC is not None and _LIBC.mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK) == 1
