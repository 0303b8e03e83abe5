"""Label and field selectors, parsed and matched as a real API server does."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from .errors import _bad_request

Json = dict[str, Any]

_LABEL_KEY: Final = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                               r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE: Final = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
LabelOperator = Literal["=", "!=", "in", "notin", "exists", "!exists"]


@dataclasses.dataclass(frozen=True)
class LabelRequirement:
    """One clause of a label selector: ``key op values``."""

    key: str
    operator: LabelOperator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this clause (``!=`` and ``notin`` match an absent key)."""
        present = self.key in labels
        match self.operator:
            case "exists":
                return present
            case "!exists":
                return not present
            case "=" | "in":
                return present and labels[self.key] in self.values
            case "!=" | "notin":
                return not present or labels[self.key] not in self.values
        return False  # pragma: no cover  # exhaustive above


def _split_outside_parentheses(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse a label selector (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``).

    Raises :class:`ApiError` 400 on bad syntax, as a real server answers.
    """
    requirements: list[LabelRequirement] = []
    for raw_part in _split_outside_parentheses(text):
        part = raw_part.strip()
        if not part:
            continue
        set_match = re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", part)
        key: str
        values: frozenset[str] = frozenset()
        operator: LabelOperator
        if set_match:
            key, op_text, values_text = set_match.groups()
            operator = "in" if op_text == "in" else "notin"
            values = frozenset(v.strip() for v in values_text.split(","))
            if not values_text.strip():
                raise _bad_request(f"unable to parse requirement: {part!r}: values set can't be empty")
        elif part.startswith("!"):
            key, operator = part[1:].strip(), "!exists"
        elif "!=" in part:
            key, value = (s.strip() for s in part.split("!=", 1))
            operator, values = "!=", frozenset([value])
        elif "==" in part:
            key, value = (s.strip() for s in part.split("==", 1))
            operator, values = "=", frozenset([value])
        elif "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            operator, values = "=", frozenset([value])
        else:
            key, operator = part, "exists"
        if not _LABEL_KEY.match(key):
            raise _bad_request(f"unable to parse requirement: invalid label key {key!r}")
        for value in values:
            if not _LABEL_VALUE.match(value):
                raise _bad_request(f"unable to parse requirement: invalid label value {value!r}")
        requirements.append(LabelRequirement(key, operator, values))
    return requirements


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """Parse a field selector into ``(field path, wants_equal, value)`` triples."""
    terms: list[tuple[str, bool, str]] = []
    for raw_part in text.split(","):
        part = raw_part.strip()
        if not part:
            continue
        for separator, equal in (("!=", False), ("==", True), ("=", True)):
            if separator in part:
                field, value = (s.strip() for s in part.split(separator, 1))
                terms.append((field, equal, value))
                break
        else:
            raise _bad_request(f"invalid selector: {part!r}; can't understand {part!r}")
    return terms


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    """Read a dotted field as the server compares it: a string, ``true``/``false``, or ``""`` if unset."""
    current: Any = obj
    for step in path.split("."):
        if not isinstance(current, Mapping) or step not in current:
            return ""
        current = current[step]
    if isinstance(current, bool):
        return "true" if current else "false"
    return "" if current is None else str(current)

