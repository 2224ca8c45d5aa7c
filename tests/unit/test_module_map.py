"""issue #12: the module map in docs/architecture.md names every module of the four packages,
under the heading of its package, so a newcomer finds every room."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def map_entries() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Module map"):]
    found: set[str] = set()
    package = ""
    for line in section.splitlines():
        heading = re.match(r"### `(.+)/`", line)
        if heading:
            package = heading.group(1)
        entry = re.match(r"- `(\w+)` — \S", line)
        if entry and package:
            found.add(f"{package}/{entry.group(1)}.py")
    return found


def test_module_map_names_every_module_with_a_description() -> None:
    modules = {p.relative_to(ROOT).as_posix()
               for top in ("domain", "projections", "adapters", "runners")
               for p in (ROOT / top).rglob("*.py") if p.name != "__init__.py"}
    entries = map_entries()
    assert modules - entries == set(), "modules missing from docs/architecture.md's module map"
    assert entries - modules == set(), "the module map names modules that do not exist"
