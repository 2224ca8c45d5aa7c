"""crmsync's own infrastructure errors; adapters translate library errors into these."""


class StoreError(Exception):
    """The event store or a view store failed (I/O, corrupt data)."""


class ConcurrencyConflict(StoreError):
    """Another writer appended to the same tenant stream first; reload and decide again."""


class UnparseableMessage(ValueError):
    """A raw RFC 5322 message that cannot become a MailMessage (no usable From or Date, broken
    MIME, undecodable headers); `reason` says why, for the sync status and the logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedPayload(ValueError):
    """JSON from outside (a webhook body, a stored delivery, a provider's API response) that
    cannot be read. `field` names where, as a dotted path into the payload
    (`message.data.historyId`, `value[2].clientState`, `body`); `reason` says what is wrong.
    The generic readers (`adapters.providers.json_fields`) raise it; each boundary says whose
    input it was: `MalformedWebhook` for deliveries, `MalformedResponse` for API answers."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MalformedWebhook(MalformedPayload):
    """A webhook delivery (a body the receiver got, or a stored delivery a worker fetched) that
    cannot be read. Answered as 400 `{detail, field}` by the receiver; a worker dead-letters a
    stored one at once (retrying cannot make it readable)."""


class DeliveryStoreError(Exception):
    """A webhook delivery could not be made durable (NATS JetStream or the SQLite inbox failed,
    timed out or is unreachable). The provider gets 503 with Retry-After and delivers again."""


class ProviderError(Exception):
    """A provider API call (Gmail, Microsoft Graph) failed: an unexpected status, an unreadable
    response, the network. `provider` is `gmail` / `graph`, `status` the HTTP status when there
    was one. The text names the request's path and the provider's error code and message, never
    the access token, the query string (Graph links carry delta tokens) or any header."""

    def __init__(self, provider: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason
        self.status = status


class CursorExpired(ProviderError):
    """The sync cursor is no longer valid (Gmail: 404 on history.list for an old startHistoryId;
    Graph: 410 Gone or error code syncStateNotFound / resyncRequired on a delta link). Start a
    new round: a fresh cursor, then a backfill to cover the gap."""


class MailboxGone(ProviderError):
    """The mailbox itself is not there (deleted or renamed account, no mailbox licence, mail not
    enabled), as confirmed by a second request for the mailbox's root (Gmail users.getProfile,
    Graph the mailbox's inbox folder). Stop syncing it until an operator acts."""


class ProviderThrottled(ProviderError):
    """The provider kept answering 429 / 503 after the client's bounded retries. `retry_after`
    is the last wait the provider asked for (seconds): do not call again for this mailbox
    sooner."""

    def __init__(self, provider: str, reason: str, retry_after: float,
                 status: int | None = None) -> None:
        super().__init__(provider, reason, status)
        self.retry_after = retry_after


class CredentialStoreError(StoreError):
    """The mailbox credential store failed: no key configured, a wrong key, a ciphertext that
    does not decrypt (altered, or moved to another mailbox), or the database. The message names
    the mailbox and the key id, never a key, token, password or any plaintext."""


class CredentialsRejected(ProviderError):
    """The provider refused the mailbox's credentials and they cannot be renewed here: the
    access token was refused (401) even after a refresh, no refresh token is stored, or the
    token endpoint refused the refresh token (`invalid_grant`: revoked, expired, password
    changed). The mailbox must be reconnected with new credentials; retrying does not help.
    The text never holds a token, a client secret or the token endpoint's request."""


class MalformedResponse(ProviderError):
    """A provider API response (delta or history page, message resource, token answer) that
    cannot be read: a provider failure like any other (retried with backoff), never a webhook
    error. `field` and `reason` as in `MalformedPayload`; `what` names the request."""

    def __init__(self, provider: str, what: str, field: str, reason: str,
                 status: int | None = None) -> None:
        super().__init__(provider, f"{what}: unreadable response: {field}: {reason}", status)
        self.field = field
        self.detail = f"{field}: {reason}"
