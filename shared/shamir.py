"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Secure aggregation shares each client's self-mask seed and pairwise mask key with
its neighbours, so the server can rebuild exactly the masks that dropped clients
leave behind once t neighbours reveal their shares.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

PRIME = 2**521 - 1  # a Mersenne prime well above any 256-bit secret
SECRET_BYTES = 32
_SHARE_BYTES = 66  # ceil(521 / 8)


class ShamirError(ValueError):
    """Shares that cannot rebuild a secret (too few, repeated or out of range)."""


@dataclass(frozen=True)
class Share:
    x: int  # the holder's point, >= 1
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(4, "big") + self.y.to_bytes(_SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != 4 + _SHARE_BYTES:
            raise ShamirError(f"a share is {4 + _SHARE_BYTES} bytes, got {len(data)}")
        share = cls(int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big"))
        if not (share.x >= 1 and 0 <= share.y < PRIME):
            raise ShamirError("share out of the field's range")
        return share


def split(secret: bytes, xs: list[int], threshold: int) -> list[Share]:
    """Shares of ``secret`` for holders at points ``xs``; any ``threshold`` of them rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs) or min(xs) < 1:
        raise ShamirError(f"need distinct points >= 1 and 1 <= threshold <= {len(xs)}, got threshold {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in xs]


def combine(shares: list[Share], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (Lagrange interpolation at 0)."""
    if len(shares) < threshold:
        raise ShamirError(f"{len(shares)} share(s) cannot rebuild a {threshold}-of-n secret")
    chosen = shares[:threshold]
    xs = [share.x for share in chosen]
    if len(set(xs)) != len(xs):
        raise ShamirError("two shares from the same point")
    secret = 0
    for share in chosen:
        numerator, denominator = 1, 1
        for other in xs:
            if other != share.x:
                numerator = numerator * -other % PRIME
                denominator = denominator * (share.x - other) % PRIME
        secret = (secret + share.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ShamirError("the shares do not belong to one secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value
