"""Provider payload parsing: Gmail push, Graph notifications, Graph delta and message resource,
Gmail history and format=full messages (adapters.deliveries.webhooks, graph_payloads,
gmail_payloads).

Real samples: the Gmail push envelope is copied into tests/fixtures/webhooks/ (see its README);
the Microsoft Graph samples and the Gmail discovery document are read from the shared corpus
(not copied, for licensing), and those tests skip with the reason when it is absent.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from services import corpus_file

from adapters.deliveries.webhooks import (
    MAX_VALIDATION_TOKEN,
    GraphChange,
    GraphLifecycle,
    GraphNotifications,
    GraphValidation,
    parse_gmail_push,
    parse_graph,
)
from adapters.errors import MalformedWebhook
from adapters.providers.gmail.payloads import gmail_message_to_mail, parse_gmail_history
from adapters.providers.graph.payloads import graph_message_to_mail, parse_graph_delta

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"


def corpus(name: str) -> bytes:
    return corpus_file("webhooks", name).read_bytes()


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def malformed(field: str, call: Any, *args: Any) -> MalformedWebhook:
    with pytest.raises(MalformedWebhook) as info:
        call(*args)
    assert info.value.field == field, info.value
    assert info.value.reason
    return info.value


# --- Gmail push ---------------------------------------------------------------------------------

GMAIL_ENVELOPE = json.loads((FIXTURES / "gmail-push-envelope.json").read_bytes())


def gmail_envelope(decoded: dict[str, Any] | None = None, **message: Any) -> dict[str, Any]:
    """The documented envelope; `decoded` replaces message.data (encoded), `message` its keys."""
    envelope: dict[str, Any] = copy.deepcopy(GMAIL_ENVELOPE)
    if decoded is not None:
        envelope["message"]["data"] = b64url(dumps(decoded))
    envelope["message"].update(message)
    return envelope


def test_gmail_push_from_the_documented_envelope() -> None:
    push = parse_gmail_push((FIXTURES / "gmail-push-envelope.json").read_bytes())
    assert push.delivery_id == "gmail:2070443601311540"
    assert push.subscription == "projects/myproject/subscriptions/mysubscription"
    assert push.email_address == "user@example.com"
    assert push.history_id == 1234567890
    assert push.publish_time == datetime(2021, 2, 26, 19, 13, 55, 749000, tzinfo=UTC)


def test_gmail_push_with_the_documented_decoded_data() -> None:
    data = json.loads((FIXTURES / "gmail-push-notification-data.json").read_bytes())
    push = parse_gmail_push(dumps(gmail_envelope(data)))
    assert push.history_id == 9876543210
    assert push.email_address == "user@example.com"


def test_gmail_push_accepts_both_id_spellings_and_no_publish_time() -> None:
    envelope = gmail_envelope(message_id="2070443601311540")
    del envelope["message"]["publishTime"]
    push = parse_gmail_push(dumps(envelope))
    assert push.delivery_id == "gmail:2070443601311540"
    assert push.publish_time is None
    del envelope["message"]["messageId"]
    assert parse_gmail_push(dumps(envelope)).delivery_id == "gmail:2070443601311540"


def test_gmail_push_dedup_id_stable_and_distinct() -> None:
    body = dumps(gmail_envelope())
    assert parse_gmail_push(body).delivery_id == parse_gmail_push(body).delivery_id
    other = parse_gmail_push(dumps(gmail_envelope(messageId="2070443601311541")))
    assert other.delivery_id != parse_gmail_push(body).delivery_id


def _gmail_cases() -> list[tuple[str, bytes]]:
    good = {"emailAddress": "user@example.com", "historyId": "1"}
    no_message = gmail_envelope()
    del no_message["message"]
    no_subscription = gmail_envelope()
    del no_subscription["subscription"]
    no_id = gmail_envelope()
    del no_id["message"]["messageId"]
    no_data = gmail_envelope()
    del no_data["message"]["data"]
    return [
        ("body", b"not json"),
        ("body", b""),
        ("body", b"[1, 2]"),
        ("body", b"\xff\xfe{}"),
        ("body", b'{"message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("body", b" " * (1 << 20) + b"{}"),
        ("message", dumps(no_message)),
        ("message", dumps({**GMAIL_ENVELOPE, "message": "x"})),
        ("subscription", dumps(no_subscription)),
        ("subscription", dumps({**GMAIL_ENVELOPE, "subscription": 7})),
        ("message.messageId", dumps(no_id)),
        ("message.messageId", dumps(gmail_envelope(messageId="a b"))),
        ("message.messageId", dumps(gmail_envelope(messageId="x\r\nNats-Msg-Id: y"))),
        ("message.messageId", dumps(gmail_envelope(messageId=12))),
        ("message.messageId", dumps(gmail_envelope(message_id="999"))),
        ("message.publishTime", dumps(gmail_envelope(publishTime="yesterday"))),
        ("message.publishTime", dumps(gmail_envelope(publishTime="2021-02-26T19:13:55"))),
        ("message.data", dumps(no_data)),
        ("message.data", dumps(gmail_envelope(data="!!!not base64!!!"))),
        ("message.data", dumps(gmail_envelope(data="abcde"))),
        ("message.data", dumps(gmail_envelope(data=b64url(b"not json")))),
        ("message.data", dumps(gmail_envelope(data=b64url(b"[]")))),
        ("message.data.emailAddress", dumps(gmail_envelope({"historyId": "1"}))),
        ("message.data.emailAddress", dumps(gmail_envelope({**good, "emailAddress": "nobody"}))),
        ("message.data.historyId", dumps(gmail_envelope({"emailAddress": "u@x.test"}))),
        ("message.data.historyId", dumps(gmail_envelope({**good, "historyId": "12a"}))),
        ("message.data.historyId", dumps(gmail_envelope({**good, "historyId": "-1"}))),
        ("message.data.historyId", dumps(gmail_envelope({**good, "historyId": 1.5}))),
        ("message.data.historyId", dumps(gmail_envelope({**good, "historyId": True}))),
        ("message.data.historyId", dumps(gmail_envelope({**good, "historyId": str(1 << 64)}))),
    ]


@pytest.mark.parametrize(("field", "body"), _gmail_cases())
def test_gmail_push_malformed_names_the_field(field: str, body: bytes) -> None:
    malformed(field, parse_gmail_push, body)


def test_gmail_push_data_in_standard_base64_with_padding() -> None:
    envelope = gmail_envelope()
    envelope["message"]["data"] = base64.b64encode(
        dumps({"emailAddress": "u@x.test", "historyId": 5, "p": "??>>"})).decode()
    assert parse_gmail_push(dumps(envelope)).history_id == 5


# --- Graph notifications ------------------------------------------------------------------------

SECRET = "secretClientValue"


def states(**by_subscription: str) -> Any:
    return by_subscription.get


def change(n: int = 1, **overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": f"note-{n}",
        "subscriptionId": "sub-1",
        "subscriptionExpirationDateTime": "2026-03-19T22:11:09.952Z",
        "clientState": SECRET,
        "changeType": "created",
        "resource": f"users/u-1/messages/m-{n}",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message",
                         "@odata.id": f"Users/u-1/Messages/m-{n}",
                         "@odata.etag": f'W/"etag-{n}"', "id": f"m-{n}"},
    }
    item.update(overrides)
    return item


def notify(*items: dict[str, Any], lookup: Any = None) -> GraphNotifications:
    result = parse_graph(dumps({"value": list(items)}), {}, lookup or states(**{"sub-1": SECRET}))
    assert isinstance(result, GraphNotifications)
    return result


def test_graph_change_notification_sample() -> None:
    result = parse_graph(corpus("msgraph-change-notification.json"), {},
                         states(**{"{subscription_guid}": "secretClientValue"}))
    assert isinstance(result, GraphNotifications)
    [note] = result.items
    assert isinstance(note, GraphChange)
    assert note.accepted and note.client_state_ok and note.rejection is None
    assert note.subscription_id == "{subscription_guid}"
    assert note.change_type == "created"
    assert note.resource == "users/{user_guid}@{tenant_guid}/messages/{long_id_string}"
    assert note.resource_id == "{long_id_string}"
    assert note.tenant_id == "84bd8158-6d4d-4958-8b9f-9d6445542f95"
    assert note.notification_id == "lsgTZMr9KwAAA"
    assert note.subscription_expires_at == datetime(2016, 3, 19, 22, 11, 9, 952000, tzinfo=UTC)
    assert note.delivery_id.startswith("graph:") and len(note.delivery_id) == 6 + 64
    assert result.changes == [note] and result.lifecycle == []


def test_graph_sample_with_wrong_or_unknown_client_state_is_rejected_not_raised() -> None:
    body = corpus("msgraph-change-notification.json")
    wrong = parse_graph(body, {}, states(**{"{subscription_guid}": "another"}))
    unknown = parse_graph(body, {}, states())
    assert isinstance(wrong, GraphNotifications) and isinstance(unknown, GraphNotifications)
    assert [n.rejection for n in wrong.items] == ["clientState mismatch"]
    assert [n.rejection for n in unknown.items] == ["unknown subscription"]
    assert not wrong.items[0].client_state_ok and wrong.accepted == []


def test_client_state_mismatch_is_per_notification() -> None:
    no_state = change(3)
    del no_state["clientState"]
    result = notify(change(1), change(2, clientState="guess"), no_state,
                    change(4, clientState=SECRET + "x"), change(5, clientState="sécret"),
                    change(6))
    assert [n.rejection for n in result.items] == [
        None, "clientState mismatch", "clientState missing", "clientState mismatch",
        "clientState mismatch", None]
    assert [n.delivery_id for n in result.accepted] == [
        result.items[0].delivery_id, result.items[5].delivery_id]
    assert len(result.rejected) == 4


def test_client_state_is_looked_up_per_subscription() -> None:
    result = notify(change(1), change(2, subscriptionId="sub-2", clientState="two"),
                    change(3, subscriptionId="sub-2"),
                    lookup=states(**{"sub-1": SECRET, "sub-2": "two"}))
    assert [n.accepted for n in result.items] == [True, True, False]


def test_graph_dedup_id_stable_across_redelivery_and_distinct_between_notifications() -> None:
    items = [change(1), change(2), change(1, changeType="updated"),
             change(1, resourceData={**change(1)["resourceData"], "@odata.etag": 'W/"e2"'}),
             change(1, id="note-other"), change(1, subscriptionId="sub-9")]
    first = notify(*items, lookup=lambda _: SECRET)
    again = notify(*copy.deepcopy(items), lookup=lambda _: SECRET)
    ids = [n.delivery_id for n in first.items]
    assert ids == [n.delivery_id for n in again.items]
    assert len(set(ids)) == len(ids)
    # the id does not depend on key order or on whitespace of the body
    reordered = dict(reversed(list(change(1).items())))
    body = json.dumps({"value": [reordered]}, indent=4).encode()
    same = parse_graph(body, {}, lambda _: SECRET)
    assert isinstance(same, GraphNotifications)
    assert same.items[0].delivery_id == ids[0]
    # nor on the clientState check's outcome
    assert notify(change(1), lookup=states()).items[0].delivery_id == ids[0]


def test_graph_dedup_id_without_notification_id_or_etag_is_still_deterministic() -> None:
    bare = change(1, resourceData={"id": "m-1"})
    del bare["id"]
    one, two = notify(bare, copy.deepcopy(bare)).items
    assert one.delivery_id == two.delivery_id
    assert one.delivery_id != notify(change(1)).items[0].delivery_id


def test_graph_delivery_ids_are_header_safe() -> None:
    note = notify(change(1, resource="users/ü ser/messages/\r\nx")).items[0]
    assert note.delivery_id.isascii() and note.delivery_id.isprintable()
    assert " " not in note.delivery_id


@pytest.mark.parametrize(("name", "event", "subscription"), [
    ("msgraph-lifecycle-reauthorizationRequired.json", "reauthorizationRequired",
     "e3898f08-5cd0-4a6a-80fc-6addbfb73b7b"),
    ("msgraph-lifecycle-subscriptionRemoved.json", "subscriptionRemoved", "<subscription_guid>"),
    ("msgraph-lifecycle-missed.json", "missed", "<subscription_guid>"),
])
def test_graph_lifecycle_samples(name: str, event: str, subscription: str) -> None:
    body = corpus(name)
    expected = json.loads(body)["value"][0]["clientState"]
    result = parse_graph(body, {}, states(**{subscription: expected}))
    assert isinstance(result, GraphNotifications)
    [note] = result.items
    assert isinstance(note, GraphLifecycle)
    assert note.lifecycle_event == event and note.subscription_id == subscription
    assert note.accepted and note.tenant_id is not None
    assert note.subscription_expires_at is not None
    assert note.subscription_expires_at.tzinfo is not None
    assert result.lifecycle == [note] and result.changes == []
    rejected = parse_graph(body, {}, states(**{subscription: "nope"}))
    assert isinstance(rejected, GraphNotifications)
    assert rejected.items[0].rejection == "clientState mismatch"


def test_graph_lifecycle_ids_distinct_by_event_and_expiry_and_mixed_batches() -> None:
    life = {"subscriptionId": "sub-1", "clientState": SECRET, "lifecycleEvent": "missed",
            "subscriptionExpirationDateTime": "2026-03-20T11:00:00.0000000Z"}
    renewed = {**life, "subscriptionExpirationDateTime": "2026-03-23T11:00:00Z"}
    reauth = {**life, "lifecycleEvent": "reauthorizationRequired"}
    result = notify(life, change(1), renewed, reauth, dict(life))
    assert [type(n).__name__ for n in result.items] == [
        "GraphLifecycle", "GraphChange", "GraphLifecycle", "GraphLifecycle", "GraphLifecycle"]
    ids = [n.delivery_id for n in result.items]
    assert ids[0] == ids[4] and len(set(ids)) == 4


def test_graph_validation_token_is_echoed() -> None:
    lines = corpus("msgraph-validation-request.http").decode().splitlines()
    assert "?validationToken=" in lines[1]
    token = "Validation: Testing client application reachability for subscription Request-Id: 1"
    result = parse_graph(b"", {"validationToken": token}, states())
    assert result == GraphValidation(token=token)
    # the body does not matter during the handshake
    assert parse_graph(b"junk", {"validationToken": "t"}, states()) == GraphValidation(token="t")


@pytest.mark.parametrize("token", ["", "x" * (MAX_VALIDATION_TOKEN + 1), "a\r\nb", "a\x00"])
def test_graph_validation_token_malformed(token: str) -> None:
    malformed("validationToken", parse_graph, b"", {"validationToken": token}, states())


def _graph_cases() -> list[tuple[str, bytes]]:
    def body(*items: Any) -> bytes:
        return dumps({"value": list(items)})

    def without(key: str, **overrides: Any) -> dict[str, Any]:
        item = change(1, **overrides)
        del item[key]
        return item

    life = {"subscriptionId": "sub-1", "clientState": SECRET, "lifecycleEvent": "missed"}
    return [
        ("body", b"{"),
        ("body", b""),
        ("body", b'"value"'),
        ("value", dumps({})),
        ("value", dumps({"value": {}})),
        ("value", body()),
        ("value[0]", body("x")),
        ("value[1]", body(change(1), 7)),
        ("value[0].subscriptionId", body(without("subscriptionId"))),
        ("value[0].subscriptionId", body(change(1, subscriptionId=""))),
        ("value[0].subscriptionId", body(change(1, subscriptionId="s" * 300))),
        ("value[1].changeType", body(change(1), without("changeType"))),
        ("value[0].changeType", body(change(1, changeType="exploded"))),
        ("value[0].resource", body(without("resource"))),
        ("value[0].resourceData", body(without("resourceData"))),
        ("value[0].resourceData", body(change(1, resourceData="m-1"))),
        ("value[0].resourceData.id", body(change(1, resourceData={"@odata.type": "x"}))),
        ("value[0].resourceData.@odata.etag",
         body(change(1, resourceData={"id": "m", "@odata.etag": 5}))),
        ("value[0].clientState", body(change(1, clientState=123))),
        ("value[0].tenantId", body(change(1, tenantId=["t"]))),
        ("value[0].id", body(change(1, id={"n": 1}))),
        ("value[0].subscriptionExpirationDateTime",
         body(change(1, subscriptionExpirationDateTime="soon"))),
        ("value[0].subscriptionExpirationDateTime",
         body(change(1, subscriptionExpirationDateTime="2026-03-19T22:11:09"))),
        ("value[0].lifecycleEvent", body({**life, "lifecycleEvent": "exploded"})),
        ("value[0].lifecycleEvent", body({**life, "lifecycleEvent": None})),
        ("value[0].subscriptionId", body({k: v for k, v in life.items()
                                          if k != "subscriptionId"})),
    ]


@pytest.mark.parametrize(("field", "body"), _graph_cases())
def test_graph_malformed_names_the_field(field: str, body: bytes) -> None:
    malformed(field, parse_graph, body, {}, states(**{"sub-1": SECRET}))


# --- Graph delta pages and the message resource ------------------------------------------------


def test_graph_delta_pages_follow_next_links_to_the_delta_link() -> None:
    pages = [parse_graph_delta(corpus(f"msgraph-delta-messages-{n}.json"))
             for n in ("1-nextlink", "2-nextlink", "3-deltalink")]
    assert [p.next_link is not None for p in pages] == [True, True, False]
    assert [p.delta_link is not None for p in pages] == [False, False, True]
    assert pages[0].next_link is not None and "$skiptoken=GwcBoTmPuoTQWfcsAbkYM" in \
        pages[0].next_link
    assert pages[2].delta_link is not None and pages[2].delta_link.endswith(
        "$deltatoken=GwcBoTmPuoGNlgXgF1nyUNMXY")
    assert [[i.id for i in p.items] for p in pages] == [
        ["AAMkADNkNAAASq35xAAA=", "AQMkADNkNAAAVRMKAAAAA=="],
        ["AQMkADNkNAAAgWkAAAA", "AQMkADNkNAAAgWJAAAA"], ["AAMkADk0MGFkODE3LWEAAA="]]
    assert [i.is_read for i in pages[0].items] == [False, True]
    assert pages[0].items[0].etag == 'W/"CQAAABYAAAARn2vdzPFjSbaPPxzjlzOTAAASsKZz"'
    assert pages[0].items[0].resource["subject"] == "Holiday hours update"
    assert all(p.removed_ids == [] for p in pages)


def test_graph_delta_removed_and_string_is_read() -> None:
    page = parse_graph_delta(corpus("msgraph-delta-messages-4-removed-deltalink.json"))
    gone = "AAMkADk0MGFkODE3LWE4MmYtNDRhOS0Dh_6qB-pB2Sa2pUum19a6YAAKnLuxoAAA="
    assert page.removed_ids == [gone]
    assert page.removed_reasons == {gone: "deleted"}
    assert [i.id for i in page.items] == ["AAMkADNkNAAASq35xAAA="]
    assert page.items[0].is_read is True  # upstream sends "true" as a string here
    assert page.next_link is None and page.delta_link is not None


def test_graph_delta_later_entry_for_an_id_wins() -> None:
    link = "https://graph.microsoft.com/v1.0/me/messages/delta?$deltatoken=x"
    page = parse_graph_delta(dumps({"@odata.deltaLink": link, "value": [
        {"id": "a", "isRead": False}, {"id": "a", "@removed": {"reason": "changed"}},
        {"id": "b", "@removed": {}}, {"id": "b", "isRead": True},
        {"id": "c", "@odata.type": "#microsoft.graph.eventMessageRequest"}]}))
    assert page.removed_reasons == {"a": "changed"}
    assert [i.id for i in page.items] == ["b", "c"]


def _delta_cases() -> list[tuple[str, bytes]]:
    link = "https://graph.microsoft.com/v1.0/me/messages/delta?$deltatoken=x"

    def page(*items: Any, **links: Any) -> bytes:
        return dumps({"@odata.deltaLink": link, **links, "value": list(items)})

    return [
        ("body", b"<html>"),
        ("@odata.deltaLink", dumps({"value": []})),
        ("@odata.deltaLink", page(**{"@odata.nextLink": link})),
        ("@odata.nextLink", dumps({"@odata.nextLink": 5, "value": []})),
        ("@odata.deltaLink", dumps({"@odata.deltaLink": "http://evil.test/", "value": []})),
        ("value", dumps({"@odata.deltaLink": link})),
        ("value[0]", page([])),
        ("value[0].id", page({"subject": "no id"})),
        ("value[1].isRead", page({"id": "a"}, {"id": "b", "isRead": "yes"})),
        ("value[0].@removed", page({"id": "a", "@removed": "deleted"})),
        ("value[0].@odata.type", page({"id": "a", "@odata.type": "#microsoft.graph.event"})),
    ]


@pytest.mark.parametrize(("field", "body"), _delta_cases())
def test_graph_delta_malformed_names_the_field(field: str, body: bytes) -> None:
    malformed(field, parse_graph_delta, body)


def test_graph_message_resource_sample() -> None:
    mail = graph_message_to_mail(corpus("msgraph-message-resource.json"))
    assert mail.id == "AAMkADhMGAAA="
    assert mail.message_id == "<MWHPR6E1BE060@MWHPR1120.namprd22.prod.outlook.com>"
    assert mail.thread_id == "AAQkADOUpag6yWs="
    assert mail.from_ == "adelev@contoso.OnMicrosoft.com"
    assert mail.to == ["AlexW@contoso.OnMicrosoft.com"]
    assert mail.cc == [] and mail.bcc == []
    assert mail.subject == "9/9/2018: concert"
    assert "The group represents Nevada." in mail.body
    assert mail.sent_at == datetime(2018, 9, 9, 3, 15, 6, tzinfo=UTC)
    assert mail.read is True and mail.labels == []
    assert mail.in_reply_to is None and mail.references is None


GRAPH_MESSAGE: dict[str, Any] = {
    "id": "g-1", "internetMessageId": "<r@x.test>", "conversationId": "conv-1",
    "subject": None, "isRead": False, "categories": ["Customer", "Blue"],
    "receivedDateTime": "2026-01-02T03:04:05Z",
    "body": {"contentType": "text", "content": "hello"},
    "sender": {"emailAddress": {"name": "S", "address": "s@x.test"}},
    "toRecipients": [{"emailAddress": {"address": "a@x.test"}}],
    "ccRecipients": [{"emailAddress": {"address": "b@x.test"}}],
    "bccRecipients": [{"emailAddress": {"address": "c@x.test"}}],
    "internetMessageHeaders": [{"name": "in-reply-to", "value": "<p@x.test>"},
                               {"name": "REFERENCES", "value": "<o@x.test>\r\n <p@x.test>"}],
}


def test_graph_message_fallbacks_and_headers() -> None:
    mail = graph_message_to_mail(GRAPH_MESSAGE)
    assert mail.from_ == "s@x.test"  # sender when there is no from
    assert mail.sent_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # received, no sent
    assert (mail.to, mail.cc, mail.bcc) == (["a@x.test"], ["b@x.test"], ["c@x.test"])
    assert mail.subject == "" and mail.body == "hello" and mail.read is False
    assert mail.labels == ["Customer", "Blue"]
    assert mail.in_reply_to == "<p@x.test>"
    assert mail.references == ["<o@x.test>", "<p@x.test>"]


def _graph_message_cases() -> list[tuple[str, dict[str, Any]]]:
    def without(*keys: str, **overrides: Any) -> dict[str, Any]:
        message = {k: v for k, v in GRAPH_MESSAGE.items() if k not in keys}
        return {**message, **overrides}

    return [
        ("id", without("id")),
        ("from", without("sender")),
        ("from", without(**{"from": "a@x.test"})),
        ("from.emailAddress.address", without(**{"from": {"emailAddress": {"name": "n"}}})),
        ("toRecipients[0]", without(toRecipients=["a@x.test"])),
        ("ccRecipients", without(ccRecipients="b@x.test")),
        ("bccRecipients[0].emailAddress", without(bccRecipients=[{}])),
        ("sentDateTime", without("receivedDateTime")),
        ("sentDateTime", without(sentDateTime="Tuesday")),
        ("receivedDateTime", without(receivedDateTime=20260102)),
        ("isRead", without(isRead="maybe")),
        ("categories[1]", without(categories=["a", 1])),
        ("body", without(body="hello")),
        ("body.content", without(body={"content": 5})),
        ("subject", without(subject=["x"])),
        ("internetMessageId", without(internetMessageId=1)),
        ("internetMessageHeaders[0]", without(internetMessageHeaders=["x"])),
    ]


@pytest.mark.parametrize(("field", "message"), _graph_message_cases())
def test_graph_message_malformed_names_the_field(field: str, message: dict[str, Any]) -> None:
    malformed(field, graph_message_to_mail, dumps(message))


# --- Gmail history.list and messages.get ---------------------------------------------------------


def discovery_schema(name: str) -> dict[str, Any]:
    schemas: dict[str, Any] = json.loads(corpus("gmail-discovery-v1.json"))["schemas"]
    return schemas[name]["properties"]  # type: ignore[no-any-return]


def test_the_fields_we_read_exist_in_the_gmail_discovery_document() -> None:
    assert {"history", "nextPageToken", "historyId"} <= set(discovery_schema(
        "ListHistoryResponse"))
    assert {"messagesAdded", "messagesDeleted", "labelsAdded", "labelsRemoved"} <= set(
        discovery_schema("History"))
    assert {"message", "labelIds"} <= set(discovery_schema("HistoryLabelAdded"))
    assert {"id", "threadId", "labelIds", "internalDate", "payload"} <= set(
        discovery_schema("Message"))
    assert discovery_schema("Message")["internalDate"]["format"] == "int64"
    assert discovery_schema("ListHistoryResponse")["historyId"]["format"] == "uint64"
    assert {"mimeType", "filename", "headers", "body", "parts"} <= set(
        discovery_schema("MessagePart"))
    assert {"data", "size", "attachmentId"} <= set(discovery_schema("MessagePartBody"))
    assert discovery_schema("MessagePartBody")["data"]["format"] == "byte"
    assert {"name", "value"} <= set(discovery_schema("MessagePartHeader"))


def _msg(message_id: str, **extra: Any) -> dict[str, Any]:
    return {"message": {"id": message_id, "threadId": "t-" + message_id}, **extra}


HISTORY: dict[str, Any] = {
    "history": [
        {"id": "101", "messages": [{"id": "m1", "threadId": "t-m1"}],
         "messagesAdded": [_msg("m1"), _msg("m2")]},
        {"id": "102", "labelsAdded": [_msg("m1", labelIds=["STARRED", "Label_7"])],
         "labelsRemoved": [_msg("m1", labelIds=["UNREAD"])]},
        {"id": "103", "messagesDeleted": [_msg("m2"), _msg("m0")],
         "labelsAdded": [_msg("m2", labelIds=["X"])]},
        {"id": "104", "labelsRemoved": [_msg("m1", labelIds=["Label_7"])],
         "messagesAdded": [_msg("m1"), _msg("m3")]},
    ],
    "nextPageToken": "page-2",
    "historyId": "104",
}


def test_gmail_history_page() -> None:
    page = parse_gmail_history(dumps(HISTORY))
    assert page.message_ids_added == ["m1", "m3"]
    assert page.message_ids_deleted == ["m2", "m0"]
    [m1] = page.label_changes
    assert (m1.message_id, m1.added, m1.removed) == ("m1", ["STARRED"], ["Label_7", "UNREAD"])
    assert page.next_page_token == "page-2" and page.history_id == 104


def test_gmail_history_without_changes() -> None:
    page = parse_gmail_history(b'{"historyId": "9876543210"}')
    assert page.history_id == 9876543210 and page.next_page_token is None
    assert page.message_ids_added == page.message_ids_deleted == []
    assert page.label_changes == []


def _history_cases() -> list[tuple[str, Any]]:
    return [
        ("body", b"nope"),
        ("historyId", {"history": []}),
        ("historyId", {"historyId": "x1"}),
        ("history", {"historyId": "1", "history": {}}),
        ("history[0]", {"historyId": "1", "history": [[]]}),
        ("history[0].messagesAdded", {"historyId": "1", "history": [{"messagesAdded": {}}]}),
        ("history[0].messagesAdded[1].message",
         {"historyId": "1", "history": [{"messagesAdded": [_msg("a"), {"id": "b"}]}]}),
        ("history[0].messagesDeleted[0].message.id",
         {"historyId": "1", "history": [{"messagesDeleted": [{"message": {"threadId": "t"}}]}]}),
        ("history[0].labelsAdded[0].labelIds[0]",
         {"historyId": "1", "history": [{"labelsAdded": [_msg("a", labelIds=[1])]}]}),
        ("history[0].labelsRemoved[0].labelIds",
         {"historyId": "1", "history": [{"labelsRemoved": [_msg("a", labelIds="UNREAD")]}]}),
        ("history[0].messagesAdded[0]", {"historyId": "1", "history": [{"messagesAdded": [3]}]}),
        ("nextPageToken", {"historyId": "1", "nextPageToken": 3}),
    ]


@pytest.mark.parametrize(("field", "body"), _history_cases())
def test_gmail_history_malformed_names_the_field(field: str, body: Any) -> None:
    malformed(field, parse_gmail_history, body if isinstance(body, bytes) else dumps(body))


def headers(**values: str) -> list[dict[str, str]]:
    return [{"name": k.replace("_", "-"), "value": v} for k, v in values.items()]


def gmail_message(payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "18c1", "threadId": "18c0", "labelIds": ["INBOX", "UNREAD", "CATEGORY_X"],
            "snippet": "…", "historyId": "77", "internalDate": "1700000000123",
            "sizeEstimate": 10, "payload": payload, **extra}


MULTIPART: dict[str, Any] = {
    "partId": "", "mimeType": "multipart/mixed", "filename": "",
    "headers": [
        {"name": "FROM", "value": '"Ann Example" <ann@x.test>'},
        {"name": "to", "value": "Bob <bob@x.test>, carl@x.test"},
        {"name": "Cc", "value": "=?UTF-8?B?RMOpYsOpcmE=?= <deb@x.test>"},
        {"name": "subject", "value": "=?UTF-8?Q?Caf=C3=A9_order?="},
        {"name": "message-ID", "value": "<m-1@x.test>"},
        {"name": "In-Reply-To", "value": "<m-0@x.test>"},
        {"name": "References", "value": "<m-a@x.test> <m-0@x.test>"},
        {"name": "Date", "value": "Tue, 14 Nov 2023 22:13:20 +0000"},
    ],
    "body": {"size": 0},
    "parts": [
        {"partId": "0", "mimeType": "multipart/alternative", "filename": "",
         "headers": headers(Content_Type="multipart/alternative; boundary=b"),
         "body": {"size": 0}, "parts": [
             {"partId": "0.0", "mimeType": "text/plain", "filename": "",
              "headers": headers(Content_Type='text/plain; charset="ISO-8859-1"'),
              "body": {"size": 12, "data": b64url("Grüße, Ann ?>".encode("latin-1"))}},
             {"partId": "0.1", "mimeType": "text/html", "filename": "",
              "headers": headers(Content_Type="text/html; charset=UTF-8"),
              "body": {"size": 20, "data": b64url(b"<p>Gr\xc3\xbc\xc3\x9fe</p>")}}]},
        {"partId": "1", "mimeType": "application/pdf", "filename": "quote.pdf",
         "headers": headers(Content_Type='application/pdf; name="quote.pdf"'),
         "body": {"attachmentId": "ANGjdJ8", "size": 52345}},
    ],
}


def test_gmail_full_message_multipart() -> None:
    mail = gmail_message_to_mail(dumps(gmail_message(MULTIPART)))
    assert (mail.id, mail.thread_id) == ("18c1", "18c0")
    assert mail.from_ == "ann@x.test"  # header names are case-insensitive
    assert mail.to == ["bob@x.test", "carl@x.test"] and mail.cc == ["deb@x.test"]
    assert mail.bcc == []
    assert mail.subject == "Café order"
    assert mail.message_id == "<m-1@x.test>" and mail.in_reply_to == "<m-0@x.test>"
    assert mail.references == ["<m-a@x.test>", "<m-0@x.test>"]
    assert mail.body == "Grüße, Ann ?>"  # the text/plain part, in its charset
    assert mail.sent_at == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert mail.labels == ["INBOX", "UNREAD", "CATEGORY_X"] and mail.read is False
    [pdf] = mail.attachments
    assert (pdf.name, pdf.size, pdf.content_type) == ("quote.pdf", 52345, "application/pdf")


def test_gmail_single_part_body_base64url_without_padding() -> None:
    text = "Ünïcode ✓ and ?>~ bytes that need - and _ in base64url!"
    data = b64url(text.encode())
    assert "=" not in data and ("-" in data or "_" in data)
    payload = {"mimeType": "text/plain", "filename": "",
               "headers": headers(From="a@x.test", Subject="Hi"),
               "body": {"size": 60, "data": data}}
    mail = gmail_message_to_mail(gmail_message(payload, labelIds=["SENT"]))
    assert mail.body == text and mail.read is True and mail.to == []
    assert mail.message_id is None and mail.references is None


def test_gmail_html_only_and_date_header_fallback() -> None:
    payload = {"mimeType": "multipart/alternative", "headers": headers(
        From="a@x.test", Date="Tue, 14 Nov 2023 23:13:20 +0100"),
        "parts": [{"mimeType": "text/html", "body": {"data": b64url(b"<b>hi</b>")}}]}
    message = gmail_message(payload)
    del message["internalDate"]
    mail = gmail_message_to_mail(message)
    assert mail.body == "<b>hi</b>" and mail.subject == ""
    assert mail.sent_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def _gmail_message_cases() -> list[tuple[str, dict[str, Any]]]:
    plain = {"mimeType": "text/plain", "headers": headers(From="a@x.test"),
             "body": {"data": b64url(b"x")}}

    def with_payload(**changes: Any) -> dict[str, Any]:
        return gmail_message({**plain, **changes})

    no_id = gmail_message(plain)
    del no_id["id"]
    no_payload = gmail_message(plain)
    del no_payload["payload"]
    no_dates = gmail_message(plain)
    del no_dates["internalDate"]
    deep: dict[str, Any] = {"mimeType": "text/plain"}
    for _ in range(40):
        deep = {"mimeType": "multipart/mixed", "parts": [deep]}
    deep["headers"] = headers(From="a@x.test")
    return [
        ("id", no_id),
        ("payload", no_payload),
        ("payload.headers.From", with_payload(headers=headers(To="b@x.test"))),
        ("payload.headers.From", with_payload(headers=headers(From="undisclosed"))),
        ("payload.headers", with_payload(headers={"From": "a@x.test"})),
        ("payload.headers[0].name", with_payload(headers=[{"value": "a@x.test"}])),
        ("payload.body.data", with_payload(body={"data": "***"})),
        ("payload.parts[0].body.data", with_payload(mimeType="multipart/mixed", parts=[
            {"mimeType": "text/plain", "body": {"data": "a"}}])),
        ("payload.parts[1]", with_payload(parts=[plain, "x"])),
        ("internalDate", gmail_message(plain, internalDate="yesterday")),
        ("internalDate", no_dates),
        ("payload.headers.Date", {**no_dates, "payload": {**plain, "headers": headers(
            From="a@x.test", Date="someday")}}),
        ("labelIds", gmail_message(plain, labelIds="INBOX")),
        ("threadId", gmail_message(plain, threadId=5)),
        ("payload.parts[0]" + ".parts[0]" * 32, gmail_message(deep)),
    ]


@pytest.mark.parametrize(("field", "message"), _gmail_message_cases())
def test_gmail_message_malformed_names_the_field(field: str, message: dict[str, Any]) -> None:
    malformed(field, gmail_message_to_mail, dumps(message))
