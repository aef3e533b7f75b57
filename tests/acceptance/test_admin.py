"""The admin token of a real ``dockworker up``: shown once on first start and stored nowhere in
clear, then used by the CLI through the API to manage projects and tokens."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .support import (
    CLI_TIMEOUT_S,
    LOOPBACK,
    Service,
    clean_env,
    dockworker_command,
    run_cli,
    running_service,
    write_files,
)

BANNER = "dockworker created an ADMIN TOKEN"


def admin_tokens_shown(service: Service) -> list[str]:
    output = service.output.read_text(errors="replace")
    return re.findall(rf"{BANNER}.*?\n\n {{4}}(\S+)\n", output, flags=re.DOTALL)


def cli(service: Service, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dockworker_command(), *args],
        env=clean_env(DOCKWORKER_URL=f"http://{LOOPBACK}:{service.port}", **env),
        cwd=service.data_dir.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def cli_json(service: Service, *args: str, **env: str) -> Any:
    result = cli(service, *args, "--json", **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def status_of(service: Service, path: str, token: str) -> int:
    conn = http.client.HTTPConnection(LOOPBACK, service.port, timeout=15)
    try:
        conn.request("GET", path, headers={"Authorization": f"OAuth {token}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def files_containing(directory: Path, secret: str) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.timeout(90)
def test_admin_token_is_shown_once_and_manages_projects_and_tokens(engine: object, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_service(data) as svc:
        shown = admin_tokens_shown(svc)
        assert len(shown) == 1, svc.log_tail()
        admin = shown[0]
        assert files_containing(data, admin) == [], "the admin token is stored in clear"
        project_token = svc.iron()["token"]
        assert status_of(svc, "/2/projects", admin) == 200
        assert status_of(svc, "/2/projects", project_token) == 403

        beta = cli_json(svc, "projects", "create", "beta", "--token", "--admin-token", admin)
        beta_token = beta["token"]["token"]
        assert status_of(svc, f"/2/projects/{beta['id']}/codes", beta_token) == 200
        assert status_of(svc, f"/2/projects/{svc.iron()['project_id']}/codes", beta_token) == 404
        names = [p["name"] for p in cli_json(svc, "projects", "list", DOCKWORKER_ADMIN_TOKEN=admin)]
        assert names == ["default", "beta"]
        tokens = cli_json(svc, "token", "list", "--project", beta["id"], "--admin-token", admin)
        assert [t["name"] for t in tokens] == ["first token"] and beta_token not in json.dumps(tokens)

        revoked = cli(svc, "token", "revoke", beta["token"]["id"], "--admin-token", admin)
        assert revoked.returncode == 0, revoked.stderr
        assert status_of(svc, f"/2/projects/{beta['id']}/codes", beta_token) == 401

        refused = cli(svc, "projects", "list", "--admin-token", project_token)
        assert refused.returncode == 2 and "HTTP 403" in refused.stderr

        # A lost admin token is replaced on the host, through the store, while the service runs.
        replacement = cli(svc, "token", "create", "--admin", "--data-dir", str(data))
        assert replacement.returncode == 0, replacement.stderr
        assert status_of(svc, "/2/projects", replacement.stdout.strip()) == 200
        assert svc.stop() == 0, svc.log_tail()

        svc.start()
        assert len(admin_tokens_shown(svc)) == 1, "a restart must not make another admin token"
        assert status_of(svc, "/2/projects", admin) == 200


@pytest.mark.timeout(60)
def test_upload_with_secrets_through_the_cli(engine: object, tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("s3cret-from-a-file")
    worker = write_files(tmp_path / "worker", {"run.sh": "echo hi"})
    with running_service(tmp_path / "data") as svc:
        uploaded = run_cli(
            svc,
            "upload", str(worker), "--name", "secretive", "--stack", "busybox", "--command", "sh run.sh",
            "--env", "PLAIN=visible",
            "--secret-env", f"API_KEY=@{tmp_path / 'key.txt'}",
            "--secret-env", "TOKEN=s3cret-inline",
            "--worker-config", '{"password": "s3cret-config"}', "--secret-config",
            "--json",
        )  # fmt: skip
        assert uploaded.returncode == 0, uploaded.stderr
        code = json.loads(uploaded.stdout)
        assert code["env_vars"] == {"PLAIN": "visible"}
        assert code["secret_env_vars"] == {"API_KEY": "[FILTERED]", "TOKEN": "[FILTERED]"}
        assert code["config"] == "[FILTERED]" and code["config_secret"] is True
        assert "s3cret" not in uploaded.stdout
        listed = svc.api().get("/codes")
        assert "s3cret" not in json.dumps(listed) and listed["codes"][0]["secret_env_vars"]["API_KEY"]
        bad = run_cli(svc, "upload", str(worker), "--name", "x", "--stack", "busybox", "--secret-env", "oops")
        assert bad.returncode == 2 and "KEY=VALUE or KEY=@FILE" in bad.stderr
