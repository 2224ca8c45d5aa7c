"""Command application: each command decided on its tenant's fresh state and appended, retried
against concurrent writers (E6), rejections recorded when the tenant exists (E8).

`CommandApplication` is the part of the Engine (runners.services.engine) that writes the log.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import orjson

from adapters.credentials.store import CredentialStore
from adapters.errors import ConcurrencyConflict
from adapters.eventstore.store import EventStore
from adapters.metrics import prometheus as metrics
from domain.commands import Command, parse_command
from domain.decide import MAX_AHEAD, decide, rejection_event
from domain.errors import MailboxNotLoaded, Rejection
from domain.events import CommandHadNoEffect, DomainEvent
from domain.state import TenantState, evolve
from runners.services.credentials import after_append, check_ready

Progress = Callable[[int, int], None]


@dataclass
class ApplyReport:
    applied: int = 0
    unchanged: int = 0  # accepted, nothing to do (duplicate command_id, same value again)
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)
    # per non-blank line: (line number, "applied" | "unchanged" | "rejected"); event-log position
    results: list[tuple[int, str]] = field(default_factory=list)
    # (line number, text): what an applied command's events say the caller should know (L4)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    position: int = 0  # global: for this process's waits only, never handed to a caller (§8)
    # tenant -> its stream version after applying: the position callers see (min_position)
    tenant_positions: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.applied} applied, {self.unchanged} unchanged, "
                f"{len(self.rejected)} rejected")


class Gate(Protocol):
    """An authenticated caller (HTTP API): the one tenant it may touch, the actor its commands
    and rejections are recorded under, and its permission check (raises Rejection)."""

    @property
    def tenant(self) -> str: ...

    @property
    def actor(self) -> str: ...

    def authorise(self, state: TenantState, command: Command) -> None: ...

    def recordable(self, state: TenantState) -> bool:
        """Whether the caller's rejections are kept (E8): an active user or a service."""
        ...


REJECTION_TEXT = 1024  # E8: at most this many bytes of caller-sent text in a CommandRejected
CUT = "…[cut]"


def bounded_rejection(rejection: Rejection) -> Rejection:
    """E8: the caller's text in a rejection (command name, field, a reason quoting their input)
    cut to about 1 KiB in all: 128 bytes each for name and field (and an operator's actor)."""
    return Rejection(bounded(rejection.cmd, 128), bounded(rejection.field, 128),
                     bounded(rejection.reason, REJECTION_TEXT - 3 * 128))


def bounded(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, marked when cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:max(0, limit - len(CUT.encode()))].decode(errors="ignore") + CUT


def retries(budget: float) -> Iterator[int]:
    """Attempt numbers 0, 1, ... for `budget` seconds (at least 3 attempts). Counted in time, not
    tries: a writer that lost to the others 20 times in a row under a burst must not give up
    (E6: no command is lost to concurrency), and one stuck for the whole budget says so."""
    deadline = time.monotonic() + budget
    attempt = 0
    while attempt < 3 or time.monotonic() < deadline:
        yield attempt
        attempt += 1


def backoff(attempt: int) -> float:
    """Randomised, growing, capped: colliding writers spread out instead of colliding again."""
    return random.uniform(0, min(0.5, 0.005 * 2 ** min(attempt, 7)))


T = TypeVar("T")


class _FoldedWhole(Exception):
    """A batch's lazy state could not fold a mailbox in place: decided again on a whole one."""


class CommandApplication(ABC):
    """The Engine's commands: what it needs from the rest of the Engine is declared here."""

    _store: EventStore
    credentials: CredentialStore | None
    follow: bool
    # seconds a command (or a sync batch) keeps retrying against concurrent writers
    retry_for: float = 60.0

    @abstractmethod
    def catch_up(self, progress: Progress | None = None) -> int:
        """The Engine's (runners.services.engine): bring the views up to the log."""

    def execute(self, command: Command, *, now: datetime, correlation_id: str,
                gate: Gate | None = None) -> list[DomainEvent]:
        """Decide and append one command; retried on a concurrent append, each time decided
        again on the fresh state (a command without `at` takes the later of `now` and the
        tenant's latest event, E6: concurrent writers are never rejected for time). Raises
        Rejection.

        Then the credential store follows the events (`runners.services.credentials.after_append`);
        its failure raises CredentialStoreError after the events were appended.
        """
        check_ready(self.credentials, command)
        for attempt in retries(self.retry_for):
            if attempt:
                time.sleep(backoff(attempt))
            state = self._store.state(command.tenant, lazy=True)

            def decided(s: TenantState) -> list[DomainEvent]:
                if gate is not None:
                    gate.authorise(s, command)
                return decide(s, command, now=now, correlation_id=correlation_id)

            try:
                events = self._lazily(state, decided)
                self._store.append(state, events)
            except (ConcurrencyConflict, _FoldedWhole):
                continue
            after_append(self.credentials, self._store, command, state, events)
            return events
        raise ConcurrencyConflict(f"tenant {command.tenant!r}: too many concurrent writers")

    def execute_batch(self, commands: Sequence[Command], *, now: datetime,
                      correlation_id: str) -> list[list[DomainEvent]]:
        """Decide many commands of one tenant in order and append all their events in ONE
        transaction (the sync workers' batches). A rejected command becomes its CommandRejected
        event in the batch and the others go on. Retried whole on a concurrent append. Returns
        each command's events. Not for commands carrying credentials (nothing follows the
        append). Every retry decides again on the fresh state, so the other writer's later
        events date these (E6), never reject them. Raises ConcurrencyConflict when the retries
        run out and the store's errors as they are: nothing of the batch was appended, and the
        caller (a sync worker) must not acknowledge what it was doing."""
        if not commands:
            return []
        tenant = commands[0].tenant
        if any(cmd.tenant != tenant for cmd in commands):
            raise ValueError("a batch holds the commands of one tenant")
        for attempt in retries(self.retry_for):
            if attempt:
                time.sleep(backoff(attempt))
            state = self._store.state(tenant, lazy=True)
            base = state.seq
            results: list[list[DomainEvent]] = []
            try:
                for cmd in commands:
                    events = self._decided(state, cmd, now, correlation_id)
                    for event in events:
                        evolve(state, event, state.seq + 1)
                    results.append(events)
                self._store.append_folded(state, base, [e for r in results for e in r])
            except (ConcurrencyConflict, _FoldedWhole):
                continue
            except BaseException:
                self._store.forget(tenant)
                raise
            metrics.batch_rejections(e for r in results for e in r)
            return results
        raise ConcurrencyConflict(f"tenant {tenant!r}: too many concurrent writers")

    def _lazily(self, state: TenantState, run: Callable[[TenantState], T]) -> T:
        """`run(state)`; when `state` is lazy (#15), the mailboxes it asks for folded first and
        `run` called again (each time one more mailbox: it ends). _FoldedWhole when one cannot
        be folded in place: the tenant is folded whole, and the caller decides again."""
        while True:
            try:
                return run(state)
            except MailboxNotLoaded as missing:
                if not self._store.load_mailboxes(state, missing.mailboxes):
                    raise _FoldedWhole from None

    def _decided(self, state: TenantState, cmd: Command, now: datetime, correlation_id: str
                 ) -> list[DomainEvent]:
        """A batch's command decided on `state` (a rejection as its CommandRejected), the
        mailboxes its events fold into folded first when `state` is lazy."""
        def decided(s: TenantState) -> list[DomainEvent]:
            try:
                events = decide(s, cmd, now=now, correlation_id=correlation_id)
            except Rejection as rejection:
                events = [rejection_event(s, cmd, rejection, now=now,
                                          correlation_id=correlation_id,
                                          actor=cmd.actor or "system:sync")]
            if self._store.lazy is not None and not self._store.lazy.ready_for(s, events):
                raise _FoldedWhole
            return events

        return self._lazily(state, decided)

    def _record_rejection(self, raw: Any, rejection: Rejection, now: datetime, corr: str,
                          gate: Gate | None = None) -> None:
        tenant = raw.get("tenant") if isinstance(raw, dict) else None
        if not isinstance(tenant, str) or (gate is not None and tenant != gate.tenant):
            return
        state = self._store.state(tenant, lazy=True)  # (a rejection reads no mailbox)
        if state.seq == 0:
            return  # no such tenant: nothing to attach the record to
        if gate is not None and not gate.recordable(state):
            return  # E8: not an active user or service of the tenant: store nothing
        actor = raw.get("actor") if isinstance(raw.get("actor"), str) else "system:cli"
        if gate is not None:
            actor = gate.actor
        at = now
        if isinstance(raw.get("at"), str):
            try:
                parsed = datetime.fromisoformat(raw["at"])
            except ValueError:
                parsed = None
            # never a time the clock would refuse (E6): the record would date the tenant ahead
            if parsed is not None and parsed.tzinfo is not None and parsed <= now + MAX_AHEAD:
                at = parsed
        event = rejection_event(state, rejection.cmd, rejection, now=at, correlation_id=corr,
                                actor=bounded(actor, 128))
        with contextlib.suppress(ConcurrencyConflict):  # best effort: the caller was told
            self._store.append(state, [event])

    def apply_lines(self, lines: Iterable[str | bytes], now: datetime | None = None, *,
                    gate: Gate | None = None) -> ApplyReport:
        """Apply JSON Lines commands in order, each on its own (blank lines are skipped).

        With a `gate`, commands of another tenant are rejected (and recorded nowhere), each
        command runs as the gate's actor, and the gate authorises it on the tenant's state.
        """
        report = ApplyReport()
        touched: set[str] = set() if gate is None else {gate.tenant}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            at = now or datetime.now(UTC)
            corr = f"cmd:{uuid.uuid4()}"
            try:
                command = parse_command(line)
                if gate is None:
                    touched.add(command.tenant)
                if gate is not None:
                    if command.tenant != gate.tenant:
                        raise Rejection(command.cmd, "tenant", "not the tenant of your token")
                    command = command.model_copy(update={"actor": gate.actor})
                events = self.execute(command, now=at, correlation_id=corr, gate=gate)
            except Rejection as refused:
                rejection = bounded_rejection(refused)
                metrics.rejected(rejection.cmd, rejection.field)
                report.rejected.append((number, rejection.cmd, rejection.field, rejection.reason))
                report.results.append((number, "rejected"))
                try:
                    raw = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raw = None
                self._record_rejection(raw, rejection, at, corr, gate)
                continue
            report.warnings += [(number, w) for e in events for w in getattr(e, "warnings", ())]
            if any(not isinstance(e, CommandHadNoEffect) for e in events):
                report.applied += 1
                report.results.append((number, "applied"))
            else:
                report.unchanged += 1
                report.results.append((number, "unchanged"))
        if self.follow:
            self.catch_up()
        report.position = self._store.max_position()
        report.tenant_positions = {t: self._store.state(t, lazy=True).seq
                                   for t in sorted(touched)}
        return report
