"""DDP's communication statistics (etj_workload.commtiming) and the report's step plan and communication section."""

import json
from pathlib import Path
from typing import Any

import pytest
from workload_support import run_script_ranks

import etj_contract as contract
from etj_contract import CommunicationStats
from etj_workload import commtiming as ct
from etj_workload.config import ConfigError, HarnessEnv, parse_comm_timing
from etj_workload.trainer import TrainConfig, run

_KEYS = contract.report.COMMUNICATION_KEYS


# --- the arithmetic, from fake logging data --------------------------------------------------------------------
def logging_data(**overrides: Any) -> dict[str, Any]:
    """What DDP's ``_get_ddp_logging_data()`` holds after a few sampled iterations (the keys used, and others)."""
    data: dict[str, Any] = {
        "backend_name": "gloo",
        "world_size": 4,
        "iteration": 10,
        "bucket_sizes": "1000",
        "rebuilt_bucket_sizes": "600, 400",
        "avg_backward_comm_time": 2_000_000,  # 2 ms
        "avg_backward_compute_time": 5_000_000,
        "module_name": "Sequential",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_ring_allreduce_bytes_is_two_w_minus_one_times_the_bucket() -> None:
    assert ct.ring_allreduce_bytes(1000, 1) == 0
    assert ct.ring_allreduce_bytes(1000, 2) == 2000
    assert ct.ring_allreduce_bytes(1000, 4) == 6000  # 2 (W-1)/W per rank, times W ranks
    assert ct.ring_allreduce_bytes(4 * 2**20, 8) == 14 * 4 * 2**20


def test_bucket_bytes_prefers_the_rebuilt_buckets() -> None:
    assert ct.bucket_bytes(logging_data()) == 1000
    assert ct.bucket_bytes(logging_data(bucket_sizes="273448, 66560", rebuilt_bucket_sizes="")) == 340008
    assert ct.bucket_bytes(logging_data(bucket_sizes="7", rebuilt_bucket_sizes="3,4,5")) == 12
    for bad in ("", "a, b", "-1", 17):
        with pytest.raises(ct.CommUnavailable, match="bucket_sizes"):
            ct.bucket_bytes(logging_data(bucket_sizes=bad, rebuilt_bucket_sizes=None))
    with pytest.raises(ct.CommUnavailable, match="no 'bucket_sizes'"):
        ct.bucket_bytes({"world_size": 2})


def test_estimate_scales_ddp_s_sampled_average_by_the_timed_steps() -> None:
    stats = ct.estimate(logging_data(), steps=50, step_seconds=0.5, since="2026-01-01T00:00:00Z")
    assert stats is not None
    assert stats.steps == 50 and stats.step_seconds == pytest.approx(0.5)
    assert stats.comm_seconds == pytest.approx(50 * 0.002)
    assert stats.bytes_sent == 50 * 2 * 3 * 1000  # steps x 2 (W-1) x the buckets' bytes
    assert (stats.world_size, stats.backend, stats.since) == (4, "gloo", "2026-01-01T00:00:00Z")
    assert stats.fraction == pytest.approx(0.2)
    # an average from warm-up iterations above the steps' wall time: capped at it
    capped = ct.estimate(logging_data(avg_backward_comm_time=10**9), steps=2, step_seconds=0.5, since="t")
    assert capped is not None and capped.comm_seconds == pytest.approx(0.5) and capped.fraction == 1.0


def test_estimate_is_none_while_there_is_nothing_to_report() -> None:
    assert ct.estimate(logging_data(), steps=0, step_seconds=0.0, since="t") is None
    # DDP's first sample comes at its second forward: before it, no average and iteration 0
    assert (
        ct.estimate(logging_data(avg_backward_comm_time=None, iteration=0), steps=1, step_seconds=1.0, since="t")
        is None
    )
    assert ct.estimate(logging_data(avg_backward_comm_time=0), steps=3, step_seconds=1.0, since="t") is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"comm_hook": "allreduce_hook"}, "hook"),
        ({"avg_backward_comm_time": None}, "no 'avg_backward_comm_time'"),  # sampled, yet no average
        ({"avg_backward_comm_time": None, "iteration": None}, "no 'avg_backward_comm_time'"),
        ({"avg_backward_comm_time": "2 ms"}, "not a count"),
        ({"avg_backward_comm_time": -5}, "not a count"),
        ({"world_size": None}, "no 'world_size'"),
        ({"backend_name": None}, "no 'backend_name'"),
        ({"bucket_sizes": None, "rebuilt_bucket_sizes": None}, "no 'bucket_sizes'"),
    ],
)
def test_estimate_refuses_what_it_cannot_vouch_for(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(ct.CommUnavailable, match=reason):
        ct.estimate(logging_data(**overrides), steps=5, step_seconds=1.0, since="t")


class FakeDdp:
    """DDP's logging-data call, scripted: the readings it returns in turn, or an exception."""

    def __init__(self, *readings: Any) -> None:
        self.readings = list(readings)
        self.calls = 0
        self._comm_hooks: list[Any] = []

    def _get_ddp_logging_data(self) -> Any:
        self.calls += 1
        reading = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        if isinstance(reading, Exception):
            raise reading
        return reading


def test_the_reader_waits_for_the_first_sample_then_reports(caplog: pytest.LogCaptureFixture) -> None:
    model = FakeDdp(logging_data(avg_backward_comm_time=None, iteration=0), logging_data())
    reader = ct.DdpCommReader(model, since="t")
    assert reader.stats(1, 0.1) is None and reader.unavailable is None  # not sampled yet: no section, no warning
    stats = reader.stats(10, 1.0)
    assert stats is not None and stats.comm_seconds == pytest.approx(0.02) and stats.bytes_sent == 10 * 6000
    assert not caplog.records


@pytest.mark.parametrize(
    "model",
    [
        object(),  # a torch whose DDP has no _get_ddp_logging_data
        FakeDdp(RuntimeError("logger must not be None")),
        FakeDdp(["not", "a", "dict"]),
        FakeDdp(logging_data(comm_hook="fp16_compress_hook")),
        FakeDdp(logging_data(bucket_sizes="?", rebuilt_bucket_sizes=None)),
    ],
    ids=["no-api", "raises", "not-a-dict", "hook", "malformed"],
)
def test_the_reader_switches_off_once_and_logs_once(model: Any, caplog: pytest.LogCaptureFixture) -> None:
    reader = ct.DdpCommReader(model, since="t")
    assert reader.stats(5, 1.0) is None
    assert reader.unavailable
    calls = getattr(model, "calls", 0)
    assert reader.stats(6, 1.0) is None and getattr(model, "calls", 0) == calls  # not read again
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "communication section off" in warnings[0].getMessage()


def test_a_python_hook_registered_later_switches_the_reader_off() -> None:
    model = FakeDdp(logging_data())
    reader = ct.DdpCommReader(model, since="t")
    assert reader.stats(5, 1.0) is not None
    model._comm_hooks.append(("hook", None))  # DDP lists a register_comm_hook hook there before the name is read
    assert reader.stats(6, 1.0) is None and reader.unavailable is not None and "hook" in reader.unavailable


def test_comm_timing_switch_parses() -> None:
    assert parse_comm_timing(None) and parse_comm_timing("") and parse_comm_timing("true")
    assert not parse_comm_timing("false") and not parse_comm_timing("0")
    assert HarnessEnv.from_env({"ETJ_COMM_TIMING": "false"}).comm_timing is False
    assert HarnessEnv.from_env({}).comm_timing is True
    with pytest.raises(ConfigError, match="ETJ_COMM_TIMING"):
        parse_comm_timing("sometimes")


# --- the step plan of the ready trainer (one process) -------------------------------------------------------
def test_trainer_reports_the_step_plan_bounded_by_stop_after_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETJ_SIMULATED_SLEEP", "0")
    result_file = tmp_path / "result.json"
    config = TrainConfig(model="digits-mlp", epochs=3, batch_size=64, result_file=str(result_file), stop_after_steps=7)
    assert run(config, env=HarnessEnv(gpu_backend="simulated")) == 0
    status = json.loads(result_file.read_text())["status"]
    assert status[contract.WORKLOAD_STEPS_TOTAL] == 7  # 3 epochs x 23 steps, bounded by the stop
    assert status[contract.WORKLOAD_SAMPLES_PER_STEP] == 64
    assert contract.WORKLOAD_COMMUNICATION not in status  # one process: no DDP, nothing to time
    config = TrainConfig(model="digits-mlp", epochs=1, batch_size=64, result_file=str(result_file))
    assert run(config, env=HarnessEnv(gpu_backend="simulated")) == 0
    assert json.loads(result_file.read_text())["status"][contract.WORKLOAD_STEPS_TOTAL] == 23  # ceil(1437/64)


# --- a real 2-rank gloo DDP world ------------------------------------------------------------------------------
WORKER = r"""
import json, sys
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from etj_workload.config import HarnessEnv
from etj_workload.gpu import SimulatedGpu
from etj_workload.harness import Harness

out, steps = sys.argv[1], int(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()


def build() -> nn.Module:
    torch.manual_seed(0)
    # large enough for DDP to make several buckets (bucket_cap_mb below), small enough to be fast
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def harness(model: nn.Module, **env: object) -> Harness:
    return Harness(model, None, evaluate=lambda m: 0.0, steps_per_epoch=steps, samples_per_step=16 * 2,
                   env=HarnessEnv(control_poll_steps=4, **env), gpu=SimulatedGpu(index=rank),
                   install_signal_handlers=False, steps_total=steps)


def train(h: Harness, model: nn.Module, n: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h.train_begin()
    h.epoch_begin(0)
    for _ in range(n):
        x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
        opt.zero_grad()
        h.step_begin()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        h.step_end(loss)
    h.train_end()


model = DistributedDataParallel(build(), bucket_cap_mb=0.1)
h = harness(model)
torch.manual_seed(1 + rank)  # each rank its own data: the allreduce has something to average
train(h, model, steps)
status = h.status()
data = model._get_ddp_logging_data()
h.close()

hooked = DistributedDataParallel(build())
hooked.register_comm_hook(None, allreduce_hook)  # the user's own hook: the section is left out
h_hooked = harness(hooked)
train(h_hooked, hooked, 3)
h_off = harness(DistributedDataParallel(build()), comm_timing=False)
result = {
    "status": status,
    "reader": h.comm_reader is not None,
    "hooks": len(model._comm_hooks),
    "comm_hook_name": data.get("comm_hook", ""),
    "bucket_sizes": data.get("rebuilt_bucket_sizes") or data["bucket_sizes"],
    "hooked_status": h_hooked.status(),
    "hooked_off": h_hooked.comm_reader is not None and h_hooked.comm_reader.unavailable is not None,
    "off_reader": h_off.comm_reader is not None,
}
h_hooked.close()
h_off.close()
with open(f"{out}.{rank}", "w") as f:
    json.dump(result, f)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def two_rank_world(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("comm") / "result"
    return run_script_ranks(WORKER, out, "12")


def test_ddp_keeps_its_own_allreduce(two_rank_world: list[dict[str, Any]]) -> None:
    # no hook registered: the gradients are DDP's own, bit for bit, on every rank
    for result in two_rank_world:
        assert result["hooks"] == 0 and not result["comm_hook_name"]


def test_the_report_carries_communication_and_the_step_plan(two_rank_world: list[dict[str, Any]]) -> None:
    status = two_rank_world[0]["status"]
    assert status[contract.WORKLOAD_STEPS_TOTAL] == 12
    assert status[contract.WORKLOAD_SAMPLES_PER_STEP] == 32
    comm = CommunicationStats(**{a: status[contract.WORKLOAD_COMMUNICATION][k] for a, k in _KEYS.items()})
    assert comm.steps == 12
    assert comm.world_size == 2 and comm.backend == "gloo" and comm.since
    assert comm.comm_seconds is not None and comm.step_seconds is not None
    assert 0.0 < comm.comm_seconds <= comm.step_seconds  # communication happens inside the steps
    # 64x256 + 256 + 256x256 + 256 + 256x10 + 10 float32 gradients in DDP's buckets, 2 (W-1) = 2 times, every step
    params = 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    buckets = [int(b) for b in two_rank_world[0]["bucket_sizes"].split(",")]
    assert len(buckets) > 1 and sum(buckets) == 4 * params
    assert comm.bytes_sent == 12 * 2 * (2 - 1) * sum(buckets)
    # the contract reads it back as written
    assert contract.WorkloadReport.from_status(status).communication == comm
    # only rank 0 reads and reports
    assert two_rank_world[0]["reader"] is True and two_rank_world[1]["reader"] is False
    assert contract.WORKLOAD_COMMUNICATION not in two_rank_world[1]["status"]


def test_a_user_hook_or_the_switch_leaves_the_section_out(two_rank_world: list[dict[str, Any]]) -> None:
    result = two_rank_world[0]
    assert result["hooked_off"] is True
    assert contract.WORKLOAD_COMMUNICATION not in result["hooked_status"]
    assert result["off_reader"] is False


def test_lightning_step_plan_is_max_steps_else_the_finite_estimate() -> None:
    pytest.importorskip("pytorch_lightning")
    from types import SimpleNamespace

    from etj_workload.integrations.lightning import _planned_steps as typed_planned_steps

    planned_steps: Any = typed_planned_steps  # fakes with the two attributes it reads, not Trainers

    class NoEstimate:
        max_steps = -1

        @property
        def estimated_stepping_batches(self) -> float:
            raise RuntimeError("no length")

    assert planned_steps(SimpleNamespace(max_steps=50, estimated_stepping_batches=999)) == 50
    assert planned_steps(SimpleNamespace(max_steps=-1, estimated_stepping_batches=120)) == 120
    assert planned_steps(SimpleNamespace(max_steps=-1, estimated_stepping_batches=float("inf"))) is None
    assert planned_steps(NoEstimate()) is None
