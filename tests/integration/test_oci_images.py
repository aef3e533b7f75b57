"""Images on the OCI backend: a multi-layer image built on the engine (a file deleted in an upper
layer, a directory replaced, links, a set-id file) looks the same from inside an OCI container as
from inside a Docker one; layers are unpacked once per digest and shared between images."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.engine import ContainerSpec, DockerEngine, Engine
from dockworker.engine.oci import OciEngine
from dockworker.runner.container_run import run_container
from tests.conftest import BUSYBOX_IMAGE

from . import oci_fixtures

runtime = oci_fixtures.runtime
oci_root = oci_fixtures.oci_root
oci_engine = oci_fixtures.oci_engine

pytestmark = pytest.mark.docker

DOCKERFILE = f"""FROM {BUSYBOX_IMAGE}
USER 0
RUN mkdir -p /data/keep /data/replaced && echo old > /data/replaced/old && echo gone > /data/gone \\
 && echo kept > /data/keep/file && ln -s keep/file /data/link && ln /data/keep/file /data/hard \\
 && cp /bin/busybox /data/suid && chmod 4755 /data/suid && mkfifo /data/fifo
RUN rm /data/gone && rm -rf /data/replaced && mkdir /data/replaced && echo new > /data/replaced/new
USER 1000:1000
ENV LAYERED=yes
WORKDIR /data
CMD ["sh", "-c", "echo default-command"]
"""
PROBE = (
    "ls -A /data | tr '\\n' ' '; echo; ls -A /data/replaced; cat /data/replaced/*; readlink /data/link;"
    " cat /data/link /data/hard; stat -c '%a %u' /data/suid /data/keep; ls -l /data/fifo | cut -c1;"
    " echo $LAYERED; pwd"
)


@pytest.fixture(scope="module")
def layered_image(engine: DockerEngine) -> Iterator[str]:
    tag = f"dockworker-test/oci-layers:{os.getpid()}"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        data = DOCKERFILE.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    context.seek(0)
    engine.build_image(context, tag=tag)
    yield tag
    engine.remove_image(tag)


def output_of(engine: Engine, spec: ContainerSpec) -> bytes:
    chunks: list[bytes] = []
    result = run_container(
        engine,
        spec,
        sink=lambda data, consumed: chunks.append(data),
        timeout_s=30,
        stop=threading.Event(),
    )
    assert result.outcome.exit_code == 0, (result.outcome, b"".join(chunks))
    return b"".join(chunks)


def test_a_layered_image_looks_the_same_as_on_docker(
    engine: DockerEngine, oci_engine: OciEngine, oci_root: Path, layered_image: str
) -> None:
    spec = ContainerSpec(image=layered_image, command=["sh", "-c", PROBE], user="1000:1000")
    ours = output_of(oci_engine, spec)
    assert ours == output_of(engine, spec)
    lines = ours.decode().splitlines()
    assert "gone" not in lines[0] and "replaced" in lines[0]  # the deleted file stays deleted
    assert lines[1] == "new"  # the replaced directory shows only its new content
    assert lines[2:6] == ["new", "keep/file", "kept", "kept"]
    assert lines[6:8] == ["4755 0", "755 0"]
    assert lines[8:] == ["p", "yes", "/data"]


def test_the_images_own_command_and_settings_are_used(
    engine: DockerEngine, oci_engine: OciEngine, layered_image: str
) -> None:
    spec = ContainerSpec(image=layered_image, command=[], user="1000:1000")
    assert output_of(oci_engine, spec) == output_of(engine, spec) == b"default-command\n"


def test_layers_are_unpacked_once_and_shared(
    engine: DockerEngine, oci_engine: OciEngine, oci_root: Path, layered_image: str
) -> None:
    for image in (BUSYBOX_IMAGE, layered_image, layered_image):
        output_of(oci_engine, ContainerSpec(image=image, command=["true"]))
    layers = {p.name for p in (oci_root / "images" / "layers").iterdir()}
    records = [p for p in (oci_root / "images" / "images").glob("*.json")]
    base = next(r for r in records if r.name.removesuffix(".json") in (engine.image_id(BUSYBOX_IMAGE) or ""))
    layered = next(
        r for r in records if r.name.removesuffix(".json") in (engine.image_id(layered_image) or "")
    )
    base_layers = json.loads(base.read_text())["layers"]
    layered_layers = json.loads(layered.read_text())["layers"]
    assert layered_layers[: len(base_layers)] == base_layers  # the base image's layer, shared
    assert set(base_layers) | set(layered_layers) <= layers
    assert not [p for p in (oci_root / "images" / "spool").iterdir()]
