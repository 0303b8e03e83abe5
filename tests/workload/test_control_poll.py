"""The control poll: its wire format (a row of floats per rank), in process with scripted peers, on 2 gloo ranks."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import nn
from workload_support import FakeClock, run_script_ranks

from etj_workload.config import HarnessEnv, parse_compression_plan
from etj_workload.control import ControlState, decide
from etj_workload.distributed import LocalOps
from etj_workload.gpu import GpuReading, SimulatedGpu
from etj_workload.harness import (
    LOSS_FOLD,
    POLL_CONTROL_FIELDS,
    POLL_FIELDS,
    Harness,
    PollRow,
    decode_poll,
    encode_poll,
    next_poll_interval,
)

STAGES = ("prune-a", "prune-b", "int8")
PLAN = json.dumps(
    {"stages": [{"name": name, "trigger": {"epoch": 99}, "prune": {"amount": 0.1}} for name in STAGES[:2]]}
)
FULL_CONTROL = ControlState(
    power_limit_watts_per_gpu=410,
    checkpoint_requested=7,
    stop_requested=True,
    stage_requested="prune-b",
    energy_fraction=0.625,
    auto_limit_watts_per_gpu=395,
    auto_request_seq=12,
)


def round_trip(row: PollRow, stages: Sequence[str] = STAGES) -> PollRow:
    values = encode_poll(row, stages)
    assert len(values) == len(POLL_FIELDS)
    return decode_poll(values, stages)


def test_the_row_carries_every_field_of_the_control_state() -> None:
    # a field added to ControlState must be added to the wire too, or the other ranks would never see it
    carried = {f.name for f in dataclasses.fields(ControlState)} - {"problems"}
    assert set(POLL_CONTROL_FIELDS) == carried


def test_a_full_row_round_trips() -> None:
    row = PollRow(sigterm=True, gpu=(312_000, 2**50 + 3, 700_000), control=FULL_CONTROL, next_poll_steps=80)
    assert round_trip(row) == row


def test_none_travels_as_nan_and_comes_back_as_none() -> None:
    row = PollRow(sigterm=False, gpu=None, control=None)
    values = encode_poll(row, STAGES)
    assert values[0] == 0.0 and all(math.isnan(v) for v in values[1:5]) and values[POLL_FIELDS.index("control")] == 0.0
    assert round_trip(row) == row
    empty = PollRow(sigterm=False, gpu=(0, 0, 0), control=ControlState())
    assert round_trip(empty) == empty
    assert encode_poll(empty, STAGES)[POLL_FIELDS.index("stage_requested")] == -1.0


def test_an_unknown_stage_reads_as_none_and_decides_the_same() -> None:
    sent = dataclasses.replace(FULL_CONTROL, stage_requested="not-in-the-plan")
    received = round_trip(PollRow(sigterm=False, gpu=None, control=sent)).control
    assert received == dataclasses.replace(sent, stage_requested=None)
    known = frozenset(STAGES)
    for done in (frozenset(), frozenset({"prune-a"})):
        kwargs: dict[str, Any] = {"acknowledged_checkpoint": 3, "done_stages": done, "known_stages": known}
        assert decide(received, **kwargs) == decide(sent, **kwargs)
    # a known stage keeps its name; a plan without stages has none to name
    assert round_trip(PollRow(False, None, FULL_CONTROL)).control == FULL_CONTROL
    assert round_trip(PollRow(False, None, FULL_CONTROL), stages=()).control == dataclasses.replace(
        FULL_CONTROL, stage_requested=None
    )


def test_a_row_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="poll row"):
        decode_poll([0.0] * (len(POLL_FIELDS) - 1), STAGES)


def test_local_ops_gathers_its_own_row() -> None:
    assert LocalOps().all_gather_floats([1, 2.5, math.inf]) == [[1.0, 2.5, math.inf]]


# --- rank 1 of a world of 3, the other ranks scripted -----------------------------------------------------------
LONG_HOST = "node-" + "x" * 240 + ".cluster.local"


class ScriptedOps(LocalOps):
    """Rank 1 of 3: the collectives return the scripted peers' parts, this rank's own in its place."""

    rank = 1
    world_size = 3

    def __init__(self, identities: list[Any], rows: list[list[float]]) -> None:
        self.identities, self.rows = identities, rows
        self.gathers: list[str] = []

    def all_gather_object(self, obj: Any) -> list[Any]:
        self.gathers.append("object")
        return [self.identities[0], obj, self.identities[2]]

    def all_gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        self.gathers.append("floats")
        self.sent = [float(v) for v in values]
        return [self.rows[0], self.sent, self.rows[2]]


def scripted_harness(ops: ScriptedOps, host: str, poll_seconds: float = 0.0) -> Harness:
    harness = Harness(
        nn.Linear(4, 2),
        None,
        evaluate=lambda m: 0.0,
        steps_per_epoch=10,
        samples_per_step=8,
        env=HarnessEnv(
            control_poll_steps=1, control_poll_seconds=poll_seconds, compression=parse_compression_plan(PLAN)
        ),
        gpu=SimulatedGpu(index=1),
        dist_ops=ops,
        install_signal_handlers=False,
    )
    harness._host = host
    return harness


def test_peer_readings_control_and_sigterm_come_from_the_rows() -> None:
    gpu0 = SimulatedGpu(index=0).reading()
    identities = [
        (LONG_HOST, 0, gpu0.uuid, gpu0.name, gpu0.source),
        None,
        (LONG_HOST[:-1] + "X", 2, "GPU-2", "m", "nvml"),
    ]
    control = ControlState(power_limit_watts_per_gpu=500, stage_requested="prune-a")
    rows = [
        encode_poll(PollRow(False, (250_000, 9_000, 600_000), control), STAGES),
        [],
        encode_poll(PollRow(False, (1, 2, 3), None), STAGES),
    ]
    ops = ScriptedOps(identities, rows)
    with scripted_harness(ops, LONG_HOST) as harness:
        harness.poll_control()
        # rank 0 on this (long-named) host is a peer; rank 2, whose host differs in its last letter, is not
        assert harness._peer_readings == [
            dataclasses.replace(gpu0, power_mw=250_000, energy_mj=9_000, power_limit_mw=600_000)
        ]
        assert harness.control == control
        assert harness.gpu.power_limit_mw() == 500_000
        assert "prune-a" in harness.compression.done and not harness.should_stop
        # the identities are gathered once; then one float gather per poll
        rows[2] = encode_poll(PollRow(True, None, None), STAGES)  # rank 2 got SIGTERM
        harness.poll_control()
        assert harness.should_stop and harness.stop_reason == "SIGTERM"
        assert ops.gathers == ["object", "floats", "floats"]


def test_a_peer_without_a_reading_is_left_out() -> None:
    gpu0 = SimulatedGpu(index=0).reading()
    identities = [("h", 0, gpu0.uuid, gpu0.name, gpu0.source), None, ("h", 2, "GPU-2", "m", "simulated")]
    rows = [encode_poll(PollRow(False, None, None), STAGES), [], encode_poll(PollRow(False, (5, 6, 7), None), STAGES)]
    with scripted_harness(ScriptedOps(identities, rows), "h") as harness:
        harness.poll_control()
        assert harness._peer_readings == [GpuReading(2, "GPU-2", "m", "simulated", 5, 6, 7)]
        assert harness.control == ControlState()  # rank 0 sent no control: the state stays as it was


# --- time-based polling: rank 0 picks the step of the next poll ---------------------------------------------------
def test_the_interval_is_about_the_poll_seconds_at_the_measured_step_time() -> None:
    assert next_poll_interval(1.0, 64, 64 * 0.0125) == 80  # 12.5 ms steps: a poll a second
    assert next_poll_interval(1.0, 8, 8 * 0.0125) == 16  # ... reached by doubling, from a first poll at step 1
    assert next_poll_interval(1.0, 1, 0.0125) == 2
    assert next_poll_interval(1.0, 10, 10 * 3.0) == 1  # 3 s steps: every step
    assert next_poll_interval(1.0, 4, 1.0) == 4  # exactly a second: the same interval again
    assert next_poll_interval(1.0, 0, 0.0) == 1 and next_poll_interval(1.0, 5, 0.0) == 1  # nothing measured


def test_every_rank_polls_at_the_step_rank_0_chose() -> None:
    gpu0 = SimulatedGpu(index=0).reading()
    identities = [("h", 0, gpu0.uuid, gpu0.name, gpu0.source), None, ("h", 2, "GPU-2", "m", "simulated")]
    rows = [
        encode_poll(PollRow(False, None, None, next_poll_steps=7), STAGES),
        [],
        encode_poll(PollRow(False, None, None), STAGES),
    ]
    ops = ScriptedOps(identities, rows)
    with scripted_harness(ops, "h", poll_seconds=1.0) as harness:
        assert harness.poll_due(1)  # the first step's end: a first poll at once
        harness.step = 3
        harness.poll_control()
        # rank 1 sent no choice of its own (NaN): it is rank 0's, the next poll 7 steps on
        assert math.isnan(ops.sent[POLL_FIELDS.index("next_poll_steps")])
        assert [s for s in range(4, 14) if harness.poll_due(s)] == [10, 11, 12, 13]
        harness.step = 10
        rows[0] = encode_poll(PollRow(False, None, None), STAGES)  # a row without a choice: the next step
        harness.poll_control()
        assert not harness.poll_due(10) and harness.poll_due(11)


def test_on_a_steady_step_time_the_polls_space_out_to_the_poll_seconds() -> None:
    clock = FakeClock()
    harness = Harness(
        nn.Linear(4, 2), None, evaluate=lambda m: 0.0, steps_per_epoch=10**6, samples_per_step=8,
        env=HarnessEnv(control_poll_seconds=1.0), gpu=SimulatedGpu(index=0), install_signal_handlers=False,
        clock=clock,
    )
    polled: list[int] = []
    poll = harness.poll_control
    harness.poll_control = lambda: (polled.append(harness.step), poll())[1]  # type: ignore[method-assign]
    with harness:
        harness.train_begin()
        harness.epoch_begin(0)
        for _ in range(400):
            harness.step_begin()
            clock.advance(0.0125)  # 12.5 ms steps
            harness.step_end(0.0)
    # doubling from the first step's end, then every 80 steps: 80 x 12.5 ms = 1 s
    assert polled == [1, 3, 7, 15, 31, 63, 127, 207, 287, 367]


def test_without_poll_seconds_the_poll_is_every_n_steps() -> None:
    harness = Harness(
        nn.Linear(4, 2), None, evaluate=lambda m: 0.0, steps_per_epoch=10, samples_per_step=8,
        env=HarnessEnv(control_poll_steps=4), gpu=SimulatedGpu(index=0), install_signal_handlers=False,
    )
    with harness:
        assert [s for s in range(1, 13) if harness.poll_due(s)] == [4, 8, 12]


# --- a real 2-rank gloo world ------------------------------------------------------------------------------------
WORKER = r"""
import json, math, sys
import torch
import torch.distributed as dist
from torch import nn

from etj_workload.config import HarnessEnv, parse_compression_plan
from etj_workload.control import ControlChannel
from etj_workload.distributed import TorchDistOps
from etj_workload.gpu import SimulatedGpu
from etj_workload.harness import Harness

out, plan = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
ops = TorchDistOps()
gathered = ops.all_gather_floats([float(rank), math.nan, 2.0**53])


class Api:
    def read_control(self):
        return {"powerLimitWattsPerGPU": 450, "stageRequested": "prune-b", "checkpointRequested": 2}

    def patch_workload(self, workload):
        pass


h = Harness(nn.Linear(4, 2), None, evaluate=lambda m: 0.0, steps_per_epoch=100, samples_per_step=8,
            env=HarnessEnv(control_poll_steps=1, compression=parse_compression_plan(plan)),
            gpu=SimulatedGpu(index=rank), install_signal_handlers=False)
if rank == 0:
    h.channel = ControlChannel(Api(), min_patch_interval_seconds=0.0, min_read_interval_seconds=0.0)
polls = []
for _ in range(200):  # until rank 0's channel has read the control (every rank decides from the same row)
    h.poll_control()
    done = torch.tensor([float(h.control.power_limit_watts_per_gpu is not None)])
    dist.all_reduce(done, op=dist.ReduceOp.MIN)
    if done.item() == 1.0:
        break
    import time; time.sleep(0.01)
first = {"control": h.control.to_status(), "done": sorted(h.compression.done),
         "limit_mw": h.gpu.power_limit_mw(), "peers": [g.as_dict() for g in h._peer_readings],
         "own": h.gpu.reading().as_dict(), "ack": h.acknowledged_checkpoint}
if rank == 1:
    h._sigterm = True
h.poll_control()
result = {"gathered": [[None if math.isnan(v) else v for v in r] for r in gathered], "first": first,
          "stop_reason": h.stop_reason}
h.close()
with open(f"{out}.{rank}", "w") as f:
    json.dump(result, f)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("poll") / "result"
    return run_script_ranks(WORKER, out, PLAN)


def test_gloo_gathers_one_row_per_rank_nan_included(two_ranks: list[dict[str, Any]]) -> None:
    for result in two_ranks:
        assert result["gathered"] == [[0.0, None, 2.0**53], [1.0, None, 2.0**53]]


def test_both_ranks_obey_rank_0s_control_and_a_sigterm_on_rank_1(two_ranks: list[dict[str, Any]]) -> None:
    first0, first1 = two_ranks[0]["first"], two_ranks[1]["first"]
    assert (
        first0["control"]
        == first1["control"]
        == {
            "powerLimitWattsPerGPU": 450,
            "stageRequested": "prune-b",
            "checkpointRequested": 2,
        }
    )
    for first in (first0, first1):
        assert first["done"] == ["prune-b"] and first["limit_mw"] == 450_000 and first["ack"] == 2
    # rank 0 serves no metrics, so sends no reading; rank 1's reaches rank 0 (same host)
    assert first1["peers"] == []
    peer = first0["peers"][0]
    assert len(first0["peers"]) == 1 and peer["index"] == 1 and peer["uuid"] == first1["own"]["uuid"]
    assert [r["stop_reason"] for r in two_ranks] == ["SIGTERM", "SIGTERM"]


TIMED_WORKER = r"""
import json, sys, time
import torch.distributed as dist
from torch import nn

from etj_workload.config import HarnessEnv
from etj_workload.gpu import SimulatedGpu
from etj_workload.harness import Harness

out = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
h = Harness(nn.Linear(4, 2), None, evaluate=lambda m: 0.0, steps_per_epoch=1000, samples_per_step=8,
            # rank 1's setting differs (in pods it is the same): only rank 0's choice may count
            env=HarnessEnv(control_poll_steps=1, control_poll_seconds=1.0 if rank == 0 else 0.1),
            gpu=SimulatedGpu(index=rank), install_signal_handlers=False)
polls = []
poll = h.poll_control
h.poll_control = lambda: (polls.append(h.step), poll())[1]
h.train_begin()
h.epoch_begin(0)
for _ in range(60):
    h.step_begin()
    time.sleep(0.02)
    h.step_end(0.0)
h.close()
with open(f"{out}.{rank}", "w") as f:
    json.dump({"polls": polls}, f)
dist.barrier()
dist.destroy_process_group()
"""


def test_two_ranks_poll_at_the_steps_rank_0_chose(tmp_path) -> None:
    polls = [r["polls"] for r in run_script_ranks(TIMED_WORKER, tmp_path / "timed")]
    assert polls[0] == polls[1]
    assert polls[0][:2] == [1, 3] and len(polls[0]) < 60  # a poll at once, then rank 0 spaces them out


def test_the_reported_loss_is_the_mean_of_the_interval_s_steps() -> None:
    harness = Harness(
        nn.Linear(4, 2), None, evaluate=lambda m: 0.0, steps_per_epoch=10**6, samples_per_step=8,
        env=HarnessEnv(control_poll_steps=10**6), gpu=SimulatedGpu(index=0), install_signal_handlers=False,
    )
    with harness:
        harness.train_begin()
        for value in range(LOSS_FOLD + 10):  # past one fold: the kept losses are summed once on the way
            harness.step_begin()
            harness.step_end(torch.tensor(float(value), requires_grad=True) * 1.0)
        harness.step_begin()
        harness.step_end(5.0)  # a plain float counts too
        harness.step_begin()
        harness.step_end(torch.tensor([1.0], dtype=torch.float16))  # another dtype and shape: summed on the host
        harness.poll_control()
        n = LOSS_FOLD + 10
        assert harness.status()["loss"] == pytest.approx((n * (n - 1) / 2 + 5.0 + 1.0) / (n + 2), abs=1e-6)
        harness.step_begin()
        harness.step_end(torch.tensor(2.0))
        harness.poll_control()
        assert harness.status()["loss"] == 2.0  # the next interval starts afresh
        harness.poll_control()
        assert harness.status()["loss"] == 2.0  # an interval without a step keeps the last mean
