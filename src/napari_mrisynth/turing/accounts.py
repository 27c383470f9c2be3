"""Rater secrets: issued once, stored only as a salted scrypt hash, checked at sign-in.

A secret is 96 random bits written as 16 URL-safe characters (:func:`secrets.token_urlsafe`),
shown to the study organiser once to hand to the rater. The database keeps
``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (:func:`hashlib.scrypt`, RFC 7914, 16-byte salt), so a
copy of the study file does not give anyone a rater's secret; checking one takes about
0.04 s on a 2-core laptop-class CPU, which makes guessing slow without making sign-in so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

#: scrypt cost: N = 2**14, r = 8, p = 1 (16 MiB, the parameters RFC 7914 gives for logins).
N, R, P = 2**14, 8, 1
_DKLEN = 32


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_secret() -> str:
    """A fresh rater secret (16 URL-safe characters, 96 random bits)."""
    return secrets.token_urlsafe(12)


def hash_secret(secret: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """The stored form of ``secret``: a fresh salt and its scrypt hash."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_DKLEN)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str | None) -> bool:
    """Whether ``secret`` is the one ``stored`` was made from (constant-time comparison).

    False for an empty secret, no stored hash, or a stored value that is not ours.
    """
    if not secret or not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(secret.encode("utf-8"), salt=_unb64(salt), n=int(n),
                                r=int(r), p=int(p), dklen=len(expected))  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)
