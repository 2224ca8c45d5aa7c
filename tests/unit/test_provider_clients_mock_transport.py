"""Provider HTTP clients over `httpx.MockTransport` (issue #12): no loopback server needed.

Each test counts the requests that went out and checks what came back; the loopback
servers stay for the integration tests (TLS, real sockets)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from adapters.errors import CursorExpired, MailboxGone, ProviderError
from adapters.providers.gmail.client import GmailClient
from adapters.providers.graph.client import GraphClient
from adapters.providers.graph.contacts import GraphContactsClient
from adapters.providers.oauth import TokenEndpoint

GRAPH = "https://graph.test/v1.0"
GMAIL = "https://gmail.test"


class Provider:
    """A scripted provider: answers in order, and keeps every request it saw."""

    def __init__(self, *answers: httpx.Response | Callable[[httpx.Request], httpx.Response]):
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.answers.pop(0)
        return answer(request) if callable(answer) else answer

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def test_gmail_cursor_comes_from_the_profile_with_the_bearer_token() -> None:
    provider = Provider(httpx.Response(200, json={"historyId": "4711"}))
    client = GmailClient(lambda: "tok-1", GMAIL, transport=provider.transport)
    assert client.changes_since("mia@acme.test", None).new_cursor == "4711"
    assert [(r.method, r.url.path) for r in provider.seen] == [
        ("GET", "/gmail/v1/users/mia@acme.test/profile")]
    assert provider.seen[0].headers["Authorization"] == "Bearer tok-1"
    client.close()


def test_gmail_refreshes_a_refused_token_once_and_sends_again() -> None:
    tokens = iter(["old", "new"])
    current = [next(tokens)]
    refreshed: list[str] = []

    def refresh() -> None:
        refreshed.append(current[0])
        current[0] = next(tokens)

    provider = Provider(httpx.Response(401, json={"error": {"message": "expired"}}),
                        httpx.Response(200, json={"historyId": "9"}))
    client = GmailClient(lambda: current[0], GMAIL, refresh=refresh,
                         transport=provider.transport)
    assert client.current_cursor("mia@acme.test") == "9"
    assert refreshed == ["old"]
    assert [r.headers["Authorization"] for r in provider.seen] == ["Bearer old", "Bearer new"]


def test_gmail_retries_throttling_then_answers() -> None:
    provider = Provider(httpx.Response(429, headers={"Retry-After": "0"}),
                        httpx.Response(503, headers={"Retry-After": "0"}),
                        httpx.Response(200, json={"historyId": "12"}))
    client = GmailClient(lambda: "tok", GMAIL, backoff=0, transport=provider.transport)
    assert client.current_cursor("mia@acme.test") == "12"
    assert len(provider.seen) == 3


def test_gmail_404_on_history_is_an_expired_cursor_unless_the_mailbox_is_gone() -> None:
    expired = Provider(httpx.Response(404, json={"error": {"message": "not found"}}),
                       httpx.Response(200, json={"historyId": "50"}))
    client = GmailClient(lambda: "tok", GMAIL, transport=expired.transport)
    with pytest.raises(CursorExpired, match="startHistoryId 7 expired"):
        client.changes_since("mia@acme.test", "7")
    assert [r.url.path.rsplit("/", 1)[1] for r in expired.seen] == ["history", "profile"]
    assert expired.seen[0].url.params["startHistoryId"] == "7"

    gone = Provider(httpx.Response(404, json={"error": {"message": "no user"}}),
                    httpx.Response(404, json={"error": {"message": "no user"}}))
    client = GmailClient(lambda: "tok", GMAIL, transport=gone.transport)
    with pytest.raises(MailboxGone):
        client.changes_since("mia@acme.test", "7")
    assert len(gone.seen) == 2


def test_gmail_errors_never_show_the_token() -> None:
    provider = Provider(lambda r: httpx.Response(
        400, json={"error": {"message": f"bad token {r.headers['Authorization']}"}}))
    client = GmailClient(lambda: "secret-token-123", GMAIL, transport=provider.transport)
    with pytest.raises(ProviderError) as caught:
        client.current_cursor("mia@acme.test")
    assert "secret-token-123" not in str(caught.value)
    assert len(provider.seen) == 1


def _delta(link_key: str, link: str, *items: dict[str, object]) -> httpx.Response:
    return httpx.Response(200, json={"value": list(items), link_key: link})


def test_graph_delta_reads_removals_and_keeps_the_delta_link() -> None:
    link = f"{GRAPH}/users/mia@acme.test/mailFolders/inbox/messages/delta?$deltatoken=abc"
    removed = {"@odata.type": "#microsoft.graph.message", "id": "m1",
               "@removed": {"reason": "deleted"}}
    moved = {"@odata.type": "#microsoft.graph.message", "id": "m2",
             "@removed": {"reason": "changed"}}
    provider = Provider(_delta("@odata.deltaLink", link, removed, moved))
    client = GraphClient(lambda: "tok", GRAPH, transport=provider.transport)
    page = client.changes_since("mia@acme.test", None)
    assert (page.deleted_ids, page.left_scope_ids, page.messages) == (["m1"], ["m2"], [])
    assert (page.new_cursor, page.more) == (link, False)
    assert len(provider.seen) == 1
    sent = provider.seen[0]
    assert sent.url.path == "/v1.0/users/mia@acme.test/mailFolders/inbox/messages/delta"
    assert 'IdType="ImmutableId"' in sent.headers.get_list("Prefer")


def test_graph_gone_delta_is_an_expired_cursor() -> None:
    cursor = f"{GRAPH}/users/mia@acme.test/mailFolders/inbox/messages/delta?$deltatoken=old"
    provider = Provider(httpx.Response(410, json={"error": {"code": "SyncStateNotFound",
                                                            "message": "gone"}}))
    client = GraphClient(lambda: "tok", GRAPH, transport=provider.transport)
    with pytest.raises(CursorExpired):
        client.changes_since("mia@acme.test", cursor)
    assert [str(r.url) for r in provider.seen] == [cursor]


def test_graph_refuses_links_outside_its_base_url() -> None:
    provider = Provider(_delta("@odata.deltaLink", "https://elsewhere.test/delta?t=1"))
    client = GraphClient(lambda: "tok", GRAPH, transport=provider.transport)
    with pytest.raises(ProviderError, match="outside the configured API base URL"):
        client.changes_since("mia@acme.test", None)
    with pytest.raises(ValueError, match="not a Graph cursor"):
        client.changes_since("mia@acme.test", "https://elsewhere.test/delta?t=1")
    assert len(provider.seen) == 1  # the foreign cursor was never requested


def test_graph_contacts_client_takes_a_transport() -> None:
    provider = Provider(httpx.Response(404, json={"error": {"code": "ErrorItemNotFound",
                                                            "message": "gone"}}))
    client = GraphContactsClient(lambda: "tok", GRAPH, transport=provider.transport)
    assert client.get_contact("c-1") is None
    assert [(r.method, r.url.path) for r in provider.seen] == [("GET", "/v1.0/me/contacts/c-1")]


def test_token_endpoint_exchanges_a_refresh_token_over_a_transport() -> None:
    provider = Provider(httpx.Response(200, json={"access_token": "fresh", "expires_in": 3600,
                                                  "refresh_token": "rotated"}))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    endpoint = TokenEndpoint("gmail", "https://oauth.test/token", "client-1", "shh",
                             clock=lambda: now, transport=provider.transport)
    token = endpoint.exchange("r-1")
    assert (token.access_token, token.refresh_token) == ("fresh", "rotated")
    assert token.expires_at is not None and (token.expires_at - now).total_seconds() == 3600
    form = dict(httpx.QueryParams(provider.seen[0].content.decode()))
    assert form == {"grant_type": "refresh_token", "refresh_token": "r-1",
                    "client_id": "client-1", "client_secret": "shh"}
