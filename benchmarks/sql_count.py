"""Counting the SQL statements a benchmark process sends (issue #15: round trips per delivery).

`install()` wraps psycopg's entry points in this process — a cursor's execute, executemany,
copy and stream, and the connection's own commands (BEGIN, COMMIT, ROLLBACK, SET) — so every
statement any code of the process sends through psycopg is counted, by its first words
("SELECT count(*) FROM content_keys", "" for the pool's connection check). A benchmark's own
instrument, never installed by the engine. PostgreSQL here has no pg_stat_statements, and the
server's counters would mix in the other processes of the run.

`dump(path)` writes the counts as JSON; `statements(paths)` sums such files.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

COUNTS: Counter[str] = Counter()
_lock = threading.Lock()
_WORDS = 6


def _label(query: object, conn: object = None) -> str:
    if isinstance(query, bytes):
        text = query.decode(errors="replace")
    elif isinstance(query, str):
        text = query
    elif isinstance(query, sql.Composable):
        try:
            text = query.as_string(conn if isinstance(conn, psycopg.Connection) else None)
        except Exception:  # a label only
            text = repr(query)
    else:
        text = str(query)
    text = re.sub(r'"[^"]*"\.', "", text)  # schema-qualified names read the same in every run
    return " ".join(text.split()[:_WORDS]) or "(empty: connection check)"


def _count(label: str) -> None:
    with _lock:
        COUNTS[label] += 1


def _wrap(method: Callable[..., Any], how: str) -> Callable[..., Any]:
    @functools.wraps(method)
    def counted(self: Any, query: object, *args: Any, **kwargs: Any) -> Any:
        _count(f"{how}{_label(query, getattr(self, 'connection', None))}")
        return method(self, query, *args, **kwargs)

    return counted


def install() -> None:
    """Count every statement psycopg sends from now on, in this process."""
    from psycopg._connection_base import BaseConnection

    cursor = psycopg.Cursor
    cursor.execute = _wrap(cursor.execute, "")  # type: ignore[method-assign]
    cursor.executemany = _wrap(cursor.executemany, "many: ")  # type: ignore[method-assign]
    cursor.copy = _wrap(cursor.copy, "copy: ")  # type: ignore[method-assign]
    cursor.stream = _wrap(cursor.stream, "stream: ")  # type: ignore[method-assign]
    command = BaseConnection._exec_command

    def exec_command(self: Any, query: object, *args: Any, **kwargs: Any) -> Any:
        _count(_label(query, self))
        return (yield from command(self, query, *args, **kwargs))  # type: ignore[arg-type]

    BaseConnection._exec_command = exec_command  # type: ignore[method-assign, assignment]


def dump(path: str) -> None:
    with _lock:
        counts = dict(COUNTS)
    Path(path).write_text(json.dumps(counts))


def statements(paths: Iterable[Path]) -> Counter[str]:
    total: Counter[str] = Counter()
    for path in paths:
        total.update(json.loads(path.read_text()))
    return total
