"""Where a one-process rebuild spends its time: read, decode, evolve, rows, writes.

`python -m benchmarks.rebuild --postgres URL --in-process --profile FILE` calls `profiled`:
cProfile on the rebuilding thread, and a second profiler inside the view-writer thread (the
build writes on one background thread, which cProfile's default hook does not see), installed
by wrapping `write_batch` where `projections.build` calls it, for this process only. The
rebuilding thread's time waiting for the writer is its own line ("waiting for the writer"):
that is what writes cost the critical path; the writer's own profile is printed under it. Both
profiles are dumped (FILE and FILE.writer) for `python -m pstats`.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

import projections.build as build_module

# (line in the report, (module path fragment, function name)): cumulative times of these
PHASES: list[tuple[str, tuple[str, str]]] = [
    ("read: select_notifications (SQL + fetch)", ("postgres.py", "select_notifications")),
    ("decode: mapper.to_domain_event", ("", "to_domain_event")),
    ("  of which unsealing content (keys.open)", ("content_keys.py", "open")),
    ("  of which pydantic validation", ("", "model_validate_json")),
    ("evolve: domain evolve", ("", "evolve")),
    ("message rows from events (event_rows)", ("", "event_rows")),
    ("rows from the final state (final_changes)", ("build.py", "final_changes")),
    ("history versions per time (Versions.flush)", ("versions.py", "flush")),
    ("waiting for the writer (Future.result)", ("_base.py", "result")),
]
WRITER: list[tuple[str, tuple[str, str]]] = [
    ("writer: views.write (whole)", ("postgres.py", "write")),
    ("  sealing + encoding rows", ("", "encoded")),
    ("  COPY rows: the binary stream built", ("postgres.py", "copy_binary")),
    ("  COPY rows: sent (Copy.write)", ("_copy.py", "write")),
    ("  commit", ("", "commit")),
]


def cumulative(stats: pstats.Stats, where: str, name: str) -> float:
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    return sum(float(v[3]) for (path, _, func), v in table.items()
               if (func == name or f"'{name}'" in func) and where in path)


def profiled(rebuild: Callable[[], None], out: str) -> str:
    writer = cProfile.Profile()
    original = build_module.write_batch  # type: ignore[attr-defined]

    def profiled_write(*args: Any, **kwargs: Any) -> Any:
        writer.enable()
        try:
            return original(*args, **kwargs)
        finally:
            writer.disable()

    build_module.write_batch = profiled_write  # type: ignore[attr-defined]
    main = cProfile.Profile()
    started = time.perf_counter()
    try:
        main.enable()
        rebuild()
        main.disable()
    finally:
        build_module.write_batch = original  # type: ignore[attr-defined]
    wall = time.perf_counter() - started
    main.dump_stats(out)
    writer.dump_stats(out + ".writer")
    ours, theirs = pstats.Stats(out, stream=sys.stderr), pstats.Stats(out + ".writer",
                                                                      stream=sys.stderr)
    lines = [f"profile of the rebuild ({wall:.1f} s wall under cProfile; rebuilding thread):"]
    for label, (where, name) in PHASES:
        spent = cumulative(ours, where, name)
        lines.append(f"  {label:48s} {spent:7.1f} s {100 * spent / wall:5.1f} %")
    lines.append("view-writer thread (runs beside the rebuilding thread, shares its GIL):")
    for label, (where, name) in WRITER:
        spent = cumulative(theirs, where, name)
        lines.append(f"  {label:48s} {spent:7.1f} s {100 * spent / wall:5.1f} %")
    return "\n".join(lines) + "\n"
