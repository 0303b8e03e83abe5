import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from etj_workload.control import ControlChannel, ControlState, KubernetesJobApi, decide, merge_patch
from etj_workload.kubeclient import ApiError


def test_control_state_parses_and_ignores_malformed_fields() -> None:
    state = ControlState.from_status(
        {
            "powerLimitWattsPerGPU": 300,
            "checkpointRequested": 2,
            "stopRequested": True,
            "stageRequested": "int8",
            "energyFraction": 0.4,
        }
    )
    assert state == ControlState(300, 2, True, "int8", 0.4)
    malformed = ControlState.from_status({"powerLimitWattsPerGPU": "lots", "checkpointRequested": True})
    assert malformed == ControlState()
    assert [p.split(":")[0] for p in malformed.problems] == [
        "status.control.powerLimitWattsPerGPU",
        "status.control.checkpointRequested",
    ]
    assert ControlState.from_status(None) == ControlState()


def test_decide_checkpoints_new_requests_only() -> None:
    kwargs: dict[str, Any] = {"done_stages": frozenset(), "known_stages": frozenset()}
    assert decide(ControlState(checkpoint_requested=3), acknowledged_checkpoint=2, **kwargs).checkpoint_request == 3
    assert decide(ControlState(checkpoint_requested=2), acknowledged_checkpoint=2, **kwargs).checkpoint_request is None
    actions = decide(
        ControlState(power_limit_watts_per_gpu=250, stop_requested=True), acknowledged_checkpoint=0, **kwargs
    )
    assert actions.power_cap_watts == 250 and actions.stop


def test_decide_fires_requested_stages_once_and_never_on_the_energy_fraction_alone() -> None:
    # energyFraction stages are the operator's to trigger: it requests each one through stageRequested.
    known = frozenset({"a", "b", "c"})
    actions = decide(
        ControlState(energy_fraction=0.5, stage_requested="c"),
        acknowledged_checkpoint=0,
        done_stages=frozenset(),
        known_stages=known,
    )
    assert actions.stages == ("c",)
    fraction_only = decide(
        ControlState(energy_fraction=1.0),
        acknowledged_checkpoint=0,
        done_stages=frozenset(),
        known_stages=known,
    )
    assert fraction_only.stages == ()
    again = decide(
        ControlState(stage_requested="c"),
        acknowledged_checkpoint=0,
        done_stages=frozenset({"c"}),
        known_stages=known,
    )
    assert again.stages == ()
    unknown = decide(
        ControlState(stage_requested="zz"),
        acknowledged_checkpoint=0,
        done_stages=frozenset(),
        known_stages=known,
    )
    assert unknown.stages == ()


def test_merge_patch_semantics() -> None:
    base = {"a": {"x": 1, "y": 2}, "b": [1], "c": 3}
    assert merge_patch(base, {"a": {"y": 5}, "b": [2], "c": None}) == {"a": {"x": 1, "y": 5}, "b": [2]}


class FlakyApi:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.patches: list[dict[str, Any]] = []
        self.control: dict[str, Any] = {"powerLimitWattsPerGPU": 300}
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()

    def read_control(self) -> Mapping[str, Any] | None:
        self.gate.wait()
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("API unreachable")
        return self.control

    def patch_workload(self, workload: Mapping[str, Any]) -> None:
        self.gate.wait()
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("API unreachable")
        self.patches.append(dict(workload))


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        time.sleep(0.01)


def test_channel_never_blocks_the_caller_while_the_api_hangs() -> None:
    api = FlakyApi(0)
    api.gate.clear()  # every API call hangs until released
    channel = ControlChannel(api, min_patch_interval_seconds=0.0, min_read_interval_seconds=0.0)
    for step in range(100):
        assert channel.poll() == ControlState()  # stale but immediate
        channel.publish({"step": step})
    api.gate.set()
    wait_for(lambda: channel.poll().power_limit_watts_per_gpu == 300)
    assert channel.close(timeout_seconds=5)
    assert api.patches[-1]["step"] == 99


def test_channel_retries_with_backoff_and_keeps_pending_patches() -> None:
    api = FlakyApi(failures=3)
    channel = ControlChannel(api, min_patch_interval_seconds=0.0, backoff_min_seconds=0.01, backoff_max_seconds=0.05)
    channel.publish({"checkpoint": {"acknowledged": 1}}, urgent=True)
    channel.publish({"step": 5})
    wait_for(lambda: api.patches)
    assert channel.failures == 3
    assert channel.close(timeout_seconds=5)
    merged: dict[str, Any] = {}
    for p in api.patches:
        merge_patch(merged, p)
    assert merged == {"checkpoint": {"acknowledged": 1}, "step": 5}


def test_channel_close_is_bounded_when_the_api_is_down() -> None:
    api = FlakyApi(failures=10**6)
    channel = ControlChannel(api, backoff_min_seconds=0.01, backoff_max_seconds=0.02)
    channel.publish({"step": 1}, urgent=True)
    assert channel.close(timeout_seconds=0.3) is False


def test_kubernetes_job_api_reads_control_and_merge_patches_the_reports_status(
    fake_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(fake_api.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    fake_api.set_control(powerLimitWattsPerGPU=280, checkpointRequested=1)
    api = KubernetesJobApi("job", "ns")
    assert ControlState.from_status(api.read_control()) == ControlState(280, 1)
    api.patch_workload({"step": 7, "checkpoint": {"acknowledged": 1}})
    content_type, body = fake_api.patches[-1]
    assert content_type == "application/merge-patch+json"
    assert body == {"status": {"step": 7, "checkpoint": {"acknowledged": 1}}}  # the report's status, not the job's
    assert fake_api.workload()["step"] == 7
    assert "workload" not in fake_api.obj["status"]


class ScriptedApi:
    """Patches fail with the scripted errors, in order, then succeed; every call is counted."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.patches: list[dict[str, Any]] = []

    def read_control(self) -> Mapping[str, Any] | None:
        return None

    def patch_workload(self, workload: Mapping[str, Any]) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.patches.append(dict(workload))


def calls_at(channel_clock: list[float], api: ScriptedApi, now: float, expected_calls: int) -> None:
    """Set the channel's (fake) clock to ``now`` and check the channel has made exactly ``expected_calls``."""
    channel_clock[0] = now
    wait_for(lambda: api.calls >= expected_calls)
    time.sleep(0.2)  # several turns of the channel's loop (it wakes every 50 ms): no call beyond those
    assert api.calls == expected_calls, (now, api.calls)


def test_channel_retries_on_the_contracts_backoff_schedule() -> None:
    # Backoff(0.5, 30, jitter 0.5) with u = 0.5 from the rng: 0.375 s, then 0.75 s (each ceiling * 0.75).
    clock = [100.0]
    api = ScriptedApi(ConnectionError("refused"), ConnectionError("refused"))
    channel = ControlChannel(api, min_patch_interval_seconds=0.0, clock=lambda: clock[0], rng=lambda: 0.5)
    channel.publish({"step": 1}, urgent=True)
    calls_at(clock, api, 100.0, 1)
    calls_at(clock, api, 100.374, 1)
    calls_at(clock, api, 100.375, 2)
    calls_at(clock, api, 101.124, 2)
    calls_at(clock, api, 101.125, 3)
    assert api.patches == [{"step": 1}] and channel.failures == 2
    assert channel.close(timeout_seconds=5)


def test_channel_waits_at_least_the_servers_retry_after() -> None:
    clock = [100.0]
    throttled = ApiError(429, "TooManyRequests", "slow down", retry_after_seconds=7.0)
    api = ScriptedApi(throttled, ApiError(503, "ServiceUnavailable", "later", retry_after_seconds=3600.0))
    channel = ControlChannel(api, min_patch_interval_seconds=0.0, clock=lambda: clock[0], rng=lambda: 0.0)
    channel.publish({"step": 1}, urgent=True)
    calls_at(clock, api, 100.0, 1)
    calls_at(clock, api, 106.99, 1)  # the backoff alone would have retried at 100.5
    calls_at(clock, api, 107.0, 2)
    calls_at(clock, api, 136.99, 2)  # an hour's Retry-After waits the cap, 30 s
    calls_at(clock, api, 137.0, 3)
    assert api.patches == [{"step": 1}]
    assert channel.close(timeout_seconds=5)
