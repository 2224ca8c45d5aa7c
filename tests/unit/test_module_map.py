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


def spec_table() -> str:
    """docs/architecture.md's "Where each SPEC section lives" table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index("## Where each SPEC section lives")
    return text[start:text.index("\n## ", start + 1)]


def stale_paths(text: str) -> list[str]:
    """The backticked `pkg/...` paths in `text` that name no module (`.py`) or package
    (directory) of this tree; a trailing `*` stands for every module it begins."""
    stale = []
    for path in re.findall(r"`([a-z_]+/[\w/]*\*?)`", text):
        found = any(ROOT.glob(path)) or any(ROOT.glob(path.removesuffix("*") + "*.py")) \
            if path.endswith("*") \
            else (ROOT / f"{path}.py").is_file() or (ROOT / path).is_dir()
        if not found:
            stale.append(path)
    return stale


def test_the_spec_table_names_only_modules_and_packages_that_exist() -> None:
    table = spec_table()
    assert len(re.findall(r"`[a-z_]+/", table)) > 40  # the table was found and parsed
    assert stale_paths(table) == []


def test_the_spec_table_check_catches_old_module_paths() -> None:
    # paths of the flat layout before issue #12, as the table named them
    old = ("`adapters/event_store`, `runners/engine`, `adapters/http_api`, `runners/cli`, "
           "`adapters/content_keys*`, `adapters/eventstore/store`, `adapters/providers/*`")
    assert stale_paths(old) == ["adapters/event_store", "runners/engine", "adapters/http_api",
                                "runners/cli", "adapters/content_keys*"]
