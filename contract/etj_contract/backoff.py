"""The one retry policy: exponential backoff with jitter, a cap, and the server's Retry-After as a floor.

Pure: :meth:`Backoff.delay_seconds` maps an attempt number to a delay; the caller keeps the count and does the
waiting (with its own clock, so tests use a fake one). Both sides retry with it: the operator's per-job loops
and pod informer (``etj_operator.backoff`` re-exports it) and the harness's control channel
(``etj_workload.control.ControlChannel``).

The formula, for attempt ``n`` (0 for the first retry) and a random ``u`` in [0, 1) from ``rng``::

    ceiling = min(cap, base * factor ** n)
    delay   = ceiling * (1 - jitter * u)          # jitter 1: "full jitter", anywhere in (0, ceiling]
    delay   = max(delay, min(retry_after, cap))   # the server's Retry-After, up to the cap, is a floor
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "retry_after_seconds"]


@dataclass(frozen=True)
class Backoff:
    """An exponential backoff policy (immutable; the attempt count lives with the caller)."""

    #: The ceiling of the first retry's delay. Units: seconds.
    base_seconds: float
    #: The largest delay, whatever the attempt (a Retry-After above it is cut to it). Units: seconds.
    cap_seconds: float
    #: Growth of the ceiling per attempt.
    factor: float = 2.0
    #: The randomised share of each delay: 1.0 is full jitter (spreads retries of many clients that failed
    #: together), 0.0 none.
    jitter: float = 1.0
    #: Random numbers in [0, 1); injected by tests (``lambda: 0.0`` makes every delay its ceiling).
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.base_seconds <= self.cap_seconds:
            raise ValueError(f"need 0 < base_seconds <= cap_seconds, got {self.base_seconds}, {self.cap_seconds}")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"need factor >= 1 and 0 <= jitter <= 1, got {self.factor}, {self.jitter}")

    def ceiling_seconds(self, attempt: int) -> float:
        """The delay of ``attempt`` before jitter (0 is the first retry)."""
        exponent = max(0, attempt)
        # factor ** exponent overflows a float past ~1000 attempts; the cap is reached long before.
        if exponent > 64:
            return self.cap_seconds
        return min(self.cap_seconds, self.base_seconds * self.factor**exponent)

    def delay_seconds(self, attempt: int, retry_after_seconds: float | None = None) -> float:
        """How long to wait before retry ``attempt``; never below the server's Retry-After (up to the cap)."""
        delay = self.ceiling_seconds(attempt) * (1.0 - self.jitter * self.rng())
        if retry_after_seconds is not None and retry_after_seconds > 0:
            delay = max(delay, min(retry_after_seconds, self.cap_seconds))
        return delay


def retry_after_seconds(
    value: str | None, *, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
) -> float | None:
    """A ``Retry-After`` header as seconds from now (RFC 9110: a number of seconds, or an HTTP date).

    None when absent, malformed or negative; a date in the past is 0. The API server sends seconds; a proxy
    in front of it may send a date. Used by the operator's API client and the harness's.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=dt.UTC)
        return max(0.0, (when - now()).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
