"""Identifiers: 24 hexadecimal characters, as IronWorker's, ordered by creation time."""

from __future__ import annotations

import hashlib
import secrets
import time


def new_id() -> str:
    return f"{int(time.time()):08x}{secrets.token_hex(8)}"


def is_id(value: str) -> bool:
    return len(value) == 24 and all(c in "0123456789abcdef" for c in value)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
