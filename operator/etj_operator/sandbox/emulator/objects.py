"""Small helpers on objects: metadata, timestamps, ages and generated names."""

from __future__ import annotations

import datetime
import random
import re
from collections.abc import Mapping
from typing import Any, Final

Json = dict[str, Any]

def _now() -> str:
    """The current time in RFC 3339 with a ``Z``, second precision, as metadata timestamps are."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _age(timestamp: str) -> str:
    """Format an age the way the API server formats ``type: date`` printer columns (``5m``, ``3h``)."""
    started = _parse_time(timestamp)
    if started is None:
        return "<unknown>"
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - started).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600 * 3:
        return f"{seconds // 60}m"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


_NAME_SUFFIX_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of the real name generator
_DNS_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RFC1035_LABEL: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _generate_name(prefix: str) -> str:
    return prefix + "".join(random.choices(_NAME_SUFFIX_ALPHABET, k=5))


def _meta(obj: Mapping[str, Any]) -> Json:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _without(obj: Mapping[str, Any], *keys: str) -> Json:
    return {k: v for k, v in obj.items() if k not in keys}

