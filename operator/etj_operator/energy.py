"""Energy accounting per job (pure): integrate GPU readings into totals that live in the job's status.

Each GPU series contributes, per cycle. A series is one pod on one GPU, keyed ``<pod UID>/<GPU UUID>``
(:attr:`GpuSample.series`): the GPU's counter is its own lifetime counter, shared over time by whatever pods
run on it, so a re-created pod of the same name (another UID) starts another series whose first reading is
its baseline, and the energy the GPU drew before (another job's, or idle) is never counted in.

* with an energy counter (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, mJ): the counter's increase since the
  series' baseline (its last accepted reading). A decrease is a counter reset (driver reload) only when the
  new value, the energy since the reset, is one the GPU could have drawn since the baseline; the new value is
  then the energy to add. A series unseen for longer than ``max_counter_gap_seconds`` is re-baselined without
  counting the gap (the GPU may have served other jobs meanwhile).
* without a counter: power x time, trapezoidal between the last and the current reading, with the gap
  capped at ``max_power_gap_seconds`` (a conservative bound: nothing is invented for long outages).

**Bounds.** Nothing is added that one GPU could not have drawn: every increase (a counter's, a reset's new
value, or power x time) is at most ``max_gpu_watts x (1 + power_bound_tolerance) x`` the time since the
series' baseline. A sample that fails a check is refused and counted by reason in
:attr:`EnergySection.rejected_samples` (:data:`REJECT_REASONS`); the series keeps its baseline, so the next
good reading is measured against it over the whole span and no energy of a good reading is lost:

* ``invalid_timestamp``: the sample's time is not a finite number;
* ``future_timestamp``: later than ``now_seconds + future_tolerance_seconds`` (a clock running ahead);
* ``out_of_order``: older than the series' baseline;
* ``invalid_value``: a counter or power that is NaN, infinite or negative (a valid part of the sample is still
  used: a good power for the job's current power, a good counter when the series has no counter baseline);
* ``counter_decrease``: a counter below the baseline, and too large to be the energy since a reset (a second,
  lagging exporter of the same GPU; a counter of another GPU);
* ``above_physical_bound``: an increase above the bound, or a power reading above ``max_gpu_watts x (1 +
  power_bound_tolerance)``.

A counter that jumps for good (the series now shows another counter) is refused until the bound catches up or
the series has gone ``max_counter_gap_seconds`` without an accepted reading, when it is re-baselined: at most
that much of its energy is lost, and :attr:`EnergySection.rejecting_since_seconds` shows it meanwhile. A
reading whose counter equals the baseline's leaves the baseline as it is (exporters sample their counters at
their own pace: dcgm-exporter every 30 s by default, so a 15 s scrape sees each value twice), so that the
counter's next step is measured over the time it really took.

The state (totals, the last counter value per series, a bounded history) is the contract's
:class:`~etj_contract.sections.EnergySection`, serialised into ``status.energy``; an operator restart
reads it back and continues, so nothing is lost (counters cover the downtime) or counted twice (the stored
counter values are the baseline).

A status written before series were keyed by UID has ``<pod>/<GPU>`` keys and entries without ``pod``.
Such an entry is taken over by the first reading of the same pod name and GPU whose pod started no later
than the entry's last reading (the counter's increase since then is that pod's); any other old entry gets
no further deltas and is forgotten after ``FORGET_SERIES_AFTER_SECONDS``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from etj_contract.sections import JOULES_PER_KWH, EnergySection, SeriesEntry
from etj_operator.telemetry.base import GpuSample

__all__ = [
    "DEFAULT_MAX_GPU_WATTS",
    "JOULES_PER_KWH",
    "REJECT_ABOVE_BOUND",
    "REJECT_COUNTER_DECREASE",
    "REJECT_FUTURE_TIMESTAMP",
    "REJECT_INVALID_TIMESTAMP",
    "REJECT_INVALID_VALUE",
    "REJECT_OUT_OF_ORDER",
    "REJECT_REASONS",
    "AccountingSettings",
    "EnergyState",
    "SeriesState",
    "integrate",
]
HISTORY_MAX_POINTS: Final = 240
#: Series not seen for this long are forgotten (bounded status size).
FORGET_SERIES_AFTER_SECONDS: Final = 3600.0
#: The most one GPU is specified to draw, among current data-centre GPUs: NVIDIA GB200, 1200 W per GPU (B200:
#: 1000 W; H100 SXM: 700 W). Units: W.
DEFAULT_MAX_GPU_WATTS: Final = 1200.0

#: Why a sample was refused: the keys of ``status.energy.rejectedSamples`` and the ``reason`` label of
#: ``etj_telemetry_rejected_samples_total`` (see the module's docstring).
REJECT_INVALID_TIMESTAMP: Final = "invalid_timestamp"
REJECT_FUTURE_TIMESTAMP: Final = "future_timestamp"
REJECT_OUT_OF_ORDER: Final = "out_of_order"
REJECT_INVALID_VALUE: Final = "invalid_value"
REJECT_COUNTER_DECREASE: Final = "counter_decrease"
REJECT_ABOVE_BOUND: Final = "above_physical_bound"
REJECT_REASONS: Final = (
    REJECT_INVALID_TIMESTAMP,
    REJECT_FUTURE_TIMESTAMP,
    REJECT_OUT_OF_ORDER,
    REJECT_INVALID_VALUE,
    REJECT_COUNTER_DECREASE,
    REJECT_ABOVE_BOUND,
)


#: The account and its series entries are the contract's records (``status.energy`` round-trips through them).
EnergyState = EnergySection
SeriesState = SeriesEntry


@dataclass(frozen=True)
class AccountingSettings:
    """Limits of the integration (the operator's ``ETJ_MAX_GPU_WATTS`` and neighbours; docs/energy.md)."""

    max_counter_gap_seconds: float = 600.0
    max_power_gap_seconds: float = 60.0
    #: The most one GPU can draw. Units: W.
    max_gpu_watts: float = DEFAULT_MAX_GPU_WATTS
    #: The allowance over ``max_gpu_watts`` for timing (a sample's time is its scrape's, the exporter reads
    #: its counter a moment later), as a fraction: 0.25 lets a step of a counter come up to 25% early.
    power_bound_tolerance: float = 0.25
    #: How far a sample's time may be ahead of the operator's clock (clock skew between nodes, Prometheus and
    #: the operator). Units: s.
    future_tolerance_seconds: float = 30.0

    @property
    def bound_watts(self) -> float:
        """The most one GPU is taken to draw on average between two readings. Units: W (J/s)."""
        return self.max_gpu_watts * (1.0 + self.power_bound_tolerance)


@dataclass(frozen=True)
class _Verdict:
    """What one sample does to its series."""

    #: Joules to add.
    joules: float = 0.0
    #: Why (part of) the sample was refused; None: nothing was.
    reason: str | None = None
    #: The entry the series goes on from; None: the series stays as it was.
    entry: SeriesEntry | None = None
    #: The sample's time is usable (finite, not ahead of the clock, not older than the series' baseline).
    placed: bool = True
    #: The sample's power, when valid and within the bound (the job's power this cycle).
    power: float | None = None


def integrate(
    state: EnergyState,
    samples: Sequence[GpuSample],
    *,
    source: str,
    intensity_grams_per_kwh: float | None = None,
    settings: AccountingSettings | None = None,
    now_seconds: float | None = None,
) -> float:
    """Add one cycle of ``samples`` (all of one job's GPUs) to ``state``; return the joules added.

    ``now_seconds`` is the operator's clock at the pass (unix seconds): samples later than it by more than
    ``settings.future_tolerance_seconds`` are refused. None (tests) checks no sample against a clock, and the
    cycle's time for :attr:`~EnergySection.rejecting_since_seconds` is then its newest sample's.

    The history point of the cycle records the highest power limit the samples report (as measured by the
    exporter; None when none reports one), never a limit asked for.
    """
    settings = settings or AccountingSettings()
    horizon = None if now_seconds is None else now_seconds + settings.future_tolerance_seconds
    if horizon is not None:
        _forget_future(state, horizon)
    added = 0.0
    accepted_power: dict[str, float] = {}
    refused_power: dict[str, float] = {}  # a sample's good power, when the rest of it was refused
    rejected: dict[str, int] = {}
    prior = state.last_sample_seconds
    if prior is not None and horizon is not None and prior > horizon:
        prior = None  # stamped by a clock ahead (see _forget_future): this cycle's newest sample replaces it
    newest = prior
    for sample in samples:
        prev_key = sample.series if sample.series in state.series else _legacy_entry(state, sample)
        prev = None if prev_key is None else state.series[prev_key]
        verdict = _judge(prev, sample, settings, horizon)
        added += verdict.joules
        if verdict.reason is not None:
            rejected[verdict.reason] = rejected.get(verdict.reason, 0) + 1
        if verdict.entry is not None:
            if prev_key is not None and prev_key != sample.series:
                del state.series[prev_key]  # taken over under the new key
            state.series[sample.series] = verdict.entry
        if not verdict.placed:
            continue
        if verdict.power is not None:
            (refused_power if verdict.reason else accepted_power)[sample.series] = verdict.power
        t = sample.timestamp_seconds
        newest = t if newest is None else max(newest, t)
        state.simulated = state.simulated or sample.simulated

    if newest is not None and prior is not None and newest > prior:
        state.covered_seconds += min(newest - prior, settings.max_counter_gap_seconds)
    state.joules += added
    if intensity_grams_per_kwh is not None and intensity_grams_per_kwh >= 0:
        state.grams_co2e += added / JOULES_PER_KWH * intensity_grams_per_kwh
    power = {**refused_power, **accepted_power}  # one figure per series, an accepted sample's first
    if power:
        state.current_watts = sum(power.values())
        state.peak_watts = max(state.peak_watts, state.current_watts)
    else:
        state.current_watts = None  # no power reading this cycle: the job's power is unknown, not 0
    if samples:
        state.source = source
        _count_rejections(state, rejected, now_seconds if now_seconds is not None else _cycle_time(samples))
    if newest is not None:
        state.last_sample_seconds = newest
        _forget_old_series(state, newest)
        limits = [x.power_limit_watts for x in samples if x.power_limit_watts is not None]
        limits = [w for w in limits if math.isfinite(w)]
        _record(state, newest, max(limits) if limits else None)
    return added


def _judge(
    prev: SeriesEntry | None, sample: GpuSample, settings: AccountingSettings, horizon: float | None
) -> _Verdict:
    """Check one sample against its series' baseline ``prev`` and say what it adds and what the series keeps."""
    t = sample.timestamp_seconds
    if not math.isfinite(t):
        return _Verdict(reason=REJECT_INVALID_TIMESTAMP, placed=False)
    if horizon is not None and t > horizon:
        return _Verdict(reason=REJECT_FUTURE_TIMESTAMP, placed=False)
    if prev is not None and t < prev.last_seen_seconds:
        return _Verdict(reason=REJECT_OUT_OF_ORDER, placed=False)  # never moves the baseline back
    counter, counter_bad = _checked(sample.energy_mj)
    power, power_bad = _checked(sample.power_watts)
    value_reason = REJECT_INVALID_VALUE if counter_bad or power_bad else None
    if power is not None and power > settings.bound_watts:
        power, value_reason = None, value_reason or REJECT_ABOVE_BOUND

    def entry(since: float | None, watts: float | None = power) -> SeriesEntry:
        return SeriesEntry(t, counter, watts, since, sample.pod)

    if prev is None:
        return _Verdict(reason=value_reason, entry=entry(t), power=power)  # a series' first reading: its baseline
    gap = t - prev.last_seen_seconds
    allowed_joules = settings.bound_watts * gap
    continuous = gap <= settings.max_counter_gap_seconds or prev.counter_mj is None
    since = prev.since_seconds if continuous else t
    if prev.counter_mj is not None and counter_bad:
        return _Verdict(reason=value_reason, power=power)  # keep the counter baseline for the next good reading
    if prev.counter_mj is not None and counter is not None:
        if gap > settings.max_counter_gap_seconds:
            return _Verdict(reason=value_reason, entry=entry(t), power=power)  # a long gap: a new baseline
        increase = counter - prev.counter_mj
        if increase == 0:
            # The exporter has not sampled its counter again: the baseline stays (the step to come took the
            # time since then); only an entry of a status before UID keys moves to its new key.
            kept = prev if prev.pod is not None else dataclasses.replace(prev, pod=sample.pod)
            return _Verdict(reason=value_reason, entry=kept, power=power)
        if increase < 0:
            if counter / 1000.0 > allowed_joules:
                return _Verdict(reason=REJECT_COUNTER_DECREASE, power=power)  # no reset could explain it
            joules = counter / 1000.0  # a reset (driver reload): the energy since the reset
        else:
            joules = increase / 1000.0
            if joules > allowed_joules:
                return _Verdict(reason=REJECT_ABOVE_BOUND, power=power)
        return _Verdict(joules, value_reason, entry(since), power=power)
    if power is not None:
        start = prev.power_watts if prev.power_watts is not None else power
        joules = (start + power) / 2.0 * min(gap, settings.max_power_gap_seconds)
        if joules > allowed_joules:
            return _Verdict(reason=REJECT_ABOVE_BOUND, power=power)  # a stored power above the bound
        return _Verdict(joules, value_reason, entry(since), power=power)
    if counter is None:
        return _Verdict(reason=value_reason)  # nothing to account (e.g. a limit only): the baseline stays
    return _Verdict(reason=value_reason, entry=entry(since))  # the series' first counter: its baseline


def _checked(value: float | None) -> tuple[float | None, bool]:
    """A reading and whether it was unusable.

    ``(value, False)`` for a usable reading, ``(None, False)`` for an absent one, ``(None, True)`` for one that
    is there but unusable (NaN, infinite, negative).
    """
    if value is None:
        return None, False
    if math.isfinite(value) and value >= 0:
        return value, False
    return None, True


def _legacy_entry(state: EnergyState, sample: GpuSample) -> str | None:
    """The key of an entry written before UID keys that ``sample`` continues, or None.

    Only when the sample names its pod's UID and start, and that pod had started by the entry's last
    reading: the GPU's counter increase since that reading is then this pod's own (a pod keeps its GPUs).
    An entry last read before the pod started belongs to an earlier pod of that name and is left alone.
    """
    if not sample.uid or sample.pod_start_seconds is None:
        return None
    key = sample.legacy_series
    entry = state.series.get(key)
    if entry is None or entry.pod is not None or entry.last_seen_seconds < sample.pod_start_seconds:
        return None
    return key


def _cycle_time(samples: Sequence[GpuSample]) -> float | None:
    times = [s.timestamp_seconds for s in samples if math.isfinite(s.timestamp_seconds)]
    return max(times) if times else None


def _count_rejections(state: EnergyState, rejected: dict[str, int], when: float | None) -> None:
    """Add the cycle's refusals to the account, and start or end the run of cycles that refused samples."""
    for reason, count in rejected.items():
        state.rejected_samples[reason] = state.rejected_samples.get(reason, 0) + count
    if not rejected:
        state.rejecting_since_seconds = None
    elif state.rejecting_since_seconds is None and when is not None:
        state.rejecting_since_seconds = when


def _forget_future(state: EnergyState, horizon: float) -> None:
    """Drop the baselines and history points a status holds from beyond ``horizon``.

    They come from samples stamped by a clock running ahead, accepted before samples were checked against the
    operator's clock; such a baseline would make every reading of its series out of order until the clock
    caught up.
    """
    for key in [k for k, s in state.series.items() if s.last_seen_seconds > horizon]:
        del state.series[key]  # its next reading is a new baseline
    if state.history and state.history[-1][0] is not None and state.history[-1][0] > horizon:
        state.history = [p for p in state.history if p[0] is not None and p[0] <= horizon]


def _forget_old_series(state: EnergyState, now: float) -> None:
    for key in [k for k, s in state.series.items() if now - s.last_seen_seconds > FORGET_SERIES_AFTER_SECONDS]:
        del state.series[key]


def _record(state: EnergyState, t: float, limit: float | None) -> None:
    if state.current_watts is None:
        return  # a point needs the job's power; a cycle without one leaves a gap in the history
    point: list[float | None] = [round(t, 3), round(state.current_watts, 2), limit, round(state.joules, 3)]
    if state.history and state.history[-1][0] == point[0]:
        state.history[-1] = point
    else:
        state.history.append(point)
    if len(state.history) > HISTORY_MAX_POINTS:
        # Halve the resolution of the older half; recent points stay dense.
        half = len(state.history) // 2
        state.history = state.history[:half:2] + state.history[half:]
