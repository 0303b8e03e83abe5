"""Gradient-communication figures for the report, read from DDP's own runtime statistics.

``DistributedDataParallel`` times itself. On the iterations it samples (the first 10, then every 100th:
``kDDPRuntimeLoggingSampleRate`` in torch's ``reducer.hpp``) its reducer records when backward's first bucket
was handed to communication and when the last bucket's communication was finished (``finalize_backward``),
and at the next forward its logger folds that span into ``avg_backward_comm_time``: a running mean over the
sampled iterations, in nanoseconds. The span starts at the first bucket and ends with the last, so buckets in
flight together count once, and backward computation that overlaps it is not subtracted. On CPU the stamps are
the host clock; on CUDA DDP records CUDA events and reads them on its sampled iterations itself, with or without
this module. The statistics are there whether anyone reads them or not, so the per-step cost of using them is
nothing.

:class:`DdpCommReader` reads them with ``DistributedDataParallel._get_ddp_logging_data()`` (a copy of DDP's
logging maps under the reducer's lock, about 10 us on the project's CPU VM), only when the harness builds its
report (at each control poll), never per step, and adds no GPU synchronization. From one reading
and rank 0's timed steps (:func:`estimate`):

* ``commSeconds`` = steps x the sampled average comm time per iteration, capped at ``stepSeconds``: an
  **estimate** from sampled iterations (which include DDP's first, warm-up iterations), not a sum of every step;
* ``bytesSent`` = steps x ``2 (W-1)`` x the sum of DDP's bucket sizes in bytes (``rebuilt_bucket_sizes`` once DDP
  rebuilt its buckets after the first iteration, ``bucket_sizes`` before): what all ranks send together in a ring
  allreduce of every bucket (:func:`ring_allreduce_bytes`), an **estimate**, not a measurement (the backend may
  choose another algorithm);
* ``worldSize``, ``backend``: DDP's ``world_size`` and ``backend_name``.

``_get_ddp_logging_data`` is a **private** torch API ("a prototype interface and subject to change"), so every
access is guarded: a torch without it, a call that raises, a missing or malformed key, and a DDP with a
communication hook registered (the user's own, a compression hook: the bucket-size estimate would not be the
traffic) each switch the reading off for the rest of the run, logged once, and the report then carries no
communication section. Before DDP's first sample (its second forward) there is simply nothing to report yet.

An earlier version timed communication with a Python DDP communication hook; it was replaced because the hook
takes DDP off its C++ allreduce path: on the project's 2-core CPU benchmark the harness cost 8-11 % of a step with
the hook and 3 % without it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from etj_contract import CommunicationStats

__all__ = [
    "BUCKET_SIZES_KEY",
    "COMM_TIME_KEY",
    "REBUILT_BUCKET_SIZES_KEY",
    "CommUnavailable",
    "DdpCommReader",
    "bucket_bytes",
    "estimate",
    "ring_allreduce_bytes",
]

log = logging.getLogger(__name__)

#: DDP's running mean of the sampled iterations' backward communication span, in ns.
COMM_TIME_KEY = "avg_backward_comm_time"
#: The bucket sizes in bytes, comma-separated: as built at construction, and once rebuilt after iteration 1.
BUCKET_SIZES_KEY = "bucket_sizes"
REBUILT_BUCKET_SIZES_KEY = "rebuilt_bucket_sizes"
#: The last iteration DDP sampled (0 at construction: no sample yet).
ITERATION_KEY = "iteration"
WORLD_SIZE_KEY = "world_size"
BACKEND_KEY = "backend_name"
#: The name of a registered communication hook (absent or empty: DDP's own allreduce).
COMM_HOOK_KEY = "comm_hook"


class CommUnavailable(Exception):
    """DDP's statistics cannot give the communication section (the message says why); the reading stops."""


def ring_allreduce_bytes(bucket_bytes: int, world_size: int) -> int:
    """Bytes all ranks together send in a ring allreduce of ``bucket_bytes``: ``2 (W-1)`` times it (an estimate).

    Each rank sends ``(W-1)/W`` of the buffer in the reduce-scatter and as much again in the all-gather.
    """
    return 2 * max(world_size - 1, 0) * bucket_bytes


def _parse_sizes(raw: object, key: str) -> int:
    if not isinstance(raw, str):
        raise CommUnavailable(f"DDP's {key} is {raw!r}, not a list of sizes")
    try:
        sizes = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise CommUnavailable(f"DDP's {key} is {raw!r}, not a list of sizes") from None
    if not sizes or any(size < 0 for size in sizes):
        raise CommUnavailable(f"DDP's {key} is {raw!r}, not a list of sizes")
    return sum(sizes)


def bucket_bytes(data: Mapping[str, Any]) -> int:
    """The sum of DDP's gradient bucket sizes in bytes: the rebuilt buckets' when DDP rebuilt them, else the first."""
    rebuilt = data.get(REBUILT_BUCKET_SIZES_KEY)
    if isinstance(rebuilt, str) and rebuilt.strip():
        return _parse_sizes(rebuilt, REBUILT_BUCKET_SIZES_KEY)
    if BUCKET_SIZES_KEY not in data:
        raise CommUnavailable(f"DDP's logging data has no {BUCKET_SIZES_KEY!r}")
    return _parse_sizes(data[BUCKET_SIZES_KEY], BUCKET_SIZES_KEY)


def _integer(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if value is None:
        raise CommUnavailable(f"DDP's logging data has no {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CommUnavailable(f"DDP's {key} is {value!r}, not a count")
    return value


def estimate(data: Mapping[str, Any], *, steps: int, step_seconds: float, since: str) -> CommunicationStats | None:
    """The communication section for ``steps`` timed steps of ``step_seconds`` from one DDP logging reading.

    None while there is nothing to report (no step timed, or DDP has not sampled an iteration yet). Raises
    :class:`CommUnavailable` when the reading cannot give it (a communication hook, a missing or malformed key).
    """
    hook = data.get(COMM_HOOK_KEY)
    if hook:
        raise CommUnavailable(f"a DDP communication hook ({hook}) is registered")
    world_size = _integer(data, WORLD_SIZE_KEY)
    backend = data.get(BACKEND_KEY)
    if not isinstance(backend, str) or not backend:
        raise CommUnavailable(f"DDP's logging data has no {BACKEND_KEY!r}")
    total_bucket_bytes = bucket_bytes(data)
    if COMM_TIME_KEY not in data:
        if data.get(ITERATION_KEY) == 0:
            return None  # DDP has not sampled an iteration yet: the key comes with the first sample
        raise CommUnavailable(f"DDP's logging data has no {COMM_TIME_KEY!r}")
    comm_ns = _integer(data, COMM_TIME_KEY)
    if steps <= 0 or comm_ns == 0:
        return None
    comm_seconds = min(steps * comm_ns / 1e9, step_seconds)
    return CommunicationStats(
        steps=steps,
        step_seconds=round(step_seconds, 6),
        comm_seconds=round(comm_seconds, 6),
        bytes_sent=steps * ring_allreduce_bytes(total_bucket_bytes, world_size),
        world_size=world_size,
        backend=backend,
        since=since,
    )


class DdpCommReader:
    """Reads a ``DistributedDataParallel`` model's runtime statistics for the report (rank 0; see the module doc).

    ``model`` is anything with DDP's ``_get_ddp_logging_data()`` (tests pass a fake). Once a reading fails
    (:class:`CommUnavailable`, or the call itself raises) the reader logs why, once, and returns None from then on.
    """

    def __init__(self, model: Any, *, since: str) -> None:
        self.model = model
        self.since = since
        #: Why the reading was switched off (None: it is on).
        self.unavailable: str | None = None
        if not callable(getattr(model, "_get_ddp_logging_data", None)):
            self._switch_off("this torch's DistributedDataParallel has no _get_ddp_logging_data()")

    def _switch_off(self, reason: str) -> None:
        self.unavailable = reason
        log.warning("communication section off: %s", reason)

    def stats(self, steps: int, step_seconds: float) -> CommunicationStats | None:
        """The communication section for rank 0's ``steps`` timed steps of ``step_seconds``, or None."""
        if self.unavailable is not None:
            return None
        try:
            if getattr(self.model, "_comm_hooks", None):
                raise CommUnavailable("a DDP communication hook is registered")
            data = self.model._get_ddp_logging_data()
            if not isinstance(data, Mapping):
                raise CommUnavailable(f"_get_ddp_logging_data() returned a {type(data).__name__}, not a dict")
            return estimate(data, steps=steps, step_seconds=step_seconds, since=self.since)
        except CommUnavailable as e:
            self._switch_off(str(e))
        except Exception as e:  # a private API: whatever it raises leaves training as it is
            self._switch_off(f"reading DDP's logging data failed ({e!r})")
        return None
