"""Files holding mail, keys or credentials are readable by their owner only (SPEC §8).

`private_file(path)` creates `path` with mode 0600 before SQLite opens it (whatever the umask),
and takes group/other bits off a file of ours that an earlier version created 0644. SQLite gives
the `-wal`, `-shm` and `-journal` companions the main file's mode when it creates them; existing
companions are tightened here too. In-memory and URI names are left to SQLite.
"""

from __future__ import annotations

import contextlib
import os
import stat

PRIVATE = 0o600
COMPANIONS = ("-wal", "-shm", "-journal")


def private_file(path: str) -> str:
    """Create `path` 0600 when missing, tighten it when it is ours; returns `path`. Errors are
    left to the caller's open, which reports them in its own terms."""
    if not path or path.startswith(":memory:") or path.startswith("file:"):
        return path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    except FileExistsError:
        _tighten(path)
    except OSError:
        return path
    else:
        try:
            os.fchmod(fd, PRIVATE)  # an odd umask (e.g. 0o277) may have taken the owner's bits
        finally:
            os.close(fd)
    for suffix in COMPANIONS:
        _tighten(path + suffix)
    return path


def _tighten(path: str) -> None:
    with contextlib.suppress(OSError):
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
