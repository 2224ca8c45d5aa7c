"""The text form of a 32-byte key (environment variables, key files): base64, standard or
URL-safe, padding optional. One reading for the credential and the content keys."""

from __future__ import annotations

import base64
import binascii


def decode_key(text: str, source: str) -> bytes:
    """32 bytes, or ValueError naming `source` (the message never shows the value)."""
    raw = text.strip()
    try:
        key = base64.b64decode(raw.replace("-", "+").replace("_", "/") + "=" * (-len(raw) % 4),
                               validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{source} is not base64 (expected 32 bytes)") from None
    if len(key) != 32:
        raise ValueError(f"{source} must decode to 32 bytes, not {len(key)}")
    return key
