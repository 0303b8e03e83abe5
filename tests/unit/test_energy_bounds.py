"""Bounded accounting: what one GPU cannot have drawn is never counted, and bad samples never cost a good one.

Focused cases first (the 350 J step back of a second exporter, the NaN that dropped the baseline, a clock
ahead), then two properties over arbitrary streams: (a) the energy never exceeds ``max_gpu_watts x (1 + tol) x
elapsed x GPUs``; (b) a valid monotone stream interleaved with bad samples counts what the clean stream counts.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etj_contract.sections import EnergySection
from etj_operator.energy import (
    REJECT_ABOVE_BOUND,
    REJECT_COUNTER_DECREASE,
    REJECT_FUTURE_TIMESTAMP,
    REJECT_INVALID_TIMESTAMP,
    REJECT_INVALID_VALUE,
    REJECT_OUT_OF_ORDER,
    REJECT_REASONS,
    AccountingSettings,
    EnergyState,
    integrate,
)
from etj_operator.telemetry.base import GpuSample

DEFAULTS = AccountingSettings()
BOUND_W = DEFAULTS.bound_watts  # 1200 W x 1.25
#: A GPU's lifetime counter after a few weeks of work: 504 kWh (what the 350 J step back used to add).
LIFETIME_MJ = 504 * 3.6e9
KEY = "uid-1/GPU-1"


def reading(t, mj=None, w=None, *, gpu="GPU-1", uid="uid-1", pod="j-worker-0", limit=None):
    return GpuSample("ns", pod, gpu, float(t), power_watts=w, energy_mj=mj, uid=uid, power_limit_watts=limit)


def feed(state, cycles, *, now_skew=0.0, **kwargs):
    """Integrate one-sample cycles at their own time (``now`` = the sample's time + ``now_skew``)."""
    added = 0.0
    for sample in cycles:
        now = sample.timestamp_seconds + now_skew if math.isfinite(sample.timestamp_seconds) else 0.0
        added += integrate(state, [sample], source="Prometheus", now_seconds=now, **kwargs)
    return added


# --- counter decreases --------------------------------------------------------------------------------------


def test_a_lagging_second_exporter_stepping_350_j_back_adds_nothing_and_loses_nothing():
    # Two exporters serve GPU-1; Prometheus' max by falls back to the lagging one for a cycle: 350 J lower.
    s = EnergyState()
    lead = LIFETIME_MJ
    integrate(s, [reading(0, lead, 700)], source="Prometheus", now_seconds=0)
    lead += 700 * 15 * 1000
    integrate(s, [reading(15, lead, 700)], source="Prometheus", now_seconds=15)
    assert s.joules == pytest.approx(10_500)
    added = integrate(s, [reading(30, lead - 350_000, 700)], source="Prometheus", now_seconds=30)  # 350 J back
    assert added == 0  # was 504 kWh: the decrease was taken for a driver reload and the whole counter added
    assert s.rejected_samples == {REJECT_COUNTER_DECREASE: 1} and s.rejecting_since_seconds == 30
    assert s.series[KEY].counter_mj == lead and s.series[KEY].last_seen_seconds == 15  # the baseline stays
    assert s.current_watts == 700  # its power is still the GPU's power
    lead += 2 * 700 * 15 * 1000
    integrate(s, [reading(45, lead, 700)], source="Prometheus", now_seconds=45)
    assert s.joules == pytest.approx(3 * 10_500)  # the leading counter again: both intervals, once
    assert s.rejecting_since_seconds is None and s.rejected_samples == {REJECT_COUNTER_DECREASE: 1}


def test_a_decrease_is_a_reset_when_the_new_value_is_energy_the_gpu_can_have_drawn_since():
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ), reading(15, 3_000_000)])  # driver reload: 3 kJ since (200 W)
    assert s.joules == 3000 and s.rejected_samples == {}
    # the largest plausible reset value: the bound over the interval
    at_bound = EnergyState()
    feed(at_bound, [reading(0, LIFETIME_MJ), reading(15, BOUND_W * 15 * 1000)])
    assert at_bound.joules == pytest.approx(BOUND_W * 15) and at_bound.rejected_samples == {}
    above = EnergyState()
    feed(above, [reading(0, LIFETIME_MJ), reading(15, BOUND_W * 15 * 1000 + 1000)])
    assert above.joules == 0 and above.rejected_samples == {REJECT_COUNTER_DECREASE: 1}  # not a reset
    assert above.series[KEY].counter_mj == LIFETIME_MJ  # the baseline stays


# --- increases above the bound ------------------------------------------------------------------------------


def test_an_impossible_jump_is_refused_and_the_next_good_reading_counts_the_whole_span():
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ), reading(15, LIFETIME_MJ + 6e6)])
    assert s.joules == 6000
    feed(s, [reading(30, LIFETIME_MJ + 1e12)])  # 1 GJ in 15 s: a spoofed or garbled counter
    assert s.joules == 6000 and s.rejected_samples == {REJECT_ABOVE_BOUND: 1}
    feed(s, [reading(45, LIFETIME_MJ + 18e6)])
    assert s.joules == 18_000  # 12 kJ over the 30 s since the baseline: nothing lost
    # exactly at the bound is allowed, just above is not
    feed(s, [reading(60, LIFETIME_MJ + 18e6 + BOUND_W * 15 * 1000)])
    assert s.joules == pytest.approx(18_000 + BOUND_W * 15)
    feed(s, [reading(75, LIFETIME_MJ + 18e6 + BOUND_W * 30 * 1000 + 1000)])
    assert s.rejected_samples == {REJECT_ABOVE_BOUND: 2}


def test_a_counter_that_jumps_for_good_is_refused_until_the_gap_rule_rebaselines_it():
    # the series now shows another counter, 1 GJ higher, for good: refused for max_counter_gap_seconds, then
    # taken as a new baseline (that span's energy is lost; rejectingSinceTime says so meanwhile)
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ), reading(15, LIFETIME_MJ + 6e6)])
    other = LIFETIME_MJ + 1e12
    t = 15
    while t - 15 <= DEFAULTS.max_counter_gap_seconds:
        t += 15
        other += 6e6
        feed(s, [reading(t, other)])
        if t - 15 <= DEFAULTS.max_counter_gap_seconds:
            assert s.joules == 6000 and s.rejecting_since_seconds == 30
    assert s.rejected_samples == {REJECT_ABOVE_BOUND: 40}
    assert s.rejecting_since_seconds is None and s.series[KEY].since_seconds == t  # re-baselined
    feed(s, [reading(t + 15, other + 6e6)])
    assert s.joules == 12_000


def test_an_exporter_sampling_its_counter_every_30_s_scraped_every_15_s_is_not_refused():
    # dcgm-exporter's default collect interval is 30 s: a 15 s scrape sees each value twice, and the counter's
    # step covers 30 s. A B200 at 1000 W would look like 2000 W if the repeat moved the baseline.
    s = EnergyState()
    counter = LIFETIME_MJ
    for i in range(20):
        if i and i % 2 == 0:
            counter += 1000 * 30 * 1000
        feed(s, [reading(15 * i, counter, 1000)])
    assert s.rejected_samples == {}
    assert s.joules == pytest.approx(9 * 30_000)
    assert s.series[KEY].last_seen_seconds == 15 * 18  # the reading that first showed the current value


def test_a_power_reading_above_the_bound_is_refused_and_the_power_baseline_stays():
    s = EnergyState()
    feed(s, [reading(0, w=400)])
    feed(s, [reading(10, w=1e6)])
    assert s.joules == 0 and s.current_watts is None  # unknown, not 1 MW
    assert s.rejected_samples == {REJECT_ABOVE_BOUND: 1}
    feed(s, [reading(20, w=400)])
    assert s.joules == 400 * 20  # trapezoid from the kept 400 W baseline over the 20 s since
    assert s.peak_watts == 400


def test_the_bound_follows_the_settings():
    card = AccountingSettings(max_gpu_watts=700, power_bound_tolerance=0.0)
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ), reading(10, LIFETIME_MJ + 7000 * 1000)], settings=card)
    assert s.joules == 7000  # 700 W for 10 s: at the bound
    feed(s, [reading(20, LIFETIME_MJ + 14001 * 1000)], settings=card)
    assert s.rejected_samples == {REJECT_ABOVE_BOUND: 1}
    # the default allows a B200 at 1000 W and a GB200 at 1200 W, with the tolerance on top
    assert DEFAULTS.max_gpu_watts >= 1200
    assert pytest.approx(1500) == BOUND_W


# --- invalid values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_an_invalid_counter_reading_keeps_the_baseline(bad):
    # 700 W for 60 s in four readings, one of them unusable: all 42 kJ are counted (10.5 kJ before the fix)
    s = EnergyState()
    counters = [LIFETIME_MJ + i * 10_500_000 for i in range(5)]
    feed(s, [reading(0, counters[0]), reading(15, bad)])
    assert s.rejected_samples == {REJECT_INVALID_VALUE: 1}
    assert s.series[KEY].counter_mj == counters[0]
    feed(s, [reading(30, counters[2]), reading(45, counters[3]), reading(60, counters[4])])
    assert s.joules == pytest.approx(42_000)


def test_an_invalid_power_beside_a_good_counter_loses_only_the_power():
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ, 300), reading(10, LIFETIME_MJ + 3e6, math.nan)])
    assert s.joules == 3000 and s.current_watts is None
    assert s.rejected_samples == {REJECT_INVALID_VALUE: 1}
    assert s.series[KEY].counter_mj == LIFETIME_MJ + 3e6  # the counter moved on


def test_a_good_power_beside_a_bad_counter_is_the_jobs_power():
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ, 300), reading(10, -5.0, 320)])
    assert s.current_watts == 320 and s.joules == 0
    assert s.series[KEY].counter_mj == LIFETIME_MJ


def test_a_sample_without_counter_or_power_leaves_the_baseline():
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ), reading(15, limit=300.0), reading(30, LIFETIME_MJ + 9e6)])
    assert s.joules == 9000 and s.rejected_samples == {}


# --- timestamps ---------------------------------------------------------------------------------------------


def test_a_sample_from_a_clock_ahead_is_refused_and_accounting_goes_on():
    s = EnergyState()
    integrate(s, [reading(1000, LIFETIME_MJ, 500)], source="Prometheus", now_seconds=1000)
    ahead = 1015 + DEFAULTS.future_tolerance_seconds + 1
    integrate(s, [reading(ahead, LIFETIME_MJ + 8e6, 500)], source="Prometheus", now_seconds=1015)
    assert s.rejected_samples == {REJECT_FUTURE_TIMESTAMP: 1} and s.joules == 0
    assert s.last_sample_seconds == 1000 and s.current_watts is None
    # before the fix the future sample was the baseline, and every reading until the clock caught up was
    # out of order: nothing counted
    integrate(s, [reading(1030, LIFETIME_MJ + 15e6, 500)], source="Prometheus", now_seconds=1030)
    assert s.joules == 15_000 and s.rejecting_since_seconds is None
    # within the tolerance is fine (clock skew)
    skewed = 1045 + DEFAULTS.future_tolerance_seconds
    integrate(s, [reading(skewed, LIFETIME_MJ + 20e6, 500)], source="Prometheus", now_seconds=1045)
    assert s.joules == 20_000


def test_a_baseline_from_the_future_in_an_old_status_is_dropped():
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ, 500), reading(500, LIFETIME_MJ + 1e6, 500)])
    old = EnergyState.from_status(s.to_status())
    integrate(old, [reading(100, LIFETIME_MJ + 2e6, 500)], source="Prometheus", now_seconds=100)
    # an operator that did not check the clock accepted t=500 at 100: the series would be held until then
    assert old.series[KEY].last_seen_seconds == 100  # a new baseline rather than 400 s of out-of-order readings
    assert old.rejected_samples == {}
    integrate(old, [reading(115, LIFETIME_MJ + 3e6, 500)], source="Prometheus", now_seconds=115)
    assert old.joules == pytest.approx(1000 + 1000)
    assert old.last_sample_seconds == 115 and all(p[0] <= 115 for p in old.history)


def test_out_of_order_and_invalid_timestamps_are_refused():
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ), reading(30, LIFETIME_MJ + 3e6)])
    integrate(s, [reading(15, LIFETIME_MJ + 1e6)], source="Prometheus", now_seconds=45)
    integrate(s, [reading(math.nan, LIFETIME_MJ + 4e6)], source="Prometheus", now_seconds=45)
    assert s.rejected_samples == {REJECT_OUT_OF_ORDER: 1, REJECT_INVALID_TIMESTAMP: 1}
    assert s.series[KEY].last_seen_seconds == 30 and s.joules == 3000
    integrate(s, [reading(30, LIFETIME_MJ + 3e6)], source="Prometheus", now_seconds=45)  # the same one again
    assert s.rejecting_since_seconds is None and s.joules == 3000


# --- rejections in the account ------------------------------------------------------------------------------


def test_the_rejecting_run_starts_at_its_first_cycle_and_ends_with_a_clean_cycle():
    s = EnergyState()
    integrate(s, [reading(0, LIFETIME_MJ)], source="Prometheus", now_seconds=0)
    integrate(s, [reading(15, math.nan)], source="Prometheus", now_seconds=15)
    assert s.rejecting_since_seconds == 15
    integrate(s, [reading(30, LIFETIME_MJ - 1e9)], source="Prometheus", now_seconds=30)
    integrate(s, [], source="Prometheus", now_seconds=45)  # a cycle without samples changes nothing
    assert s.rejecting_since_seconds == 15
    assert s.rejected_samples == {REJECT_INVALID_VALUE: 1, REJECT_COUNTER_DECREASE: 1}
    restored = EnergySection.from_status(s.to_status())  # an operator restart keeps both
    assert restored.rejected_samples == s.rejected_samples
    assert restored.rejecting_since_seconds == 15 and restored.problems == ()
    status = s.to_status()
    assert status["rejectedSamples"] == {"counter_decrease": 1, "invalid_value": 1}
    assert status["rejectingSinceTime"] == "1970-01-01T00:00:15.000000Z"
    integrate(restored, [reading(60, LIFETIME_MJ + 6e6)], source="Prometheus", now_seconds=60)
    assert restored.rejecting_since_seconds is None and "rejectingSinceTime" not in restored.to_status()
    assert restored.to_status()["rejectedSamples"] == status["rejectedSamples"]  # cumulative


def test_a_job_that_never_rejected_writes_no_rejection_keys():
    s = EnergyState()
    feed(s, [reading(0, LIFETIME_MJ), reading(15, LIFETIME_MJ + 1e6)])
    status = s.to_status()
    assert "rejectedSamples" not in status and "rejectingSinceTime" not in status


def test_duplicate_samples_of_one_gpu_in_one_cycle_count_its_power_once():
    s = EnergyState()
    integrate(s, [reading(0, LIFETIME_MJ, 600)], source="Prometheus", now_seconds=0)
    both = [reading(15, LIFETIME_MJ + 9e6, 600), reading(15, LIFETIME_MJ + 9e6 - 350_000, 590)]
    integrate(s, both, source="Prometheus", now_seconds=15)
    assert s.current_watts == 600 and s.joules == 9000  # the accepted sample's power, once
    assert s.rejected_samples == {REJECT_COUNTER_DECREASE: 1}


def test_rejections_read_back_tolerate_garbage():
    raw = {
        "joules": 10.0,
        "rejectedSamples": {"counter_decrease": 3, "neg": -1, "text": "x", "flag": True, "x" * 100: 1},
        "rejectingSinceTime": "yesterday",
    }
    s = EnergySection.from_status(raw)
    assert s.rejected_samples == {"counter_decrease": 3} and s.rejecting_since_seconds is None
    paths = sorted(p.path for p in s.problems)
    assert paths == [
        "status.energy.rejectedSamples[...]",
        "status.energy.rejectedSamples[flag]",
        "status.energy.rejectedSamples[neg]",
        "status.energy.rejectedSamples[text]",
        "status.energy.rejectingSinceTime",
    ]
    assert EnergySection.from_status({"rejectedSamples": [1, 2]}).rejected_samples == {}
    many = EnergySection.from_status({"rejectedSamples": {f"r{i}": i for i in range(100)}})
    assert len(many.rejected_samples) == 32 and many.problems


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10), st.none() | st.text(max_size=40) | st.floats() | st.integers())
def test_any_rejection_fields_read_back_without_raising(counts, since):
    s = EnergySection.from_status({"rejectedSamples": counts, "rejectingSinceTime": since})
    assert all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for k, v in s.rejected_samples.items())
    assert s.rejecting_since_seconds is None or math.isfinite(s.rejecting_since_seconds)
    again = EnergySection.from_status(s.to_status())
    assert again.rejected_samples == s.rejected_samples and again.problems == ()


# --- property (a): the physical bound over arbitrary streams ------------------------------------------------

GPUS = ("GPU-0", "GPU-1")
counter_moves = st.one_of(
    st.tuples(st.just("lead"), st.floats(0, 5e7)),  # the leading exporter, any step (jitter, spikes)
    st.tuples(st.just("lag"), st.floats(0, 1e10)),  # a second, lagging exporter of the same GPU
    st.tuples(st.just("reset"), st.floats(0, 1e8)),  # driver reload: the counter restarts low
    st.tuples(  # anything at all: spoofed jumps, NaN, infinities, negatives
        st.just("spoof"), st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1e16))
    ),
    st.tuples(st.just("none"), st.just(0.0)),
)
arbitrary_sample = st.tuples(
    st.sampled_from(GPUS),
    st.one_of(st.floats(-120, 60), st.sampled_from([math.nan, math.inf, -math.inf, 1e9])),  # time - now
    counter_moves,
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),  # watts
)
cycles_of_samples = st.lists(
    st.tuples(st.floats(0, 40), st.lists(arbitrary_sample, max_size=4)), min_size=1, max_size=30
)


@settings(max_examples=400, deadline=None)
@given(cycles_of_samples, st.booleans())
def test_a_energy_never_exceeds_the_physical_bound(cycles, restart_midway):
    """(a): joules <= max_gpu_watts x (1 + tol) x elapsed x GPUs, whatever the samples say.

    ``elapsed`` runs from the earliest sample time given to the newest sample accepted; each series' counted
    intervals are disjoint and each is bounded, so the sum over the GPUs' series is too.
    """
    s = EnergyState()
    lead = dict.fromkeys(GPUS, LIFETIME_MJ)
    now = 10_000.0
    earliest = math.inf
    last = 0.0
    for i, (step, raw) in enumerate(cycles):
        now += step
        samples = []
        for gpu, offset, (move, x), watts in raw:
            if move == "lead":
                lead[gpu] += x
                mj = lead[gpu]
            elif move == "lag":
                mj = lead[gpu] - x
            elif move == "reset":
                lead[gpu] = mj = x
            elif move == "spoof":
                mj = x
            else:
                mj = None
            t = now + offset
            if math.isfinite(t):
                earliest = min(earliest, t)
            samples.append(reading(t, mj, watts, gpu=gpu))
        integrate(s, samples, source="Prometheus", now_seconds=now, intensity_grams_per_kwh=400)
        assert math.isfinite(s.joules) and s.joules >= last - 1e-6  # never decreases
        last = s.joules
        if s.last_sample_seconds is not None:
            elapsed = max(0.0, s.last_sample_seconds - earliest)
            assert s.joules <= BOUND_W * elapsed * len(GPUS) * (1 + 1e-12) + 1e-6
        assert s.current_watts is None or s.current_watts <= BOUND_W * len(GPUS)
        assert set(s.rejected_samples) <= set(REJECT_REASONS)
        if restart_midway and i == len(cycles) // 2:
            s = EnergyState.from_status(s.to_status())
            last = s.joules


# --- property (b): bad samples never cost a good one --------------------------------------------------------


class CleanStream:
    """A valid monotone stream for one GPU: power constant over each step, the counter its exact integral."""

    def __init__(self, start_mj: float) -> None:
        self.points = [(0.0, start_mj)]
        self.powers: list[float] = []

    def advance(self, dt: float, watts: float) -> None:
        t, mj = self.points[-1]
        self.points.append((t + dt, mj + watts * dt * 1000))
        self.powers.append(watts)

    def counter_at(self, t: float) -> float:
        """The counter at any time of the stream (what an exporter reading it at ``t`` saw)."""
        for (t0, mj0), (t1, _), watts in zip(self.points, self.points[1:], self.powers, strict=False):
            if t0 <= t <= t1:
                return mj0 + watts * (t - t0) * 1000
        return self.points[0][1] if t < self.points[0][0] else self.points[-1][1]

    @property
    def joules(self) -> float:
        return (self.points[-1][1] - self.points[0][1]) / 1000


BAD_KINDS = ("nan_counter", "inf_counter", "negative_counter", "nan_time", "future", "lagging_copy",
             "lagging_reading", "old_reading", "spoof_up", "bad_power")


def bad_sample(kind, draw, stream, t, now, gpu):
    """A sample the accounting must not let cost the clean stream anything (stamped no later than ``t``)."""
    watts = draw(st.floats(0, 1000))
    if kind == "nan_counter":
        return reading(t, math.nan, watts, gpu=gpu)
    if kind == "inf_counter":
        return reading(t, math.inf, watts, gpu=gpu)
    if kind == "negative_counter":
        return reading(t, -draw(st.floats(1, 1e12)), watts, gpu=gpu)
    if kind == "nan_time":
        return reading(math.nan, stream.counter_at(t), watts, gpu=gpu)
    if kind == "future":
        ahead = now + DEFAULTS.future_tolerance_seconds + draw(st.floats(0.001, 1e6))
        return reading(ahead, stream.counter_at(t) + draw(st.floats(0, 1e12)), watts, gpu=gpu)
    if kind == "lagging_copy":  # a second exporter that read the same counter up to 60 s earlier
        return reading(t, stream.counter_at(t - draw(st.floats(0, 60))), watts, gpu=gpu)
    if kind == "lagging_reading":  # an earlier value of the counter, stamped now (stale cache, max by fallback)
        earlier = draw(st.sampled_from(stream.points))
        return reading(t, earlier[1], watts, gpu=gpu)
    if kind == "old_reading":  # an earlier reading as it was (out of order, or the same one again)
        earlier_t, earlier_mj = draw(st.sampled_from(stream.points))
        return reading(earlier_t, earlier_mj, watts, gpu=gpu)
    if kind == "spoof_up":  # far more than any GPU can draw in the stream's whole span
        return reading(t, stream.counter_at(t) + draw(st.floats(1e12, 1e16)), watts, gpu=gpu)
    return reading(t, stream.counter_at(t), draw(st.sampled_from([math.nan, -1.0, 1e6])), gpu=gpu)  # bad_power


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 3), st.booleans())
def test_b_bad_samples_interleaved_with_a_valid_stream_cost_nothing(data, gpus, restart_midway):
    """(b): the total never exceeds the clean stream's, and equals it after a clean tail (150 s, > 2 x any lag).

    The clean stream: every GPU read every 1..30 s, 1..1000 W (within the bound), the counter its exact integral.
    Bad samples come in any cycle, before or after the good ones, or in cycles of their own: unusable values,
    unusable or future times, out-of-order readings, earlier values of the counter stamped as new (a lagging
    second exporter), impossible jumps, impossible powers.

    What the accounting may do with them, and no more: a lagging copy whose value lies between two good
    readings is itself a valid (if late) reading of the counter and is counted; the good reading after it may
    then wait for the bound (its step looks early) and is counted a reading later, so until then the total
    may lag the clean one, never exceed it. The first cycle is clean: a series' first reading is its baseline,
    and nothing can tell a bad first reading from a good one. A decrease to a small value is a plausible reset
    and is counted (that is what a reset looks like), so the bad samples here never fake one.
    """
    draw = data.draw
    names = [f"GPU-{g}" for g in range(gpus)]
    streams = {g: CleanStream(draw(st.floats(1e9, 1e13))) for g in names}
    s = EnergyState()
    t = 0.0
    integrate(s, [reading(0, streams[g].points[0][1], 100, gpu=g) for g in names], source="Prometheus",
              now_seconds=0)
    steps = draw(st.integers(1, 25))
    tail = 5  # clean cycles of 30 s at the end: > 2 x the longest lag
    for k in range(steps + tail):
        clean = k >= steps
        dt = 30.0 if clean else draw(st.floats(1, 30))
        for g in names:
            streams[g].advance(dt, draw(st.floats(1, 1000)))
        t += dt
        now = t + draw(st.floats(0, 5))
        if not clean and draw(st.booleans()):  # a cycle of bad samples only, between two good readings
            between = t - draw(st.floats(0, dt))
            only_bad = [bad_sample(draw(st.sampled_from(BAD_KINDS)), draw, streams[g], between, between, g)
                        for g in names]
            integrate(s, only_bad, source="Prometheus", now_seconds=between)
        cycle = [reading(t, streams[g].points[-1][1], streams[g].powers[-1], gpu=g) for g in names]
        if not clean:
            for _ in range(draw(st.integers(0, 4))):
                g = draw(st.sampled_from(names))
                kind = draw(st.sampled_from(BAD_KINDS))
                cycle.insert(draw(st.integers(0, len(cycle))), bad_sample(kind, draw, streams[g], t, now, g))
        integrate(s, cycle, source="Prometheus", now_seconds=now)
        truth = sum(stream.joules for stream in streams.values())
        assert s.joules <= truth * (1 + 1e-9) + 1e-3  # never more than the clean stream
        if restart_midway and k == steps // 2:
            s = EnergyState.from_status(s.to_status())
    truth = sum(stream.joules for stream in streams.values())
    assert math.isclose(s.joules, truth, rel_tol=1e-9, abs_tol=1e-3)
    assert s.rejecting_since_seconds is None
