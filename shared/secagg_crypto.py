"""The cryptography of secure aggregation: key pairs, pairwise keys, share encryption, mask streams.

All primitives come from ``cryptography``: X25519 key agreement, HKDF-SHA256 to
derive keys, ChaCha20-Poly1305 to encrypt shares (the associated data binds each
ciphertext to its run, round, sender and recipient, so a replayed or tampered one
fails), and the ChaCha20 keystream as the CSPRNG that expands a 32-byte seed into
a mask vector.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_NONCE_BYTES = 12


class ShareAuthenticationError(ValueError):
    """An encrypted share failed to decrypt: tampered, or meant for another round or node."""


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agreed_key(private: bytes, peer_public: bytes, purpose: bytes) -> bytes:
    """The 32-byte key two nodes both derive from one's private and the other's public key."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"stamen-secagg/" + purpose).derive(shared)


def encrypt(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, context)


def decrypt(key: bytes, ciphertext: bytes, context: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:], context)
    except InvalidTag:
        raise ShareAuthenticationError("an encrypted share failed authentication") from None


def seed_commitment(seed: bytes) -> bytes:
    """What a client publishes of its self-mask seed at stage 1 (SHA-256: it reveals nothing of a random seed), so
    the server can tell the seed it rebuilds from shares is that one."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(seed)
    return digest.finalize()


def mask_stream(seed: bytes, length: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """``length`` uniform elements of Z_(2^bits) from the ChaCha20 keystream keyed by ``seed``."""
    itemsize = np.dtype(dtype).itemsize
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(length * itemsize)), dtype=dtype)
