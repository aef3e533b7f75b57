"""What a database failure means to the store's callers (told apart in ``transactions.py``).
Both are infrastructure errors: the operation wrote nothing and may succeed if repeated later."""

from __future__ import annotations

from ..errors import InfrastructureError


class StoreUnavailable(InfrastructureError):
    """The database cannot be reached (or is too busy to answer); nothing was written.
    ``detail``: the driver's reason, for operators (``/health``, logs), never for API clients:
    it names the database's address."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class StorageFull(InfrastructureError):
    """The database's disk is full: nothing was written."""

    def __init__(self) -> None:
        super().__init__(
            "the database's disk is full: nothing was written (reads still work; writes work"
            " again by themselves once space is freed)"
        )
