"""`crmsync import-mail` input formats without I/O (issue #13 point 15): mbox splitting in both
kinds (From_-separated and Content-Length), streamed from a byte stream, and the provider ids."""

from __future__ import annotations

import io

from runners.services.import_mail import iter_mbox, provider_id


def mail(n: int, body: str = "hello\n", extra: str = "") -> str:
    return (f"From: c{n}@customer.test\nTo: ann@acme.test\nSubject: s{n}\n"
            f"Date: Mon, 5 Jan 2026 09:0{n}:00 +0000\nMessage-ID: <m{n}@x>\n{extra}\n{body}")


def split(text: str) -> list[bytes]:
    return list(iter_mbox(io.BytesIO(text.encode())))


def test_from_separated_mbox_splits_on_envelope_lines_and_unescapes() -> None:
    body = "para\n>From the start\n>>From deeper\nFrom inside a line is text\n"
    text = (f"From c1@customer.test Mon Jan  5 09:01:00 2026\n{mail(1, body)}\n"
            f"From c2@customer.test Mon Jan  5 09:02:00 2026\n{mail(2)}\n")
    first, second = split(text)
    assert first.endswith(b"para\nFrom the start\n>From deeper\nFrom inside a line is text\n")
    assert first.startswith(b"From: c1@customer.test\n")
    assert second == mail(2).encode()


def test_a_from_line_without_a_blank_line_before_is_body_text() -> None:
    body = "quoted:\nFrom c9@customer.test Mon Jan  5 09:09:00 2026\nend\n"
    text = f"From c1@x Mon Jan  5 09:01:00 2026\n{mail(1, body)}"
    assert len(split(text)) == 1


def test_content_length_mbox_keeps_from_lines_in_the_body() -> None:
    body = "before\n\nFrom c9@customer.test Mon Jan  5 09:09:00 2026\nafter\n"
    one = mail(1, body, extra=f"Content-Length: {len(body)}\n")
    two = mail(2, extra="Content-Length: 6\n")
    text = f"From c1@x Mon Jan  5 09:01:00 2026\n{one}\nFrom c2@x Mon Jan  5 09:02:00 2026\n{two}"
    first, second = split(text)
    assert first == one.encode()
    assert second == two.encode()


def test_a_wrong_content_length_falls_back_to_from_lines() -> None:
    short, long = mail(1, extra="Content-Length: 3\n"), mail(2, extra="Content-Length: 999\n")
    text = (f"From c1@x Mon Jan  5 09:01:00 2026\n{short}\n"
            f"From c2@x Mon Jan  5 09:02:00 2026\n{long}")
    first, second = split(text)
    assert first.endswith(b"\nhello\n") and b"s1" in first
    assert second.endswith(b"\nhello\n") and b"s2" in second


def test_crlf_mbox_and_junk_before_the_first_envelope() -> None:
    text = ("junk\r\nFrom c1@x Mon Jan  5 09:01:00 2026\r\n" + mail(1).replace("\n", "\r\n")
            + "\r\nFrom c2@x Mon Jan  5 09:02:00 2026\r\n" + mail(2).replace("\n", "\r\n"))
    assert [m.count(b"Subject: s") for m in split(text)] == [1, 1]
    assert split(text)[0].endswith(b"hello\r\n")


def test_provider_id_is_stable_by_message_id_else_by_content() -> None:
    assert provider_id("<a@x>", b"one") == provider_id("<a@x>", b"two")
    assert provider_id("<a@x>", b"one") != provider_id("<b@x>", b"one")
    assert provider_id(None, b"one") != provider_id(None, b"two")
    assert provider_id(None, b"one").startswith("import:sha256:")


def test_mbox_is_streamed_one_message_at_a_time() -> None:
    one = "From c@x Mon Jan  5 09:01:00 2026\n" + mail(1, body="x" * 1000 + "\n") + "\n"
    stream = io.BytesIO((one * 1000).encode())
    messages = iter_mbox(stream)
    first = next(messages)
    assert b"Subject: s1" in first
    assert stream.tell() < 3 * len(one)  # read: this message and the next envelope, no more
    assert sum(1 for _ in messages) == 999
