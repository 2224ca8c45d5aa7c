"""A snapshot's version is the hash of the fold that made it (`fold_modules`: `domain.state` and
every domain module it imports), so a deploy that changes only rules keeps the snapshots and the
first command after it stays under a second (issue #15), while any change to the events, the
state's classes or a fold retires them (E3: a snapshot always equals the fold of the log).

What makes that safe is checked on the running code, not only read from the imports: every
domain module whose code runs while decided histories (31 of the 61 event kinds) are folded into
both states and pickled and unpickled is among the hashed modules, and so is every module a
snapshot's pickle names; every fold registered in `FOLDS` (all kinds) is defined there."""

from __future__ import annotations

import pickle
import pickletools
import random
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from histories import T0, history
from test_command_state_without_content import extra, outcome

import domain
from adapters.eventstore.snapshots import code_version, fold_modules, fold_version
from domain.commands import parse_command
from domain.errors import Rejection
from domain.events import DomainEvent
from domain.state import FOLDS, TenantState, evolve

DOMAIN = Path(domain.__file__).parent
FOLDED = {p.resolve() for p in fold_modules(DOMAIN)}
# the rules: a change to any of them must keep the snapshots (else this change gains nothing)
RULES = ["decide.py", "mail.py", "sync_rules.py", "permissions.py", "visibility.py",
         "outbox.py", "records.py", "contacts.py", "lifecycle.py", "input_rules.py",
         "commands.py", "mail_commands.py", "crm_commands.py"]


def decided_history(seed: int) -> list[DomainEvent]:
    """A history of every command kind (those of the differential test of the command state)
    decided on the full state: the events the tracer below watches being folded."""
    state, rng, minutes, out = TenantState("acme"), random.Random(seed), 0, []
    for n, raw in enumerate(history(seed, 60 + 10 * seed)):
        for made in [extra(rng, state, n), raw] if n >= 13 else [raw]:
            minutes += 1
            at = T0 + timedelta(minutes=minutes)
            try:
                cmd = parse_command({**made, "tenant": "acme", "at": at.isoformat()})
            except Rejection:
                continue
            events, _ = outcome(state, cmd)
            for event in events:
                evolve(state, event, state.seq + 1)
            out += events
    return out


HISTORIES = [decided_history(seed) for seed in range(4)]


def test_every_domain_module_a_fold_or_a_snapshot_runs_is_in_the_snapshot_version() -> None:
    ran: set[str] = set()

    def watch(frame: FrameType, what: str, arg: Any) -> None:
        if what == "call":
            ran.add(frame.f_code.co_filename)

    states = []
    sys.setprofile(watch)  # (the rules ran above, untraced: they may use anything)
    try:
        for events in HISTORIES:
            for content in (True, False):
                state = TenantState("acme", message_content=content)
                for seq, event in enumerate(events, 1):
                    evolve(state, event, seq)
                states.append(state)
        blobs = [pickle.dumps(s, protocol=5) for s in states]
        restored = [pickle.loads(b) for b in blobs]
    finally:
        sys.setprofile(None)
    assert restored == states
    in_domain = {Path(f).resolve() for f in ran} & set(DOMAIN.resolve().glob("*.py"))
    assert len(in_domain) >= 8, sorted(p.name for p in in_domain)  # the tracer saw the fold
    assert in_domain <= FOLDED, sorted(p.name for p in in_domain - FOLDED)
    # and every module a snapshot's pickle names (the classes it rebuilds)
    named = {arg.split(" ")[0] if isinstance(arg, str) and " " in arg else arg
             for blob in blobs for op, arg, _ in pickletools.genops(blob)
             if op.name in ("GLOBAL", "SHORT_BINUNICODE", "BINUNICODE")}
    modules = {m for m in named if isinstance(m, str) and m.startswith("domain.")}
    assert modules, "the pickles name no domain class"
    assert {DOMAIN.joinpath(m.split(".", 1)[1] + ".py").resolve() for m in modules} <= FOLDED


def test_the_traced_histories_hold_most_event_kinds() -> None:
    """(What the test above traced: the folds of the other kinds are checked statically by
    the next test and by the imports.)"""
    kinds = {type(e) for events in HISTORIES for e in events}
    assert len(kinds) >= 25, sorted(k.__name__ for k in kinds)


def test_every_registered_fold_is_defined_in_the_snapshot_version() -> None:
    """A fold registered from a module outside the hash (a rule module adding to `FOLDS` when
    imported) would change the fold without changing the version."""
    for kind, fold in FOLDS.items():
        functions = [fold, *(c.cell_contents for c in fold.__closure__ or ()
                             if callable(c.cell_contents))]
        for fn in functions:
            source = Path(fn.__code__.co_filename).resolve()
            assert source in FOLDED, (kind.__name__, fn.__qualname__, source.name)


def test_the_rules_are_not_hashed() -> None:
    assert not {DOMAIN / r for r in RULES} & set(fold_modules(DOMAIN))
    assert {"state.py", "mail_folds.py", "record_folds.py", "contact_state.py", "tenant.py",
            "events.py", "mail_events.py", "packing.py", "message_table.py",
            "thread_table.py"} <= {p.name for p in fold_modules(DOMAIN)}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(DOMAIN, tmp_path / "domain", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "domain"


def _touch(path: Path, text: str = "\n# changed\n") -> None:
    path.write_text(path.read_text() + text)


def test_a_rule_change_keeps_the_snapshots(copy: Path) -> None:
    assert fold_version(copy) == code_version()
    for rule in RULES:
        _touch(copy / rule)
    (copy / "new_rule.py").write_text("LIMIT = 3\n")
    _touch(copy / "decide.py", "from domain.new_rule import LIMIT\n")
    assert fold_version(copy) == code_version()


@pytest.mark.parametrize("changed", ["state.py", "mail_folds.py", "mail_events.py", "packing.py",
                                     "tenant.py", "contact_state.py", "__init__.py"])
def test_a_fold_change_retires_the_snapshots(copy: Path, changed: str) -> None:
    _touch(copy / changed)
    assert fold_version(copy) != code_version()


@pytest.mark.parametrize("statement", ["from domain import new_fold\n",
                                       "from domain.new_fold import X\n",
                                       "import domain.new_fold\n",
                                       "from . import new_fold\n",
                                       "from .new_fold import X\n",
                                       "def f():\n    from domain.new_fold import X\n"])
def test_a_module_the_fold_comes_to_import_is_hashed(copy: Path, statement: str) -> None:
    (copy / "new_fold.py").write_text("X = 1\n")
    _touch(copy / "mail_folds.py", "\n" + statement)
    with_import = fold_version(copy)
    assert with_import != code_version()
    _touch(copy / "new_fold.py")  # and a change to it retires the snapshots again
    assert fold_version(copy) != with_import
    assert copy / "new_fold.py" in fold_modules(copy)
