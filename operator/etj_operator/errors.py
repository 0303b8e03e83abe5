"""The API transport's errors, and the one error of a job's loop. Kopf's handler errors play no part here.

Every failed call of :class:`~etj_operator.kubeapi.KubeApi` raises an :class:`ApiStatusError` that keeps
what the server said (its ``Status``: code, reason, message, ``details.causes``, and ``Retry-After``) and
which object the call was about. The subclass says what a retry can do; :func:`error_for` picks it::

    ApiStatusError          base: code (None when no answer came), reason, message, causes, retry_after_seconds
     ├── TransientApiError  429, 5xx, no answer (refused, reset, timeout), the client stopping: retry soon
     ├── ConflictError      409: someone else wrote first, or the object exists: look again, retry soon
     ├── NotFoundError      404: the object (or its namespace, or a Role it refers to) is not there
     ├── GoneError          410: a watch's resourceVersion is too old: list again
     └── PermanentApiError  400, 401 with fresh credentials, 403, 422, other 4xx: the server refuses this
                            request as it is; shown on the job, retried slowly (docs/reliability.md)
    JobGone                 the job is gone (404 on its status): its loop ends, nothing more is created

The supervisor backs a failed pass off by this classification (:mod:`etj_operator.backoff`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etj_contract.backoff import retry_after_seconds

__all__ = [
    "ApiStatusError",
    "Cause",
    "ConflictError",
    "GoneError",
    "JobGone",
    "NotFoundError",
    "PermanentApiError",
    "TransientApiError",
    "error_for",
    "parse_retry_after",
]


@dataclass(frozen=True)
class Cause:
    """One entry of a Status's ``details.causes`` (for a 422: the field at fault and what is wrong)."""

    reason: str = ""
    message: str = ""
    field: str = ""


class ApiStatusError(Exception):
    """A call to the API server failed; what the server answered, and which object the call was about."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reason: str = "",
        causes: tuple[Cause, ...] = (),
        retry_after_seconds: float | None = None,
        verb: str = "",
        kind: str = "",
        namespace: str | None = None,
        name: str = "",
    ) -> None:
        head = "" if code is None else f"{code} {reason}: " if reason else f"{code}: "
        super().__init__(head + message)
        #: The Status's message (the server's words), or what went wrong when no answer came.
        self.message = message
        #: The HTTP status code; None when no answer came (connection refused, reset, timeout).
        self.code = code
        #: The Status's reason (CamelCase: "Invalid", "Forbidden", "Conflict"...), or "".
        self.reason = reason
        self.causes = causes
        #: The server's Retry-After (header, or ``details.retryAfterSeconds``). Units: seconds.
        self.retry_after_seconds = retry_after_seconds
        #: The call: verb ("create", "patch", ...), and the object's kind, namespace and name when known.
        self.verb = verb
        self.kind = kind
        self.namespace = namespace
        self.name = name

    @property
    def object_ref(self) -> str:
        """The object the call was about, as ``Kind/name`` (``Kind`` alone for a collection)."""
        return f"{self.kind}/{self.name}" if self.name else self.kind


class TransientApiError(ApiStatusError):
    """The API server failed (5xx), asked to slow down (429) or was unreachable: the same call may succeed soon."""


class ConflictError(ApiStatusError):
    """409: the object exists already, or changed since it was read."""


class NotFoundError(ApiStatusError):
    """404: the object, its namespace, or an object it names does not exist (yet)."""


class GoneError(ApiStatusError):
    """410: the resourceVersion a watch asked for is too old; list again."""


class PermanentApiError(ApiStatusError):
    """The API server refused the request itself (400, 403, 422, ...): the same request will be refused again."""


class JobGone(Exception):
    """The job was deleted while its loop was deciding (its status write found no job): end the loop."""


def parse_retry_after(value: str | None) -> float | None:
    """The seconds of a ``Retry-After`` header (seconds or an HTTP date): the contract's one parser."""
    return retry_after_seconds(value)


def _kind_for(code: int) -> type[ApiStatusError]:
    if code == 404:
        return NotFoundError
    if code == 409:
        return ConflictError
    if code == 410:
        return GoneError
    if code == 429 or code >= 500:
        return TransientApiError
    return PermanentApiError


def error_for(
    code: int,
    status: Any,
    *,
    retry_after: str | None = None,
    verb: str = "",
    kind: str = "",
    namespace: str | None = None,
    name: str = "",
    fallback_message: str = "",
) -> ApiStatusError:
    """The error for a non-2xx answer: ``status`` is the decoded body (a ``Status`` object, or text, or None)."""
    body: Mapping[str, Any] = status if isinstance(status, Mapping) else {"message": status} if status else {}
    details: Mapping[str, Any] = body["details"] if isinstance(body.get("details"), Mapping) else {}
    causes = tuple(
        Cause(str(c.get("reason") or ""), str(c.get("message") or ""), str(c.get("field") or ""))
        for c in details.get("causes") or ()
        if isinstance(c, Mapping)
    )
    seconds = parse_retry_after(retry_after)
    if seconds is None and isinstance(details.get("retryAfterSeconds"), int | float):
        seconds = float(details["retryAfterSeconds"])
    return _kind_for(code)(
        str(body.get("message") or "") or fallback_message,
        code=code,
        reason=str(body.get("reason") or ""),
        causes=causes,
        retry_after_seconds=seconds,
        verb=verb,
        kind=kind,
        namespace=namespace,
        name=name,
    )
