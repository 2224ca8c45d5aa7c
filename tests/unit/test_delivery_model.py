"""The one typed delivery (issue #12): decoded once where stored bytes come back, equal to what
the receiver parsed; bytes stored by the code before the typed model still decode; bytes that
are no delivery become `Undecodable` naming the field (the worker dead-letters them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.deliveries.model import (
    GmailPush,
    GraphChange,
    GraphLifecycle,
    Undecodable,
    WebhookDelivery,
    decode,
    encode,
    read_stored,
)
from adapters.deliveries.webhooks import GraphNotifications, parse_gmail_push, parse_graph
from adapters.deliveries.work_queue import Delivery
from adapters.errors import MalformedWebhook

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
# (provider, the body the receiver got, the bytes the receiver stored before the typed model):
# written by that code (mv2, b1f0a87) from these bodies, see the fixtures' README
STORED_BEFORE = [json.loads(line) for line in
                 (FIXTURES / "stored-before-typed-model.jsonl").read_text().splitlines()]


def parsed(provider: str, body: dict[str, Any]) -> WebhookDelivery:
    raw = json.dumps(body).encode()
    if provider == "gmail":
        return parse_gmail_push(raw)
    notifications = parse_graph(raw, {}, lambda subscription: "s3cret")
    assert isinstance(notifications, GraphNotifications)
    (item,) = notifications.items
    return item


@pytest.mark.parametrize("sample", STORED_BEFORE,
                         ids=[f"{s['provider']}-{n}" for n, s in enumerate(STORED_BEFORE)])
def test_bytes_stored_before_the_typed_model_decode_to_what_the_receiver_parses(
        sample: dict[str, Any]) -> None:
    stored = sample["stored"].encode()
    decoded = decode(sample["provider"], stored)
    assert decoded == parsed(sample["provider"], sample["body"])
    # and what is stored now decodes the same (Gmail's now carries its kind)
    assert decode(sample["provider"], encode(decoded)) == decoded


def test_every_kind_of_delivery_is_among_the_old_samples() -> None:
    kinds = {type(decode(s["provider"], s["stored"].encode())) for s in STORED_BEFORE}
    assert kinds == {GmailPush, GraphChange, GraphLifecycle}


def test_a_fetched_delivery_carries_its_typed_notice() -> None:
    (gmail, change, *_) = STORED_BEFORE
    for sample in (gmail, change):
        fetched = Delivery(sample["provider"], "id", sample["stored"].encode(), 1)
        assert fetched.notice == parsed(sample["provider"], sample["body"])


@pytest.mark.parametrize(("provider", "payload", "field"), [
    ("gmail", b"not json", "body"),
    ("gmail", b"[]", "body"),
    ("gmail", b'{"delivery_id": "gmail:1", "subscription": "s", "history_id": 1}',
     "email_address"),
    ("gmail", b'{"delivery_id": "gmail:1", "subscription": "s", "history_id": 1, '
              b'"email_address": "nobody"}', "email_address"),
    ("gmail", b'{"delivery_id": "gmail:1", "subscription": "s", "history_id": 1, '
              b'"email_address": "a@b.test", "extra": 1}', "extra"),
    ("graph", b'{"kind": "change", "subscription_id": "s", "delivery_id": "graph:1", '
              b'"client_state_ok": true, "change_type": "created", "resource_id": "r"}',
     "resource"),
    ("graph", b'{"kind": "lifecycle", "subscription_id": "s", "delivery_id": "graph:1", '
              b'"client_state_ok": true, "lifecycle_event": "renamed"}', "lifecycle_event"),
    ("graph", b'{"kind": "other"}', "body"),
    ("graph", b'{"subscription_id": "s"}', "body"),
    ("imap", b"{}", "provider"),
])
def test_stored_bytes_that_are_no_delivery_are_undecodable_naming_the_field(
        provider: str, payload: bytes, field: str) -> None:
    with pytest.raises(MalformedWebhook) as info:
        decode(provider, payload)
    assert info.value.field == field, info.value
    unreadable = read_stored(provider, payload)
    assert unreadable == Undecodable(field, info.value.reason)
    assert Delivery(provider, "id", payload, 1).notice == unreadable
