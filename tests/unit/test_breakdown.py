"""The energy breakdown (etj_operator.breakdown, etj_contract.EnergyBreakdown): measured energy split by the
harness's timing windows, nothing guessed, the parts always adding up to the total; the modelled network figure."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etj_contract import (
    BREAKDOWN_BASIS,
    CommunicationStats,
    EnergyBreakdown,
    EnergySection,
    HarnessBaseline,
    NetworkModel,
)
from etj_operator.breakdown import (
    INTER_NODE_PJ_PER_BIT,
    INTRA_NODE_PJ_PER_BIT,
    Topology,
    attribute,
    interval_fraction,
    network_joules,
    network_model,
)

SINCE = "2026-12-01T10:00:00Z"
TWO_PODS = Topology(pods=2, ranks_per_pod=4)


def comm(step: float | None, comm_s: float | None, sent: int | None = None, since: str | None = SINCE):
    return CommunicationStats(steps=1, step_seconds=step, comm_seconds=comm_s, bytes_sent=sent, world_size=8,
                              backend="nccl", since=since)


def run(stream, *, topology=TWO_PODS, restart_operator=False):
    """Feed ``(joules_added, communication)`` pairs through ``attribute`` as passes would; the breakdown read
    back from its status between passes when ``restart_operator`` (what a restarted operator sees)."""
    total, breakdown = 0.0, None
    for added, stats in stream:
        before, total = total, total + added
        breakdown = attribute(breakdown, joules_before=before, joules_after=total, communication=stats,
                              topology=topology)
        if restart_operator:
            breakdown = EnergyBreakdown.from_status(breakdown.to_status())
    return total, breakdown


def test_energy_is_split_by_the_communication_time_of_the_same_interval():
    # pass 1 sets the baseline (its energy has no interval of timing); pass 2: 10 s of steps, 2 s communicating
    total, b = run([(100.0, comm(5.0, 4.0)), (50.0, comm(15.0, 6.0))])
    assert b.unattributed_joules == 100.0
    assert b.communication_joules == pytest.approx(10.0) and b.compute_joules == pytest.approx(40.0)
    assert b.total_joules == pytest.approx(total)
    assert b.communication_fraction == pytest.approx(0.2)
    assert b.baseline == HarnessBaseline(since=SINCE, step_seconds=15.0, comm_seconds=6.0)


def test_an_interval_without_timing_is_unattributed_never_guessed():
    _, b = run([(10.0, comm(1.0, 0.5)), (20.0, None), (30.0, comm(None, None, sent=100)), (40.0, comm(1.0, 0.5))])
    # no report; a report without timing; then timing again, but no step time passed since the baseline
    assert b.compute_joules == 0.0 and b.communication_joules == 0.0
    assert b.unattributed_joules == 100.0
    assert b.communication_fraction is None  # unknown, not 0
    assert b.to_status()["unattributedJoules"] == 100.0 and "communicationFraction" not in b.to_status()


def test_a_report_missing_for_a_while_keeps_the_baseline():
    _, b = run([(10.0, comm(10.0, 1.0)), (5.0, None), (5.0, comm(30.0, 11.0))])
    # the interval 10 s -> 30 s of steps, 10 s communicating: the last 5 J split half and half
    assert b.unattributed_joules == 15.0
    assert b.communication_joules == pytest.approx(2.5) and b.compute_joules == pytest.approx(2.5)


def test_a_restarted_harness_starts_its_differences_from_its_new_values():
    stream = [
        (10.0, comm(100.0, 50.0, sent=1000)),
        (10.0, comm(110.0, 51.0, sent=1500)),  # 10 % communication: 1 J
        # a new process (another since) whose counts start again: its first interval has no timing of its own
        (10.0, comm(4.0, 3.0, sent=200, since="2026-12-01T11:00:00Z")),
        (10.0, comm(14.0, 8.0, sent=700, since="2026-12-01T11:00:00Z")),  # 50 %: 5 J
    ]
    total, b = run(stream)
    assert b.unattributed_joules == 20.0
    assert b.communication_joules == pytest.approx(1.0 + 5.0)
    assert b.compute_joules == pytest.approx(9.0 + 5.0)
    # bytes count from each process's start: 1000 + 500, then the new process's 200 + 500
    assert b.network_bytes == 2200
    assert b.total_joules == pytest.approx(total)


def test_figures_going_backwards_are_a_new_process_even_under_the_same_since():
    stream = [(10.0, comm(100.0, 50.0, sent=1000)), (10.0, comm(5.0, 1.0, sent=300)), (10.0, comm(15.0, 2.0, sent=400))]
    _, b = run(stream)
    assert b.unattributed_joules == 20.0
    assert b.communication_joules == pytest.approx(1.0) and b.compute_joules == pytest.approx(9.0)
    assert b.network_bytes == 1000 + 300 + 100


def test_passes_without_new_energy_do_not_move_the_timing_window():
    # the window of the next energy is the whole span since the last attributed pass: 10 s -> 40 s, 15 s comm
    _, b = run([(10.0, comm(10.0, 0.0)), (0.0, comm(20.0, 10.0)), (0.0, comm(30.0, 10.0)), (6.0, comm(40.0, 15.0))])
    assert b.communication_joules == pytest.approx(3.0) and b.compute_joules == pytest.approx(3.0)


def test_energy_waits_for_the_report_that_closes_its_window():
    # the harness reports less often than the telemetry reads: three passes' energy, one window (10 s, 2 s comm)
    stream = [(10.0, comm(10.0, 1.0)), (5.0, comm(10.0, 1.0)), (5.0, comm(10.0, 1.0))]
    _, waiting = run(stream, restart_operator=True)  # the pending energy survives an operator restart
    assert waiting.pending_joules == 10.0 and waiting.unattributed_joules == 20.0
    assert waiting.to_status()["pendingJoules"] == 10.0
    _, b = run([*stream, (5.0, comm(20.0, 3.0))], restart_operator=True)
    assert b.communication_joules == pytest.approx(3.0) and b.compute_joules == pytest.approx(12.0)
    assert b.unattributed_joules == pytest.approx(10.0) and b.pending_joules == 0.0
    assert "pendingJoules" not in b.to_status()


def test_pending_energy_no_report_closes_stays_unattributed():
    stream = [(10.0, comm(10.0, 1.0)), (5.0, comm(10.0, 1.0)),
              (5.0, comm(2.0, 1.0, since="2026-12-01T11:00:00Z")),  # another process: the old window never closes
              (5.0, comm(12.0, 6.0, since="2026-12-01T11:00:00Z"))]  # the new one's window: 50 %, this pass only
    _, b = run(stream)
    assert b.unattributed_joules == pytest.approx(20.0) and b.pending_joules == 0.0
    assert b.communication_joules == pytest.approx(2.5) and b.compute_joules == pytest.approx(2.5)


def test_energy_measured_before_the_breakdown_existed_is_unattributed():
    b = attribute(None, joules_before=500.0, joules_after=510.0, communication=comm(5.0, 1.0), topology=None)
    assert b.unattributed_joules == 510.0 and b.total_joules == 510.0


def test_an_account_that_started_afresh_restarts_the_breakdown():
    old = EnergyBreakdown(compute_joules=800.0, communication_joules=200.0,
                          baseline=HarnessBaseline(SINCE, 10.0, 2.0))
    b = attribute(old, joules_before=30.0, joules_after=40.0, communication=comm(20.0, 4.0), topology=None)
    assert (b.compute_joules, b.unattributed_joules) == (pytest.approx(8.0), 30.0)
    assert b.communication_joules == pytest.approx(2.0)
    assert b.total_joules == pytest.approx(40.0)


def test_the_modelled_network_figure_is_bytes_times_eight_times_the_energy_per_bit():
    # 2 pods x 4 ranks: a ring over 8 ranks ordered by pod has 2 hops between pods, 6 inside
    model = network_model(TWO_PODS)
    assert model.inter_node_share == 0.25
    assert model.pj_per_bit == pytest.approx(0.25 * INTER_NODE_PJ_PER_BIT + 0.75 * INTRA_NODE_PJ_PER_BIT)
    assert network_joules(10**9, model) == pytest.approx(10**9 * 8 * model.pj_per_bit * 1e-12)
    # one pod: every hop inside it; one rank per pod: every hop between pods
    assert network_model(Topology(1, 8)).inter_node_share == 0.0
    assert network_model(Topology(4, 1)).inter_node_share == 1.0
    assert network_joules(125, NetworkModel(1.0, 3.0, 0.5)) == pytest.approx(125 * 8 * 2.0e-12)
    _, b = run([(1.0, comm(1.0, 0.5, sent=4 * 10**9)), (1.0, comm(2.0, 1.0, sent=10 * 10**9))])
    assert b.network_bytes == 10 * 10**9
    assert b.network_joules_modelled == pytest.approx(10 * 10**9 * 8 * model.pj_per_bit * 1e-12)
    status = b.to_status()
    assert status["modelled"] is True and status["networkModel"]["interNodeShare"] == 0.25
    assert status["networkModel"]["intraNodePicojoulesPerBit"] == INTRA_NODE_PJ_PER_BIT


def test_the_modelled_figure_is_not_part_of_the_measured_total():
    total, b = run([(10.0, comm(1.0, 0.5, sent=10**12)), (10.0, comm(2.0, 1.0, sent=2 * 10**12))])
    assert b.total_joules == pytest.approx(total) and b.network_joules_modelled > 0


def test_without_bytes_or_topology_there_is_no_modelled_figure():
    _, b = run([(10.0, comm(1.0, 0.5)), (10.0, comm(2.0, 1.0))])
    assert b.network_bytes is None and b.network_joules_modelled is None
    assert {"networkBytes", "networkJoulesModelled", "modelled"}.isdisjoint(b.to_status())
    _, b = run([(10.0, comm(1.0, 0.5, sent=8)), (10.0, comm(2.0, 1.0, sent=16))], topology=None)
    assert b.network_bytes == 16 and b.network_joules_modelled is None


def test_interval_fraction():
    base = HarnessBaseline(SINCE, 10.0, 2.0)
    assert interval_fraction(base, comm(20.0, 5.0)) == pytest.approx(0.3)
    assert interval_fraction(base, comm(20.0, 40.0)) == 1.0  # overlap counted once at most: capped
    assert interval_fraction(base, comm(10.0, 2.0)) is None  # no step time passed
    assert interval_fraction(HarnessBaseline(SINCE), comm(20.0, 5.0)) is None


def test_the_breakdown_round_trips_through_the_energy_section():
    _, b = run([(10.0, comm(1.0, 0.5, sent=100)), (10.0, comm(2.0, 1.0, sent=300))])
    section = EnergySection(joules=20.0, last_sample_seconds=1.0e9, breakdown=b)
    status = section.to_status()
    assert status["breakdown"]["basis"] == BREAKDOWN_BASIS
    back = EnergySection.from_status(status)
    assert back.problems == () and back.to_status() == status
    assert back.breakdown is not None and back.breakdown.baseline == b.baseline
    assert back.breakdown.network_joules_modelled == pytest.approx(b.network_joules_modelled, rel=1e-9)
    assert back.breakdown.communication_joules == pytest.approx(b.communication_joules, abs=1e-6)


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("junk", "status.energy.breakdown"),
        ({"computeJoules": "many"}, "status.energy.breakdown.computeJoules"),
        ({"communicationJoules": -1}, "status.energy.breakdown.communicationJoules"),
        ({"networkBytes": 1.5}, "status.energy.breakdown.networkBytes"),
        ({"pendingJoules": "some"}, "status.energy.breakdown.pendingJoules"),
        ({"networkModel": {"interNodeShare": 2}}, "status.energy.breakdown.networkModel.interNodeShare"),
        ({"harnessBaseline": {"stepSeconds": float("nan")}}, "status.energy.breakdown.harnessBaseline.stepSeconds"),
        ({"harnessBaseline": []}, "status.energy.breakdown.harnessBaseline"),
    ],
)
def test_a_malformed_breakdown_is_named_and_dropped_never_fatal(raw, path):
    section = EnergySection.from_status({"joules": 10.0, "breakdown": raw})
    assert any(problem.startswith(path) for problem in section.problems), section.problems
    assert section.joules == 10.0
    # what was dropped is unattributed on the next pass: the parts add up again
    after = attribute(section.breakdown, joules_before=10.0, joules_after=12.0, communication=None, topology=None)
    assert after.total_joules == pytest.approx(12.0)


def test_a_breakdown_of_an_unmeasured_account_is_not_written():
    assert "breakdown" not in EnergySection().to_status()


_stats = st.one_of(
    st.none(),
    st.builds(
        comm,
        st.one_of(st.none(), st.floats(0, 1e4)),
        st.one_of(st.none(), st.floats(0, 1e4)),
        st.one_of(st.none(), st.integers(0, 10**12)),
        st.sampled_from([SINCE, "2026-12-01T11:00:00Z", None]),
    ),
)
_added = st.one_of(st.just(0.0), st.floats(0, 1e6))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_added, _stats), max_size=40), st.booleans())
def test_the_parts_always_add_up_to_the_measured_total(stream, restart_operator):
    total, b = run(stream, restart_operator=restart_operator)
    if b is None:
        return
    assert b.total_joules == pytest.approx(total, rel=1e-9, abs=1e-5)
    assert min(b.compute_joules, b.communication_joules, b.unattributed_joules, b.pending_joules) >= 0
    assert b.pending_joules <= b.unattributed_joules + 1e-9
    fraction = b.communication_fraction
    assert fraction is None or 0.0 <= fraction <= 1.0
    if b.network_bytes is not None:
        assert b.network_bytes >= 0


def test_the_pass_writes_the_breakdown_of_the_energy_it_integrated():
    """decide_pass end to end, with a handwritten report: the harness's timing, then none (a harness without it)."""
    from datetime import UTC, datetime, timedelta

    from etj_operator.jobpass import PassObservation, decide_pass
    from etj_operator.lifecycle import PodView
    from etj_operator.telemetry.base import GpuSample, JobTelemetry

    from jobs import job_manifest

    t0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    body = job_manifest()
    uid = body["metadata"]["uid"]
    workers = [PodView(f"digits-worker-{i}", i, 0, "Running", node_name=f"node-{i}", uid=f"pod-{i}", owner_uid=uid,
                       start_time="2026-12-01T11:59:00Z") for i in range(body["spec"]["replicas"])]

    def telemetry(at: float) -> JobTelemetry:
        t = (t0 + timedelta(seconds=at)).timestamp()
        samples = [GpuSample("default", p.name, f"GPU-{p.index}", t, power_watts=500.0, uid=p.uid, node=p.node_name)
                   for p in workers]
        return JobTelemetry(1, t, "Prometheus", samples, ok=True)

    def report(step_s: float | None, comm_s: float | None) -> dict:
        timing = {"stepSeconds": step_s, "commSeconds": comm_s, "bytesSent": 8 * 10**9, "worldSize": 2,
                  "since": "2026-12-01T11:59:30Z"}
        return {"status": {"step": 10, "communication": {k: v for k, v in timing.items() if v is not None}}}

    written = None
    energies = []
    for at, rep in ((0, report(1.0, 0.1)), (10, report(11.0, 2.1)), (20, report(None, None)), (30, None)):
        result = decide_pass(PassObservation(body=body, pods=workers, now=t0 + timedelta(seconds=at),
                                             last_written=written, report=rep, telemetry=telemetry(at)))
        written = {k: v for k, v in result.plan.status.items()}
        energies.append(written["energy"])
    first, second, third, fourth = energies
    # the first reading is a baseline: 0 J measured (known), so 0 J in each part
    assert first["joules"] == 0.0 and first["breakdown"]["computeJoules"] == 0.0
    split = second["breakdown"]
    gpus = len(workers)
    # 10 s x 500 W x GPUs, 20 % of the interval's step time communicating
    assert split["communicationJoules"] == pytest.approx(0.2 * 5000.0 * gpus)
    assert split["computeJoules"] == pytest.approx(0.8 * 5000.0 * gpus)
    assert split["unattributedJoules"] == 0.0 and split["communicationFraction"] == pytest.approx(0.2)
    assert split["modelled"] is True and split["networkBytes"] == 8 * 10**9
    # then a report without timing, then no report: unattributed, and the parts still add up to the total
    for energy in (third, fourth):
        parts = energy["breakdown"]
        assert parts["computeJoules"] + parts["communicationJoules"] + parts["unattributedJoules"] == pytest.approx(
            energy["joules"])
    assert fourth["breakdown"]["unattributedJoules"] == pytest.approx(2 * 5000.0 * gpus)


def _samples(name: str) -> dict[tuple[str, ...], float]:
    from etj_operator import metrics

    return {
        tuple(sample.labels.values()): sample.value
        for family in metrics.JOB_STATUS.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_the_breakdown_is_exported_from_the_status_and_unknown_has_no_series():
    from etj_operator import metrics

    _, b = run([(10.0, comm(1.0, 0.5, sent=10**9)), (10.0, comm(2.0, 0.75, sent=2 * 10**9))])  # 25 %
    measured = {"energy": EnergySection(joules=20.0, last_sample_seconds=1.0e9, breakdown=b).to_status()}
    metrics.export_job("ns-breakdown", "split", measured)
    metrics.export_job("ns-breakdown", "none", {"energy": EnergySection(source="Prometheus").to_status()})
    try:
        assert _samples(metrics.COMPUTE_JOULES)[("ns-breakdown", "split")] == pytest.approx(7.5)
        assert _samples(metrics.COMMUNICATION_JOULES)[("ns-breakdown", "split")] == pytest.approx(2.5)
        network = _samples(metrics.NETWORK_JOULES_MODELLED)
        assert network[("ns-breakdown", "split")] == pytest.approx(b.network_joules_modelled)
        for name in (metrics.COMPUTE_JOULES, metrics.COMMUNICATION_JOULES, metrics.NETWORK_JOULES_MODELLED):
            assert ("ns-breakdown", "none") not in _samples(name)
    finally:
        metrics.forget_job("ns-breakdown", "split")
        metrics.forget_job("ns-breakdown", "none")
