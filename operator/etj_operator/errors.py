"""The operator's errors. Retry semantics live in the type (kopf's Temporary/Permanent errors).

::

    kopf.TemporaryError
     └── TransientApiError      the API answered 5xx/429 or could not be reached: retry later
    kopf.PermanentError
     └── PermanentApiError      the API refused the request (4xx other than 404/409): retrying cannot help
    JobGone                     the job is gone (404 on its status): its loop ends, nothing more is created
"""

from __future__ import annotations

import kopf


class TransientApiError(kopf.TemporaryError):
    """The API server failed or was unreachable; the same call may succeed later."""


class JobGone(Exception):
    """The job was deleted while its loop was deciding (its status write found no job): end the loop."""


class PermanentApiError(kopf.PermanentError):
    """The API server rejected the request itself (for example 403 or 422)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
