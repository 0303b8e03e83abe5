"""The request log and fault injection: what tests look at and how they break the server."""

from __future__ import annotations

import dataclasses
import re
import threading
from typing import Any

from .errors import ApiError

Json = dict[str, Any]

@dataclasses.dataclass
class RequestRecord:
    """One request the emulator received (``status`` is 0 while a watch stream is still open)."""

    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    verb: str | None = None  # get, list, watch, create, update, patch, delete, deletecollection
    group: str | None = None
    resource: str | None = None  # plural
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    user_agent: str = ""
    content_type: str = ""  # e.g. application/json-patch+json for kopf's finalizer patches
    fault: bool = False  # answered by an injected fault
    started_at: float = 0.0  # time.monotonic()
    answered_at: float = 0.0  # time.monotonic() once the answer is ready (for a watch: when its stream ended)


@dataclasses.dataclass
class Fault:
    """An injected failure: matching requests are delayed and/or answered with an error status."""

    method: str | None = None  # None: any method
    path_regex: re.Pattern[str] | None = None  # searched in the path plus query string
    status: int | None = None  # None: only delay
    times: int | None = 1  # None: forever
    delay_seconds: float = 0.0
    reason: str | None = None
    message: str | None = None
    #: Only requests whose User-Agent this searches (None: any client): one client cut off, the others not.
    user_agent_regex: re.Pattern[str] | None = None
    hits: int = 0

    def matches(self, method: str, path_qs: str, user_agent: str = "") -> bool:
        """Whether this fault applies to a request (and has uses left)."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.user_agent_regex is not None and self.user_agent_regex.search(user_agent) is None:
            return False
        return self.path_regex is None or self.path_regex.search(path_qs) is not None

    def to_error(self) -> ApiError:
        """The error this fault answers with."""
        assert self.status is not None
        reasons = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 410: "Gone",
                   422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
                   504: "Timeout"}
        headers = {"Retry-After": "1"} if self.status in (429, 503) else {}
        return ApiError(self.status, self.reason or reasons.get(self.status, "InternalError"),
                        self.message or f"injected fault ({self.status})", headers=headers)


class FaultInjector:
    """The seam for chaos tests: ``server.faults.add(method='PATCH', path_regex='/status', status=500)``.

    Thread-safe: tests add faults from their own thread while the emulator serves on its loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self, *, method: str | None = None, path_regex: str | re.Pattern[str] | None = None,
        status: int | None = 500, times: int | None = 1, delay_seconds: float = 0.0,
        reason: str | None = None, message: str | None = None,
        user_agent_regex: str | None = None,
    ) -> Fault:
        """Inject a fault for the next ``times`` matching requests (``None``: until removed)."""
        if status is None and delay_seconds <= 0:
            raise ValueError("a fault needs an error status or a delay")
        pattern = re.compile(path_regex) if isinstance(path_regex, str) else path_regex
        fault = Fault(method=method, path_regex=pattern, status=status, times=times,
                      delay_seconds=delay_seconds, reason=reason, message=message,
                      user_agent_regex=re.compile(user_agent_regex) if user_agent_regex else None)
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        """Stop injecting one fault."""
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        """Stop injecting all faults."""
        with self._lock:
            self._faults.clear()

    @property
    def active(self) -> list[Fault]:
        """The faults that still have uses left."""
        with self._lock:
            return [f for f in self._faults if f.times is None or f.hits < f.times]

    def take(self, method: str, path_qs: str, user_agent: str = "") -> Fault | None:
        """Find the first fault matching a request and count one use of it."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path_qs, user_agent):
                    fault.hits += 1
                    return fault
        return None

