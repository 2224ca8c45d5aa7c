"""Gmail API v1 writes for the outbox (the `OutboundClient` port), on the read client's HTTP
plumbing (token handling, retries, error translation: `adapters.providers.http`).

- send: users.messages.send with the RFC 822 message base64url-encoded in `raw` (and the Gmail
  `threadId` when replying in a provider thread); Gmail answers with the message id and thread.
- find_sent: users.messages.list `q=rfc822msgid:<id>` (trash and spam included: a message sent
  and then trashed was still sent).
- trash: users.messages.trash (recoverable for 30 days, like a user's delete in Gmail).
- set_read: users.messages.modify removing or adding the `UNREAD` label.

A 404 on trash/modify means the message is gone (False), unless the mailbox itself is gone
(users.getProfile fails too): `MailboxGone`.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from adapters.providers.gmail.client import MAILBOX_STATUSES, GmailClient
from adapters.providers.outbound import OutboundMessage, Sent


class GmailOutbound(GmailClient):
    def _ok(self, response: httpx.Response, mailbox: str, what: str) -> dict[str, Any] | None:
        """The JSON body; None when the message is gone (404); raises otherwise."""
        if response.status_code in MAILBOX_STATUSES:
            gone = self._mailbox_gone(mailbox)
            if gone is not None:
                raise gone
            if response.status_code == 404:
                return None
        if not response.is_success:
            raise self._http.failure(response, what)
        return self._http.json(response, what) if response.content else {}

    def send(self, mailbox_address: str, message: OutboundMessage) -> Sent:
        body: dict[str, str] = {
            "raw": base64.urlsafe_b64encode(message.rfc822()).decode().rstrip("=")}
        if message.provider_thread_id:
            body["threadId"] = message.provider_thread_id
        response = self._http.request("POST", self._user(mailbox_address, "messages", "send"),
                                      json=body)
        sent = self._ok(response, mailbox_address, "users.messages.send")
        if sent is None:
            raise self._http.failure(response, "users.messages.send")
        pid, thread = sent.get("id"), sent.get("threadId")
        return Sent(pid if isinstance(pid, str) and pid else None,
                    thread if isinstance(thread, str) and thread else None)

    def find_sent(self, mailbox_address: str, rfc_message_id: str) -> Sent | None:
        response = self._http.get(self._user(mailbox_address, "messages"),
                                  {"q": f"rfc822msgid:{rfc_message_id.strip('<>')}",
                                   "includeSpamTrash": "true", "maxResults": 10})
        listing = self._ok(response, mailbox_address, "users.messages.list")
        for item in (listing or {}).get("messages") or []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                thread = item.get("threadId")
                return Sent(item["id"], thread if isinstance(thread, str) else None)
        return None

    def trash(self, mailbox_address: str, provider_id: str) -> bool:
        response = self._http.request(
            "POST", self._user(mailbox_address, "messages", provider_id, "trash"))
        return self._ok(response, mailbox_address, "users.messages.trash") is not None

    def set_read(self, mailbox_address: str, provider_id: str, read: bool) -> bool:
        change = {"removeLabelIds" if read else "addLabelIds": ["UNREAD"]}
        response = self._http.request(
            "POST", self._user(mailbox_address, "messages", provider_id, "modify"), json=change)
        return self._ok(response, mailbox_address, "users.messages.modify") is not None
