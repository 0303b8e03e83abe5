"""The control channel between the operator and the job's rank 0.

* :class:`ControlState` is ``status.control`` parsed; :func:`decide` (pure) turns it and the harness's
  bookkeeping into the actions every rank performs at the same step. Compression stages start on the
  operator's word (``stageRequested``: the operator alone decides when an energyFraction trigger is reached)
  or on the harness's own epoch/step triggers (:mod:`etj_workload.callbacks`), never on ``energyFraction``.
* :class:`JobApi` is the one I/O seam: :class:`KubernetesJobApi` reads the job's ``status.control`` and
  merge-patches the status of the job's report (``EfficientTrainingJobReport``, same name), the one object the
  job's ServiceAccount may write (docs/security.md); the operator mirrors it into ``status.workload``. It
  speaks HTTP through :class:`etj_workload.kubeclient.KubeClient` (standard library only). Tests inject a fake.
* :class:`ControlChannel` runs that I/O in a background thread, so a training step never waits on the
  API: reads happen when requested (at each control poll) and their result is
  picked up at the next poll; patches are merged, rate-limited and retried with the contract's
  :class:`etj_contract.backoff.Backoff` (exponential, jittered, capped, the server's Retry-After as a floor).
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
from etj_contract.backoff import Backoff
from etj_workload.kubeclient import MERGE_PATCH, ApiError, KubeClient, load_credentials

__all__ = [
    "Actions",
    "ControlChannel",
    "ControlState",
    "JobApi",
    "KubernetesJobApi",
    "decide",
    "merge_patch",
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
    done_stages: frozenset[str],
    known_stages: frozenset[str],
) -> Actions:
    """Turn ``status.control`` into actions (pure).

    The one stage it starts is ``stageRequested``, when it is a stage of the plan (``known_stages``) not yet
    applied or rolled back (``done_stages``: never twice). ``energyFraction`` starts nothing here: the operator
    requests each energyFraction stage, in plan order, once the job's fraction reaches its trigger.
    A stop request implies a checkpoint (acknowledging any outstanding request number).
    """
    stages: list[str] = []
    requested = control.stage_requested
    if requested and requested in known_stages and requested not in done_stages:
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


def _retry_after_seconds(error: Exception) -> float | None:
    """The server's Retry-After of a failed request (429/503 carry one), else None."""
    return error.retry_after_seconds if isinstance(error, ApiError) else None


class JobApi(Protocol):
    """The seam between the harness and the Kubernetes API (one job object)."""

    def read_control(self) -> Mapping[str, Any] | None:
        """Return the job's ``status.control`` (None when absent)."""

    def patch_workload(self, workload: Mapping[str, Any]) -> None:
        """Merge-patch the report's status (the workload's report: epoch, step, stages...)."""


class KubernetesJobApi:
    """:class:`JobApi` over HTTP: :class:`~etj_workload.kubeclient.KubeClient`, in-cluster credentials else KUBECONFIG.

    A failure raises :class:`~etj_workload.kubeclient.ApiError` (the server's Status and Retry-After) or the
    transport's ``OSError``; every request times out after ``timeout_seconds``. ``client``: an already made one.
    """

    def __init__(
        self, name: str, namespace: str, timeout_seconds: float = 5.0, *, client: KubeClient | None = None
    ) -> None:
        self._client = client if client is not None else KubeClient(load_credentials(), timeout_seconds=timeout_seconds)
        self.name = name
        self.namespace = namespace
        base = f"/apis/{contract.GROUP}/{contract.VERSION}/namespaces/{namespace}"
        #: The job (GET) and its report's status subresource (PATCH).
        self.job_path = f"{base}/{contract.PLURAL}/{name}"
        self.report_status_path = f"{base}/{contract.REPORT_PLURAL}/{name}/status"

    def read_control(self) -> Mapping[str, Any] | None:
        """GET the job and return its ``status.control``."""
        job = self._client.request("GET", self.job_path)
        status = job.get("status") if isinstance(job, Mapping) else None
        control = status.get(contract.CONTROL) if isinstance(status, Mapping) else None
        return control if isinstance(control, Mapping) else None

    def patch_workload(self, workload: Mapping[str, Any]) -> None:
        """PATCH ``{"status": ...}`` on the report's status subresource (merge patch; the report has the job's name).

        The job's own status is the operator's: the job's ServiceAccount may not write it.
        """
        self._client.request("PATCH", self.report_status_path, {"status": dict(workload)}, content_type=MERGE_PATCH)


class ControlChannel:
    """Background I/O for rank 0: fetch ``status.control`` on request, send the report's patches.

    Never blocks the caller except in :meth:`close` (bounded by its timeout). Failures back off
    exponentially from ``backoff_min_seconds`` to ``backoff_max_seconds`` (:attr:`backoff`, the contract's
    :class:`~etj_contract.backoff.Backoff`: a ``backoff_jitter`` share of each delay random from ``rng``, the
    server's Retry-After as a floor); training goes on meanwhile with the last control state it saw.
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
        #: The retry policy of failed reads and patches (the operator's loops use the same one).
        self.backoff = Backoff(
            base_seconds=backoff_min_seconds, cap_seconds=backoff_max_seconds, jitter=backoff_jitter, rng=rng
        )
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
        self._backoff_seconds = self.backoff.delay_seconds(self._failures_in_row, _retry_after_seconds(error))
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
