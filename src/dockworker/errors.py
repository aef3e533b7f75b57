"""The three error families of dockworker.

* :class:`InfrastructureError`: the platform failed (engine unreachable, 5xx, transport
  errors, lost runner). Retryable, with a budget of its own, never counted against the
  user's retries.
* :class:`TaskSetupError`: the task cannot run as specified (image missing, command not
  found). Ends the task as ``error`` with the reason in ``msg``; not retried by the platform.
* :class:`ClientError`: a caller sent something wrong. Becomes an HTTP 4xx ``{"msg": ...}``
  or a CLI message with a non-zero exit code.

Each class's docstring is its default message.
"""

from __future__ import annotations


class DockworkerError(Exception):
    """A dockworker error occurred."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)


class InfrastructureError(DockworkerError):
    """The infrastructure failed; the operation may succeed if retried."""


class EngineUnavailable(InfrastructureError):
    """The Docker engine could not be reached."""


class ContainerGone(InfrastructureError):
    """The container no longer exists."""


class HostStorageFull(InfrastructureError):
    """The runner's host has no space left to unpack code or write task files."""


class TaskSetupError(DockworkerError):
    """The task could not be started as specified."""


class ImageMissing(TaskSetupError):
    """The image is not on the engine (and dockworker never pulls)."""


class ClientError(DockworkerError):
    """The request is invalid."""

    status_code = 400


class Unauthorized(ClientError):
    """Invalid or missing token."""

    status_code = 401


class Forbidden(ClientError):
    """This needs an admin token."""

    status_code = 403


class NotFound(ClientError):
    """Not found."""

    status_code = 404


class Conflict(ClientError):
    """The request conflicts with the current state."""

    status_code = 409


class AlreadyRunning(Conflict):
    """Another live dockworker process holds this data directory or runner identity."""
