"""Payloads as the HUD shows them: values under secret-looking keys masked, as IronWorker's HUD
did. A JSON payload is masked key by key, at any depth; any other text has its
``name=value`` / ``name: value`` pairs with a secret-looking name masked."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..schemas import FILTERED

SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "auth", "credential", "private", "signature")
_WORDS = "|".join(SECRET_WORDS)
_PAIR = re.compile(
    rf"""(?ix)
    (?P<name>[\w.\-]*(?:{_WORDS})[\w.\-]*["']?)   # a secret-looking name
    (?P<sep>\s*[=:]\s*)
    (?P<value>"[^"]*"|'[^']*'|[^\s&,;]+)
    """
)


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskedPayload:
    text: str
    is_json: bool
    masked: int  # how many values were masked


def _mask(value: Any) -> tuple[Any, int]:
    if isinstance(value, dict):
        masked, count = {}, 0
        for key, item in value.items():
            if is_secret_name(str(key)):
                masked[key], count = FILTERED, count + 1
            else:
                masked[key], inner = _mask(item)
                count += inner
        return masked, count
    if isinstance(value, list):
        items, count = [], 0
        for item in value:
            masked_item, inner = _mask(item)
            items.append(masked_item)
            count += inner
        return items, count
    return value, 0


def mask_payload(payload: str) -> MaskedPayload:
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict | list):
        masked, count = _mask(parsed)
        return MaskedPayload(
            text=json.dumps(masked, indent=2, ensure_ascii=False), is_json=True, masked=count
        )
    found = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal found
        found += 1
        return f"{match['name']}{match['sep']}{FILTERED}"

    return MaskedPayload(text=_PAIR.sub(replace, payload), is_json=False, masked=found)
