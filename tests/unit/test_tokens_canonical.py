"""A token's signature must be the exact canonical text: base64 ignores the low bits of the last
character, so a tampered last character can decode to the same bytes."""

from __future__ import annotations

import pytest

from adapters.http.tokens import InvalidToken, issue, verify

SECRET = b"unit-secret-0123456789abcdef"


def test_signature_variants_that_decode_to_the_same_bytes_are_refused() -> None:
    token = issue(SECRET, "acme", "ada", issued_at=1_700_000_000)
    assert verify(SECRET, token, now=1_700_000_000).user == "ada"
    head, _, signature = token.rpartition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    sibling = alphabet[last ^ 1]  # differs only in a bit the decoder ignores (32-byte HMAC)
    with pytest.raises(InvalidToken):
        verify(SECRET, f"{head}.{signature[:-1]}{sibling}", now=1_700_000_000)
