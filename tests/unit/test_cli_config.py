"""Where the CLI finds its project, token and server: IronWorker's order, then dockworker's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dockworker.cli.config import ClientConfig
from dockworker.errors import ClientError


def write(path: Path, **values: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_each_source_overrides_the_ones_before(home: Path, tmp_path: Path) -> None:
    write(home / ".iron.json", project_id="p-home", token="t-home", host="h-home", port=1)
    env = {"HOME": str(home), "IRON_TOKEN": "t-env", "IRON_WORKER_PORT": "2"}
    found = ClientConfig.load(env=env)
    assert (found.project_id, found.token, found.base_url) == ("p-home", "t-env", "http://h-home:2")

    write(tmp_path / "iron.json", iron_worker={"host": "h-local"}, token="t-local")
    found = ClientConfig.load(env=env)
    assert (found.token, found.base_url) == ("t-local", "http://h-local:2")

    explicit = write(tmp_path / "other.json", project_id="p-explicit")
    found = ClientConfig.load(env={**env, "DOCKWORKER_IRON_JSON": str(explicit)})
    assert (found.project_id, found.token) == ("p-explicit", "t-local")
    assert found.sources[-1] == str(explicit)


def test_environment_variables_alone_are_enough(home: Path) -> None:
    found = ClientConfig.load(
        env={"HOME": str(home), "IRON_PROJECT_ID": "p", "IRON_TOKEN": "t", "IRON_PORT": "9000"}
    )
    assert (found.project_id, found.token, found.base_url) == ("p", "t", "http://127.0.0.1:9000")


def test_the_data_dir_file_counts_only_without_a_local_iron_json(home: Path, tmp_path: Path) -> None:
    write(tmp_path / "data" / "iron.json", project_id="p-data", token="t-data")
    assert ClientConfig.load(env={"HOME": str(home)}).project_id == "p-data"
    write(tmp_path / "iron.json", project_id="p-local", token="t-local")
    assert ClientConfig.load(env={"HOME": str(home)}).project_id == "p-local"


def test_https_defaults_to_port_443(home: Path) -> None:
    env = {"HOME": str(home), "IRON_PROJECT_ID": "p", "IRON_TOKEN": "t", "IRON_PROTOCOL": "https"}
    assert ClientConfig.load(env=env).base_url == "https://127.0.0.1:443"


def test_a_missing_explicit_file_is_named(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ClientError, match=r"^--config /missing.json: no such file$"):
        ClientConfig.load(Path("/missing.json"), env={"HOME": str(home)})
    with pytest.raises(ClientError, match=r"DOCKWORKER_IRON_JSON /nope\.json: no such file"):
        ClientConfig.load(env={"HOME": str(home), "DOCKWORKER_IRON_JSON": "/nope.json"})


def test_nothing_configured_says_what_was_read(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ClientError, match=r"no project_id or token configured \(read: nothing found\)"):
        ClientConfig.load(env={"HOME": str(home)})
    write(tmp_path / "iron.json", project_id="p")
    with pytest.raises(ClientError, match=r"no token configured \(read: iron.json\)"):
        ClientConfig.load(env={"HOME": str(home)})


def test_broken_files_are_refused(home: Path, tmp_path: Path) -> None:
    (tmp_path / "iron.json").write_text("{not json")
    with pytest.raises(ClientError, match=r"iron\.json is not valid JSON"):
        ClientConfig.load(env={"HOME": str(home)})
    (tmp_path / "iron.json").write_text("[]")
    with pytest.raises(ClientError, match="must hold a JSON object"):
        ClientConfig.load(env={"HOME": str(home)})
    write(tmp_path / "iron.json", project_id="p", token="t", port="eighty")
    with pytest.raises(ClientError, match="not a number"):
        ClientConfig.load(env={"HOME": str(home)})
