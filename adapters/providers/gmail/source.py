"""Gmail as a `MailSource` (adapters.providers.sources): the `ProviderSource` over
`GmailClient`, its cursor taken first (Gmail has a "now" cursor), with the mailbox's Gmail
watch as its push channel."""

from __future__ import annotations

from adapters.providers.client import PushSubscription
from adapters.providers.gmail.client import GmailClient
from adapters.providers.sources import ProviderSource, PushTarget


class GmailWatch:
    """The Gmail watch of a mailbox (renewing is watching again)."""

    def __init__(self, client: GmailClient) -> None:
        self.client = client

    def subscribe(self, address: str, target: PushTarget) -> PushSubscription:
        if not target.topic:
            raise ValueError("a Gmail watch needs a Pub/Sub topic")
        return self.client.watch(address, target.topic, target.labels)

    def renew(self, address: str, subscription_id: str | None, target: PushTarget
              ) -> PushSubscription | None:
        return self.subscribe(address, target)

    def unsubscribe(self, address: str, subscription_id: str | None) -> bool:
        self.client.stop(address)
        return True


def gmail_source(client: GmailClient) -> ProviderSource:
    return ProviderSource(client, cursor_first=True, push=GmailWatch(client))
