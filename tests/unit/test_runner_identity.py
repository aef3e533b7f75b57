"""One live process per data directory and per runner id (SQLite and file locks; the
PostgreSQL lock is tested against a real server in the integration tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockworker.errors import AlreadyRunning
from dockworker.store import open_store
from dockworker.store.identity import ProcessIdentity, hold_data_dir


def test_a_data_directory_is_held_once_and_names_its_holder(tmp_path: Path) -> None:
    first = hold_data_dir(tmp_path)
    with pytest.raises(AlreadyRunning, match=r"in use by another dockworker process \(pid \d+ on "):
        hold_data_dir(tmp_path)
    first.release()
    hold_data_dir(tmp_path).release()


def test_a_runner_id_is_held_once_per_sqlite_database(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        first = store.hold_runner_identity("r1")
        assert first.held()
        with pytest.raises(AlreadyRunning, match="runner 'r1' is already running"):
            store.hold_runner_identity("r1")
        other = store.hold_runner_identity("r2")  # another id is another runner
        first.release()
        assert not first.held()
        again = store.hold_runner_identity("r1")
        again.release()
        other.release()
    finally:
        store.close()


def test_a_database_without_a_file_holds_runner_ids_per_process() -> None:
    first = ProcessIdentity("r1")
    with pytest.raises(AlreadyRunning):
        ProcessIdentity("r1")
    first.release()
    ProcessIdentity("r1").release()
