"""The energy breakdown: a job's measured GPU energy split into compute and communication (pure).

Each pass, :func:`attribute` takes the account's energy before and after the pass's telemetry was integrated
(``status.energy.joules``, measured from DCGM) and the workload's communication timing
(``status.workload.communication``: rank 0's cumulative step time and the time within it that gradient
communication was in flight, since the harness process started) and returns the new
:class:`~etj_contract.EnergyBreakdown`:

* **Attributed** (measured energy, split by time): the energy measured since the baseline report is split by
  the share of step time that had communication in flight over the same window, the difference of the
  cumulative figures between this report and the baseline (kept in ``harnessBaseline``, so a restarted
  operator continues from it). While the report has not moved on since the baseline (the harness reports less
  often than the telemetry reads), the new energy waits in ``pendingJoules`` (counted as unattributed) for the
  report that closes its window. DDP overlaps communication with the backward pass, so an overlapped second
  counts as communication: communication's share is an upper bound.
* **Unattributed**: energy no timing covers (no timing in the report, the first window of a harness process,
  pending energy whose window no report closed, energy measured before the breakdown existed). Never guessed.
* **Modelled** (:func:`network_model`, :func:`network_joules`): the energy the network spends carrying the bytes
  the ranks sent, bytes x 8 x an energy per bit of the hops they take. Not the GPUs' energy, not in the total.

Invariant: ``compute + communication + unattributed == joules after`` (to rounding), whatever the inputs.
No clock, no I/O. docs/energy.md ("Energy breakdown") states the model and cites its constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from etj_contract import CommunicationStats, EnergyBreakdown, HarnessBaseline, NetworkModel

__all__ = [
    "INTER_NODE_PJ_PER_BIT",
    "INTRA_NODE_PJ_PER_BIT",
    "Topology",
    "attribute",
    "interval_fraction",
    "network_joules",
    "network_model",
]

#: A bit over a hop inside a pod (GPU to GPU over NVLink or PCIe): one 100 Gb/s-class SerDes link, 5.5 pJ/bit
#: (docs/energy.md, "Energy breakdown", for the source). Modelled. Units: pJ/bit.
INTRA_NODE_PJ_PER_BIT: Final = 5.5
#: A bit over a hop between pods (NIC -> switch -> NIC, Ethernet or InfiniBand): two optical links of 800 Gb/s
#: pluggable transceivers (about 20 pJ/bit each) and one switch ASIC (8.8 pJ/bit). Modelled. Units: pJ/bit.
INTER_NODE_PJ_PER_BIT: Final = 2 * 20.0 + 8.8
#: A difference of the energy total smaller than this is rounding (the status keeps joules to 6 decimals).
ROUNDING_JOULES: Final = 1e-3
PICO: Final = 1e-12


@dataclass(frozen=True)
class Topology:
    """How the job's ranks are placed: ``pods`` pods of ``ranks_per_pod`` ranks each (spec.replicas x nprocPerNode)."""

    pods: int
    ranks_per_pod: int

    @property
    def world_size(self) -> int:
        """The ranks of the job."""
        return self.pods * self.ranks_per_pod


def network_model(topology: Topology) -> NetworkModel:
    """The link model of a ring allreduce over ``topology``, ranks ordered by pod (modelled).

    The ring's ``world`` hops go rank i -> i+1 (mod world); with ranks ordered by pod, exactly one hop leaves
    each pod, so ``pods / world`` of the hops (= 1 / ranks per pod) cross pods when there are several pods,
    none with one pod. Every rank sends the same bytes to its successor, so that is also the share of bytes.
    """
    share = 0.0 if topology.pods <= 1 else topology.pods / max(1, topology.world_size)
    return NetworkModel(INTRA_NODE_PJ_PER_BIT, INTER_NODE_PJ_PER_BIT, min(1.0, share))


def network_joules(bytes_sent: int, model: NetworkModel) -> float:
    """The modelled energy of sending ``bytes_sent`` bytes over the model's hops: bytes x 8 x pJ/bit. Units: J."""
    return bytes_sent * 8 * model.pj_per_bit * PICO


def interval_fraction(before: HarnessBaseline, now: CommunicationStats) -> float | None:
    """Communication's share of step time between two cumulative reports of one harness process, 0..1.

    None when the interval has no timing: either report lacks it, no step time passed, or the figures went
    backwards (another process).
    """
    if before.step_seconds is None or before.comm_seconds is None:
        return None
    if now.step_seconds is None or now.comm_seconds is None:
        return None
    step = now.step_seconds - before.step_seconds
    comm = now.comm_seconds - before.comm_seconds
    if step <= 0 or comm < 0:
        return None
    return min(1.0, comm / step)


def _new_process(before: HarnessBaseline, now: CommunicationStats) -> bool:
    """The report is of another harness process than the baseline (another ``since``, or figures went back)."""
    if before.since != now.since:
        return True
    pairs = ((before.step_seconds, now.step_seconds), (before.comm_seconds, now.comm_seconds))
    if any(b is not None and n is not None and n < b for b, n in pairs):
        return True
    return before.bytes_sent is not None and now.bytes_sent is not None and now.bytes_sent < before.bytes_sent


def _timed(baseline: HarnessBaseline) -> bool:
    return baseline.step_seconds is not None and baseline.comm_seconds is not None


def attribute(
    previous: EnergyBreakdown | None,
    *,
    joules_before: float,
    joules_after: float,
    communication: CommunicationStats | None,
    topology: Topology | None,
) -> EnergyBreakdown:
    """The breakdown after one pass (pure; see the module).

    ``joules_before``/``joules_after``: the account's total before and after this pass's integration (the
    energy added is their difference); ``communication``: the report's timing (None: no report, or none in
    it); ``topology``: the job's placement, for the network model (None: no modelled network figure).
    """
    prev = previous or EnergyBreakdown()
    compute, comm, unattributed = prev.compute_joules, prev.communication_joules, prev.unattributed_joules
    pending = min(prev.pending_joules, unattributed)
    before = max(0.0, joules_before) if math.isfinite(joules_before) else 0.0
    after = max(before, joules_after) if math.isfinite(joules_after) else before
    # 1. The parts must add up to the total before the pass. Energy they lack (a breakdown that starts on an
    # account already measuring, a part dropped as malformed) was never attributed: unattributed. A total
    # below the parts is an account that started afresh: so does the breakdown, all of it unattributed.
    gap = before - (compute + comm + unattributed)
    if gap > ROUNDING_JOULES:
        unattributed += gap
    elif gap < -ROUNDING_JOULES:
        compute, comm, unattributed, pending = 0.0, 0.0, before, 0.0
    elif gap:
        compute, comm, unattributed = _absorb(gap, compute, comm, unattributed)
        pending = min(pending, unattributed)
    # 2. The energy of this pass joins what is pending since the baseline; the window from the baseline to
    # this report, once the timing has moved on, splits all of it.
    added = after - before
    unattributed += added
    baseline = prev.baseline
    fresh = communication is not None and (_new_process(baseline, communication) or not _timed(baseline))
    attributed = False
    if communication is None or fresh:
        pending = 0.0  # no timing covers this energy, nor the energy pending from before: unattributed for good
    else:
        pending += added
        fraction = interval_fraction(baseline, communication)
        if fraction is not None and pending > 0:
            share = min(pending, unattributed)
            unattributed -= share
            comm += share * fraction
            compute += share * (1.0 - fraction)
            pending, attributed = 0.0, True
    # 3. The network: bytes are counted from the start of each harness process, so a new process's count is
    # all new; the modelled energy grows with each interval's bytes at the model of that moment.
    network_bytes, network_energy, model = prev.network_bytes, prev.network_joules_modelled, prev.network_model
    sent = None if communication is None else communication.bytes_sent
    if sent is not None:
        new_process = communication is not None and _new_process(baseline, communication)
        base = baseline.bytes_sent
        step_bytes = sent if new_process or base is None else sent - base
        network_bytes = (network_bytes or 0) + step_bytes
        if topology is not None:
            model = network_model(topology)
            network_energy = (network_energy or 0.0) + network_joules(step_bytes, model)
    # 4. The baseline moves to this report when this pass closed a window with it (energy was attributed), when
    # the old one cannot serve (another process, or none timed), and for the bytes, which are counted every pass.
    # Else it stays: the energy measured next is split by a window that covers its time.
    if communication is not None:
        timing_moves = fresh or attributed
        baseline = HarnessBaseline(
            since=communication.since,
            step_seconds=communication.step_seconds if timing_moves else baseline.step_seconds,
            comm_seconds=communication.comm_seconds if timing_moves else baseline.comm_seconds,
            bytes_sent=sent if sent is not None else (None if fresh else baseline.bytes_sent),
        )
    return EnergyBreakdown(
        compute_joules=compute,
        communication_joules=comm,
        unattributed_joules=unattributed,
        pending_joules=pending,
        network_bytes=network_bytes,
        network_joules_modelled=network_energy,
        network_model=model,
        baseline=baseline,
    )


def _absorb(gap: float, compute: float, comm: float, unattributed: float) -> tuple[float, float, float]:
    """Rounding (``|gap| <= ROUNDING_JOULES``) taken into the largest part, which stays >= 0."""
    parts = [compute, comm, unattributed]
    largest = max(range(3), key=lambda i: parts[i])
    parts[largest] = max(0.0, parts[largest] + gap)
    return parts[0], parts[1], parts[2]
