"""Reading status objects written by someone else: field by field, never raising, naming what was dropped.

Private to the contract package (:mod:`etj_contract.report` and :mod:`etj_contract.sections` read with it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

#: Short strings (the default bound of :meth:`Fields.string`).
MAX_TEXT_LENGTH: Final = 64


class FieldProblem(str):
    """One value that could not be used as it was: ``"<path>: <found>; <action>"``, with the parts kept.

    A ``str``, so records keep their ``problems`` as plain strings; the operator's status repair reads the
    parts (``status.policy.lowCycles``, what was found, what was done instead).
    """

    path: str
    found: str
    action: str

    def __new__(cls, path: str, found: str, action: str) -> FieldProblem:
        self = super().__new__(cls, f"{path}: {found}; {action}")
        self.path, self.found, self.action = path, found, action
        return self


def describe_value(value: Any) -> str:
    """A short description of a value read back from the API (``a list [1, 2]``), for problem messages."""
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value))
    if kind is None:
        kind = "a number" if isinstance(value, int | float) else type(value).__name__
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


class Fields:
    """Reads the fields of one object, appending a problem (``path.key: ...``) for each one it drops."""

    def __init__(self, raw: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if raw is None:
            raw = {}
        elif not isinstance(raw, Mapping):
            problems.append(FieldProblem(path, f"expected an object, found {describe_value(raw)}", "ignored"))
            raw = {}
        self.raw: Mapping[str, Any] = raw

    def _bad(self, key: str, expected: str) -> None:
        found = f"expected {expected}, found {describe_value(self.raw[key])}"
        self.problems.append(FieldProblem(f"{self.path}.{key}", found, "dropped"))

    def integer(self, key: str, minimum: int = 0) -> int | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self._bad(key, f"an integer >= {minimum}")
            return None
        return value

    def number(self, key: str, minimum: float | None = None, maximum: float | None = None) -> float | None:
        value = self.raw.get(key)
        if value is None:
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok and ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)):
            ok = False
        if not ok:
            bounds = [f"{op} {b:g}" for op, b in ((">=", minimum), ("<=", maximum)) if b is not None]
            self._bad(key, "a finite number" + (" " + " and ".join(bounds) if bounds else ""))
            return None
        return float(value)

    def boolean(self, key: str) -> bool | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self._bad(key, "a boolean")
            return None
        return value

    def string(self, key: str, max_length: int = MAX_TEXT_LENGTH) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > max_length:
            self._bad(key, f"a string of at most {max_length} characters")
            return None
        return value

    def time(self, key: str, legacy_key: str | None = None) -> float | None:
        """An RFC 3339 timestamp as unix seconds; ``legacy_key`` (unix seconds, an older status) if it is absent."""
        value = self.raw.get(key)
        if value is None and legacy_key is not None and self.raw.get(legacy_key) is not None:
            return self.number(legacy_key)
        if value is None:
            return None
        seconds = from_rfc3339(value) if isinstance(value, str) and len(value) <= MAX_TEXT_LENGTH else None
        if seconds is None:
            self._bad(key, "an RFC 3339 time")
        return seconds

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self._bad(key, "an object")
            return None
        return value

    def items(self, key: str, max_items: int) -> list[Any] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            self._bad(key, "a list")
            return None
        if len(value) > max_items:
            found = f"{len(value)} items, at most {max_items}"
            self.problems.append(FieldProblem(f"{self.path}.{key}", found, "the rest dropped"))
            return value[:max_items]
        return value


def set_fields(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """The pairs whose value is set (a field that is None is left out of a status)."""
    return {key: value for key, value in pairs.items() if value is not None}


def to_rfc3339(unix_seconds: float) -> str:
    """``2026-12-01T15:00:00.123456Z``: a Kubernetes-style timestamp, to the microsecond (status times)."""
    text = datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def from_rfc3339(text: str) -> float | None:
    """The unix seconds of an RFC 3339 timestamp (``Z`` or an offset), or None if it is not one."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()
