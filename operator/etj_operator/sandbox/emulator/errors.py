"""Errors rendered as Kubernetes ``Status`` objects, as a real API server answers them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .resources import ResourceType

Json = dict[str, Any]

class ApiError(Exception):
    """An API failure that the emulator answers with a ``kind: Status`` object, as a real server does.

    Also raised by the in-process accessors of :class:`EmulatorServer`, so tests see the same codes.
    """

    def __init__(
        self, code: int, reason: str, message: str, *, details: Json | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.headers = dict(headers or {})

    def to_status(self) -> Json:
        """Render the error as a ``v1 Status``, the body every Kubernetes client parses."""
        status: Json = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


class UnknownResourceError(ApiError):
    """The emulator serves no resource type by that name (404 from discovery, not from an object)."""


def _qualified(rt: ResourceType) -> str:
    return f"{rt.plural}.{rt.group}" if rt.group else rt.plural


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(rt)} "{name}" not found',
                    details={"name": name, "group": rt.group, "kind": rt.plural})


def _already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_qualified(rt)} "{name}" already exists',
                    details={"name": name, "group": rt.group, "kind": rt.plural})


def _conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {_qualified(rt)} "{name}": the object has been modified;'
                    " please apply your changes to the latest version and try again",
                    details={"name": name, "group": rt.group, "kind": rt.plural})


def _invalid(rt: ResourceType, name: str, message: str) -> ApiError:
    return ApiError(422, "Invalid", f'{rt.kind}.{rt.group or "core"} "{name}" is invalid: {message}',
                    details={"name": name, "group": rt.group, "kind": rt.kind})


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _endpoint_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")

