"""adapters.providers.mime on real-world mail shapes (issue #13 points 6-9), nothing dropped
silently.

The fixtures in tests/fixtures/mime are written for these cases; each one failed before (empty
body, lost attachments, lost From, a made-up address, the address as the parent id).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.errors import UnparseableMessage
from adapters.providers.mime import enriched_to_text, parse_message, valid_address

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mime"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_unquoted_outlook_boundary_with_equals_keeps_body_and_attachments() -> None:
    msg = parse_message(fixture("outlook-unquoted-boundary.eml"), "p")
    assert msg.body == "Sehr geehrte Frau Smith,\nanbei unser Angebot für 2008."
    assert [(a.name, a.size, a.content_type) for a in msg.attachments] == \
        [("Angebot 2008.pdf", 150, "application/pdf")]


def test_quoted_boundaries_and_equals_in_bodies_are_untouched() -> None:
    raw = (b'From: a@example.com\r\nDate: 5 Jan 2010 10:00 +0000\r\nContent-Type: multipart/mixed;'
           b' boundary="----=_Part_1"\r\n\r\n------=_Part_1\r\nContent-Type: text/plain\r\n\r\n'
           b'x; boundary=a=b stays\r\n------=_Part_1--\r\n')
    assert parse_message(raw, "p").body == "x; boundary=a=b stays"


@pytest.mark.parametrize(("name", "raw_from"), [
    ("from-words-without-brackets.eml", "Big Bug bb@bug.com"),
    ("from-junk-bang-path.eml", "develop!nextmime@ebony@sblab.att.com")])
def test_invalid_from_addresses_are_refused_with_the_raw_header(name: str, raw_from: str) -> None:
    with pytest.raises(UnparseableMessage) as info:
        parse_message(fixture(name), "p")
    assert info.value.reason == f"invalid From address: {raw_from!r}"


def test_invalid_from_falls_back_to_a_valid_sender() -> None:
    raw = fixture("from-words-without-brackets.eml").replace(
        b"To:", b"Sender: list@bug.com\r\nTo:", 1)
    assert parse_message(raw, "p").from_ == "list@bug.com"


def test_invalid_recipients_are_left_out_valid_ones_kept() -> None:
    raw = (b"From: a@example.com\r\nTo: Big Bug bb@bug.com, ok@example.org\r\n"
           b"Cc: x@y@z\r\nDate: 5 Jan 2010 10:00 +0000\r\n\r\nhi\r\n")
    msg = parse_message(raw, "p")
    assert (msg.to, msg.cc) == (["ok@example.org"], [])


def test_valid_address_rules() -> None:
    assert [valid_address(a) for a in ("a@b.c", "müller@bücher.de", "o'neil+x@a.ie")] == \
        [True, True, True]
    assert not any(valid_address(a) for a in ('"big bug bb"@bug.com', "@sblab.att.com",
                                              "a@b@c", "mailer-daemon", "a b@c", "a@b."))


def test_richtext_only_multipart_keeps_its_text() -> None:
    msg = parse_message(fixture("richtext-only.eml"), "p")
    assert msg.body == "Important: the meeting moved to Friday.\nUse <b> literally."
    assert msg.attachments == []
    assert enriched_to_text("<bold>a</bold><param>x</param><<b>") == "a<b>"


@pytest.mark.parametrize(("name", "sender", "subject"), [
    ("bom-before-headers.eml", "ann.customer@kunde.example", "with a byte-order mark"),
    ("malformed-header-line.eml", "carl@kunde.example", "header block broken in the middle"),
    ("obsolete-from-syntax.eml", "dora@kunde.example", "obsolete syntax")])
def test_broken_header_blocks_keep_the_from(name: str, sender: str, subject: str) -> None:
    msg = parse_message(fixture(name), "p")
    assert (msg.from_, msg.subject, msg.body) == (sender, subject, "body text"
                                                  if name != "bom-before-headers.eml" else "hello")
    assert msg.to == (["bob@acme.test"] if name == "bom-before-headers.eml" else
                      ["ann@acme.test"])


def test_a_message_without_blank_line_still_ends_its_headers_at_the_body() -> None:
    raw = b"From: a@example.com\r\nDate: 5 Jan 2010 10:00 +0000\r\nHello there,\r\nsee you\r\n"
    msg = parse_message(raw, "p")
    assert msg.from_ == "a@example.com"
    assert "see you" in msg.body


def test_in_reply_to_prose_yields_the_message_id_not_the_address() -> None:
    msg = parse_message(fixture("in-reply-to-prose.eml"), "p")
    assert msg.in_reply_to == "<15842.789012@jupiter>"
    plain = fixture("in-reply-to-prose.eml").replace(
        b'Message from Ralf <ralf@x.de> of "Sun, 08 Jan 1995 10:00:00 +0100."\r\n ',
        b"<first@x> ")
    assert parse_message(plain, "p").in_reply_to == "<first@x>"  # a plain list keeps its order


def test_obsolete_from_as_the_only_repair_and_envelope_lines_stay() -> None:
    raw = b"From  : dora@kunde.example\nDate: 5 Jan 2010 10:00 +0000\nSubject: x\n\nbody\n"
    assert parse_message(raw, "p").from_ == "dora@kunde.example"
    envelope = b"From dora@kunde.example Mon Jan  5 09:00:00 2026\n" + raw.replace(
        b"From  :", b"From:")
    assert parse_message(envelope, "p").from_ == "dora@kunde.example"
