"""The control channel between the operator and the job's rank 0.

* :class:`ControlState` is ``status.control`` parsed; :func:`decide` (pure) turns it and the harness's
  bookkeeping into the actions every rank performs at the same step.
* :class:`JobApi` is the one I/O seam: :class:`KubernetesJobApi` reads the job's ``status.control`` and
  merge-patches the status of the job's report (``EfficientTrainingJobReport``, same name), the one object the
  job's ServiceAccount may write (docs/security.md); the operator mirrors it into ``status.workload``. Tests
  inject a fake.
* :class:`ControlChannel` runs that I/O in a background thread, so a training step never waits on the
  API: reads happen when requested (every ``ETJ_CONTROL_POLL_STEPS`` steps) and their result is
  picked up at the next poll; patches are merged, rate-limited and retried with exponential backoff
  (:func:`retry_delay_seconds`: jittered, capped, the server's Retry-After as a floor).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import etj_contract as contract

__all__ = [
    "Actions",
    "ControlChannel",
    "ControlState",
    "JobApi",
    "KubernetesJobApi",
    "decide",
    "merge_patch",
    "retry_delay_seconds",
    "utc_now_iso",
]

log = logging.getLogger(__name__)


#: ``status.control`` as the harness reads it (absent fields are None/0/False; malformed ones are dropped and
#: named in ``problems``): the contract's record, :class:`etj_contract.ControlSection`.
ControlState = contract.ControlSection


@dataclass(frozen=True)
class Actions:
    """What all ranks do at this poll step."""

    power_cap_watts: int | None = None
    checkpoint_request: int | None = None
    """The request number to acknowledge after saving, or None."""
    stop: bool = False
    stages: tuple[str, ...] = ()


def decide(
    control: ControlState,
    *,
    acknowledged_checkpoint: int,
    pending_energy_stages: Mapping[str, float],
    done_stages: frozenset[str],
    known_stages: frozenset[str],
) -> Actions:
    """Turn ``status.control`` into actions (pure).

    ``pending_energy_stages`` maps stage name -> energyFraction trigger for stages not yet done;
    ``done_stages`` holds stages applied or rolled back (never applied twice); ``known_stages`` the plan's.
    A stop request implies a checkpoint (acknowledging any outstanding request number).
    """
    stages: list[str] = []
    if control.energy_fraction is not None:
        stages += [n for n, f in pending_energy_stages.items() if control.energy_fraction >= f]
    requested = control.stage_requested
    if requested and requested in known_stages and requested not in done_stages and requested not in stages:
        stages.append(requested)
    elif requested and requested not in known_stages:
        log.warning("status.control.stageRequested=%r is not a stage of the plan; ignored", requested)
    checkpoint = control.checkpoint_requested if control.checkpoint_requested > acknowledged_checkpoint else None
    return Actions(
        power_cap_watts=control.power_limit_watts_per_gpu,
        checkpoint_request=checkpoint,
        stop=control.stop_requested,
        stages=tuple(stages),
    )


def merge_patch(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``patch`` into ``base`` like a JSON merge patch (nested dicts merge; None deletes)."""
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_patch(base[key], value)
        elif value is None:
            base.pop(key, None)
        else:
            base[key] = copy.deepcopy(value)
    return base


def utc_now_iso() -> str:
    """Return the current UTC time as RFC 3339 with a Z (Kubernetes style)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def retry_delay_seconds(
    attempt: int,
    *,
    base_seconds: float,
    cap_seconds: float,
    jitter: float,
    u: float,
    retry_after_seconds: float | None = None,
    factor: float = 2.0,
) -> float:
    """The delay before retry ``attempt`` (0 first), for a random ``u`` in [0, 1) (pure).

    The operator's policy (``etj_operator.backoff.Backoff``), written out here because the workload does not
    import the operator (docs/architecture.md, "Errors and retries"); tests/unit/test_backoff.py keeps the two
    equal: ``min(cap, base * factor**attempt) * (1 - jitter * u)``, at least ``min(retry_after, cap)``.
    """
    ceiling = cap_seconds if attempt > 64 else min(cap_seconds, base_seconds * factor ** max(0, attempt))
    delay = ceiling * (1.0 - jitter * u)
    if retry_after_seconds is not None and retry_after_seconds > 0:
        delay = max(delay, min(retry_after_seconds, cap_seconds))
    return delay


def _retry_after_seconds(error: Exception) -> float | None:
    """The Retry-After (seconds) of a kubernetes ``ApiException`` (429/503 carry one), else None."""
    headers = getattr(error, "headers", None)
    value = headers.get("Retry-After") if headers is not None and hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class JobApi(Protocol):
    """The seam between the harness and the Kubernetes API (one job object)."""

    def read_control(self) -> Mapping[str, Any] | None:
        """Return the job's ``status.control`` (None when absent)."""

    def patch_workload(self, workload: Mapping[str, Any]) -> None:
        """Merge-patch the report's status (the workload's report: epoch, step, stages...)."""


class KubernetesJobApi:
    """:class:`JobApi` on the official kubernetes client (in-cluster credentials, else KUBECONFIG)."""

    def __init__(self, name: str, namespace: str, timeout_seconds: float = 5.0) -> None:
        from kubernetes import client, config  # import here: the client is slow to import

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        self._api = client.CustomObjectsApi()
        self.name = name
        self.namespace = namespace
        self.timeout_seconds = timeout_seconds

    def read_control(self) -> Mapping[str, Any] | None:
        """GET the job and return its ``status.control``."""
        job: Any = self._api.get_namespaced_custom_object(
            contract.GROUP,
            contract.VERSION,
            self.namespace,
            contract.PLURAL,
            self.name,
            _request_timeout=self.timeout_seconds,
        )
        control = (job.get("status") or {}).get(contract.CONTROL)
        return control if isinstance(control, Mapping) else None

    def patch_workload(self, workload: Mapping[str, Any]) -> None:
        """PATCH ``{"status": ...}`` on the report's status subresource (merge patch; the report has the job's name).

        The job's own status is the operator's: the job's ServiceAccount may not write it.
        """
        self._api.patch_namespaced_custom_object_status(
            contract.GROUP,
            contract.VERSION,
            self.namespace,
            contract.REPORT_PLURAL,
            self.name,
            {"status": dict(workload)},
            _request_timeout=self.timeout_seconds,
        )


class ControlChannel:
    """Background I/O for rank 0: fetch ``status.control`` on request, send the report's patches.

    Never blocks the caller except in :meth:`close` (bounded by its timeout). Failures back off
    exponentially from ``backoff_min_seconds`` to ``backoff_max_seconds`` (:func:`retry_delay_seconds`, a
    ``backoff_jitter`` share of each delay random, the server's Retry-After as a floor); training goes on
    meanwhile with the last control state it saw.
    """

    def __init__(
        self,
        api: JobApi,
        *,
        min_patch_interval_seconds: float = 2.0,
        min_read_interval_seconds: float = 0.5,
        backoff_min_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        backoff_jitter: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._api = api
        self._clock = clock
        self.min_patch_interval_seconds = min_patch_interval_seconds
        self.min_read_interval_seconds = min_read_interval_seconds
        self.backoff_min_seconds = backoff_min_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.backoff_jitter = backoff_jitter
        self._rng = rng
        self._cond = threading.Condition()
        self._latest = ControlState()
        self._read_requested = False
        self._pending: dict[str, Any] = {}
        self._urgent = False
        self._in_flight = False
        self._closing = False
        self._last_read = -1e9
        self._last_patch = -1e9
        self._backoff_seconds = 0.0
        self._failures_in_row = 0
        self._retry_at = -1e9
        self.failures = 0
        self.reads = 0
        self.patches = 0
        self._thread = threading.Thread(target=self._run, name="etj-control", daemon=True)
        self._thread.start()

    def poll(self) -> ControlState:
        """Return the latest control state fetched so far and ask for a fresh one (non-blocking)."""
        with self._cond:
            self._read_requested = True
            self._cond.notify()
            return self._latest

    def publish(self, workload: Mapping[str, Any], *, urgent: bool = False) -> None:
        """Queue a merge patch of the report; ``urgent`` skips the rate limit (not the backoff)."""
        with self._cond:
            merge_patch(self._pending, workload)
            self._urgent = self._urgent or urgent
            self._cond.notify()

    def close(self, timeout_seconds: float = 5.0) -> bool:
        """Send what is pending (bounded wait) and stop the thread; return whether all was sent."""
        deadline = self._clock() + timeout_seconds
        with self._cond:
            self._urgent = True
            self._cond.notify()
            while (self._pending or self._in_flight) and self._clock() < deadline:
                self._cond.wait(timeout=min(0.05, max(0.0, deadline - self._clock())))
            sent = not self._pending and not self._in_flight
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=max(0.0, deadline - self._clock()) + 0.1)
        return sent

    def _fail(self, what: str, error: Exception) -> None:
        self.failures += 1
        self._backoff_seconds = retry_delay_seconds(
            self._failures_in_row,
            base_seconds=self.backoff_min_seconds,
            cap_seconds=self.backoff_max_seconds,
            jitter=self.backoff_jitter,
            u=self._rng(),
            retry_after_seconds=_retry_after_seconds(error),
        )
        self._failures_in_row += 1
        self._retry_at = self._clock() + self._backoff_seconds
        log.warning("%s failed (%s); retrying in %.1f s", what, error, self._backoff_seconds)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    now = self._clock()
                    ready = now >= self._retry_at
                    do_read = ready and self._read_requested and now - self._last_read >= self.min_read_interval_seconds
                    do_patch = (
                        ready
                        and bool(self._pending)
                        and (self._urgent or now - self._last_patch >= self.min_patch_interval_seconds)
                    )
                    if do_read or do_patch:
                        break
                    self._cond.wait(timeout=0.05)
                patch: dict[str, Any] | None = None
                if do_patch:
                    patch, self._pending, self._urgent = self._pending, {}, False
                if do_read:
                    self._read_requested = False
                self._in_flight = True
            try:
                self._perform(do_read, patch)
            finally:
                with self._cond:
                    self._in_flight = False
                    self._cond.notify_all()

    def _perform(self, do_read: bool, patch: dict[str, Any] | None) -> None:
        if patch is not None:
            try:
                self._api.patch_workload(patch)
                self.patches += 1
                self._backoff_seconds, self._failures_in_row = 0.0, 0
            except Exception as e:  # any client error: keep the patch, back off, try again
                with self._cond:
                    self._pending = merge_patch(patch, self._pending)
                self._fail("patching the job's report", e)
            finally:
                self._last_patch = self._clock()
        if do_read:
            try:
                control = ControlState.from_status(self._api.read_control())
                if control.problems and control.problems != self._latest.problems:
                    log.warning("status.control has malformed fields, ignored: %s", "; ".join(control.problems))
                self.reads += 1
                self._backoff_seconds, self._failures_in_row = 0.0, 0
                with self._cond:
                    self._latest = control
            except Exception as e:
                with self._cond:
                    self._read_requested = True
                self._fail("reading status.control", e)
            finally:
                self._last_read = self._clock()
