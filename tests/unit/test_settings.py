from __future__ import annotations

from pathlib import Path

import pytest

from dockworker.errors import ClientError
from dockworker.settings import load_settings


def test_environment_then_overrides() -> None:
    env = {
        "DOCKWORKER_DATA_DIR": "/srv/dw",
        "DOCKWORKER_PORT": "9000",
        "DOCKWORKER_SLOTS": "3",
        "DOCKWORKER_MEMORY_MB": "256",
        "DOCKWORKER_CLUSTERS": "a, b",
    }
    settings = load_settings(env=env, port=9100, data_dir=None)
    assert settings.data_dir == Path("/srv/dw") and isinstance(settings.data_dir, Path)
    assert settings.port == 9100
    assert settings.slots == 3
    assert settings.limits.memory_mb == 256
    assert settings.clusters == ("a", "b")


def test_bad_environment_value_is_a_clear_error() -> None:
    with pytest.raises(ClientError, match="DOCKWORKER_PORT"):
        load_settings(env={"DOCKWORKER_PORT": "eighty"})


def test_database_url_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    assert load_settings(env={}, data_dir=tmp_path).database_url == f"sqlite:///{tmp_path / 'dockworker.db'}"
