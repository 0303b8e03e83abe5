"""Mode Auto through the node agent: the operator's answer to the harness's request, a clamp of advice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from etj_contract import ControlSection, PlacementSection, PolicySection, PowerProfile, WorkloadReport
from etj_contract import names as n
from etj_operator.autolimit import AUTO_LIMIT_CLAMPED, AUTO_LIMIT_IGNORED, answer_auto_request
from etj_operator.energy import EnergyState
from etj_operator.jobpass import PassObservation, decide_pass
from etj_operator.models import parse_spec
from etj_operator.policies import PolicyInputs, decide

from jobs import job_manifest

RANGE = {"min_watts": 200, "max_watts": 700}


def answer(request, seq=1, control=None, mode="Auto", problems=()):
    profile = None if request is None and seq is None else PowerProfile(requested_watts=request, request_seq=seq)
    return answer_auto_request(mode, control or ControlSection(), profile, problems, **RANGE)


@pytest.mark.parametrize(
    ("requested", "throttle", "expected"),
    [
        (450, None, 450),  # within the range: as asked
        (650, 400, 400),  # over the operator's throttle: the throttle
        (150, None, 200),  # below the range: the floor
        (9000, None, 700),  # above the range: the top
        (150, 250, 200),  # below the floor with a throttle: the floor, still under the throttle
    ],
)
def test_the_request_is_clamped_into_the_range_and_under_the_throttle(requested, throttle, expected):
    control, events = answer(requested, control=ControlSection(power_limit_watts_per_gpu=throttle))
    assert control.auto_limit_watts_per_gpu == expected and control.auto_request_seq == 1
    assert control.power_limit_watts_per_gpu == throttle  # the throttle itself is not the answer's to change
    if expected == requested:
        assert events == []
    else:
        assert [e.reason for e in events] == [AUTO_LIMIT_CLAMPED]
        assert f"{requested} W" in events[0].message and f"{expected} W" in events[0].message


def test_a_clamped_request_is_named_once_not_on_every_pass():
    control, events = answer(900)
    assert len(events) == 1
    again, events = answer(900, control=control)  # the next pass: the same request, answered already
    assert again == control and events == []
    _, events = answer(950, seq=2, control=control)  # a new request: named again
    assert [e.reason for e in events] == [AUTO_LIMIT_CLAMPED]


def test_a_throttle_that_arrives_moves_the_answer_on_the_next_pass():
    control, _ = answer(600)
    capped, events = answer(600, control=ControlSection(power_limit_watts_per_gpu=350, auto_limit_watts_per_gpu=600,
                                                        auto_request_seq=1))
    assert control.auto_limit_watts_per_gpu == 600 and capped.auto_limit_watts_per_gpu == 350
    assert events == []  # the request was answered before: no Event per pass


def test_a_malformed_request_is_ignored_and_named():
    """What the report's parse dropped: the answer in force stays, one Warning names the problem."""
    raw = {n.WORKLOAD_POWER_PROFILE: {"requestedWatts": "lots", "requestSeq": 4}}
    report = WorkloadReport.from_status(raw)
    assert report.power_profile is not None and report.power_profile.requested_watts is None
    before = ControlSection(auto_limit_watts_per_gpu=500, auto_request_seq=3)
    control, events = answer_auto_request("Auto", before, report.power_profile, report.problems, **RANGE)
    assert control.auto_limit_watts_per_gpu == 500 and control.auto_request_seq == 4
    assert [e.reason for e in events] == [AUTO_LIMIT_IGNORED] and "requestedWatts" in events[0].message
    assert events[0].type == "Warning"
    _, events = answer_auto_request("Auto", control, report.power_profile, report.problems, **RANGE)
    assert events == []
    # above the CRD's bound (10000 W): dropped by the parse, so ignored the same way
    huge = WorkloadReport.from_status({n.WORKLOAD_POWER_PROFILE: {"requestedWatts": 10**9, "requestSeq": 5}})
    control, events = answer_auto_request("Auto", control, huge.power_profile, huge.problems, **RANGE)
    assert control.auto_limit_watts_per_gpu == 500 and [e.reason for e in events] == [AUTO_LIMIT_IGNORED]


def test_no_request_answers_nothing_and_other_modes_clear_the_answer():
    assert answer(None, seq=None)[0].auto_limit_watts_per_gpu is None
    withdrawn, events = answer(None, seq=3, control=ControlSection(auto_limit_watts_per_gpu=400, auto_request_seq=3))
    assert withdrawn.auto_limit_watts_per_gpu is None and events == []
    fixed, _ = answer(400, mode="Fixed", control=ControlSection(auto_limit_watts_per_gpu=400, auto_request_seq=3))
    assert fixed == ControlSection()


def _inputs(report, control=None, **power):
    sp = parse_spec(job_manifest(energy={"power": {"mode": "Auto", **power}})["spec"], "digits")
    return PolicyInputs(
        spec=sp, energy=EnergyState(joules=0.0, current_watts=0.0), now_seconds=1000.0,
        control=control or ControlSection(), policy=PolicySection(), placement=PlacementSection(), workload=report,
        fresh_telemetry=False, telemetry_ok=False, gpu_count=2,
    )


def test_the_policies_write_the_answer_into_status_control():
    report = WorkloadReport(power_profile=PowerProfile(requested_watts=480, request_seq=2))
    out = decide(_inputs(report))
    assert out.control.auto_limit_watts_per_gpu == 480 and out.control.auto_request_seq == 2
    capped = decide(_inputs(report, ControlSection(power_limit_watts_per_gpu=300), budgetWatts=600))
    assert capped.control.auto_limit_watts_per_gpu == 300
    assert [e.reason for e in capped.events if e.reason.startswith("AutoLimit")] == [AUTO_LIMIT_CLAMPED]


def test_a_job_pass_reads_the_request_from_the_report_and_a_finished_job_answers_nothing():
    body = job_manifest(energy={"power": {"mode": "Auto"}})
    body["metadata"]["uid"] = "uid-1"
    body["status"] = {"phase": "Running"}
    report = {"status": {n.WORKLOAD_POWER_PROFILE: {"requestedWatts": 420, "requestSeq": 1}}}
    result = decide_pass(PassObservation(body=body, pods=[], now=datetime(2026, 1, 1, tzinfo=UTC), report=report))
    control = result.plan.status[n.CONTROL]
    assert control[n.CONTROL_AUTO_LIMIT_WATTS_PER_GPU] == 420 and control[n.CONTROL_AUTO_REQUEST_SEQ] == 1
    assert result.plan.status[n.WORKLOAD][n.WORKLOAD_POWER_PROFILE]["requestedWatts"] == 420  # the mirror
    body["status"] = {**result.plan.status, "phase": "Succeeded"}
    ended = decide_pass(PassObservation(body=body, pods=[], now=datetime(2026, 1, 1, tzinfo=UTC), report=report))
    assert n.CONTROL_AUTO_LIMIT_WATTS_PER_GPU not in ended.plan.status.get(n.CONTROL, {})
