"""Code packages: upload (multipart), list, inspect, revisions, download, delete."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import time
import zipfile
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response
from pydantic import ValidationError

from ..errors import ClientError
from ..models import CodeSpec
from ..runner.archive import ArchiveLimits, check_archive
from ..settings import Settings
from .deps import PagingDep, ProjectDep, ServicesDep
from .errors import describe_validation_error
from .schemas import CodeUpload, code_json, revision_json

router = APIRouter(tags=["codes"])


def _parse_upload(data: str) -> CodeUpload:
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ClientError(f"'data' is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ClientError("'data' must be a JSON object")
    try:
        return CodeUpload.model_validate(raw)
    except ValidationError as exc:
        raise ClientError(describe_validation_error(exc, prefix="data")) from exc


def _archive_bytes(file: UploadFile | None) -> bytes | None:
    if file is None:
        return None
    content = file.file.read()
    if not content:
        return None
    # iron_worker_python on Python 3 sends the zip as the text of a bytes literal
    # ("b'PK\\x03...'"); decode it so that client works unchanged.
    if content[:2] in (b"b'", b'b"') and not content.startswith(b"PK"):
        try:
            decoded = ast.literal_eval(content.decode("ascii"))
        except (ValueError, SyntaxError, UnicodeDecodeError) as exc:
            raise ClientError("'file' is not a zip archive") from exc
        if not isinstance(decoded, bytes):
            raise ClientError("'file' is not a zip archive")
        content = decoded
    return content


def _check_environment(env_vars: dict[str, str], secret_env_vars: dict[str, str], settings: Settings) -> None:
    """Names are checked by the schema; here: no name in both, and a bounded total size."""
    both = sorted(env_vars.keys() & secret_env_vars.keys())
    if both:
        raise ClientError(f"{both[0]!r} is in both 'env_vars' and 'secret_env_vars'")
    pairs = (*env_vars.items(), *secret_env_vars.items())
    if sum(len(f"{key}={value}".encode()) + 1 for key, value in pairs) > settings.max_config_bytes:
        limit = settings.max_config_bytes
        raise ClientError(f"'env_vars' and 'secret_env_vars' together are larger than {limit} bytes")


def _validate_spec(upload: CodeUpload, archive: bytes | None, settings: Settings) -> CodeSpec:
    # Imported here: runner.contract loads the Docker SDK (through engine), which the API
    # itself never needs.
    from ..runner.contract import check_launch

    check_launch(
        image=upload.image,
        stack=upload.stack,
        runtime=upload.runtime,
        command=upload.command,
        file_name=upload.file_name,
        option=lambda field: f"'{field}'",
    )
    if upload.file_name and archive is not None:
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            if upload.file_name not in zipped.namelist():
                raise ClientError(f"'file_name' {upload.file_name!r} is not in the uploaded zip")
    if upload.config is not None and len(upload.config.encode()) > settings.max_config_bytes:
        raise ClientError(f"'config' is larger than {settings.max_config_bytes} bytes")
    _check_environment(upload.env_vars or {}, upload.secret_env_vars or {}, settings)
    limits = settings.limits
    if upload.memory_mb is not None and upload.memory_mb > limits.max_memory_mb:
        raise ClientError(f"'memory_mb' may be at most {limits.max_memory_mb}")
    if upload.cpus is not None and upload.cpus > limits.max_cpus:
        raise ClientError(f"'cpus' may be at most {limits.max_cpus}")
    if upload.pids is not None and upload.pids > limits.max_pids:
        raise ClientError(f"'pids' may be at most {limits.max_pids}")
    return CodeSpec(
        name=upload.name,
        image=upload.image,
        stack=upload.stack,
        command=upload.command,
        runtime=upload.runtime,
        file_name=upload.file_name,
        config=upload.config,
        config_secret=bool(upload.config_secret),
        env_vars=upload.env_vars or {},
        secret_env_vars=upload.secret_env_vars or {},
        max_concurrency=upload.max_concurrency
        if upload.max_concurrency and upload.max_concurrency > 0
        else None,
        retries=upload.retries or 0,
        retries_delay=upload.retries_delay or 0,
        default_priority=upload.default_priority or 0,
        memory_mb=upload.memory_mb,
        cpus=upload.cpus,
        pids=upload.pids,
    )


@router.post("/2/projects/{project_id}/codes")
def upload_code(
    svc: ServicesDep,
    project_id: ProjectDep,
    data: Annotated[str, Form(description="JSON object: name, image or stack/runtime, command, ...")],
    file: Annotated[UploadFile | None, File(description="The code, as a zip archive")] = None,
) -> dict[str, Any]:
    upload = _parse_upload(data)
    archive = _archive_bytes(file)
    settings = svc.settings
    if archive is not None:
        check_archive(
            archive,
            ArchiveLimits(
                max_bytes=settings.max_code_bytes,
                max_unpacked_bytes=settings.max_code_unpacked_bytes,
                max_entries=settings.max_code_entries,
            ),
        )
    spec = _validate_spec(upload, archive, settings)
    checksum = hashlib.sha256(archive).hexdigest() if archive is not None else None
    code = svc.store.save_code(project_id, spec, archive, checksum)
    body = {"msg": "Upload successful.", **code_json(code)}
    if spec.image and svc.image_present(spec.image) is False:
        body["warning"] = f"image {spec.image!r} is not present on this host's Docker engine"
    return body


@router.get("/2/projects/{project_id}/codes")
def list_codes(svc: ServicesDep, project_id: ProjectDep, paging: PagingDep) -> dict[str, Any]:
    page, per_page = paging
    return {"codes": [code_json(c) for c in svc.store.list_codes(project_id, page, per_page)]}


@router.get("/2/projects/{project_id}/codes/{code_id}")
def get_code(svc: ServicesDep, project_id: ProjectDep, code_id: str) -> dict[str, Any]:
    return code_json(svc.store.get_code(project_id, code_id))


@router.delete("/2/projects/{project_id}/codes/{code_id}")
def delete_code(svc: ServicesDep, project_id: ProjectDep, code_id: str) -> dict[str, str]:
    svc.store.delete_code(project_id, code_id)
    return {"msg": "Deleted"}


@router.get("/2/projects/{project_id}/codes/{code_id}/revisions")
def list_revisions(
    svc: ServicesDep, project_id: ProjectDep, code_id: str, paging: PagingDep
) -> dict[str, Any]:
    page, per_page = paging
    code = svc.store.get_code(project_id, code_id)
    revisions = svc.store.list_revisions(project_id, code_id, page, per_page)
    return {"revisions": [revision_json(r, code.name) for r in revisions]}


@router.get(
    "/2/projects/{project_id}/codes/{code_id}/download",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}},
)
def download_code(
    svc: ServicesDep,
    project_id: ProjectDep,
    code_id: str,
    revision: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    code = svc.store.get_code(project_id, code_id)
    found, archive = svc.store.get_archive(project_id, code_id, revision)
    filename = f"{code.name}_{found.rev}.zip".replace('"', "")
    return Response(
        content=archive,
        media_type="application/zip",
        headers={"Content-Disposition": f"filename={filename}"},
    )


@router.post("/2/projects/{project_id}/codes/{code_id}/pause_task_queue")
def pause_queue(svc: ServicesDep, project_id: ProjectDep, code_id: str) -> dict[str, str]:
    """Queued tasks stay queued and schedules keep firing into the queue; nothing starts."""
    changed = svc.store.set_paused(project_id, code_id, True)
    return {"msg": "Paused" if changed else "Already paused"}


@router.post("/2/projects/{project_id}/codes/{code_id}/resume_task_queue")
def resume_queue(svc: ServicesDep, project_id: ProjectDep, code_id: str) -> dict[str, str]:
    changed = svc.store.set_paused(project_id, code_id, False)
    svc.on_enqueue()
    return {"msg": "Resumed" if changed else "Already resumed"}


@router.post("/2/projects/{project_id}/codes/{code_id}/cancel_all")
def cancel_all(svc: ServicesDep, project_id: ProjectDep, code_id: str) -> dict[str, Any]:
    """Cancel every queued task of the package; running ones have their containers killed."""
    cancelled, stopping = svc.store.cancel_all(project_id, code_id)
    return {"msg": "Cancelled", "cancelled": cancelled, "stopping": stopping}


@router.get("/2/projects/{project_id}/codes/{code_id}/stats")
def code_stats(
    svc: ServicesDep,
    project_id: ProjectDep,
    code_id: str,
    start_date: Annotated[int | None, Query(ge=0, description="epoch seconds; default: 24 h ago")] = None,
    end_date: Annotated[int | None, Query(ge=0, description="epoch seconds; default: now")] = None,
) -> dict[str, int]:
    """Task counts per status, for tasks created in the window."""
    until = float(end_date) if end_date is not None else time.time()
    since = float(start_date) if start_date is not None else until - 86400
    if since > until:
        raise ClientError("start_date is after end_date")
    return svc.store.code_stats(project_id, code_id, since, until)
