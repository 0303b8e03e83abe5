"""The operator's own bookkeeping in the job's status, as typed records: energy, policy and placement.

Only the operator writes these sections (docs/security.md); they are what a restarted operator continues from,
so each one round-trips through ``to_status``/``from_status`` (the energy totals as rounded for display, times
to the microsecond). Like the records of :mod:`etj_contract.report`,
``from_status`` never raises: a field of the wrong type is dropped and named by its path in ``problems`` (the
operator reports those as a ``StatusRepaired`` Warning and writes the repaired section back).

* :class:`EnergySection` (``status.energy``, with one :class:`SeriesEntry` per GPU series): the job's energy
  account, integrated by ``etj_operator.energy``.
* :class:`PolicySection` (``status.policy``, with the :class:`Drain` in progress): the policies' hysteresis and
  hold state, so that a restarted operator continues the same decision.
* :class:`PlacementSection` (``status.placement``): nodes the job avoids after power pressure.
* :class:`KueueSection` (``status.kueue``): the job's place in Kueue, when the operator is Kueue's integration
  (``ETJ_KUEUE``): its queue, its Workload and that Workload's admission.

Times follow one rule: a field named ``...Time`` holds an RFC 3339 timestamp (Kubernetes' convention), a field
named ``...UnixSeconds`` holds seconds since the epoch. A status written before that rule (``carbonSince``,
``drain.since``, ``placement.lastTime`` and ``energy.lastSampleTime`` as unix seconds) is still read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from etj_contract._fields import FieldProblem, Fields, describe_value, set_fields, to_rfc3339

__all__ = [
    "BASELINE_KEYS",
    "BREAKDOWN_BASIS",
    "BREAKDOWN_KEYS",
    "DISPLAY_KEYS",
    "DRAIN_KEYS",
    "ENERGY",
    "ENERGY_KEYS",
    "FORECAST_DISPLAY_KEYS",
    "FORECAST_KEYS",
    "HISTORY_POINT_LENGTH",
    "JOULES_PER_KWH",
    "KUEUE",
    "KUEUE_KEYS",
    "NETWORK_MODEL_KEYS",
    "PLACEMENT",
    "PLACEMENT_KEYS",
    "POLICY",
    "POLICY_KEYS",
    "RATE_WINDOW_KEYS",
    "SERIES_KEYS",
    "SIMULATED_SUFFIX",
    "UNKNOWN",
    "Drain",
    "EnergyBreakdown",
    "EnergySection",
    "ForecastSection",
    "HarnessBaseline",
    "KueueSection",
    "NetworkModel",
    "PlacementSection",
    "PolicySection",
    "RateWindow",
    "SeriesEntry",
    "format_duration",
]

JOULES_PER_KWH: Final = 3.6e6

#: The top-level status keys of the three sections.
ENERGY: Final = "energy"
POLICY: Final = "policy"
PLACEMENT: Final = "placement"
KUEUE: Final = "kueue"

#: ``status.energy``: attribute name -> camelCase key.
ENERGY_KEYS: Final[Mapping[str, str]] = {
    "joules": "joules",
    "kilowatt_hours": "kilowattHours",
    "average_watts": "averageWatts",
    "peak_watts": "peakWatts",
    "current_watts": "currentWatts",
    "grams_co2e": "gramsCO2e",
    "covered_seconds": "coveredSeconds",
    "source": "source",
    "simulated": "simulated",
    "last_sample_seconds": "lastSampleTime",
    "series": "series",
    "history": "history",
    "display": "display",
    "rejected_samples": "rejectedSamples",
    "rejecting_since_seconds": "rejectingSinceTime",
    "breakdown": "breakdown",
}
#: ``status.energy.display``: what ``kubectl get`` shows (strings; ``-`` when unknown, never 0).
DISPLAY_KEYS: Final[Mapping[str, str]] = {"power": "power", "energy": "energy"}
#: What the display shows for a figure nobody measured.
UNKNOWN: Final = "-"
#: ``status.energy.series.<key>``: attribute name -> key (short: one entry per pod and GPU).
SERIES_KEYS: Final[Mapping[str, str]] = {
    "last_seen_seconds": "t",
    "since_seconds": "since",
    "counter_mj": "counterMillijoules",
    "power_watts": "watts",
    "pod": "pod",
}
#: ``[unix_seconds, job_watts, per_gpu_limit_watts | None, cumulative_joules]``
HISTORY_POINT_LENGTH: Final = 4
#: Appended to ``energy.source`` when the readings come from the simulated GPU.
SIMULATED_SUFFIX: Final = " (simulated)"

#: ``status.policy``: attribute name -> camelCase key.
POLICY_KEYS: Final[Mapping[str, str]] = {
    "drain": "drain",
    "budget_suspended": "budgetSuspended",
    "budget_notified": "budgetNotified",
    "forecast_suspended": "forecastSuspended",
    "carbon_paused": "carbonPaused",
    "carbon_since_seconds": "carbonSinceUnixSeconds",
    "low_cycles": "lowCycles",
    "cap_watts": "capWatts",
    "cap_since_seconds": "capSinceUnixSeconds",
    "cap_enforced": "capEnforced",
    "cap_warned": "capWarned",
}
#: ``status.policy.drain``: attribute name -> camelCase key.
DRAIN_KEYS: Final[Mapping[str, str]] = {
    "reason": "reason",
    "requested": "requested",
    "since_seconds": "sinceUnixSeconds",
    "done": "done",
}
#: ``status.placement``: attribute name -> camelCase key.
PLACEMENT_KEYS: Final[Mapping[str, str]] = {
    "rescheduling": "rescheduling",
    "avoided_nodes": "avoidedNodes",
    "reschedules": "reschedules",
    "last_reason": "lastReason",
    "last_reschedule_seconds": "lastRescheduleTime",
}
#: ``status.kueue``: attribute name -> camelCase key.
KUEUE_KEYS: Final[Mapping[str, str]] = {
    "queue_name": "queueName",
    "workload_name": "workloadName",
    "admitted": "admitted",
    "cluster_queue": "clusterQueue",
    "flavors": "flavors",
    "pod_count": "podCount",
    "reason": "reason",
    "message": "message",
    "requeues": "requeues",
    "draining": "draining",
}
#: Keys of a status written before the time rule: read, never written.
_LEGACY_CARBON_SINCE: Final = "carbonSince"
_LEGACY_DRAIN_SINCE: Final = "since"
_LEGACY_PLACEMENT_TIME: Final = "lastTime"
#: Longest node name (a DNS subdomain) and reason text kept in the placement section.
_MAX_NODE_NAME: Final = 253
_MAX_REASON: Final = 1024
_MAX_AVOIDED_NODES: Final = 1000
#: Bounds of ``energy.rejectedSamples`` as read back (the operator writes a handful of short reasons).
_MAX_REJECT_REASONS: Final = 32
_MAX_REJECT_REASON_LENGTH: Final = 64
#: Bounds of ``status.kueue`` as read back: Kubernetes object names, a condition message, a few flavors.
_MAX_OBJECT_NAME: Final = 253
_MAX_MESSAGE: Final = 32768
_MAX_FLAVORS: Final = 16


# --- status.energy ---------------------------------------------------------------------------------------
@dataclass
class SeriesEntry:
    """The last reading of one GPU series (``<pod UID>/<GPU UUID>``): the baseline of the next delta."""

    #: When the reading was taken. Units: unix seconds.
    last_seen_seconds: float
    #: The GPU's energy counter then (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION). Units: mJ.
    counter_mj: float | None = None
    #: The GPU's power then. Units: W.
    power_watts: float | None = None
    #: When this series' baseline was taken (its first reading, or a re-baseline after a long gap): the
    #: series has been accounted without a hole since then. Units: unix seconds.
    since_seconds: float | None = None
    #: The pod's name (the key holds its UID). None: an entry of a status written before UID keys, whose
    #: key is ``<pod>/<GPU>``.
    pod: str | None = None

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> SeriesEntry | None:
        f = Fields(raw, path, problems)
        t = f.number(SERIES_KEYS["last_seen_seconds"])
        if t is None:
            if isinstance(raw, Mapping):
                found = "no reading time"
                problems.append(FieldProblem(path, found, "dropped; the series starts again from its next reading"))
            return None
        return cls(
            last_seen_seconds=t,
            counter_mj=f.number(SERIES_KEYS["counter_mj"]),
            power_watts=f.number(SERIES_KEYS["power_watts"]),
            since_seconds=f.number(SERIES_KEYS["since_seconds"]),
            pod=f.string(SERIES_KEYS["pod"], _MAX_NODE_NAME),
        )

    def to_status(self) -> dict[str, Any]:
        """The entry's dict (``t``, ``since``, ``counterMillijoules`` and ``watts`` always; ``pod`` when known)."""
        k = SERIES_KEYS
        out: dict[str, Any] = {
            k["last_seen_seconds"]: self.last_seen_seconds,
            k["since_seconds"]: self.since_seconds,
            k["counter_mj"]: self.counter_mj,
            k["power_watts"]: self.power_watts,
        }
        if self.pod is not None:
            out[k["pod"]] = self.pod
        return out


#: ``status.energy.breakdown``: attribute name -> camelCase key. ``communicationFraction``, ``modelled`` and
#: ``basis`` are derived (written, never read back).
BREAKDOWN_KEYS: Final[Mapping[str, str]] = {
    "compute_joules": "computeJoules",
    "communication_joules": "communicationJoules",
    "unattributed_joules": "unattributedJoules",
    "pending_joules": "pendingJoules",
    "communication_fraction": "communicationFraction",
    "network_bytes": "networkBytes",
    "network_joules_modelled": "networkJoulesModelled",
    "network_model": "networkModel",
    "modelled": "modelled",
    "basis": "basis",
    "baseline": "harnessBaseline",
}
#: ``status.energy.breakdown.networkModel``: attribute name -> key (``picojoulesPerBit`` is derived).
NETWORK_MODEL_KEYS: Final[Mapping[str, str]] = {
    "intra_node_pj_per_bit": "intraNodePicojoulesPerBit",
    "inter_node_pj_per_bit": "interNodePicojoulesPerBit",
    "inter_node_share": "interNodeShare",
    "pj_per_bit": "picojoulesPerBit",
}
#: ``status.energy.breakdown.harnessBaseline``: the report's cumulative figures as last seen.
BASELINE_KEYS: Final[Mapping[str, str]] = {
    "since": "since",
    "step_seconds": "stepSeconds",
    "comm_seconds": "commSeconds",
    "bytes_sent": "bytesSent",
}
#: What the compute/communication split rests on (``status.energy.breakdown.basis``).
BREAKDOWN_BASIS: Final = "attributed by rank 0's communication time"


@dataclass(frozen=True)
class NetworkModel:
    """The link model the modelled network energy was computed with (``etj_operator.breakdown``; docs/energy.md).

    A bit sent over a hop inside a pod costs ``intra_node_pj_per_bit``, over a hop between pods
    ``inter_node_pj_per_bit``; ``inter_node_share`` of the hops are between pods. Units: pJ/bit.
    """

    intra_node_pj_per_bit: float
    inter_node_pj_per_bit: float
    inter_node_share: float

    @property
    def pj_per_bit(self) -> float:
        """The energy of one bit averaged over the hops. Units: pJ/bit."""
        share = self.inter_node_share
        return share * self.inter_node_pj_per_bit + (1.0 - share) * self.intra_node_pj_per_bit

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> NetworkModel | None:
        f = Fields(raw, path, problems)
        k = NETWORK_MODEL_KEYS
        intra = f.number(k["intra_node_pj_per_bit"], 0.0)
        inter = f.number(k["inter_node_pj_per_bit"], 0.0)
        share = f.number(k["inter_node_share"], 0.0, 1.0)
        if intra is None or inter is None or share is None:
            return None
        return cls(intra, inter, share)

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict, with the averaged ``picojoulesPerBit``."""
        k = NETWORK_MODEL_KEYS
        return {
            k["intra_node_pj_per_bit"]: self.intra_node_pj_per_bit,
            k["inter_node_pj_per_bit"]: self.inter_node_pj_per_bit,
            k["inter_node_share"]: round(self.inter_node_share, 6),
            k["pj_per_bit"]: round(self.pj_per_bit, 6),
        }


@dataclass(frozen=True)
class HarnessBaseline:
    """The workload's cumulative communication figures as the breakdown last used them (``harnessBaseline``).

    The next interval is the difference from these; ``since`` names the harness process they count from (a
    different one, or figures that went backwards, is a new process). None: not reported.
    """

    since: str | None = None
    step_seconds: float | None = None
    comm_seconds: float | None = None
    bytes_sent: int | None = None

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> HarnessBaseline:
        f = Fields(raw, path, problems)
        k = BASELINE_KEYS
        return cls(
            since=f.string(k["since"]),
            step_seconds=f.number(k["step_seconds"], 0.0),
            comm_seconds=f.number(k["comm_seconds"], 0.0),
            bytes_sent=f.integer(k["bytes_sent"]),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict of the figures that are set."""
        return set_fields({key: getattr(self, attr) for attr, key in BASELINE_KEYS.items()})


@dataclass(frozen=True)
class EnergyBreakdown:
    """The job's measured GPU energy split by what its time went to (``status.energy.breakdown``).

    ``compute_joules + communication_joules + unattributed_joules`` is the account's ``joules`` (to rounding):
    each interval's energy is split by the share of step time rank 0 spent with gradient communication in
    flight over the same interval, or is unattributed when no timing covers it (``etj_operator.breakdown``).
    The network figures are *modelled* (bytes sent x a link model), the network's energy outside the GPUs:
    not part of ``joules``. Units: J, bytes.
    """

    compute_joules: float = 0.0
    communication_joules: float = 0.0
    unattributed_joules: float = 0.0
    #: The part of ``unattributed_joules`` measured since ``baseline`` while the harness's timing had not moved on
    #: yet: attributed (moved out of unattributed) by the window's share once the next report closes it; left
    #: unattributed if none does (another harness process, the timing gone).
    pending_joules: float = 0.0
    #: Bytes all ranks sent for gradient communication, over every harness process seen (None: never reported).
    network_bytes: int | None = None
    #: Modelled energy of sending ``network_bytes`` (None: no bytes reported, or no model). Units: J.
    network_joules_modelled: float | None = None
    #: The link model of the last interval (None: none applied yet).
    network_model: NetworkModel | None = None
    baseline: HarnessBaseline = field(default_factory=HarnessBaseline)
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def total_joules(self) -> float:
        """The three parts together: the account's ``joules``."""
        return self.compute_joules + self.communication_joules + self.unattributed_joules

    @property
    def communication_fraction(self) -> float | None:
        """Communication's share of the attributed energy, 0..1 (None: nothing attributed yet)."""
        attributed = self.compute_joules + self.communication_joules
        return self.communication_joules / attributed if attributed > 0 else None

    @classmethod
    def from_status(cls, raw: Any, path: str = f"status.{ENERGY}.breakdown") -> EnergyBreakdown:
        """Parse ``status.energy.breakdown``; never raises (a dropped part counts as unattributed next pass)."""
        problems: list[str] = []
        f = Fields(raw, path, problems)
        k = BREAKDOWN_KEYS
        model = f.mapping(k["network_model"])
        baseline = f.mapping(k["baseline"])
        unattributed = f.number(k["unattributed_joules"], 0.0) or 0.0
        return cls(
            compute_joules=f.number(k["compute_joules"], 0.0) or 0.0,
            communication_joules=f.number(k["communication_joules"], 0.0) or 0.0,
            unattributed_joules=unattributed,
            pending_joules=min(unattributed, f.number(k["pending_joules"], 0.0) or 0.0),
            network_bytes=f.integer(k["network_bytes"]),
            network_joules_modelled=f.number(k["network_joules_modelled"], 0.0),
            network_model=None
            if model is None
            else NetworkModel._read(model, f"{path}.{k['network_model']}", problems),
            baseline=HarnessBaseline._read(baseline, f"{path}.{k['baseline']}", problems),
            problems=tuple(problems),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict: the three parts always, the network figures (marked modelled) once known."""
        k = BREAKDOWN_KEYS
        fraction = self.communication_fraction
        modelled = self.network_joules_modelled
        return set_fields(
            {
                k["compute_joules"]: round(self.compute_joules, 6),
                k["communication_joules"]: round(self.communication_joules, 6),
                k["unattributed_joules"]: round(self.unattributed_joules, 6),
                k["pending_joules"]: round(self.pending_joules, 6) or None,
                k["communication_fraction"]: None if fraction is None else round(fraction, 6),
                k["basis"]: BREAKDOWN_BASIS,
                k["network_bytes"]: self.network_bytes,
                # small figures (a few bytes x pJ): kept to 9 significant digits, not to a fixed decimal
                k["network_joules_modelled"]: None if modelled is None else float(f"{modelled:.9g}"),
                k["network_model"]: None if self.network_model is None else self.network_model.to_status(),
                k["modelled"]: True if modelled is not None else None,
                k["baseline"]: self.baseline.to_status() or None,
            }
        )


@dataclass
class EnergySection:
    """A job's energy account (``status.energy``); mutable: ``etj_operator.energy.integrate`` adds to it."""

    joules: float = 0.0
    grams_co2e: float = 0.0
    peak_watts: float = 0.0
    #: The job's power in the last cycle; None when that cycle had no power reading (unknown, never 0).
    current_watts: float | None = None
    covered_seconds: float = 0.0
    #: The newest reading integrated. Units: unix seconds (written as the RFC 3339 ``lastSampleTime``).
    last_sample_seconds: float | None = None
    #: The telemetry source (Prometheus, Direct), without the simulated suffix.
    source: str = ""
    simulated: bool = False
    series: dict[str, SeriesEntry] = field(default_factory=dict)
    #: ``[unix_seconds, job_watts, per_gpu_limit_watts | None, cumulative_joules]``, bounded.
    history: list[list[float | None]] = field(default_factory=list)
    #: Samples the accounting refused, by reason, since the account began (``rejectedSamples``; cumulative, never
    #: reset). The reasons are ``etj_operator.energy.REJECT_REASONS``: ``invalid_timestamp``,
    #: ``future_timestamp``, ``out_of_order``, ``invalid_value``, ``counter_decrease``, ``above_physical_bound``
    #: (docs/energy.md says what each one means and what is kept instead).
    rejected_samples: dict[str, int] = field(default_factory=dict)
    #: The start of the current unbroken run of telemetry cycles that each refused at least one sample: the
    #: time of the first cycle of the run. None when the latest cycle that brought samples refused none (a
    #: cycle without samples changes nothing). ``now - rejecting_since_seconds`` is how long the job's telemetry
    #: has been refused without a break. Units: unix seconds (written as the RFC 3339 ``rejectingSinceTime``).
    rejecting_since_seconds: float | None = None
    #: The energy split into compute, communication and unattributed (``etj_operator.breakdown``); None until
    #: the account has energy to split.
    breakdown: EnergyBreakdown | None = None
    #: What :meth:`from_status` dropped, each naming the field's path (not part of the status, nor of equality).
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def measured(self) -> bool:
        """Whether any reading was ever integrated (else every total is unknown, not 0).

        A status that carries totals without ``lastSampleTime`` (written by hand, or by an older operator)
        counts as measured: its totals are kept.
        """
        return self.last_sample_seconds is not None or self.joules > 0 or self.covered_seconds > 0

    @property
    def kilowatt_hours(self) -> float:
        """Total energy in kWh."""
        return self.joules / JOULES_PER_KWH

    @property
    def average_watts(self) -> float:
        """Mean job power over the time covered by readings."""
        return self.joules / self.covered_seconds if self.covered_seconds > 0 else 0.0

    def to_status(self) -> dict[str, Any]:
        """The ``status.energy`` object (totals rounded for display; the record keeps full precision).

        Figures nobody measured are left out (a job without readings has no ``kilowattHours``; a cycle
        without a power reading no ``currentWatts``), and ``display`` shows them as ``-``: unknown is
        never written as 0.
        """
        k = ENERGY_KEYS
        out: dict[str, Any] = {}
        if self.measured:
            out[k["joules"]] = round(self.joules, 6)
            out[k["kilowatt_hours"]] = round(self.kilowatt_hours, 9)
            out[k["average_watts"]] = round(self.average_watts, 2)
            out[k["peak_watts"]] = round(self.peak_watts, 2)
            out[k["grams_co2e"]] = round(self.grams_co2e, 9)
            out[k["covered_seconds"]] = round(self.covered_seconds, 3)
        if self.current_watts is not None:
            out[k["current_watts"]] = round(self.current_watts, 2)
        out[k["source"]] = self.source + (SIMULATED_SUFFIX if self.simulated and self.source else "")
        out[k["simulated"]] = self.simulated
        out[k["last_sample_seconds"]] = (
            None if self.last_sample_seconds is None else to_rfc3339(self.last_sample_seconds)
        )
        out[k["series"]] = {key: entry.to_status() for key, entry in sorted(self.series.items())}
        out[k["history"]] = [list(point) for point in self.history]
        out[k["display"]] = self.display()
        if self.rejected_samples:
            out[k["rejected_samples"]] = dict(sorted(self.rejected_samples.items()))
        if self.rejecting_since_seconds is not None:
            out[k["rejecting_since_seconds"]] = to_rfc3339(self.rejecting_since_seconds)
        if self.breakdown is not None:
            out[k["breakdown"]] = self.breakdown.to_status()
        return out

    def display(self) -> dict[str, str]:
        """``status.energy.display``: the power and energy as ``kubectl get`` shows them (``-``: unknown)."""
        d = DISPLAY_KEYS
        power = UNKNOWN if self.current_watts is None else f"{self.current_watts:.0f}W"
        energy = UNKNOWN if not self.measured else f"{self.kilowatt_hours:.4g}kWh"
        return {d["power"]: power, d["energy"]: energy}

    @classmethod
    def from_status(cls, raw: Any, path: str = f"status.{ENERGY}") -> EnergySection:
        """Rebuild the account from ``status.energy``; never raises (a dropped total starts from zero)."""
        problems: list[str] = []
        f = Fields(raw, path, problems)
        k = ENERGY_KEYS

        def total(key: str) -> float:
            value = f.number(k[key], 0.0)
            return 0.0 if value is None else value

        series: dict[str, SeriesEntry] = {}
        for key, entry in (f.mapping(k["series"]) or {}).items():
            read = SeriesEntry._read(entry, f"{path}.{k['series']}[{key}]", problems)
            if read is not None:
                series[str(key)] = read
        history: list[list[float | None]] = []
        for index, point in enumerate(f.items(k["history"], 100_000) or ()):
            if _is_point(point):
                history.append(list(point))
            else:
                problems.append(FieldProblem(f"{path}.{k['history']}[{index}]", describe_value(point), "dropped"))
        source = f.string(k["source"], 256) or ""
        rejected = _rejected_counts(f, k["rejected_samples"])
        breakdown_raw = f.mapping(k["breakdown"])
        breakdown = None
        if breakdown_raw is not None:
            breakdown = EnergyBreakdown.from_status(breakdown_raw, f"{path}.{k['breakdown']}")
            problems.extend(breakdown.problems)
        return cls(
            joules=total("joules"),
            grams_co2e=total("grams_co2e"),
            peak_watts=total("peak_watts"),
            current_watts=f.number(k["current_watts"], 0.0),
            covered_seconds=total("covered_seconds"),
            last_sample_seconds=_time_or_legacy_seconds(f, k["last_sample_seconds"]),
            source=source.removesuffix(SIMULATED_SUFFIX),
            # either mark says the readings are simulated (a status that lost the flag keeps the label)
            simulated=bool(f.boolean(k["simulated"])) or source.endswith(SIMULATED_SUFFIX),
            series=series,
            history=history,
            rejected_samples=rejected,
            rejecting_since_seconds=f.time(k["rejecting_since_seconds"]),
            breakdown=breakdown,
            problems=tuple(problems),
        )


def _rejected_counts(f: Fields, key: str) -> dict[str, int]:
    """``rejectedSamples`` (reason -> count), never raising.

    A reason that is not a short name, or a count that is not an integer >= 0, is dropped and named in the
    problems; the other counts are kept.
    """
    counts: dict[str, int] = {}
    raw = f.mapping(key) or {}
    for index, (reason, count) in enumerate(raw.items()):
        named = reason if isinstance(reason, str) and len(reason) <= _MAX_REJECT_REASON_LENGTH else "..."
        path = f"{f.path}.{key}[{named}]"
        if index >= _MAX_REJECT_REASONS:
            found = f"more than {_MAX_REJECT_REASONS} reasons"
            f.problems.append(FieldProblem(f"{f.path}.{key}", found, "the rest dropped"))
            break
        if not isinstance(reason, str) or not 0 < len(reason) <= _MAX_REJECT_REASON_LENGTH:
            f.problems.append(FieldProblem(path, "a reason that is not a short name", "dropped"))
        elif isinstance(count, bool) or not isinstance(count, int) or count < 0:
            f.problems.append(FieldProblem(path, f"expected an integer >= 0, found {describe_value(count)}", "dropped"))
        else:
            counts[reason] = count
    return counts


def _is_point(point: Any) -> bool:
    if not isinstance(point, list) or len(point) != HISTORY_POINT_LENGTH:
        return False
    return all(
        (v is None and i == 2) or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
        for i, v in enumerate(point)
    )


def _time_or_legacy_seconds(f: Fields, key: str) -> float | None:
    """An RFC 3339 time, or (a status written before the time rule) the same key holding unix seconds."""
    value = f.raw.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f.number(key)
    return f.time(key)


# --- status.policy ---------------------------------------------------------------------------------------
@dataclass
class Drain:
    """A checkpoint asked for before the pods stop (budget stop or suspend, carbon pause, reschedule)."""

    #: What the drain is for (``EnergyBudgetStop``, ``CarbonPause``, ...).
    reason: str
    #: The ``control.checkpointRequested`` number the harness must acknowledge.
    requested: int
    #: When it was asked for. Units: unix seconds.
    since_seconds: float
    #: Drained this pass (the pods may stop); the drain is dropped at the end of the pass.
    done: bool = False

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> Drain | None:
        """The drain, or None (one problem naming what is unreadable) when a required field is."""
        own: list[str] = []
        f = Fields(raw, path, own)
        k = DRAIN_KEYS
        reason = f.string(k["reason"], 128)
        requested = f.integer(k["requested"])
        since = f.number(k["since_seconds"])
        if since is None and f.raw.get(k["since_seconds"]) is None:
            since = f.number(_LEGACY_DRAIN_SINCE)
        done = f.boolean(k["done"])
        if reason is None or requested is None or since is None:
            missing = [
                name for name, v in (("reason", reason), ("requested", requested), ("since", since)) if v is None
            ]
            problems.append(FieldProblem(path, describe_value(raw), f"dropped ({', '.join(missing)} unreadable)"))
            return None
        problems.extend(own)
        return cls(reason, requested, since, bool(done))

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict (``done`` only while True)."""
        k = DRAIN_KEYS
        return set_fields(
            {
                k["reason"]: self.reason,
                k["requested"]: self.requested,
                k["since_seconds"]: self.since_seconds,
                k["done"]: self.done or None,
            }
        )


@dataclass
class PolicySection:
    """The policies' bookkeeping (``status.policy``); the policies update a copy of it each pass."""

    #: The checkpoint drain in progress, if any.
    drain: Drain | None = None
    #: The energy budget (action Suspend) holds the job suspended.
    budget_suspended: bool = False
    #: The Notify action's Warning was posted (once per crossing).
    budget_notified: bool = False
    #: The budget foresight (``onForecast: Suspend``) holds the job suspended, until the budget fits the forecast.
    forecast_suspended: bool = False
    #: The carbon policy holds the job paused.
    carbon_paused: bool = False
    #: When the carbon policy last paused or resumed the job (its dwell time counts from here). Units: unix s.
    carbon_since_seconds: float | None = None
    #: Consecutive telemetry cycles under the release threshold while throttled (hysteresis).
    low_cycles: int = 0
    #: The per-GPU cap asked of the GPUs' enforcer (the throttle, a Fixed limit: the lower), as last verified.
    #: Units: W.
    cap_watts: int | None = None
    #: When that cap was first asked (verification allows the enforcer a grace from here). Units: unix s.
    cap_since_seconds: float | None = None
    #: The GPUs' measured limits were at or under the cap in the last cycle that had readings.
    cap_enforced: bool = False
    #: The PowerCapNotEnforced Warning was posted for this cap (once per cap, not per cycle).
    cap_warned: bool = False
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_status(cls, raw: Any, path: str = f"status.{POLICY}") -> PolicySection:
        """Parse ``status.policy``; never raises (see the module)."""
        problems: list[str] = []
        f = Fields(raw, path, problems)
        k = POLICY_KEYS
        drain_raw = f.mapping(k["drain"])
        since = f.number(k["carbon_since_seconds"])
        if since is None and f.raw.get(k["carbon_since_seconds"]) is None:
            since = f.number(_LEGACY_CARBON_SINCE)
        return cls(
            drain=None if drain_raw is None else Drain._read(drain_raw, f"{path}.{k['drain']}", problems),
            budget_suspended=bool(f.boolean(k["budget_suspended"])),
            budget_notified=bool(f.boolean(k["budget_notified"])),
            forecast_suspended=bool(f.boolean(k["forecast_suspended"])),
            carbon_paused=bool(f.boolean(k["carbon_paused"])),
            carbon_since_seconds=since,
            low_cycles=f.integer(k["low_cycles"]) or 0,
            cap_watts=f.integer(k["cap_watts"]),
            cap_since_seconds=f.number(k["cap_since_seconds"]),
            cap_enforced=bool(f.boolean(k["cap_enforced"])),
            cap_warned=bool(f.boolean(k["cap_warned"])),
            problems=tuple(problems),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict of the fields that are set (False, 0 and None are left out)."""
        k = POLICY_KEYS
        return set_fields(
            {
                k["drain"]: None if self.drain is None else self.drain.to_status(),
                k["budget_suspended"]: self.budget_suspended or None,
                k["budget_notified"]: self.budget_notified or None,
                k["forecast_suspended"]: self.forecast_suspended or None,
                k["carbon_paused"]: self.carbon_paused or None,
                k["carbon_since_seconds"]: self.carbon_since_seconds,
                k["low_cycles"]: self.low_cycles or None,
                k["cap_watts"]: self.cap_watts,
                k["cap_since_seconds"]: self.cap_since_seconds,
                k["cap_enforced"]: self.cap_enforced or None,
                k["cap_warned"]: self.cap_warned or None,
            }
        )


# --- status.placement ------------------------------------------------------------------------------------
@dataclass
class PlacementSection:
    """Where the job's pods may run (``status.placement``), after reschedules on node power pressure."""

    #: Pods are being recreated away from pressured nodes; False again once all run.
    rescheduling: bool = False
    #: Nodes the pods avoid (node anti-affinity), sorted.
    avoided_nodes: tuple[str, ...] = ()
    reschedules: int = 0
    last_reason: str | None = None
    #: When the last reschedule began. Units: unix seconds (written as the RFC 3339 ``lastRescheduleTime``).
    last_reschedule_seconds: float | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_status(cls, raw: Any, path: str = f"status.{PLACEMENT}") -> PlacementSection:
        """Parse ``status.placement``; never raises (see the module)."""
        problems: list[str] = []
        f = Fields(raw, path, problems)
        k = PLACEMENT_KEYS
        nodes: list[str] = []
        for index, node in enumerate(f.items(k["avoided_nodes"], _MAX_AVOIDED_NODES) or ()):
            if isinstance(node, str) and 0 < len(node) <= _MAX_NODE_NAME:
                nodes.append(node)
            else:
                problems.append(FieldProblem(f"{path}.{k['avoided_nodes']}[{index}]", describe_value(node), "dropped"))
        return cls(
            rescheduling=bool(f.boolean(k["rescheduling"])),
            avoided_nodes=tuple(sorted(set(nodes))),
            reschedules=f.integer(k["reschedules"]) or 0,
            last_reason=f.string(k["last_reason"], _MAX_REASON),
            last_reschedule_seconds=f.time(k["last_reschedule_seconds"], legacy_key=_LEGACY_PLACEMENT_TIME),
            problems=tuple(problems),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict of the fields that are set (``rescheduling`` always, once a section exists)."""
        k = PLACEMENT_KEYS
        when = self.last_reschedule_seconds
        return set_fields(
            {
                k["rescheduling"]: self.rescheduling,
                k["avoided_nodes"]: list(self.avoided_nodes) or None,
                k["reschedules"]: self.reschedules or None,
                k["last_reason"]: self.last_reason,
                k["last_reschedule_seconds"]: None if when is None else to_rfc3339(when),
            }
        )

    @property
    def empty(self) -> bool:
        """Nothing was ever rescheduled (no section is written)."""
        return self == PlacementSection()


# --- status.kueue ------------------------------------------------------------------------------------------
@dataclass
class KueueSection:
    """The job's place in Kueue (``status.kueue``): queue, Workload and admission, as the operator last saw them.

    Written only while the operator is Kueue's integration for the job (``ETJ_KUEUE`` and the job's
    ``kueue.x-k8s.io/queue-name`` label). ``reason`` and ``message`` are Kueue's (the Workload's QuotaReserved,
    Admitted or Evicted condition) or the operator's own (``WorkloadCreated``, ``WorkloadOutdated`` ...).
    """

    #: The LocalQueue the job names.
    queue_name: str = ""
    #: The job's Workload (``kueue.x-k8s.io/v1beta2``, in the job's namespace), once it exists.
    workload_name: str | None = None
    #: The Workload holds an admission (quota reserved, admission checks ready) and is not evicted.
    admitted: bool = False
    #: The ClusterQueue that admitted it (while admitted).
    cluster_queue: str | None = None
    #: Resource name -> the ResourceFlavor assigned to it (while admitted).
    flavors: dict[str, str] = field(default_factory=dict)
    #: Pods admitted (fewer than ``spec.replicas`` under partial admission of an elastic job).
    pod_count: int | None = None
    reason: str | None = None
    message: str | None = None
    #: Times the job was evicted by Kueue and queued again (preemption and the like).
    requeues: int = 0
    #: Evicted, and a checkpoint is asked for before the pods stop (``spec.checkpoint``; see ``policy.drain``).
    draining: bool = False
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_status(cls, raw: Any, path: str = f"status.{KUEUE}") -> KueueSection:
        """Parse ``status.kueue``; never raises (see the module)."""
        problems: list[str] = []
        f = Fields(raw, path, problems)
        k = KUEUE_KEYS
        flavors: dict[str, str] = {}
        raw_flavors = f.mapping(k["flavors"]) or {}
        for index, (resource, flavor) in enumerate(raw_flavors.items()):
            where = f"{path}.{k['flavors']}"
            if index >= _MAX_FLAVORS:
                problems.append(FieldProblem(where, f"more than {_MAX_FLAVORS} resources", "the rest dropped"))
                break
            ok = isinstance(resource, str) and isinstance(flavor, str)
            if ok and 0 < len(resource) <= _MAX_OBJECT_NAME and 0 < len(flavor) <= _MAX_OBJECT_NAME:
                flavors[resource] = flavor
            else:
                problems.append(FieldProblem(f"{where}[{resource}]", describe_value(flavor), "dropped"))
        return cls(
            queue_name=f.string(k["queue_name"], _MAX_OBJECT_NAME) or "",
            workload_name=f.string(k["workload_name"], _MAX_OBJECT_NAME),
            admitted=bool(f.boolean(k["admitted"])),
            cluster_queue=f.string(k["cluster_queue"], _MAX_OBJECT_NAME),
            flavors=flavors,
            pod_count=f.integer(k["pod_count"]),
            reason=f.string(k["reason"], _MAX_REASON),
            message=f.string(k["message"], _MAX_MESSAGE),
            requeues=f.integer(k["requeues"]) or 0,
            draining=bool(f.boolean(k["draining"])),
            problems=tuple(problems),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict of the fields that are set (``queueName`` and ``admitted`` always)."""
        k = KUEUE_KEYS
        return set_fields(
            {
                k["queue_name"]: self.queue_name,
                k["workload_name"]: self.workload_name,
                k["admitted"]: self.admitted,
                k["cluster_queue"]: self.cluster_queue,
                k["flavors"]: dict(sorted(self.flavors.items())) or None,
                k["pod_count"]: self.pod_count,
                k["reason"]: self.reason,
                k["message"]: self.message,
                k["requeues"]: self.requeues or None,
                k["draining"]: self.draining or None,
            }
        )


# --- status.forecast -----------------------------------------------------------------------------------------
#: ``status.forecast``: attribute name -> camelCase key (``display`` is derived: written, never read back).
FORECAST_KEYS: Final[Mapping[str, str]] = {
    "steps_done": "stepsDone",
    "steps_total": "stepsTotal",
    "steps_remaining": "stepsRemaining",
    "samples_remaining": "samplesRemaining",
    "steps_per_second": "stepsPerSecond",
    "samples_per_second": "samplesPerSecond",
    "remaining_seconds": "remainingSeconds",
    "completion_seconds": "completionTime",
    "power_watts": "powerWatts",
    "energy_to_completion_kwh": "energyToCompletionKilowattHours",
    "energy_at_completion_kwh": "energyAtCompletionKilowattHours",
    "progress_seconds": "progressTime",
    "power_seconds": "powerTime",
    "simulated": "simulated",
    "mature": "mature",
    "reason": "reason",
    "message": "message",
    "window": "window",
    "display": "display",
}
#: ``status.forecast.display``: what ``kubectl get -o wide`` shows (ETA, Forecast); ``-`` when unknown.
FORECAST_DISPLAY_KEYS: Final[Mapping[str, str]] = {"remaining": "remaining", "energy": "energy"}
#: ``status.forecast.window``: the operator's own observations of the step count (attribute name -> key).
RATE_WINDOW_KEYS: Final[Mapping[str, str]] = {
    "anchor_step": "anchorStep",
    "anchor_seconds": "anchorUnixSeconds",
    "mid_step": "midStep",
    "mid_seconds": "midUnixSeconds",
    "last_step": "lastStep",
    "last_seconds": "lastUnixSeconds",
}
#: Longest ``forecast.reason`` and ``forecast.message`` (the CRD's maxLength).
_MAX_FORECAST_REASON: Final = 64
_MAX_FORECAST_MESSAGE: Final = 1024


@dataclass
class RateWindow:
    """The step observations the training speed is measured over (``status.forecast.window``).

    Each point is a step count and the operator's clock when a pass first saw that count (never the workload's
    timestamps). ``anchor`` starts the window, ``last`` is the newest observation, ``mid`` the point the anchor
    moves to next (``etj_operator.forecast`` rolls it). A window with only ``last_step`` (no times) waits for the
    step count to move after a hold: the time spent held is no training time. Units: unix seconds.
    """

    anchor_step: int | None = None
    anchor_seconds: float | None = None
    mid_step: int | None = None
    mid_seconds: float | None = None
    last_step: int | None = None
    last_seconds: float | None = None

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> RateWindow:
        f = Fields(raw, path, problems)
        k = RATE_WINDOW_KEYS
        window = cls(
            anchor_step=f.integer(k["anchor_step"]),
            anchor_seconds=f.number(k["anchor_seconds"]),
            mid_step=f.integer(k["mid_step"]),
            mid_seconds=f.number(k["mid_seconds"]),
            last_step=f.integer(k["last_step"]),
            last_seconds=f.number(k["last_seconds"]),
        )
        # a point is a step and a time together: half a point is dropped (named), the rest kept
        for name in ("anchor", "mid", "last"):
            step, seconds = getattr(window, f"{name}_step"), getattr(window, f"{name}_seconds")
            if name != "last" and (step is None) != (seconds is None):
                problems.append(FieldProblem(f"{path}.{name}", "half a point (a step or a time alone)", "dropped"))
                setattr(window, f"{name}_step", None)
                setattr(window, f"{name}_seconds", None)
        if window.last_seconds is not None and window.last_step is None:
            problems.append(FieldProblem(f"{path}.{k['last_seconds']}", "a time without its step", "dropped"))
            window.last_seconds = None
        return window

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict of the points that are set."""
        return set_fields({key: getattr(self, attr) for attr, key in RATE_WINDOW_KEYS.items()})


@dataclass
class ForecastSection:
    """Time and energy to completion (``status.forecast``), computed by ``etj_operator.forecast`` each pass.

    The steps come from the workload's report (its word: ``step``, ``stepsTotal``, ``samplesPerStep``); the speed is
    the operator's own measurement (steps over its clock, :class:`RateWindow`), the power the telemetry's. Every
    figure is None while unknown (left out of the status, ``-`` in ``display``), and ``reason`` says why
    (docs/energy.md, "Forecast"). The budget foresight's hold is the policies' (``status.policy
    .forecastSuspended``); while the job is held, the forecast keeps the figures it was suspended on.
    """

    steps_done: int | None = None
    steps_total: int | None = None
    steps_remaining: int | None = None
    samples_remaining: int | None = None
    #: The training speed the operator measured over its window. Units: steps/s.
    steps_per_second: float | None = None
    samples_per_second: float | None = None
    #: D/V: the steps remaining over the measured speed, from ``progress_seconds``. Units: s.
    remaining_seconds: float | None = None
    #: Expected completion (``progress_seconds + remaining_seconds``). Units: unix seconds (``completionTime``).
    completion_seconds: float | None = None
    #: The job's mean measured power the energy figures assume. Units: W.
    power_watts: float | None = None
    #: From the newest power reading used (``power_seconds``) to completion, at ``power_watts``. Units: kWh.
    energy_to_completion_kwh: float | None = None
    #: Measured so far plus ``energy_to_completion_kwh``. Units: kWh.
    energy_at_completion_kwh: float | None = None
    #: When the operator last saw the step count advance. Units: unix seconds (``progressTime``).
    progress_seconds: float | None = None
    #: The newest power reading the energy figures use. Units: unix seconds (``powerTime``).
    power_seconds: float | None = None
    #: The power assumed is the simulated GPU's (the sandbox).
    simulated: bool = False
    #: Measured long enough for the budget foresight to act on (docs/energy.md, "Budget foresight").
    mature: bool = False
    #: ``Forecasting``, or why figures are unknown (``NoPlan``, ``NotEnoughProgress``, ``NoPower``, ``Finished``,
    #: ``Suspended``, ``Paused``, ``Queued``).
    reason: str | None = None
    message: str | None = None
    window: RateWindow | None = None
    #: The budget foresight holds the job suspended (``spec.energy.energyBudget.onForecast: Suspend``).
    problems: tuple[str, ...] = field(default=(), compare=False)

    def display(self) -> dict[str, str]:
        """``status.forecast.display``: the remaining time (``1h02m``) and the energy at completion (``-``: unknown)."""
        d = FORECAST_DISPLAY_KEYS
        kwh = self.energy_at_completion_kwh
        return {
            d["remaining"]: UNKNOWN if self.remaining_seconds is None else format_duration(self.remaining_seconds),
            d["energy"]: UNKNOWN if kwh is None else f"{kwh:.4g}kWh",
        }

    @classmethod
    def from_status(cls, raw: Any, path: str = "status.forecast") -> ForecastSection:
        """Parse ``status.forecast``; never raises (a dropped figure is unknown until the next pass computes it)."""
        problems: list[str] = []
        f = Fields(raw, path, problems)
        k = FORECAST_KEYS
        window = f.mapping(k["window"])
        return cls(
            steps_done=f.integer(k["steps_done"]),
            steps_total=f.integer(k["steps_total"]),
            steps_remaining=f.integer(k["steps_remaining"]),
            samples_remaining=f.integer(k["samples_remaining"]),
            steps_per_second=f.number(k["steps_per_second"], 0.0),
            samples_per_second=f.number(k["samples_per_second"], 0.0),
            remaining_seconds=f.number(k["remaining_seconds"], 0.0),
            completion_seconds=f.time(k["completion_seconds"]),
            power_watts=f.number(k["power_watts"], 0.0),
            energy_to_completion_kwh=f.number(k["energy_to_completion_kwh"], 0.0),
            energy_at_completion_kwh=f.number(k["energy_at_completion_kwh"], 0.0),
            progress_seconds=f.time(k["progress_seconds"]),
            power_seconds=f.time(k["power_seconds"]),
            simulated=bool(f.boolean(k["simulated"])),
            mature=bool(f.boolean(k["mature"])),
            reason=f.string(k["reason"], _MAX_FORECAST_REASON),
            message=f.string(k["message"], _MAX_FORECAST_MESSAGE),
            window=None if window is None else RateWindow._read(window, f"{path}.{k['window']}", problems),
            problems=tuple(problems),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict of the figures that are known, with ``display`` (``simulated`` and ``mature`` always)."""
        k = FORECAST_KEYS

        def when(seconds: float | None) -> str | None:
            return None if seconds is None else to_rfc3339(seconds)

        return set_fields(
            {
                k["steps_done"]: self.steps_done,
                k["steps_total"]: self.steps_total,
                k["steps_remaining"]: self.steps_remaining,
                k["samples_remaining"]: self.samples_remaining,
                k["steps_per_second"]: self.steps_per_second,
                k["samples_per_second"]: self.samples_per_second,
                k["remaining_seconds"]: self.remaining_seconds,
                k["completion_seconds"]: when(self.completion_seconds),
                k["power_watts"]: self.power_watts,
                k["energy_to_completion_kwh"]: self.energy_to_completion_kwh,
                k["energy_at_completion_kwh"]: self.energy_at_completion_kwh,
                k["progress_seconds"]: when(self.progress_seconds),
                k["power_seconds"]: when(self.power_seconds),
                k["simulated"]: self.simulated,
                k["mature"]: self.mature,
                k["reason"]: self.reason,
                k["message"]: None if self.message is None else self.message[:_MAX_FORECAST_MESSAGE],
                k["window"]: None if self.window is None else (self.window.to_status() or None),
                k["display"]: self.display(),
            }
        )


def format_duration(seconds: float) -> str:
    """A duration as ``kubectl get`` shows it: ``2d03h``, ``1h02m``, ``3m10s``, ``42s`` (rounded down)."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
