import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etj_operator.energy import HISTORY_MAX_POINTS, AccountingSettings, EnergyState, integrate
from etj_operator.telemetry.base import GpuSample


def sample(t, mj=None, w=None, pod="job-worker-0", gpu="GPU-0", simulated=False, limit=None):
    return GpuSample(
        "ns", pod, gpu, float(t), power_watts=w, energy_mj=mj, simulated=simulated, power_limit_watts=limit
    )


def test_counter_deltas_are_summed_per_gpu():
    s = EnergyState()
    integrate(s, [sample(0, 1_000_000, 300), sample(0, 5_000_000, 300, gpu="GPU-1")], source="Prometheus")
    assert s.joules == 0  # first readings are baselines
    integrate(s, [sample(10, 4_000_000, 300), sample(10, 8_000_000, 300, gpu="GPU-1")], source="Prometheus")
    assert s.joules == 6000.0
    assert s.current_watts == 600 and s.peak_watts == 600
    assert math.isclose(s.average_watts, 600.0)
    assert math.isclose(s.kilowatt_hours, 6000 / 3.6e6)


def test_counter_reset_counts_the_energy_since_the_reset():
    s = EnergyState()
    integrate(s, [sample(0, 9_000_000)], source="Prometheus")
    integrate(s, [sample(10, 2_000_000)], source="Prometheus")  # driver reload: counter restarted
    assert s.joules == 2000.0
    integrate(s, [sample(20, 3_000_000)], source="Prometheus")
    assert s.joules == 3000.0


def test_power_fallback_is_trapezoidal_and_gap_capped():
    s = EnergyState()
    integrate(s, [sample(0, w=100)], source="Direct")
    integrate(s, [sample(10, w=300)], source="Direct")
    assert s.joules == 2000.0  # (100 + 300) / 2 * 10
    integrate(s, [sample(1010, w=300)], source="Direct", settings=AccountingSettings(max_power_gap_seconds=60))
    assert s.joules == 2000.0 + 300 * 60


def test_long_counter_gap_rebaselines():
    s = EnergyState()
    integrate(s, [sample(0, 0)], source="Prometheus")
    integrate(s, [sample(10_000, 50_000_000)], source="Prometheus")
    assert s.joules == 0
    integrate(s, [sample(10_010, 51_000_000)], source="Prometheus")
    assert s.joules == 1000
    assert s.series["job-worker-0/GPU-0"].since_seconds == 10_000  # accounted without a hole since then


def test_baseline_time_survives_a_restart():
    s = EnergyState()
    integrate(s, [sample(5, 0, 100)], source="Prometheus")
    integrate(s, [sample(15, 1_000_000, 100)], source="Prometheus")
    restored = EnergyState.from_status(s.to_status())
    integrate(restored, [sample(25, 2_000_000, 100)], source="Prometheus")
    assert restored.series["job-worker-0/GPU-0"].since_seconds == 5
    assert restored.to_status()["series"]["job-worker-0/GPU-0"]["since"] == 5


def test_status_round_trip_continues_without_loss_or_double_count():
    s = EnergyState()
    integrate(s, [sample(0, 0, 200)], source="Prometheus", intensity_grams_per_kwh=400)
    integrate(s, [sample(10, 2_000_000, 200)], source="Prometheus", intensity_grams_per_kwh=400)
    restored = EnergyState.from_status(s.to_status())  # operator restart
    integrate(restored, [sample(10, 2_000_000, 200)], source="Prometheus")  # the same reading again
    assert restored.joules == 2000.0
    integrate(restored, [sample(70, 14_000_000, 200)], source="Prometheus")  # a minute of downtime
    assert restored.joules == 14_000.0
    assert math.isclose(restored.grams_co2e, 2000 / 3.6e6 * 400)


def test_simulated_readings_are_labelled():
    s = EnergyState()
    integrate(s, [sample(0, 0, 100, simulated=True)], source="Direct")
    status = s.to_status()
    assert status["simulated"] is True and status["source"] == "Direct (simulated)"
    assert EnergyState.from_status(status).source == "Direct"


def test_history_is_bounded():
    s = EnergyState()
    for t in range(HISTORY_MAX_POINTS * 3):
        integrate(s, [sample(t, t * 1000, 100, limit=250.0), sample(t, t * 1000, 100, gpu="GPU-1", limit=300.0)],
                  source="Prometheus")
    assert len(s.history) <= HISTORY_MAX_POINTS
    times = [p[0] for p in s.history]
    assert times == sorted(times) and times[-1] == HISTORY_MAX_POINTS * 3 - 1
    assert s.history[-1][2] == 300.0  # the highest limit the GPUs reported
    integrate(s, [sample(HISTORY_MAX_POINTS * 3, 0, 100)], source="Prometheus")
    assert s.history[-1][2] is None  # none reported: unknown, not the last one


def test_garbage_status_is_tolerated():
    s = EnergyState.from_status({"joules": "x", "series": {"a": "b"}, "history": [1, [1, 2]]})
    assert s.joules == 0 and s.series == {} and s.history == []


readings = st.lists(
    st.tuples(
        st.floats(min_value=0.1, max_value=30),  # time step
        st.one_of(st.none(), st.floats(min_value=0, max_value=1e12)),  # counter (may jump down: resets)
        st.one_of(st.none(), st.floats(min_value=0, max_value=2000)),  # watts
        st.sampled_from(["GPU-0", "GPU-1"]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(readings, st.booleans())
def test_energy_never_decreases(steps, restart_midway):
    s = EnergyState()
    t = 0.0
    last = 0.0
    for i, (dt, mj, w, gpu) in enumerate(steps):
        t += dt
        integrate(s, [sample(t, mj, w, gpu=gpu)], source="Prometheus", intensity_grams_per_kwh=300)
        assert s.joules >= last and s.grams_co2e >= 0
        assert math.isfinite(s.joules)
        last = s.joules
        if restart_midway and i == len(steps) // 2:
            s = EnergyState.from_status(s.to_status())
            assert math.isclose(s.joules, last, rel_tol=1e-9, abs_tol=1e-3)
            last = s.joules


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=700), min_size=2, max_size=60), st.floats(min_value=0.5, max_value=15))
def test_counters_match_ground_truth_exactly(powers, dt):
    """With counters the integral is exact whatever the power curve (what the 1% target rests on)."""
    s = EnergyState()
    counter_mj = 0.0
    truth = 0.0
    for i, w in enumerate(powers):
        if i:
            counter_mj += w * dt * 1000
            truth += w * dt
        integrate(s, [sample(i * dt, counter_mj, w)], source="Prometheus")
    assert math.isclose(s.joules, truth, rel_tol=1e-9, abs_tol=1e-6)


# --- series identity: pod UID x GPU UUID ------------------------------------------------------------------


def owned(t, mj, *, uid, start=None, pod="j-worker-0", gpu="GPU-UUID-1", w=None):
    return GpuSample("ns", pod, gpu, float(t), power_watts=w, energy_mj=mj, uid=uid, pod_start_seconds=start)


def test_a_same_name_pod_on_the_same_gpu_is_another_series_whose_first_reading_is_its_baseline():
    # a gang restart: the job's j-worker-0 is re-created (new UID) on the GPU the old one used
    s = EnergyState()
    integrate(s, [owned(0, 1_000_000, uid="uid-a", start=-5)], source="Prometheus")
    integrate(s, [owned(100, 5_000_000, uid="uid-a", start=-5)], source="Prometheus")  # X: the old pod's last
    assert s.joules == 4000.0
    # 200 s later the new pod's first reading: the GPU's counter went on (another job, idle); none of it is ours
    integrate(s, [owned(300, 9_000_000, uid="uid-b", start=290)], source="Prometheus")
    assert s.joules == 4000.0
    integrate(s, [owned(315, 12_000_000, uid="uid-b", start=290)], source="Prometheus")
    assert s.joules == 7000.0
    assert set(s.series) == {"uid-a/GPU-UUID-1", "uid-b/GPU-UUID-1"}
    assert (s.series["uid-b/GPU-UUID-1"].since_seconds, s.series["uid-b/GPU-UUID-1"].pod) == (300, "j-worker-0")
    # persisted compactly, the pod's name beside the key, and read back as it was
    status = s.to_status()["series"]
    assert status["uid-b/GPU-UUID-1"] == {
        "t": 315.0,
        "since": 300.0,
        "counterMillijoules": 12_000_000,
        "watts": None,
        "pod": "j-worker-0",
    }
    assert EnergyState.from_status(s.to_status()).series == s.series


def legacy_status(t=100.0, counter=5_000_000, key="j-worker-0/GPU-UUID-1"):
    """status.energy as the release before UID keys wrote it (keys <pod>/<GPU>, no pod field)."""
    return {
        "joules": 4000.0,
        "coveredSeconds": 100.0,
        "lastSampleTime": t,
        "series": {key: {"t": t, "since": 0.0, "counterMillijoules": counter, "watts": 400.0}},
    }


def test_an_old_status_entry_is_taken_over_by_the_pod_that_was_running_when_it_was_last_read():
    s = EnergyState.from_status(legacy_status())
    assert s.series["j-worker-0/GPU-UUID-1"].pod is None
    assert "pod" not in s.to_status()["series"]["j-worker-0/GPU-UUID-1"]  # still recognisable after a restart
    # the operator was upgraded; the pod (started at 50, before the entry's last reading) goes on
    integrate(s, [owned(130, 8_000_000, uid="uid-a", start=50)], source="Prometheus")
    assert s.joules == 7000.0  # nothing lost: the downtime is covered by the counter
    assert set(s.series) == {"uid-a/GPU-UUID-1"} and s.series["uid-a/GPU-UUID-1"].since_seconds == 0.0
    integrate(s, [owned(145, 9_000_000, uid="uid-a", start=50)], source="Prometheus")
    assert s.joules == 8000.0  # and nothing counted twice


def test_an_old_status_entry_of_an_earlier_same_name_pod_is_not_continued():
    # the entry was last read at 100; the pod now named j-worker-0 started at 200: the entry was another pod's
    s = EnergyState.from_status(legacy_status())
    integrate(s, [owned(230, 9_000_000, uid="uid-b", start=200)], source="Prometheus")
    assert s.joules == 4000.0  # a baseline, not the 4000 J of the GPU's counter between the two pods
    assert set(s.series) == {"j-worker-0/GPU-UUID-1", "uid-b/GPU-UUID-1"}
    integrate(s, [owned(245, 10_000_000, uid="uid-b", start=200)], source="Prometheus")
    assert s.joules == 5000.0
    # the old entry gets no further deltas and is forgotten like any series not seen for an hour
    integrate(s, [owned(245 + 3601, 11_000_000, uid="uid-b", start=200)], source="Prometheus")
    assert set(s.series) == {"uid-b/GPU-UUID-1"}


@pytest.mark.parametrize(
    ("uid", "start", "joules"),
    [
        ("uid-a", None, 4000.0),  # the pod's start unknown: nothing proves the entry is its own, a baseline
        ("", 50, 7000.0),  # a source that knows no UIDs keys by name, as before: the entry continues
    ],
)
def test_an_old_status_entry_without_a_pod_start_is_a_baseline(uid, start, joules):
    s = EnergyState.from_status(legacy_status())
    integrate(s, [owned(130, 8_000_000, uid=uid, start=start)], source="Prometheus")
    assert s.joules == joules
