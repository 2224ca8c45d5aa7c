"""adapters.providers.mime on small hand-written messages: the edge cases of parsing raw RFC 5322
mail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from adapters.errors import UnparseableMessage
from adapters.providers.mime import (
    html_to_text,
    message_ids,
    normalise_message_id,
    parse_date,
    parse_message,
    parse_references,
)


def mail(*headers: str, body: str = "hello\n") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


BASE = ("From: Ann Smith <Ann@Example.COM>", "To: bob@example.org, \"Eve, X\" <eve@example.org>",
        "Date: Tue, 05 Jan 2010 10:00:00 +0100")


def test_plain_message() -> None:
    msg = parse_message(mail(*BASE, "Subject: Hi", "Message-ID: <a1@example.com>",
                             "Cc: carl@example.org", "Bcc: dora@example.org"), "p1",
                        labels=["INBOX"])
    assert msg.id == "p1" and msg.from_ == "ann@example.com"
    assert msg.to == ["bob@example.org", "eve@example.org"]
    assert (msg.cc, msg.bcc) == (["carl@example.org"], ["dora@example.org"])
    assert msg.subject == "Hi" and msg.body == "hello" and msg.labels == ["INBOX"]
    assert msg.sent_at == datetime(2010, 1, 5, 9, 0, tzinfo=UTC)
    assert msg.message_id == "<a1@example.com>" and msg.thread_id is None


def test_encoded_words_and_folding_in_subject_and_names() -> None:
    msg = parse_message(mail("From: =?UTF-8?B?Rm9vLCBCYXI=?= <foo@example.com>", *BASE[1:],
                             "Subject: =?utf-8?q?Caf=C3=A9?=\r\n =?utf-8?q?_cr=C3=A8me?= and",
                             "  more"), "p")
    assert msg.from_ == "foo@example.com"
    assert msg.subject == "Café crème and more"


def test_mislabelled_gb2312_and_raw_8bit_headers() -> None:
    raw = mail("From: a@example.com", BASE[2], "Subject: =?gb2312?B?ztK/tM/C?=")
    raw = raw.replace(b"\r\n\r\n", "\r\nX-Raw: é\r\n\r\n".encode())
    raw = raw.replace(b"Subject:", "Subject: Já".encode() + b" \xe9t\xe9 ")  # utf-8, then latin-1
    msg = parse_message(raw, "p")
    assert msg.subject == "Já été 我看下"
    msg.model_dump_json()  # no lone surrogates left: the event store can encode it


def test_message_ids_are_normalised() -> None:
    assert normalise_message_id("  <a1@x.com>  (comment)") == "<a1@x.com>"
    assert normalise_message_id("<a1\r\n @x.com>") == "<a1@x.com>"
    assert normalise_message_id("a1@x.com") == "<a1@x.com>"  # missing brackets
    assert normalise_message_id("") is None and normalise_message_id("no id here") is None
    assert normalise_message_id("<>") is None


def test_references_robust_to_folding_junk_and_duplicates() -> None:
    value = "<a@x>\r\n\t<b@x> garbage, <c\r\n @x>  <a@x> <own@x>"
    assert parse_references(value, own_id="<own@x>") == ["<a@x>", "<b@x>", "<c@x>"]
    assert message_ids("a@x, b@x (old mailer)") == ["<a@x>", "<b@x>"]
    assert parse_references(None) == [] and parse_references("   ") == []


def test_in_reply_to_skips_the_senders_address_and_own_id() -> None:
    msg = parse_message(mail(*BASE, "Subject: Re: x", "Message-ID: <m2@x>",
                             'In-Reply-To: "Ann" <ann@example.com> of Tue, <m1@x>',
                             "References: <m0@x>\r\n <m1@x>\r\n <m2@x>"), "p")
    assert msg.in_reply_to == "<m1@x>"
    assert msg.references == ["<m0@x>", "<m1@x>"]


def test_date_fallback_order() -> None:
    received = "Received: from a by b; Wed, 06 Jan 2010 08:00:00 +0000"
    older = "Received: from c by a; Wed, 06 Jan 2010 07:00:00 +0000"
    internal = datetime(2011, 1, 1, tzinfo=UTC)
    no_date = ("From: a@example.com", "Subject: s", received, older)
    # 1. Date, 2. the provider's internal date, 3. the topmost (newest) Received, 4. rejected
    assert parse_message(mail(*BASE), "p", fallback_date=internal).sent_at.year == 2010
    assert parse_message(mail(*no_date), "p", fallback_date=internal).sent_at == internal
    assert parse_message(mail(*no_date), "p").sent_at == datetime(2010, 1, 6, 8, tzinfo=UTC)
    bad = ("From: a@example.com", "Date: yesterday-ish", "Subject: s")
    with pytest.raises(UnparseableMessage, match="Date"):
        parse_message(mail(*bad), "p")
    with pytest.raises(UnparseableMessage, match="Date"):  # a naive fallback is not usable
        parse_message(mail(*bad), "p", fallback_date=datetime(2011, 1, 1))


def test_parse_date_variants() -> None:
    assert parse_date("5 Jan 2010 10:00:00 -0000") == datetime(2010, 1, 5, 10, tzinfo=UTC)
    assert parse_date("Tue, 5 Jan 2010 10:00 EST") == \
        datetime(2010, 1, 5, 10, tzinfo=timezone(timedelta(hours=-5)))
    assert parse_date("Tue, 05 Jan 2010 10:00:00 +0100 (CET)") is not None
    assert parse_date("Tue, 05 Jan 1901 10:00:00 +0100") is None
    assert parse_date("Mon, 99 Foo 2010 99:99:99") is None and parse_date(None) is None


@pytest.mark.parametrize("raw", [
    b"", b"   \r\n", b"just some text without headers\n",
    b"Subject: no sender\r\nDate: Tue, 05 Jan 2010 10:00:00 +0100\r\n\r\nx",
    b"From: nobody\xff\xfe <>\r\nDate: 5 Jan 2010 10:00 +0000\r\n\r\n"])
def test_unusable_messages_raise_our_error_only(raw: bytes) -> None:
    with pytest.raises(UnparseableMessage) as info:
        parse_message(raw, "p")
    assert info.value.reason


def test_multipart_picks_plain_and_lists_attachments() -> None:
    body = ("--B\r\nContent-Type: multipart/alternative; boundary=C\r\n\r\n"
            "--C\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain text\r\n"
            "--C\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--C--\r\n"
            "--B\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf\r\n\r\n"
            "aGVsbG8gd29ybGQ=\r\n"
            "--B\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            "iVBORw==\r\n"
            "--B\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y\r\nSubject: inner\r\n\r\nhi\r\n"
            "--B--\r\n")
    msg = parse_message(mail(*BASE, "Subject: s", "MIME-Version: 1.0",
                             "Content-Type: multipart/mixed; boundary=B", body=body), "p")
    assert msg.body == "plain text"
    assert [(a.name, a.size, a.content_type) for a in msg.attachments][:2] == \
        [("résumé.pdf", 11, "application/pdf"), ("attachment-2.png", 4, "image/png")]
    assert msg.attachments[2].name == "attachment-3.eml"
    assert msg.attachments[2].content_type == "message/rfc822"


def test_html_only_body_is_stripped_to_text() -> None:
    html = ("<html><head><style>p{}</style><title>t</title></head><body><p>Hello&nbsp;<b>you</b>"
            "</p><script>x()</script><div>second&amp;line</div></body></html>")
    msg = parse_message(mail(*BASE, "Subject: s", "Content-Type: text/html; charset=utf-8",
                             body=html), "p")
    assert msg.body == "Hello you\n\nsecond&line"
    assert html_to_text("<p>a</p><br><p>b") == "a\n\nb"


def test_broken_mime_is_best_effort() -> None:
    # a multipart whose boundary never occurs, a bogus charset and a bad base64 body
    broken = parse_message(mail(*BASE, "Subject: s", "Content-Type: multipart/mixed; boundary=Z",
                                body="--Y\r\nContent-Type: text/plain\r\n\r\nlost\r\n"), "p")
    assert broken.body == "" and broken.attachments == []
    bogus = parse_message(mail(*BASE, "Subject: s", "Content-Type: text/plain; charset=x-nope",
                               "Content-Transfer-Encoding: base64", body="w6k=!!!\r\n"), "p")
    assert bogus.body == "é"
    qp = parse_message(mail(*BASE, "Subject: s", "Content-Type: text/plain; charset=iso-8859-1",
                            "Content-Transfer-Encoding: quoted-printable", body="caf=E9 =\r\nok"),
                       "p")
    assert qp.body == "café ok"


def test_missing_subject_and_recipients_are_empty_not_errors() -> None:
    msg = parse_message(mail("From: a@example.com", BASE[2], "To: undisclosed-recipients:;"), "p")
    assert (msg.subject, msg.to, msg.message_id, msg.references) == ("", [], None, None)


def test_sender_header_when_from_is_unusable() -> None:
    msg = parse_message(mail("From: undisclosed", "Sender: list@example.org", BASE[2]), "p")
    assert msg.from_ == "list@example.org"
