"""Microsoft Graph v1.0 writes for the outbox (the `OutboundClient` port), on the read client's
HTTP plumbing.

- send: create a draft from the MIME message (`POST /users/{m}/messages`, `Content-Type:
  text/plain`, base64 MIME — so our Message-ID, In-Reply-To and References are kept), then `POST
  /messages/{id}/send`. With `Prefer: IdType="ImmutableId"` the draft's id stays the message's id
  in Sent Items, so it is the provider id of the ack. A draft left by a crash between the two
  requests is found by `find_sent` (as a draft) and sent, not created again.
- find_sent: `$filter=internetMessageId eq '<id>'`; a draft is sent first (see above).
- trash: `DELETE /users/{m}/messages/{id}` (Graph moves it to Deleted Items).
- set_read: `PATCH /users/{m}/messages/{id}` `{"isRead": …}`.

A 404 on a message means it is gone (False), unless the mailbox itself is gone (MailboxGone,
decided like the read client: error codes, else a probe of the inbox folder).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from adapters.providers.graph.client import GraphClient
from adapters.providers.outbound import OutboundMessage, Sent

_IMMUTABLE = ("Prefer", 'IdType="ImmutableId"')


class GraphOutbound(GraphClient):
    def _ok(self, response: httpx.Response, mailbox: str, what: str) -> dict[str, Any] | None:
        self._check_mailbox(mailbox, response, what)
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise self._http.failure(response, what)
        return self._http.json(response, what) if response.content else {}

    def _send_draft(self, mailbox: str, draft_id: str) -> None:
        response = self._http.request("POST", self._user(mailbox, "messages", draft_id, "send"),
                                      headers=[_IMMUTABLE])
        if self._ok(response, mailbox, "send draft") is None:
            raise self._http.failure(response, "send draft")

    def send(self, mailbox_address: str, message: OutboundMessage) -> Sent:
        response = self._http.request(
            "POST", self._user(mailbox_address, "messages"),
            headers=[_IMMUTABLE, ("Content-Type", "text/plain")],
            content=base64.b64encode(message.rfc822()))
        draft = self._ok(response, mailbox_address, "create draft")
        draft_id = (draft or {}).get("id")
        if not isinstance(draft_id, str) or not draft_id:
            raise self._http.error("create draft: no message id in the answer")
        self._send_draft(mailbox_address, draft_id)
        thread = (draft or {}).get("conversationId")
        return Sent(draft_id, thread if isinstance(thread, str) else None)

    def find_sent(self, mailbox_address: str, rfc_message_id: str) -> Sent | None:
        quoted = rfc_message_id.replace("'", "''")
        response = self._http.get(
            self._user(mailbox_address, "messages"),
            {"$filter": f"internetMessageId eq '{quoted}'",
             "$select": "id,conversationId,isDraft", "$top": 10}, [_IMMUTABLE])
        listing = self._ok(response, mailbox_address, "messages by internetMessageId")
        for item in (listing or {}).get("value") or []:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            if item.get("isDraft") is True:  # created, never sent (a crash in between)
                self._send_draft(mailbox_address, item["id"])
            thread = item.get("conversationId")
            return Sent(item["id"], thread if isinstance(thread, str) else None)
        return None

    def trash(self, mailbox_address: str, provider_id: str) -> bool:
        response = self._http.request("DELETE", self._user(mailbox_address, "messages",
                                                           provider_id), headers=[_IMMUTABLE])
        return self._ok(response, mailbox_address, "delete message") is not None

    def set_read(self, mailbox_address: str, provider_id: str, read: bool) -> bool:
        response = self._http.request("PATCH", self._user(mailbox_address, "messages",
                                                          provider_id),
                                      headers=[_IMMUTABLE], json={"isRead": read})
        return self._ok(response, mailbox_address, "update message") is not None
