"""Standard Webhooks signatures for each attempt.

``v1`` is HMAC-SHA256 with a shared ``whsec_`` secret. ``v1a`` is Ed25519
with the service's private key, verified with its published public key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


class Signer(Protocol):
    def sign(self, content: bytes) -> str:
        """Return one ``version,base64`` entry of the webhook-signature header."""


class HmacSigner:
    """``v1``: HMAC-SHA256 with a shared ``whsec_`` secret."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, content: bytes) -> str:
        digest = hmac.new(self._key, content, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()


class Ed25519Signer:
    """``v1a``: Ed25519 with one of the service's private keys."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key

    def sign(self, content: bytes) -> str:
        return "v1a," + base64.b64encode(self._private_key.sign(content)).decode()


def signed_content(message_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{message_id}.{timestamp}.".encode() + body


def webhook_headers(
    message_id: str, timestamp: int, body: bytes, signers: Sequence[Signer]
) -> dict[str, str]:
    """Return the ``webhook-*`` headers of one attempt, signed by every signer."""
    content = signed_content(message_id, timestamp, body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signer.sign(content) for signer in signers),
    }
