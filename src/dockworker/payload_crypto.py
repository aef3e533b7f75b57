"""End-to-end payload encryption for a cluster's runners (IronWorker's hybrid clusters had it).

A cluster may hold an RSA public key. Clients encrypt each payload for it; the API stores the
envelope as the payload and never sees the clear text; only the cluster's runners, started
with the private key, open it before the task starts. The format (version 1), all of it in
the task's ``payload`` string::

    dwenc1:BASE64( len(wrapped) as 2 bytes, big-endian | wrapped | nonce | sealed )

* ``key``: 32 random bytes, a fresh AES-256 key for each payload;
* ``wrapped``: ``key`` encrypted with the cluster's public key, RSA-OAEP with SHA-256 (MGF1
  SHA-256, no label); its length is the RSA modulus's (256 bytes for 2048 bits);
* ``nonce``: 12 random bytes;
* ``sealed``: the UTF-8 payload encrypted with AES-256-GCM under ``key`` and ``nonce``, with
  ``b"dwenc1"`` as associated data; the 16-byte tag at its end.

BASE64 is the standard alphabet with padding. Keys are PEM: the public key
``SubjectPublicKeyInfo``, the private key PKCS#8 or traditional OpenSSL, unencrypted; at
least 2048 bits. ``openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out key.pem``
and ``openssl pkey -in key.pem -pubout -out key.pub`` make a pair (or ``generate_key_pair``)."""

from __future__ import annotations

import base64
import binascii
import os
from typing import TYPE_CHECKING

from .errors import ClientError

if TYPE_CHECKING:  # imported where used: checking for an envelope needs none of it
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

PREFIX = "dwenc1:"
_ASSOCIATED = b"dwenc1"
_NONCE_BYTES = 12
_MIN_RSA_BITS = 2048


def _oaep() -> padding.OAEP:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class PayloadNotDecryptable(ClientError):
    """The payload cannot be decrypted with this runner's key."""


def is_envelope(payload: str) -> bool:
    return payload.startswith(PREFIX)


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """ClientError unless ``pem`` is an RSA public key of at least 2048 bits."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ClientError(f"public_key is not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ClientError("public_key must be an RSA key")
    if key.key_size < _MIN_RSA_BITS:
        raise ClientError(f"public_key has {key.key_size} bits: at least {_MIN_RSA_BITS} are needed")
    return key


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ClientError(f"the decryption key is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ClientError("the decryption key must be an RSA key")
    return key


def encrypt(payload: str, public_key_pem: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    public_key = load_public_key(public_key_pem)
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE_BYTES)
    wrapped = public_key.encrypt(key, _oaep())
    sealed = AESGCM(key).encrypt(nonce, payload.encode(), _ASSOCIATED)
    body = len(wrapped).to_bytes(2, "big") + wrapped + nonce + sealed
    return PREFIX + base64.b64encode(body).decode("ascii")


def decrypt(envelope: str, private_key: rsa.RSAPrivateKey) -> str:
    """The clear payload; PayloadNotDecryptable when it is not an envelope this key opens."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not is_envelope(envelope):
        raise PayloadNotDecryptable(
            "the payload is not encrypted (this runner's cluster takes encrypted ones)"
        )
    try:
        body = base64.b64decode(envelope[len(PREFIX) :], validate=True)
        size = int.from_bytes(body[:2], "big")
        wrapped = body[2 : 2 + size]
        nonce = body[2 + size : 2 + size + _NONCE_BYTES]
        sealed = body[2 + size + _NONCE_BYTES :]
        if len(wrapped) != size or len(nonce) != _NONCE_BYTES:
            raise ValueError("truncated")
        key = private_key.decrypt(wrapped, _oaep())
        return AESGCM(key).decrypt(nonce, sealed, _ASSOCIATED).decode()
    except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError):
        raise PayloadNotDecryptable(
            "the payload cannot be decrypted with this runner's key (encrypted for another key, or damaged)"
        ) from None


def generate_key_pair(bits: int = 3072) -> tuple[str, str]:
    """(private key PEM, public key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public
