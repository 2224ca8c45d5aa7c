"""OAuth 2.0 token refresh for the Gmail and Graph mailboxes (issue #4).

- `TokenEndpoint.exchange(refresh_token)`: the `refresh_token` grant (RFC 6749 §6) at a
  provider's token endpoint (Google `https://oauth2.googleapis.com/token`, Microsoft identity
  platform `https://login.microsoftonline.com/common/oauth2/v2.0/token`), with the app's client
  id and secret as form fields. Answers the new access token, the new refresh token when the
  provider rotates it (Microsoft does), and its expiry. `invalid_grant` (the refresh token was
  revoked, expired or belongs to a changed password) is `CredentialsRejected`: the mailbox needs
  reconnecting. Anything else (our client id/secret refused, an outage, the network) is
  `ProviderError` and worth retrying once the cause is fixed.
- `StoredOAuthToken`: one mailbox's token as the provider clients use it — the callable gives
  the current access token, `refresh()` renews it at the endpoint and writes the new token back
  to the encrypted credential store (keeping every other field), unless the stored credentials
  changed or were erased meanwhile.

No token, refresh token or client secret appears in an exception, a log line, or an error text
the endpoint echoes (replaced by `[secret]`); httpx exceptions are not chained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ssl import SSLContext
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from adapters.credentials.store import CredentialStore
from adapters.deliveries.webhooks import json_object
from adapters.errors import CredentialsRejected, MalformedWebhook, ProviderError

DEFAULT_GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
DEFAULT_MICROSOFT_TOKEN_URL = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

log = structlog.get_logger("crmsync.oauth")


@dataclass(frozen=True)
class RefreshedToken:
    access_token: str
    refresh_token: str | None  # a rotated refresh token; None: keep the one used
    expires_at: datetime | None

    def __repr__(self) -> str:  # never show the tokens
        return f"RefreshedToken(expires_at={self.expires_at!r})"


class TokenEndpoint:
    """One provider's token endpoint with this deployment's OAuth client."""

    def __init__(self, provider: str, url: str, client_id: str, client_secret: str | None, *,
                 scope: str | None = None, timeout: float = 30.0,
                 verify: SSLContext | bool = True,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 transport: httpx.BaseTransport | None = None) -> None:
        split = urlsplit(url)
        if split.scheme != "https" and not (split.scheme == "http"
                                            and split.hostname in LOOPBACK_HOSTS):
            raise ValueError(f"{provider}: the token endpoint must be https: {url!r}")
        self.provider, self.url = provider, url
        self.client_id, self._client_secret, self.scope = client_id, client_secret, scope
        self.timeout, self.verify, self.clock = timeout, verify, clock
        self.transport = transport  # None: the network (unit tests: httpx.MockTransport)

    def __repr__(self) -> str:
        return f"TokenEndpoint({self.provider!r}, {self.url!r})"

    def _scrub(self, text: str, *secrets: str | None) -> str:
        for secret in (*secrets, self._client_secret):
            if secret:
                text = text.replace(secret, "[secret]")
        return text

    def exchange(self, refresh_token: str) -> RefreshedToken:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                "client_id": self.client_id}
        if self._client_secret:
            form["client_secret"] = self._client_secret
        if self.scope:
            form["scope"] = self.scope
        path = urlsplit(self.url).path
        failure: str | None = None
        try:
            with httpx.Client(timeout=self.timeout, verify=self.verify, follow_redirects=False,
                              transport=self.transport) as client:
                response = client.post(self.url, data=form,
                                       headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:  # raised below, outside this block: no __context__
            failure = type(exc).__name__
        if failure is not None:
            raise ProviderError(self.provider, f"token refresh: POST {path}: {failure}")
        try:
            body = json_object(response.content, max_bytes=1 << 20)
        except MalformedWebhook:
            body = {}
        if response.is_success:
            return self._token(body, refresh_token)
        error = body.get("error")
        code = error if isinstance(error, str) else ""
        description = body.get("error_description")
        detail = self._scrub(f"{code}: {description}" if isinstance(description, str) else code,
                             refresh_token)[:300]
        reason = f"token refresh: {response.status_code} {detail}".rstrip(": ")
        if code == "invalid_grant":
            raise CredentialsRejected(
                self.provider, f"{reason} (the refresh token was refused: reconnect the mailbox)",
                response.status_code)
        raise ProviderError(self.provider, reason, response.status_code)

    def _token(self, body: dict[str, Any], used: str) -> RefreshedToken:
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise ProviderError(self.provider, "token refresh: the answer has no access_token")
        rotated = body.get("refresh_token")
        expires_in = body.get("expires_in")
        expires_at = None
        if isinstance(expires_in, (int, float, str)) and str(expires_in).isdigit():
            expires_at = self.clock() + timedelta(seconds=int(expires_in))
        return RefreshedToken(access, rotated if isinstance(rotated, str) and rotated
                              and rotated != used else None, expires_at)


class StoredOAuthToken:
    """The access token of one mailbox, read from the credential store when opened.

    `__call__` gives the current access token (ProviderHttp asks on every request). `refresh()`
    renews it: with the stored `refresh_token` at `endpoint`, then writes the credentials back
    with the new access token (and rotated refresh token, expiry). If another process changed
    the stored credentials meanwhile (it refreshed first, or the mailbox was reconnected), those
    are taken instead of refreshing again; if they were erased (DisconnectMailbox, DeleteUser),
    nothing is written. `still_set()` is asked after the write: a removal that slipped in
    between erases the row again, so a refresh never outlives a disconnection.
    """

    def __init__(self, store: CredentialStore, tenant: str, mailbox: str,
                 credentials: dict[str, Any], endpoint: TokenEndpoint | None, *,
                 provider: str, still_set: Callable[[], bool] = lambda: True) -> None:
        self.store, self.tenant, self.mailbox = store, tenant, mailbox
        self._credentials = dict(credentials)
        self.endpoint, self.provider, self.still_set = endpoint, provider, still_set
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"StoredOAuthToken({self.tenant!r}, {self.mailbox!r})"

    def __call__(self) -> str:
        return str(self._credentials.get("access_token") or "")

    def refresh(self) -> None:
        stored = self.store.get(self.tenant, self.mailbox)
        if stored is None:
            raise CredentialsRejected(self.provider, "the access token was refused and the "
                                      "mailbox's credentials were removed meanwhile")
        if stored.get("access_token") != self._credentials.get("access_token"):
            self._credentials = dict(stored)  # refreshed (or reconnected) by someone else
            log.info("oauth_token_reloaded", tenant=self.tenant, mailbox=self.mailbox)
            return
        refresh_token = stored.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise CredentialsRejected(self.provider, "the access token was refused (401) and "
                                      "no refresh token is stored: reconnect the mailbox", 401)
        if self.endpoint is None:
            raise ProviderError(self.provider, "the access token was refused (401) and token "
                                "refresh is not configured (the OAuth client id is not set)",
                                401)
        fresh = self.endpoint.exchange(refresh_token)
        updated = {**stored, "access_token": fresh.access_token}
        if fresh.refresh_token is not None:
            updated["refresh_token"] = fresh.refresh_token
        if fresh.expires_at is not None:
            updated["expires_at"] = fresh.expires_at.isoformat()
        again = self.store.get(self.tenant, self.mailbox)
        if again is None or again.get("refresh_token") != refresh_token:
            # erased or replaced while we asked: ours must not overwrite theirs
            if again is None:
                raise CredentialsRejected(self.provider, "the mailbox's credentials were "
                                          "removed during the token refresh")
            self._credentials = dict(again)
            return
        self.store.put(self.tenant, self.mailbox, updated)
        if not self.still_set():
            self.store.erase(self.tenant, self.mailbox)
            raise CredentialsRejected(self.provider, "the mailbox's credentials were removed "
                                      "during the token refresh")
        self._credentials = updated
        self.refreshes += 1
        log.info("oauth_token_refreshed", tenant=self.tenant, mailbox=self.mailbox,
                 provider=self.provider, rotated=fresh.refresh_token is not None)
