"""What every route of the HTTP API reads from a request: the verified caller (`Who`), the
`at` and `min_position` query parameters, and path ids.
"""

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from adapters.http.errors import ApiError, invalid
from adapters.http.tokens import InvalidToken, Principal, verify
from domain.errors import NotFound
from domain.input_rules import could_be_id


def path_id(value: str) -> None:
    """A path id that nothing stored can carry (NUL, control characters, absurd length) is
    unknown: 404 like any unknown id (V12), never a store error."""
    if not could_be_id(value):
        raise NotFound("not found")


def parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise invalid("at", f"not an ISO-8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise invalid("at", "needs a UTC offset, e.g. 2026-01-01T00:00:00Z")
    return value


At = Annotated[str | None, Query(description="answer as of this domain time (ISO-8601 with "
                                             "offset)", json_schema_extra={"format": "date-time"})]
MinPosition = Annotated[int | None, Query(ge=0, description="read-your-writes: wait (bounded) "
                                          "until every projection has processed this position "
                                          "of your tenant (a `position` of /v1/commands)")]


BEARER = HTTPBearer(auto_error=False)


def principal(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
              ) -> Principal:
    """The verified caller; 401 for a missing, malformed, forged, expired or revoked token, or
    the token of a user who is not (or no longer) an active user of the tenant."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    try:
        who = verify(request.app.state.secret, credentials.credentials,
                     max_age=request.app.state.token_max_age)
    except InvalidToken as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None
    refused: str | None = request.app.state.refusal(who)
    if refused is not None:
        raise ApiError(401, refused, {"WWW-Authenticate": "Bearer"})
    return who


Who = Annotated[Principal, Depends(principal)]
