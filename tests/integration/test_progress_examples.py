"""The README's progress examples, as written there, each run in its stack's image through the
service path: the store must end with the example's report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dockworker.engine import DockerEngine
from dockworker.models import CodeSpec
from dockworker.stacks import STACKS, Stack
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner
from tests.helpers import queue, save_code, wait_for
from tests.integration.stack_workers import HELLO_WORLDS, require_stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Reporting progress from a worker"
# Compiling toolchains (javac in memory, go, rustc and its linker) need the service's default.
MEMORY_MB = 512
TASK_TIMEOUT_S = 120

# The example's language, and the file it is run as, per stack.
LANGUAGE = {
    "busybox": "sh",
    "debian": "sh",
    "ffmpeg": "sh",
    "imagemagick": "sh",
    "python": "python",
    "node": "js",
    "ruby": "ruby",
    "php": "php",
    "perl": "perl",
    "java": "java",
    "go": "go",
    "rust": "rust",
    "r": "r",
}
FILE_NAME = {
    "sh": "progress.sh",
    "python": "progress.py",
    "js": "progress.js",
    "ruby": "progress.rb",
    "php": "progress.php",
    "perl": "progress.pl",
    "java": "Progress.java",
    "go": "progress.go",
    "rust": "progress.rs",
    "r": "progress.R",
}


def readme_examples() -> dict[str, list[str]]:
    """The section's code blocks by language, each as its lines."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", text[start:end], re.MULTILINE | re.DOTALL)
    return {language: code.splitlines() for language, code in blocks}


def program(language: str, lines: list[str]) -> str:
    """The example as a whole program: the compiled languages' two lines are a declaration for
    the top of the file and a statement for a function."""
    top, statement = lines
    if language == "php":
        return "<?php\n" + "\n".join(lines) + "\n"
    if language == "java":
        main = "public static void main(String[] args) throws Exception"
        return f"{top}\npublic class Progress {{\n  {main} {{\n    {statement}\n  }}\n}}\n"
    if language == "go":
        return f"package main\n\n{top}\n\nfunc main() {{\n\t{statement}\n}}\n"
    if language == "rust":
        return f"{top}\n\nfn main() {{\n    {statement}\n}}\n"
    return "\n".join(lines) + "\n"


def test_every_stack_language_has_a_two_line_example() -> None:
    examples = readme_examples()
    assert set(examples) == set(FILE_NAME)
    assert set(LANGUAGE) == set(STACKS)
    assert all(len(lines) == 2 for lines in examples.values()), examples


@pytest.mark.parametrize("stack", STACKS.values(), ids=list(STACKS))
def test_the_readme_example_reports_progress_in_its_stack(
    stack: Stack, store: Store, start_runner: StartRunner, engine: DockerEngine
) -> None:
    require_stack(engine, stack)
    language = LANGUAGE[stack.name]
    file_name = FILE_NAME[language]
    project = store.create_project("examples").id
    save_code(
        store,
        project,
        CodeSpec(
            name=f"progress-{stack.name}",
            runtime=HELLO_WORLDS[stack.name].runtime,
            file_name=file_name,
            memory_mb=MEMORY_MB,
        ),
        {file_name: program(language, readme_examples()[language])},
    )
    start_runner()
    task = queue(store, project, f"progress-{stack.name}", timeout=TASK_TIMEOUT_S)
    done = wait_for(store, task.id, timeout=TASK_TIMEOUT_S + 15)
    log = store.read_log(task.id).decode(errors="replace")
    assert done.status is TaskStatus.COMPLETE, f"{done.msg}\n{log}"
    assert (done.percent, done.msg) == (50, "half way"), log
    assert [e.detail for e in store.list_events(task.id) if e.kind == "progress_refused"] == []
