"""API keys, bearer tokens, signing secrets and their encryption at rest."""

import base64
import hashlib
import hmac
import os
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SIGNING_SECRET_PREFIX = "whsec_"
API_KEY_PREFIX = "sk_"


def new_api_key() -> str:
    """Return a random API key with 256 bits of entropy."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_signing_secret() -> str:
    """Return a ``whsec_`` secret of 32 random bytes, as Standard Webhooks defines."""
    return SIGNING_SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def decode_signing_secret(secret: str) -> bytes:
    """Return the key bytes of a ``whsec_`` secret; raise ValueError if malformed."""
    if not secret.startswith(SIGNING_SECRET_PREFIX):
        raise ValueError(f"a signing secret starts with {SIGNING_SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SIGNING_SECRET_PREFIX) :], validate=True)
    except ValueError:
        raise ValueError("a signing secret is whsec_ followed by base64") from None
    if len(key) < 24:
        raise ValueError("a signing secret must contain at least 24 bytes after whsec_")
    return key


def hash_token(token: str) -> str:
    """Return the SHA-256 hex digest under which a high-entropy token is stored.

    A plain hash suffices because the tokens carry 256 random bits, so
    guessing one from its hash is as hard as guessing the token.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(presented: str, expected_hash: str) -> bool:
    """Compare a presented token with a stored hash in constant time."""
    return hmac.compare_digest(hash_token(presented), expected_hash)


class SecretBox:
    """AES-256-GCM encryption of secrets stored in the database.

    The associated data binds each ciphertext to the row it belongs to, so a
    ciphertext copied into another client's row fails to decrypt.
    """

    _VERSION = b"\x01"

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key is 32 bytes")
        self._aead = AESGCM(master_key)

    def encrypt(self, plaintext: str, context: str) -> bytes:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return self._VERSION + nonce + sealed

    def decrypt(self, blob: bytes, context: str) -> str:
        """Return the plaintext; raise InvalidTag for a wrong key or context."""
        if blob[:1] != self._VERSION:
            raise ValueError("unknown secret encryption version")
        nonce, sealed = blob[1:13], blob[13:]
        return self._aead.decrypt(nonce, sealed, context.encode()).decode()


def new_master_key() -> str:
    """Return a new master key as URL-safe base64 text."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def decode_master_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except ValueError:
        raise ValueError("the master key is URL-safe base64 of 32 bytes") from None
    if len(key) != 32:
        raise ValueError("the master key is URL-safe base64 of 32 bytes")
    return key
