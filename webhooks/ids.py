"""Identifiers: opaque, URL-safe, unguessable, and sorted by creation time."""

import os
import time

# Crockford's base32 alphabet in ASCII order, so that the text sorts as the
# bytes do.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    length = (len(data) * 8 + 4) // 5
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[number & 31])
        number >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """Return ``prefix_`` followed by 48 bits of milliseconds and 128 random bits."""
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_encode(millis.to_bytes(6, 'big') + os.urandom(16))}"


def correlation_id() -> str:
    return new_id("req")


def message_id() -> str:
    """Return a Standard Webhooks message ID, kept by every retry and replay."""
    return new_id("msg")


def delivery_id() -> str:
    return new_id("dlv")


def client_id() -> str:
    return new_id("cli")


def computation_id() -> str:
    return new_id("cmp")
