"""Extracted code, once per archive digest, shared by every task that runs it; and code revisions,
read once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from ..models import CodeRevision
from .archive import extract_archive
from .link import RunnerLink

# Revisions kept in memory (the most recently used).
REVISIONS_KEPT = 256


class CodeCache:
    def __init__(self, root: Path, store: RunnerLink) -> None:
        self._root = root
        self._store = store
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._revisions: OrderedDict[str, CodeRevision] = OrderedDict()

    def revision(self, revision_id: str) -> CodeRevision:
        """The revision, asked of the store once: a revision never changes (a new config or
        archive makes a new one). NotFound when its package was deleted (never kept)."""
        with self._lock:
            found = self._revisions.get(revision_id)
            if found is not None:
                self._revisions.move_to_end(revision_id)
                return found
        found = self._store.get_revision(revision_id)
        with self._lock:
            self._revisions[revision_id] = found
            while len(self._revisions) > REVISIONS_KEPT:
                self._revisions.popitem(last=False)
        return found

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
