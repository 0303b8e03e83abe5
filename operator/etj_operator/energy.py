"""Energy accounting per job (pure): integrate GPU readings into totals that live in the job's status.

Each GPU series contributes, per cycle. A series is one pod on one GPU, keyed ``<pod UID>/<GPU UUID>``
(:attr:`GpuSample.series`): the GPU's counter is its own lifetime counter, shared over time by whatever pods
run on it, so a re-created pod of the same name (another UID) starts another series whose first reading is
its baseline, and the energy the GPU drew before (another job's, or idle) is never counted in.

* with an energy counter (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, mJ): the counter's increase since the
  series' last value. A decrease means the counter reset (driver reload): the new value itself is the
  energy since the reset. A series unseen for longer than ``max_counter_gap_seconds`` is re-baselined
  without counting the gap (the GPU may have served other jobs meanwhile).
* without a counter: power x time, trapezoidal between the last and the current reading, with the gap
  capped at ``max_power_gap_seconds`` (a conservative bound: nothing is invented for long outages).

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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from etj_contract.sections import JOULES_PER_KWH, EnergySection, SeriesEntry
from etj_operator.telemetry.base import GpuSample

__all__ = ["JOULES_PER_KWH", "AccountingSettings", "EnergyState", "SeriesState", "integrate"]
HISTORY_MAX_POINTS: Final = 240
#: Series not seen for this long are forgotten (bounded status size).
FORGET_SERIES_AFTER_SECONDS: Final = 3600.0


#: The account and its series entries are the contract's records (``status.energy`` round-trips through them).
EnergyState = EnergySection
SeriesState = SeriesEntry


@dataclass(frozen=True)
class AccountingSettings:
    """Limits of the integration."""

    max_counter_gap_seconds: float = 600.0
    max_power_gap_seconds: float = 60.0


def integrate(
    state: EnergyState,
    samples: Sequence[GpuSample],
    *,
    source: str,
    intensity_grams_per_kwh: float | None = None,
    settings: AccountingSettings | None = None,
) -> float:
    """Add one cycle of ``samples`` (all of one job's GPUs) to ``state``; return the joules added.

    The history point of the cycle records the highest power limit the samples report (as measured by the
    exporter; None when none reports one), never a limit asked for.
    """
    settings = settings or AccountingSettings()
    added = 0.0
    cycle_watts = 0.0
    have_power = False
    newest = state.last_sample_seconds
    for sample in samples:
        t = sample.timestamp_seconds
        if not math.isfinite(t):
            continue
        prev = state.series.get(sample.series)
        legacy = _legacy_entry(state, sample) if prev is None else None
        if legacy is not None:
            prev = state.series[legacy]
        delta = _series_delta(prev, sample, settings)
        added += delta
        continuous = prev is not None and (
            t - prev.last_seen_seconds <= settings.max_counter_gap_seconds or prev.counter_mj is None
        )
        since = prev.since_seconds if continuous and prev is not None else t
        entry = SeriesState(t, _valid(sample.energy_mj), _valid(sample.power_watts), since, sample.pod)
        if prev is not None and t < prev.last_seen_seconds:
            continue  # an out-of-order (older) reading never moves the baseline back
        state.series[sample.series] = entry
        if legacy is not None:
            del state.series[legacy]  # taken over under the new key
        if entry.power_watts is not None:
            cycle_watts += entry.power_watts
            have_power = True
        newest = t if newest is None else max(newest, t)
        state.simulated = state.simulated or sample.simulated

    if newest is not None and state.last_sample_seconds is not None and newest > state.last_sample_seconds:
        gap = newest - state.last_sample_seconds
        state.covered_seconds += min(gap, settings.max_counter_gap_seconds)
    state.joules += added
    if intensity_grams_per_kwh is not None and intensity_grams_per_kwh >= 0:
        state.grams_co2e += added / JOULES_PER_KWH * intensity_grams_per_kwh
    if have_power:
        state.current_watts = cycle_watts
        state.peak_watts = max(state.peak_watts, cycle_watts)
    else:
        state.current_watts = None  # no power reading this cycle: the job's power is unknown, not 0
    if samples:
        state.source = source
    if newest is not None:
        state.last_sample_seconds = newest
        _forget_old_series(state, newest)
        limits = [x.power_limit_watts for x in samples if x.power_limit_watts is not None]
        limits = [w for w in limits if math.isfinite(w)]
        _record(state, newest, max(limits) if limits else None)
    return added


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


def _valid(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def _series_delta(prev: SeriesState | None, sample: GpuSample, settings: AccountingSettings) -> float:
    counter = _valid(sample.energy_mj)
    power = _valid(sample.power_watts)
    if prev is None:
        return 0.0  # the first reading of a series is its baseline
    gap = sample.timestamp_seconds - prev.last_seen_seconds
    if gap <= 0:
        return 0.0
    if counter is not None and prev.counter_mj is not None:
        if gap > settings.max_counter_gap_seconds:
            return 0.0
        increase = counter - prev.counter_mj if counter >= prev.counter_mj else counter  # reset: since zero
        return increase / 1000.0
    if power is not None:
        start = prev.power_watts if prev.power_watts is not None else power
        return (start + power) / 2.0 * min(gap, settings.max_power_gap_seconds)
    return 0.0


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
