"""``dockworker run-local`` runs a worker exactly as the service does: same log, same status,
same exit code, for the same worker and payload."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockworker.engine import DockerEngine
from dockworker.engine.cgroupfs import CgroupLayout
from dockworker.models import CodeSpec
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner
from tests.helpers import queue, save_code, wait_for

pytestmark = pytest.mark.docker

CLI_TIMEOUT_S = 60
MEMORY_MB = 128
PAYLOAD = '{"name": "Ada"}'
CONFIG = "cfg-value"
TASK_ID = re.compile(r"\b[0-9a-f]{24}\b")
STATUS_LINE = re.compile(
    r"^Task (?P<id>[0-9a-f]{24}) (?P<status>[a-z]+)(?:: (?P<msg>.*)| \(exit code \d+\))?$"
)

SUCCEEDS = """\
import os, sys, time
print("args:", " ".join(sys.argv[1:]), flush=True)
print("task", os.environ["TASK_ID"], "in", os.environ["TASK_DIR"], "as", os.getuid())
print("payload:", open(os.environ["PAYLOAD_FILE"]).read())
print("config:", open(os.environ["CONFIG_FILE"]).read())
print("greeting:", os.environ["GREETING"])
sys.stdout.flush()
time.sleep(0.2)  # stdout and stderr are separate pipes: keep their order unambiguous
print("to stderr", file=sys.stderr, flush=True)
time.sleep(0.2)
print("files:", sorted(os.listdir(".")))
"""

FAILS = """\
echo "payload: $(cat "$PAYLOAD_FILE")"
sleep 0.2  # stdout and stderr are separate pipes: keep their order unambiguous
echo "oops" >&2
sleep 0.2
echo "giving up on $TASK_ID"
exit 3
"""


@dataclass(frozen=True, kw_only=True)
class Worker:
    name: str
    files: dict[str, str]
    runtime: str
    file_name: str

    def write(self, directory: Path) -> Path:
        directory.mkdir()
        for name, content in self.files.items():
            (directory / name).write_text(content)
        return directory


WORKERS = [
    Worker(
        name="succeeds", files={"main.py": SUCCEEDS, "data.txt": "x"}, runtime="python", file_name="main.py"
    ),
    Worker(name="fails", files={"run.sh": FAILS}, runtime="sh", file_name="run.sh"),
]


@dataclass(frozen=True, kw_only=True)
class Result:
    log: str
    status: str
    msg: str
    exit_code: int | None = None


def normalise(text: str, task_id: str) -> str:
    return text.replace(task_id, "TASK_ID")


def dockworker_cli() -> list[str]:
    script = shutil.which("dockworker", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-c", "from dockworker.cli.main import main; main()"]


def run_local(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKWORKER_")}
    return subprocess.run(
        [*dockworker_cli(), "run-local", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )


def run_locally(worker: Worker, directory: Path) -> tuple[Result, int]:
    done = run_local(
        str(directory),
        "--runtime",
        worker.runtime,
        "--file-name",
        worker.file_name,
        "--payload",
        PAYLOAD,
        "--config",
        CONFIG,
        "--env",
        "GREETING=hi",
        "--memory-mb",
        str(MEMORY_MB),
    )
    last_line = done.stderr.strip().splitlines()[-1]
    parsed = STATUS_LINE.match(last_line)
    assert parsed is not None, done.stderr
    task_id = parsed["id"]
    result = Result(
        log=normalise(done.stdout, task_id),
        status=parsed["status"],
        msg=normalise(parsed["msg"] or "", task_id),
    )
    return result, done.returncode


def run_in_service(worker: Worker, directory: Path, store: Store, project: str) -> Result:
    spec = CodeSpec(
        name=worker.name,
        runtime=worker.runtime,
        file_name=worker.file_name,
        config=CONFIG,
        env_vars={"GREETING": "hi"},
        memory_mb=MEMORY_MB,
    )
    save_code(store, project, spec, {p.name: p.read_text() for p in directory.iterdir()})
    task = queue(store, project, worker.name, payload=PAYLOAD)
    done = wait_for(store, task.id)
    return Result(
        log=normalise(store.read_log(task.id).decode(), task.id),
        status=done.status.value,
        msg=normalise(done.msg or "", task.id),
        exit_code=done.exit_code,
    )


@pytest.fixture
def project(store: Store) -> str:
    return store.create_project("test").id


@pytest.mark.parametrize("worker", WORKERS, ids=[w.name for w in WORKERS])
def test_run_local_gives_the_same_log_and_status_as_the_service(
    worker: Worker, tmp_path: Path, store: Store, project: str, start_runner: StartRunner, python_stack: None
) -> None:
    directory = worker.write(tmp_path / worker.name)
    start_runner()
    service = run_in_service(worker, directory, store, project)
    local, exit_status = run_locally(worker, directory)

    assert local.log == service.log
    assert (local.status, local.msg) == (service.status, service.msg)
    assert exit_status == (0 if service.status == TaskStatus.COMPLETE.value else 1)
    assert "TASK_ID" in service.log  # the worker saw its id, the same way in both


def test_the_workers_compared_really_succeed_and_fail(
    tmp_path: Path, store: Store, project: str, start_runner: StartRunner, python_stack: None
) -> None:
    start_runner()
    succeeded = run_in_service(WORKERS[0], WORKERS[0].write(tmp_path / "a"), store, project)
    failed = run_in_service(WORKERS[1], WORKERS[1].write(tmp_path / "b"), store, project)
    assert succeeded.status == "complete"
    assert "payload: " + PAYLOAD in succeeded.log
    assert "config: cfg-value" in succeeded.log
    assert "greeting: hi" in succeeded.log
    assert "to stderr" in succeeded.log
    assert "args: -payload /mnt/task/payload.json -config /mnt/task/config.json -id TASK_ID" in succeeded.log
    assert "files: ['data.txt', 'main.py']" in succeeded.log
    assert (failed.status, failed.exit_code) == ("error", 3)
    assert failed.msg == "exit code 3: giving up on TASK_ID"


def test_run_local_with_a_missing_image_fails_cleanly(tmp_path: Path, engine: DockerEngine) -> None:
    (tmp_path / "w").mkdir()
    done = run_local(str(tmp_path / "w"), "--image", "dockworker-test/missing:1", "--command", "true")
    assert done.returncode == 1
    assert done.stdout == ""
    assert re.search(r"Task [0-9a-f]{24} error: image not found on the engine: .*missing:1", done.stderr)
    assert "Traceback" not in done.stderr


def test_run_local_times_out_and_leaves_no_container(tmp_path: Path, engine: DockerEngine) -> None:
    (tmp_path / "w").mkdir()
    done = run_local(
        str(tmp_path / "w"),
        "--stack",
        "busybox",
        "--command",
        "sh -c 'echo started; sleep 60'",
        "--timeout",
        "1",
    )
    assert done.returncode == 1
    assert done.stdout == "started\n"
    assert done.stderr.strip().endswith("timeout: timed out after 1 s")
    leftovers = [c for c in engine.list_labelled("dockworker.installation=run-local")]
    assert leftovers == []
    # what the container used, before the status line; its accounting cgroup is gone
    *_, used, status = done.stderr.strip().splitlines()
    assert re.fullmatch(r"Used \d+ ms of CPU and [\d.]+ [KM]iB of memory at its peak", used), used
    found = TASK_ID.search(status)
    assert found is not None
    parents = [h / "dockworker" / "run-local" for h in CgroupLayout.detect().hierarchies()]
    assert [p for parent in parents for p in parent.glob(f"{found[0]}.*")] == []


def test_run_local_refuses_what_an_upload_would_refuse(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    both = run_local(str(tmp_path / "w"), "--image", "x:1", "--stack", "busybox", "--command", "true")
    assert both.returncode == 2
    assert "give either --image or --stack/--runtime, not both" in both.stderr
    missing_file = run_local(str(tmp_path / "w"), "--runtime", "python", "--file-name", "nope.py")
    assert missing_file.returncode == 2
    assert "'nope.py' is not a file" in missing_file.stderr


def test_ctrl_c_cancels_the_run_and_removes_the_container(tmp_path: Path, engine: DockerEngine) -> None:
    (tmp_path / "w").mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKWORKER_")}
    command = [*dockworker_cli(), "run-local", str(tmp_path / "w"), "--stack", "busybox"]
    process = subprocess.Popen(
        [*command, "--command", "sh -c 'echo started; sleep 60'"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "started\n"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 1
    assert stderr.strip().endswith("cancelled: cancelled by user")
    assert engine.list_labelled("dockworker.installation=run-local") == []


def test_run_local_prints_the_workers_progress_on_stderr(tmp_path: Path, engine: DockerEngine) -> None:
    worker = tmp_path / "w"
    worker.mkdir()
    (worker / "run.sh").write_text(
        'echo "30 a third" > "$PROGRESS_FILE"\n'
        "sleep 1.5\n"
        'echo \'{"percent": 100, "msg": "done"}\' > "$PROGRESS_FILE"\n'
        'echo "half way" > "$PROGRESS_FILE"\n'
    )
    done = run_local(str(worker), "--stack", "busybox", "--command", "sh run.sh")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "[progress 30%] a third" in lines and "[progress 100%] done" in lines, done.stderr
    assert "[progress line refused: neither JSON nor 'PERCENT [MSG]': 'half way']" in lines, done.stderr
