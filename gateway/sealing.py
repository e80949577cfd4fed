"""What the gateway's secrets protect in the store and in cookies: store keys that are HMACs of the values they
stand for, and records sealed with AES-256-GCM, both under keys derived with HKDF-SHA256 from one secret and a
purpose (so a key of one kind never opens another kind).

- Store keys are HMACs of a cookie value, a `state` or a refresh token, never the values themselves: a copy of
  the store (a Redis dump, the host's file) holds nothing that a browser or client could present.
- A record is sealed with its store key (or cookie name) as associated data: it can neither be altered nor moved
  under another key. A record sealed with another secret reads as absent.
- Rotation: a Sealer also reads with previous secrets (newest first) and always writes with the current one, so a
  new secret can be rolled out without logging everybody out; records written before it are rewritten under the
  new secret as they change, and the previous secret can go once they have all expired.
"""

import base64
import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TEXT_LIMIT = 4096  # characters of a sealed text: a browser keeps no longer cookie

_NONCE = 12
_TAG = 16


def derive(secret, purpose):
    """A 32-byte key for one purpose, from a secret (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(secret.encode())


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Sealer:
    """Store keys and sealed records of one purpose (e.g. "bff sessions"), with the current secret and the ones
    still accepted for reading."""

    def __init__(self, secret, purpose, previous=()):
        self._keys = [(derive(s, f"edm-gateway {purpose} store keys"),
                       AESGCM(derive(s, f"edm-gateway {purpose} records"))) for s in (secret, *previous)]

    def key(self, kind, value):
        """The store key of `value` under the current secret: `kind:` and an HMAC, never the value itself."""
        return self._key(self._keys[0][0], kind, value)

    def keys(self, kind, value):
        """The store keys `value` may be under: the current secret's first, then the previous ones'."""
        return [self._key(mac_key, kind, value) for mac_key, _ in self._keys]

    @staticmethod
    def _key(mac_key, kind, value):
        digest = hmac.new(mac_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        return f"{kind}:{_b64(digest)}"

    def seal(self, key, record):
        """`record` (JSON-able) sealed under `key`, with the current secret."""
        nonce = os.urandom(_NONCE)
        return nonce + self._keys[0][1].encrypt(nonce, json.dumps(record).encode(), key.encode())

    def open(self, key, sealed):
        """The record sealed under `key` with an accepted secret, or None (another key or secret, altered)."""
        if not sealed or len(sealed) < _NONCE + _TAG:
            return None
        for _, aead in self._keys:
            try:
                return json.loads(aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], key.encode()))
            except (InvalidTag, ValueError):
                continue
        return None

    def seal_text(self, name, record):
        """A sealed record as cookie-safe text (base64url), bound to `name`."""
        return _b64(self.seal(name, record))

    def open_text(self, name, text):
        """The record of `seal_text`, or None for anything else."""
        if not text or len(text) > TEXT_LIMIT:
            return None
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            return None
        return self.open(name, sealed)
