"""How the HTTP API's requests share one engine without a process-wide lock: command chunks take
the writer lane one at a time (the engine's tenant states are shared), token checks read the
users' status as of the last chunk while a chunk runs, and reads wait (bounded) for the views
when asked to (`min_position`).
"""

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from adapters.http.errors import ApiError, invalid
from adapters.http.tokens import Principal, status_refusal

if TYPE_CHECKING:  # the composition root builds the engine; the API only uses it
    from runners.services.engine import Engine

T = TypeVar("T")


class Lanes:
    """The writer lane over `engine`, the token status seen under it, and bounded waits of at
    most `max_wait` seconds for the views."""

    def __init__(self, engine: "Engine", max_wait: float) -> None:
        self.engine, self.max_wait = engine, max_wait
        self.writer = threading.Lock()  # one command chunk at a time
        # (tenant, user) -> (active, tokens revoked at): what a token check needs, as last seen
        # under the writer lane, so a read never waits for a command chunk to end (`refused`)
        self.principals: dict[str, dict[str, tuple[bool, float | None]]] = {}

    def look_up(self, tenant: str, user: str) -> tuple[bool, float | None]:
        """Under the writer lane: the user's status from the tenant's fresh state."""
        found = self.engine.state(tenant, lazy=True).users.get(user)  # (users: tenant-wide)
        seen = (False, None) if found is None else (
            found.active,
            None if found.tokens_revoked_at is None else found.tokens_revoked_at.timestamp())
        self.principals.setdefault(tenant, {})[user] = seen
        return seen

    def republish(self, tenant: str) -> None:
        """Under the writer lane, after a command chunk: refresh the tenant's known users, so a
        deactivation or RevokeTokens applied here is refused at once by the next request."""
        for user in list(self.principals.get(tenant, ())):
            self.look_up(tenant, user)

    def refused(self, who: Principal) -> str | None:
        """§8: why a valid token is refused now, or None. Reads fresh state when the writer lane
        is free (or the user was never seen); while a command chunk holds it, the status as of
        the last chunk (`republish`), so readers never stall behind writers."""
        # services are revoked by rotating the secret (docs/decisions/http-and-security.md)
        if who.service:
            return None
        key = (who.tenant, who.user)
        if self.writer.acquire(blocking=who.user not in self.principals.get(who.tenant, {})):
            try:
                active, revoked = self.look_up(*key)
            finally:
                self.writer.release()
        else:
            active, revoked = self.principals[who.tenant][who.user]
        return status_refusal(active, revoked, who.issued_at)

    def log_position(self, who: Principal, min_position: int | None) -> int | None:
        """The log position to wait for, from a position of the caller's tenant (§8)."""
        if min_position is None or min_position == 0:
            return min_position
        with self.writer:
            latest = self.engine.state(who.tenant, lazy=True).seq
            if min_position > latest:
                raise invalid("min_position", f"{min_position} is beyond your tenant's latest "
                              f"position ({latest})")
            return self.engine.log_position(who.tenant, min_position)

    def answer(self, min_position: int | None, query: Callable[[], T]) -> T:
        """Wait for the projections when asked to (bounded), then query. No process-wide lock:
        reads, live or as of `at` (the views' histories, see Engine.reader), run beside
        commands."""
        if min_position is not None:
            reached = self.engine.wait_for(min_position, self.max_wait)
            if min_position > reached.log:
                raise invalid("min_position", f"{min_position} is beyond the end of the "
                              f"event log (position {reached.log})")
            if reached.views < min_position:
                raise ApiError(503, f"projections are at position {reached.views}, not yet at "
                               f"min_position {min_position} after {self.max_wait:g} s; retry",
                               {"Retry-After": "1"})
        return query()

    def answer_from_state(self, min_position: int | None, query: Callable[[], T]) -> T:
        """For the admin queries, which read the tenant's folded state: under the writer lane,
        the one thing that changes that state in this process (they are rare; a reader of the
        views never waits for it)."""
        def locked() -> T:
            with self.writer:
                return query()

        return self.answer(min_position, locked)
