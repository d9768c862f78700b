"""Verify a received webhook: for receivers of this service, and for its tests.

A webhook carries the Standard Webhooks headers ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature``. The signature header lists
entries separated by spaces: ``v1,<base64>`` is HMAC-SHA256 with the
client's ``whsec_`` secret, and ``v1a,<base64>`` is Ed25519 with one of the
keys published at ``GET /v1/webhooks/signing-keys`` (``whpk_`` and base64
of 32 raw bytes). Both sign ``{webhook-id}.{webhook-timestamp}.{body}``.

Example, in a receiver::

    from webhooks.verify import WebhookVerificationError, verify_webhook

    try:
        event = verify_webhook(body, request.headers, secret=SECRET)
    except WebhookVerificationError:
        return 400

Check that the ``webhook-id`` was not handled before: the timestamp limits
how long a captured webhook can be replayed, and the ID catches repeats
within that time, which are also how retries arrive.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SECRET_PREFIX = "whsec_"
PUBLIC_KEY_PREFIX = "whpk_"
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """The webhook's headers, timestamp or signatures did not verify."""


def _header(headers: Mapping[str, str], name: str) -> str:
    """Return a header by case-insensitive name; raise if it is missing or empty."""
    for key, value in headers.items():
        if key.lower() == name:
            if value:
                return value
            break
    raise WebhookVerificationError(f"the {name} header is missing")


def _check_timestamp(text: str, tolerance_s: float, now: float) -> None:
    try:
        timestamp = int(text)
    except ValueError:
        raise WebhookVerificationError(
            f"the webhook-timestamp header is not a whole number of seconds: {text!r}"
        ) from None
    if abs(now - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"the webhook timestamp is {now - timestamp:+.0f} s from now, outside "
            f"the tolerance of {tolerance_s:g} s; a replayed or delayed webhook"
        )


def _decode(text: str, prefix: str, kind: str) -> bytes:
    if not text.startswith(prefix):
        raise ValueError(f"a {kind} starts with {prefix!r}")
    try:
        return base64.b64decode(text[len(prefix) :], validate=True)
    except binascii.Error:
        raise ValueError(f"a {kind} is {prefix} followed by base64") from None


def _public_keys(keys: Iterable[str | Mapping[str, Any]]) -> list[Ed25519PublicKey]:
    """Decode ``whpk_`` keys, given as text or as entries of the published list."""
    decoded = []
    for key in keys:
        text = key if isinstance(key, str) else key["public_key"]
        raw = _decode(text, PUBLIC_KEY_PREFIX, "public key")
        decoded.append(Ed25519PublicKey.from_public_bytes(raw))
    return decoded


def _signatures(header: str, version: str) -> list[bytes]:
    found = []
    for entry in header.split(" "):
        entry_version, _, value = entry.partition(",")
        if entry_version != version:
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except binascii.Error:
            continue  # a malformed entry matches nothing
    return found


def _hmac_matches(secret: str, content: bytes, signatures: list[bytes]) -> bool:
    key = _decode(secret, SECRET_PREFIX, "signing secret")
    expected = hmac.new(key, content, hashlib.sha256).digest()
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


def _ed25519_matches(
    keys: list[Ed25519PublicKey], content: bytes, signatures: list[bytes]
) -> bool:
    for key in keys:
        for signature in signatures:
            try:
                key.verify(signature, content)
            except InvalidSignature:
                continue
            return True
    return False


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    secret: str | None = None,
    public_keys: Iterable[str | Mapping[str, Any]] | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> Any:
    """Verify a webhook and return its body parsed as JSON.

    ``body`` is the raw body exactly as received. With ``secret`` (``whsec_``)
    a ``v1`` signature must match. With ``public_keys`` (``whpk_`` texts or
    the entries of the published ``keys`` list) a ``v1a`` signature must
    match one of them. Given both, either match is enough. ``now`` (Unix
    seconds) defaults to the current time.

    Raises WebhookVerificationError if a header is missing, the timestamp is
    more than ``tolerance_s`` from ``now``, or no signature matches; raises
    ValueError for a malformed ``secret`` or public key.
    """
    if secret is None and public_keys is None:
        raise ValueError("give a secret, public keys or both to verify against")
    payload = body.encode() if isinstance(body, str) else body
    message_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signature_header = _header(headers, "webhook-signature")
    _check_timestamp(timestamp, tolerance_s, time.time() if now is None else now)

    content = f"{message_id}.{timestamp}.".encode() + payload
    verified = secret is not None and _hmac_matches(
        secret, content, _signatures(signature_header, "v1")
    )
    if not verified and public_keys is not None:
        verified = _ed25519_matches(
            _public_keys(public_keys), content, _signatures(signature_header, "v1a")
        )
    if not verified:
        raise WebhookVerificationError("no signature matches the webhook")
    try:
        return json.loads(payload)
    except ValueError:
        raise WebhookVerificationError("the verified body is not valid JSON") from None
