"""Extracted code, once per archive digest, shared by every task that runs it."""

from __future__ import annotations

import threading
from pathlib import Path

from ..models import CodeRevision
from .archive import extract_archive
from .link import RunnerLink


class CodeCache:
    def __init__(self, root: Path, store: RunnerLink) -> None:
        self._root = root
        self._store = store
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def directory_for(self, revision: CodeRevision) -> Path | None:
        """The extracted code of ``revision``, or None when it has no archive (image only)."""
        if revision.code_size is None or revision.checksum is None:
            return None
        target = self._root / revision.checksum
        if target.is_dir():
            return target
        with self._lock:
            key_lock = self._key_locks.setdefault(revision.checksum, threading.Lock())
        with key_lock:
            if not target.is_dir():
                data = self._store.get_revision_archive(revision.id)
                if data is None:
                    return None
                extract_archive(data, target)
        return target
