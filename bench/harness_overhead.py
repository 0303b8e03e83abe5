"""Step-time overhead of the harness vs. a bare DDP loop, 2 ranks (gloo, CPU), with a confidence interval.

Each rank holds two DDP copies of the same model (same initial weights, same batch), both all-reduced by DDP's
built-in allreduce: the *bare* one, and the *harness* one, under a :class:`Harness` that reads DDP's runtime
statistics for its report's communication section at every publish (``etj_workload.commtiming``: communication
reading ON, as in a pod; ``--no-comm-timing`` switches it off). The run
is a sequence of pairs of blocks, each pair one block of bare steps and one of harness steps, their order
alternating from pair to pair (AB, BA, AB, ...), so that drift (CPU frequency, the other rank's scheduling)
falls on both arms. A block's time is the mean of its steps (the mean, not the median: the control poll every
10 steps, an all-gather, is part of the harness's cost: a block holds whole poll intervals). A pair's ratio is
harness block / bare block; the figure is the median of the pairs' ratios (robust to a burst of other load on
the machine hitting one block) with a 95 % percentile-bootstrap interval of that median over pairs (10,000
resamples, seeded); the mean of the ratios with its Student-t interval is printed beside it, and the same
median for rank 0's process CPU time (``time.process_time``: less sensitive to other load on the machine).
The harness runs as in a pod: simulated GPU (accounting only, no slowdown sleeping), Unmanaged power,
control poll every 10 steps (``--poll-steps``), no metrics endpoint; rank 0's control channel talks to an
in-memory job API (:class:`MemoryJobApi`: no network, the channel's thread and rate limits as in a pod), so
every poll builds and publishes the report, communication section included.
Only rank 0's clock is used; the ranks are in lockstep through the allreduces. ``--profile FILE`` runs rank 0's
measured pairs under cProfile and writes its statistics there (for finding the overhead, not for the figure).

Usage: .venv/bin/python bench/harness_overhead.py [--pairs 240 --block-steps 10 --width 512 --no-comm-timing]
       [--poll-steps 10 (1000: blocks without a control poll, to tell the poll's cost from the per-step hooks')]
Ends with ``name: value`` lines: ``harness_step_time_ratio`` (target <= 1.01) and its
``harness_step_time_ratio_ci_low`` / ``harness_step_time_ratio_ci_high``.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import random
import socket
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("workloads", "operator", "contract")]

from etj_workload.config import HarnessEnv  # noqa: E402
from etj_workload.gpu import SimulatedGpu  # noqa: E402
from etj_workload.harness import Harness  # noqa: E402
from etj_workload.models import SyntheticMlp  # noqa: E402

#: t quantiles (two-sided 95 %) for the degrees of freedom used here; large n: the normal's 1.96.
_T975 = {10: 2.228, 20: 2.086, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}

#: per block: (wall seconds per step, process CPU seconds per step), bare and harness; the communication stats
Result = tuple[list[tuple[float, float]], list[tuple[float, float]], dict[str, object]]


class MemoryJobApi:
    """The job's API as the control channel sees it, in memory: no control set, the report merged in."""

    def __init__(self) -> None:
        self.workload: dict[str, Any] = {}
        self.patches = 0

    def read_control(self) -> Mapping[str, Any] | None:
        return {}

    def patch_workload(self, workload: Mapping[str, Any]) -> None:
        self.workload.update(workload)
        self.patches += 1


def worker(rank: int, world: int, port: int, args: argparse.Namespace, queue: mp.Queue[Result]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    def build() -> DistributedDataParallel:
        torch.manual_seed(0)
        return DistributedDataParallel(SyntheticMlp(width=args.width, depth=args.depth))

    bare_model, harness_model = build(), build()
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=1e-3)
    harness_opt = torch.optim.SGD(harness_model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 256)
    y = torch.randint(0, 10, (args.batch,))

    def one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss: torch.Tensor = loss_fn(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return loss

    harness = Harness(
        harness_model,
        harness_opt,
        evaluate=lambda m: 0.0,
        steps_per_epoch=10**9,
        samples_per_step=args.batch * world,
        env=HarnessEnv(control_poll_steps=args.poll_steps, comm_timing=not args.no_comm_timing),
        gpu=SimulatedGpu(index=rank),
        job_api=MemoryJobApi() if rank == 0 else None,
        install_signal_handlers=False,
    )
    harness.train_begin()
    harness.epoch_begin(0)

    def bare_block() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.block_steps):
            one_step(bare_model, bare_opt)
        n = args.block_steps
        return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n

    def harness_block() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.block_steps):
            harness.step_begin()
            loss = one_step(harness_model, harness_opt)
            harness.step_end(loss)
        n = args.block_steps
        return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n

    for _ in range(args.warmup_pairs):
        bare_block()
        harness_block()
    bare: list[tuple[float, float]] = []
    with_harness: list[tuple[float, float]] = []
    profiler = cProfile.Profile() if args.profile and rank == 0 else None
    if profiler is not None:
        profiler.enable()
    for pair in range(args.pairs):
        if pair % 2 == 0:
            bare.append(bare_block())
            with_harness.append(harness_block())
        else:
            with_harness.append(harness_block())
            bare.append(bare_block())
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    comm: dict[str, object] = harness.status().get("communication", {})
    harness.close()
    if rank == 0:
        queue.put((bare, with_harness, comm))
    dist.destroy_process_group()


def bootstrap_median_ci(values: list[float], *, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median of ``values``."""
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def t_mean_ci(values: list[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean of ``values`` (quantile from a small table, conservative)."""
    n = len(values)
    df = n - 1
    quantile = next((q for d, q in sorted(_T975.items()) if df <= d), 1.96)
    half = quantile * statistics.stdev(values) / math.sqrt(n)
    mean = statistics.fmean(values)
    return mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=240)
    parser.add_argument("--warmup-pairs", type=int, default=3)
    parser.add_argument("--block-steps", type=int, default=10, help="a multiple of the poll interval")
    parser.add_argument(
        "--poll-steps", type=int, default=10, help="the control poll interval (ETJ_CONTROL_POLL_STEPS; pods: 10)"
    )
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--no-comm-timing", action="store_true", help="the harness arm without reading DDP's statistics"
    )
    parser.add_argument("--profile", help="write rank 0's cProfile statistics of the measured pairs there")
    parser.add_argument("--ratios-file", help="write the pairs' ratios there, one a line")
    args = parser.parse_args()
    if args.pairs < 2:
        parser.error("--pairs must be at least 2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue: mp.Queue[Result] = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, 2, port, args, queue)) for r in range(2)]
    for p in procs:
        p.start()
    bare, with_harness, comm = queue.get(timeout=900)
    for p in procs:
        p.join()
    ratios = [h[0] / b[0] for h, b in zip(with_harness, bare, strict=True)]
    cpu_ratios = [h[1] / b[1] for h, b in zip(with_harness, bare, strict=True) if b[1] > 0]
    ratio = statistics.median(ratios)
    low, high = bootstrap_median_ci(ratios)
    t_low, t_high = t_mean_ci(ratios)
    if args.ratios_file:
        Path(args.ratios_file).write_text("".join(f"{r:.5f}\n" for r in ratios))
    timing = "off" if args.no_comm_timing else "on"
    print(f"model: SyntheticMlp width={args.width} depth={args.depth} batch/rank={args.batch}, 2 ranks gloo CPU")
    print(
        f"pairs: {args.pairs} of {args.block_steps}-step blocks (alternating order), control poll every "
        f"{args.poll_steps} steps, communication reading {timing}"
    )
    print(f"communication: {comm}")
    print(f"pair_ratio_stdev: {statistics.stdev(ratios):.4f}")
    print(f"harness_step_time_ratio_mean: {statistics.fmean(ratios):.4f} (t interval [{t_low:.4f}, {t_high:.4f}])")
    print(f"harness_cpu_time_ratio: {statistics.median(cpu_ratios):.4f} (rank 0's process CPU time, median of pairs)")
    print(f"bare_step_ms_median: {statistics.median(b[0] for b in bare) * 1e3:.3f}")
    print(f"harness_step_ms_median: {statistics.median(h[0] for h in with_harness) * 1e3:.3f}")
    print(f"harness_step_time_ratio: {ratio:.4f}")
    print(f"harness_step_time_ratio_ci_low: {low:.4f}")
    print(f"harness_step_time_ratio_ci_high: {high:.4f}")


if __name__ == "__main__":
    main()
