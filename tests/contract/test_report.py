"""etj_contract.report: the workload's report and the control section, round trips, malformed input, the CRD."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

import etj_contract
from etj_contract import names
from etj_contract import report as r
from etj_contract.report import (
    CheckpointAck,
    ControlSection,
    PowerProfile,
    ProfileCandidate,
    StageResult,
    WorkloadReport,
)

ROOT = Path(__file__).resolve().parents[2]
REPORT_CRD = ROOT / "crds" / "efficienttrainingjobreports.yaml"

#: Everything the harness writes (harness.py _status, compression.StageResult.to_status, power.profile_report).
FULL: dict[str, Any] = {
    "epoch": 3,
    "step": 120,
    "samplesPerSecond": 512.25,
    "loss": 0.123456,
    "accuracy": 0.9731,
    "gpuSource": "simulated",
    "powerLimitWatts": 250.0,
    "powerProfile": {
        "chosenWatts": 250,
        "candidates": [
            {"watts": 300, "joulesPerStep": 1.5, "secondsPerStep": 0.02, "cost": 0.75},
            {"watts": 250, "joulesPerStep": 1.2, "secondsPerStep": 0.021, "cost": 0.7},
        ],
        "requestedWatts": 250,
        "requestSeq": 7,
    },
    "checkpoint": {
        "acknowledged": 2, "step": 100, "epoch": 2, "path": "/ckpt/step-100.pt", "time": "2026-01-01T00:00:00Z"
    },
    "stages": [
        {
            "name": "prune-50",
            "applied": True,
            "rolledBack": False,
            "step": 80,
            "epoch": 2,
            "paramsTotal": 1000,
            "paramsNonzeroBefore": 1000,
            "paramsNonzero": 500,
            "sizeBytesBefore": 4000,
            "sizeBytesAfter": 2100,
            "rawSizeBytesBefore": 4096,
            "rawSizeBytesAfter": 4096,
            "serializedFormat": "torch.save(state_dict)+zlib9",
            "accuracyBefore": 0.97,
            "accuracyAfter": 0.965,
            "paramRatio": 2.0,
            "sizeRatio": 1.9048,
        },
        {"name": "int8", "applied": False, "rolledBack": True, "step": 110, "epoch": 3},
    ],
    "stopReason": "StopRequested",
    "updateTime": "2026-01-01T00:00:05Z",
    "stepsTotal": 400,
    "samplesPerStep": 256,
    "communication": {
        "steps": 120,
        "stepSeconds": 2.4,
        "commSeconds": 0.6,
        "bytesSent": 123456789,
        "worldSize": 2,
        "backend": "gloo",
        "since": "2026-01-01T00:00:00Z",
    },
}


def test_the_report_module_is_exported_by_the_package() -> None:
    for name in r.__all__:
        assert getattr(etj_contract, name) is getattr(r, name), name
    assert len(set(etj_contract.__all__)) == len(etj_contract.__all__)


def test_a_full_report_round_trips_exactly() -> None:
    report = WorkloadReport.from_status(copy.deepcopy(FULL))
    assert report.problems == ()
    assert report.to_status() == FULL
    assert WorkloadReport.from_status(report.to_status()) == report
    assert report.step == 120 and report.acknowledged_checkpoint == 2
    assert report.last_kept_stage == "prune-50"
    assert report.checkpoint == CheckpointAck(2, 100, 2, "/ckpt/step-100.pt", "2026-01-01T00:00:00Z")
    assert report.power_profile == PowerProfile(
        250, (ProfileCandidate(300, 1.5, 0.02, 0.75), ProfileCandidate(250, 1.2, 0.021, 0.7)),
        requested_watts=250, request_seq=7,
    )


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"step": 0, "stages": []},
        {"checkpoint": {"acknowledged": 1, "time": "2026-01-01T00:00:00Z"}},  # acknowledged without a directory
        {"checkpoint": {"acknowledged": 1, "step": 3, "epoch": 0, "path": "/c"}},  # as found on resume
        {"powerProfile": {"chosenWatts": None, "candidates": []}},  # still profiling: None is left out
    ],
)
def test_partial_reports_round_trip(status: dict[str, Any]) -> None:
    report = WorkloadReport.from_status(status)
    assert report.problems == ()
    expected = {k: v for k, v in status.items()}
    if "powerProfile" in expected:
        expected["powerProfile"] = {"candidates": []}
    assert report.to_status() == expected


def test_the_harness_writes_what_the_contract_reads() -> None:
    from etj_workload import compression

    stage = compression.StageResult(
        "prune-50", True, False, 10, 1, 100, 50, 400, 210, 409, 409, 0.9, 0.89, "2026-12-01T10:00:00Z", 100
    )
    parsed = WorkloadReport.from_status({names.WORKLOAD_STAGES: [stage.to_status()]})
    assert parsed.problems == ()
    assert parsed.to_status()[names.WORKLOAD_STAGES] == [stage.to_status()]
    assert list(stage.to_status()) == [*r.STAGE_KEYS.values(), r.STAGE_PARAM_RATIO, r.STAGE_SIZE_RATIO]


@pytest.mark.parametrize(
    ("status", "problem", "kept"),
    [
        ({"step": -1, "epoch": 2}, "status.step", {"epoch": 2}),
        ({"step": "12"}, "status.step", {}),
        ({"step": True}, "status.step", {}),
        ({"step": 1.5}, "status.step", {}),
        ({"loss": float("nan")}, "status.loss", {}),
        ({"loss": float("inf")}, "status.loss", {}),
        ({"accuracy": 1.5}, "status.accuracy", {}),
        ({"samplesPerSecond": -3.0}, "status.samplesPerSecond", {}),
        ({"gpuSource": "x" * 65}, "status.gpuSource", {}),
        ({"stopReason": 7}, "status.stopReason", {}),
        ({"checkpoint": "yes"}, "status.checkpoint", {}),
        ({"checkpoint": {"acknowledged": "1", "step": 3}}, "status.checkpoint.acknowledged",
         {"checkpoint": {"step": 3}}),
        ({"checkpoint": {"path": "/" * 4097}}, "status.checkpoint.path", {"checkpoint": {}}),
        ({"stages": {"name": "x"}}, "status.stages", {}),
        ({"stages": [{"name": "a"}, "b"]}, "status.stages[1]", {"stages": [{"name": "a"}]}),
        ({"stages": [{"applied": True}]}, "status.stages[0]", {"stages": []}),
        ({"stages": [{"name": ""}]}, "status.stages[0]", {"stages": []}),
        ({"stages": [{"name": "a", "paramsTotal": -5}]}, "status.stages[0].paramsTotal", {"stages": [{"name": "a"}]}),
        ({"stages": [{"name": "s"}] * 17}, "status.stages", {"stages": [{"name": "s"}] * 16}),
        ({"powerProfile": {"candidates": [{"watts": "lots"}]}}, "status.powerProfile.candidates[0].watts",
         {"powerProfile": {"candidates": [{}]}}),
        ({"powerProfile": {"candidates": [1, {"watts": 5}]}}, "status.powerProfile.candidates[0]",
         {"powerProfile": {"candidates": [{"watts": 5}]}}),
        ({"powerProfile": []}, "status.powerProfile", {}),
    ],
)
def test_a_malformed_field_is_dropped_and_named(status: dict[str, Any], problem: str, kept: dict[str, Any]) -> None:
    report = WorkloadReport.from_status(status)
    assert any(p.startswith(problem + ":") for p in report.problems), report.problems
    assert report.to_status() == kept


@pytest.mark.parametrize("status", [None, [], "report", 3, True])
def test_input_that_is_no_object_gives_an_empty_record(status: Any) -> None:
    report = WorkloadReport.from_status(status)
    assert report.to_status() == {}
    assert report.problems == (() if status is None else (report.problems[0],))
    if status is not None:
        assert report.problems[0].startswith("status: expected an object")


def test_the_path_prefix_names_where_the_report_was_read() -> None:
    report = WorkloadReport.from_status({"step": "x"}, "status.workload")
    assert report.problems[0].startswith("status.workload.step: ")


def _garbage(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [None, True, -1, 0, 7, 1.5, float("nan"), "", "x" * 70, "ok"]
    if depth < 3:
        choices += [
            [_garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))],
            {k: _garbage(rng, depth + 1) for k in rng.sample([*FULL, "name", "watts", "candidates", "acknowledged",
                                                              "applied", "path"], rng.randint(0, 5))},
        ]
    return rng.choice(choices)


def test_random_garbage_never_raises_and_always_gives_a_clean_record() -> None:
    rng = random.Random(12)
    for _ in range(2000):
        raw = _garbage(rng)
        report = WorkloadReport.from_status(raw)
        again = WorkloadReport.from_status(report.to_status())
        assert again == report and again.problems == ()  # what survives parsing is valid
        control = ControlSection.from_status(raw)
        assert ControlSection.from_status(control.to_status()) == control


# ----- the control section ------------------------------------------------------------------------------------


def test_the_control_section_round_trips_with_the_operators_keys() -> None:
    raw = {
        names.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 300,
        names.CONTROL_CHECKPOINT_REQUESTED: 2,
        names.CONTROL_STOP_REQUESTED: True,
        names.CONTROL_STAGE_REQUESTED: "int8",
        names.CONTROL_ENERGY_FRACTION: 0.4,
        names.CONTROL_AUTO_LIMIT_WATTS_PER_GPU: 250,
        names.CONTROL_AUTO_REQUEST_SEQ: 3,
    }
    control = ControlSection.from_status(raw)
    assert control == ControlSection(300, 2, True, "int8", 0.4, 250, 3) and control.problems == ()
    assert control.to_status() == raw
    assert ControlSection().to_status() == {}
    # the operator writes None to clear a cap: absent
    assert ControlSection.from_status({names.CONTROL_POWER_LIMIT_WATTS_PER_GPU: None}) == ControlSection()


def test_a_malformed_control_field_is_dropped_and_named() -> None:
    control = ControlSection.from_status(
        {"powerLimitWattsPerGPU": "lots", "checkpointRequested": True, "stopRequested": "yes", "energyFraction": 0.5}
    )
    assert control == ControlSection(energy_fraction=0.5)
    assert [p.split(":")[0] for p in control.problems] == [
        "status.control.powerLimitWattsPerGPU",
        "status.control.checkpointRequested",
        "status.control.stopRequested",
    ]
    assert ControlSection.from_status([1]).problems == (
        "status.control: expected an object, found a list [1]; ignored",
    )


def test_the_harness_control_state_is_the_contracts_record() -> None:
    from etj_workload.control import ControlState

    assert ControlState is ControlSection


# ----- the report CRD states the same fields and bounds -------------------------------------------------------


@pytest.fixture(scope="module")
def report_crd() -> dict[str, Any]:
    return yaml.safe_load(REPORT_CRD.read_text())


def _status_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["status"]


def test_the_report_crd_is_the_contracts_kind(report_crd: dict[str, Any]) -> None:
    spec = report_crd["spec"]
    assert spec["group"] == names.GROUP and spec["scope"] == "Namespaced"
    assert [v["name"] for v in spec["versions"]] == [names.VERSION]
    assert spec["names"]["kind"] == names.REPORT_KIND
    assert spec["names"]["plural"] == names.REPORT_PLURAL
    assert spec["names"]["singular"] == names.REPORT_SINGULAR
    assert spec["names"]["shortNames"] == [names.REPORT_SHORT_NAME]
    assert report_crd["metadata"]["name"] == f"{names.REPORT_PLURAL}.{names.GROUP}"
    (version,) = spec["versions"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Step", "Epoch", "Age"]


def _walk(schema: dict[str, Any], value: Any, path: str) -> None:
    """Every key of ``value`` is declared by ``schema``, with no preserve-unknown-fields anywhere on the way."""
    assert "x-kubernetes-preserve-unknown-fields" not in schema, path
    if isinstance(value, dict):
        assert schema["type"] == "object", path
        for key, sub in value.items():
            assert key in schema["properties"], f"{path}.{key} is not in the report CRD"
            _walk(schema["properties"][key], sub, f"{path}.{key}")
    elif isinstance(value, list):
        assert schema["type"] == "array" and "maxItems" in schema, path
        for item in value:
            _walk(schema["items"], item, f"{path}[]")
    elif isinstance(value, str):
        assert schema["type"] == "string" and "maxLength" in schema, path


def test_the_crd_declares_every_field_the_contract_writes_and_bounds_it(report_crd: dict[str, Any]) -> None:
    status = _status_schema(report_crd)
    _walk(status, WorkloadReport.from_status(FULL).to_status(), "status")
    assert set(status["properties"]) == set(FULL)
    props = status["properties"]
    assert props["stages"]["maxItems"] == r.MAX_STAGES
    assert props["powerProfile"]["properties"]["candidates"]["maxItems"] == r.MAX_CANDIDATES
    requested = props["powerProfile"]["properties"][r.PROFILE_REQUESTED_WATTS]
    assert (requested["minimum"], requested["maximum"]) == (0, r.MAX_REQUESTED_WATTS)
    assert props["powerProfile"]["properties"][r.PROFILE_REQUEST_SEQ]["minimum"] == 0
    assert props["checkpoint"]["properties"]["path"]["maxLength"] == r.MAX_PATH_LENGTH
    assert props["stages"]["items"]["properties"]["name"]["maxLength"] == r.MAX_NAME_LENGTH
    for key in ("gpuSource", "stopReason", "updateTime"):
        assert props[key]["maxLength"] == r.MAX_TEXT_LENGTH, key
    assert props["checkpoint"]["properties"]["time"]["maxLength"] == r.MAX_TEXT_LENGTH
    derived = {r.STAGE_PARAM_RATIO, r.STAGE_SIZE_RATIO}
    assert set(props["stages"]["items"]["properties"]) == set(r.STAGE_KEYS.values()) | derived
    assert set(props["communication"]["properties"]) == set(r.COMMUNICATION_KEYS.values())
    for key in ("epoch", "step"):
        assert props[key]["minimum"] == 0
    assert (props["accuracy"]["minimum"], props["accuracy"]["maximum"]) == (0, 1)


def test_the_crds_bounds_are_the_contracts(report_crd: dict[str, Any]) -> None:
    """A value just past a CRD bound is dropped by the contract too; one just inside is kept."""
    inside = {"step": 0, "gpuSource": "x" * r.MAX_TEXT_LENGTH,
              "stages": [{"name": "n" * r.MAX_NAME_LENGTH}] * r.MAX_STAGES,
              "checkpoint": {"path": "/" * r.MAX_PATH_LENGTH}, "accuracy": 1.0,
              "powerProfile": {"requestedWatts": r.MAX_REQUESTED_WATTS, "requestSeq": 0}}
    assert WorkloadReport.from_status(inside).problems == ()
    outside = {"step": -1, "gpuSource": "x" * (r.MAX_TEXT_LENGTH + 1),
               "stages": [{"name": "n" * (r.MAX_NAME_LENGTH + 1)}] + [{"name": "s"}] * r.MAX_STAGES,
               "checkpoint": {"path": "/" * (r.MAX_PATH_LENGTH + 1)}, "accuracy": 1.0001,
               "powerProfile": {"requestedWatts": r.MAX_REQUESTED_WATTS + 1, "requestSeq": -1}}
    problems = WorkloadReport.from_status(outside).problems
    for path in ("status.step", "status.gpuSource", "status.stages:", "status.stages[0].name",
                 "status.checkpoint.path", "status.accuracy", "status.powerProfile.requestedWatts",
                 "status.powerProfile.requestSeq"):
        assert any(p.startswith(path) for p in problems), (path, problems)


def test_stage_result_kept() -> None:
    assert StageResult("a", applied=True).kept
    assert not StageResult("a", applied=True, rolled_back=True).kept
    assert not StageResult("a").kept


def test_stage_ratios_are_derived_from_the_counts_never_read() -> None:
    raw = {"name": "p", "paramsNonzeroBefore": 900, "paramsNonzero": 300, "sizeBytesBefore": 10, "sizeBytesAfter": 4}
    stage = WorkloadReport.from_status({"stages": [{**raw, "paramRatio": 99.0, "sizeRatio": 99.0}]}).stages
    assert stage is not None
    assert stage[0].param_ratio == 3.0 and stage[0].size_ratio == 2.5
    out = stage[0].to_status()
    assert out["paramRatio"] == 3.0 and out["sizeRatio"] == 2.5
    # an unknown or zero denominator gives no ratio rather than a division by zero
    assert StageResult(name="q", params_nonzero_before=5, params_nonzero=0).param_ratio is None
    assert "paramRatio" not in StageResult(name="q", params_nonzero=5).to_status()


def test_communication_fraction_is_bounded_and_unknown_before_any_step() -> None:
    assert r.CommunicationStats().fraction is None
    assert r.CommunicationStats(step_seconds=2.0, comm_seconds=0.5).fraction == 0.25
    assert r.CommunicationStats(step_seconds=1.0, comm_seconds=3.0).fraction == 1.0
    bad = WorkloadReport.from_status({"communication": {"stepSeconds": -1, "worldSize": 0, "bytesSent": "x"}})
    assert bad.communication == r.CommunicationStats()
    assert len(bad.problems) == 3
