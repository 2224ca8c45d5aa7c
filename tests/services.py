"""What tests need from outside the repository: a missing service or corpus file skips the test
with the reason, or fails it under CRMSYNC_REQUIRE_SERVICES=1 (CI has them all)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from benchmarks.corpus import shared_dir


def missing(reason: str) -> NoReturn:
    if os.environ.get("CRMSYNC_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required but unavailable: {reason}")
    pytest.skip(reason)


def corpus_file(*parts: str) -> Path:
    """A file of shared/corpora ($CRMSYNC_SHARED, else shared/ inside or beside the repository)."""
    shared = shared_dir()
    path = shared.joinpath("corpora", *parts) if shared is not None else None
    if path is None or not path.is_file():
        missing(f"shared corpus file corpora/{'/'.join(parts)} not found (set CRMSYNC_SHARED)")
    return path
