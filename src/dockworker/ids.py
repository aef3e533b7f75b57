"""Identifiers: 24 hexadecimal characters, as IronWorker's, ordered by creation time."""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time

# Seconds, then a per-process counter (so ids made in one batch sort in creation order),
# then randomness (so ids from different processes do not collide).
_counter = itertools.count(secrets.randbelow(1 << 20))


def new_id() -> str:
    return f"{int(time.time()):08x}{next(_counter) & 0xFFFFFF:06x}{secrets.token_hex(5)}"


def is_id(value: str) -> bool:
    return len(value) == 24 and all(c in "0123456789abcdef" for c in value)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
