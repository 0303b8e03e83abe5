"""Step-time overhead of the harness vs. a bare DDP loop, 2 ranks (gloo, CPU), with a confidence interval.

Each rank trains one DDP model (all-reduced by DDP's built-in allreduce) in two arms that take turns: *bare*
steps, and *harness* steps, the same steps between a :class:`Harness`'s ``step_begin``/``step_end``. The harness
reads DDP's runtime statistics for its report's communication section at every publish
(``etj_workload.commtiming``: communication reading ON, as in a pod; ``--no-comm-timing`` switches it off). Both
arms train the same model object: an earlier version gave each arm its own copy, and a run with *both* arms bare
(an A/A run) then came out 1.3 % apart with an interval excluding 1 (the two copies' memory, not the code, made
the difference). The harness installs nothing on the model, so the bare steps run as bare as before.

The run is a sequence of pairs of blocks, each pair one block of bare steps and one of harness steps, their
order alternating from pair to pair (AB, BA, AB, ...), so that drift (CPU frequency, the other rank's
scheduling) falls on both arms. The control poll (an all-gather, the report built and published) comes about
every ``--poll-seconds`` of the harness arm's own time, as in a pod (rank 0 picks its step; :class:`ArmClock`),
so a harness block holds a poll or not: the
figure is the ratio of the arms' total times over all pairs (every poll counted once), with a 95 %
percentile-bootstrap interval over pairs (the pairs resampled, 10,000 times, seeded). Printed beside it: the
median of the pairs' ratios, and rank 0's process CPU time ratio (``time.process_time``).

Each rank is pinned to its own core (``--no-pin`` to leave them to the scheduler): on a 2-core VM that cut the
pair ratios' spread in an A/A run by a third. The harness runs as in a pod: simulated GPU (accounting only, no
slowdown sleeping), Unmanaged power, control poll about every second (the operator's default; ``--poll-seconds
0 --poll-steps N``: every N steps), no metrics endpoint; rank 0's control channel talks to an in-memory job
API (:class:`MemoryJobApi`: no network, the channel's thread and rate limits as in a pod), so every poll builds
and publishes the report, communication section included. Only rank 0's clock is used; the ranks are in
lockstep through the allreduces. ``--profile FILE`` runs rank 0's measured pairs under cProfile and writes its
statistics there (for finding the overhead, not for the figure).

Usage: .venv/bin/python bench/harness_overhead.py [--pairs 300 --block-steps 40 --width 512 --no-comm-timing]
       [--poll-seconds 1.0 | --poll-seconds 0 --poll-steps 10] [--no-pin]
Ends with ``name: value`` lines: ``harness_step_time_ratio`` (target <= 1.01) and its
``harness_step_time_ratio_ci_low`` / ``harness_step_time_ratio_ci_high``.
"""

from __future__ import annotations

import argparse
import cProfile
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

#: per block: (wall seconds per step, process CPU seconds per step), bare and harness; the communication stats and
#: the number of control polls in the measured pairs
Result = tuple[list[tuple[float, float]], list[tuple[float, float]], dict[str, object]]


class ArmClock:
    """A clock that runs only while the harness arm runs: the harness's own (``Harness(clock=...)``).

    The control poll's interval is worked out from the wall time per step since the last poll. Here half of the
    wall time is the bare arm's, which a pod does not have: on the plain wall clock the harness would see its
    steps twice as long as they are and poll twice as often as in a pod. On this clock it sees its own steps
    only, and polls as a pod at this step time would.
    """

    def __init__(self) -> None:
        self.banked = 0.0
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop(self) -> None:
        if self.started is not None:
            self.banked += time.perf_counter() - self.started
            self.started = None

    def __call__(self) -> float:
        running = 0.0 if self.started is None else time.perf_counter() - self.started
        return self.banked + running


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
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) >= world:
        os.sched_setaffinity(0, {cpus[rank]})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DistributedDataParallel(SyntheticMlp(width=args.width, depth=args.depth))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 256)
    y = torch.randint(0, 10, (args.batch,))

    def one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss: torch.Tensor = loss_fn(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return loss

    clock = ArmClock()
    harness = Harness(
        model,
        optimizer,
        clock=clock,
        evaluate=lambda m: 0.0,
        steps_per_epoch=10**9,
        samples_per_step=args.batch * world,
        env=HarnessEnv(
            control_poll_steps=args.poll_steps,
            control_poll_seconds=args.poll_seconds,
            comm_timing=not args.no_comm_timing,
        ),
        gpu=SimulatedGpu(index=rank),
        job_api=MemoryJobApi() if rank == 0 else None,
        install_signal_handlers=False,
    )
    harness.train_begin()
    harness.epoch_begin(0)
    polls = [0]  # the measured pairs' control polls
    poll_seconds = [0.0]  # ... and rank 0's time in them
    hook_seconds = [0.0]  # rank 0's time in step_begin and step_end (the polls included)
    poll = harness.poll_control

    def counted_poll() -> None:
        polls[0] += 1
        start = time.perf_counter()
        poll()
        poll_seconds[0] += time.perf_counter() - start


    def bare_block() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.block_steps):
            one_step(model, optimizer)
        n = args.block_steps
        return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n

    def harness_block() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        clock.start()
        for _ in range(args.block_steps):
            t0 = time.perf_counter()
            harness.step_begin()
            t1 = time.perf_counter()
            loss = one_step(model, optimizer)
            t2 = time.perf_counter()
            harness.step_end(loss)
            hook_seconds[0] += time.perf_counter() - t2 + t1 - t0
        clock.stop()
        n = args.block_steps
        return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n

    for _ in range(args.warmup_pairs):
        bare_block()
        harness_block()
    harness.poll_control = counted_poll  # type: ignore[method-assign]
    hook_seconds[0] = 0.0
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
    info: dict[str, object] = {
        "comm": harness.status().get("communication", {}),
        "polls": polls[0],
        "poll_seconds": poll_seconds[0],
        "hook_seconds": hook_seconds[0],
    }
    harness.close()
    if rank == 0:
        queue.put((bare, with_harness, info))
    dist.destroy_process_group()


def bootstrap_ratio_ci(
    numerators: list[float], denominators: list[float], *, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``sum(numerators) / sum(denominators)``, the pairs resampled."""
    rng = random.Random(seed)
    n = len(numerators)
    ratios = []
    for _ in range(resamples):
        picks = rng.choices(range(n), k=n)
        ratios.append(sum(numerators[i] for i in picks) / sum(denominators[i] for i in picks))
    ratios.sort()
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--warmup-pairs", type=int, default=3)
    parser.add_argument("--block-steps", type=int, default=40)
    parser.add_argument(
        "--poll-seconds", type=float, default=1.0,
        help="the control poll interval (ETJ_CONTROL_POLL_SECONDS; pods: 1); 0: every --poll-steps steps",
    )
    parser.add_argument("--poll-steps", type=int, default=10, help="ETJ_CONTROL_POLL_STEPS, with --poll-seconds 0")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--no-comm-timing", action="store_true", help="the harness arm without reading DDP's statistics"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin each rank to its own core")
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
    bare, with_harness, info = queue.get(timeout=1800)
    for p in procs:
        p.join()
    bare_times = [b[0] for b in bare]
    harness_times = [h[0] for h in with_harness]
    ratios = [h / b for h, b in zip(harness_times, bare_times, strict=True)]
    ratio = sum(harness_times) / sum(bare_times)
    low, high = bootstrap_ratio_ci(harness_times, bare_times)
    cpu_ratio = sum(h[1] for h in with_harness) / max(1e-12, sum(b[1] for b in bare))
    if args.ratios_file:
        Path(args.ratios_file).write_text("".join(f"{r:.5f}\n" for r in ratios))
    timing = "off" if args.no_comm_timing else "on"
    polls = int(info["polls"])  # type: ignore[call-overload]
    harness_steps = args.pairs * args.block_steps
    cadence = f"about every {args.poll_seconds:g} s" if args.poll_seconds > 0 else f"every {args.poll_steps} steps"
    print(f"model: SyntheticMlp width={args.width} depth={args.depth} batch/rank={args.batch}, 2 ranks gloo CPU")
    print(
        f"pairs: {args.pairs} of {args.block_steps}-step blocks (alternating order), ranks "
        f"{'pinned to a core each' if args.pin else 'not pinned'}, communication reading {timing}"
    )
    print(
        f"control polls: {polls} in {harness_steps} harness steps (one every {harness_steps / max(1, polls):.0f}), "
        f"{cadence}"
    )
    print(f"communication (both arms' steps: one model): {info['comm']}")
    hooks, in_polls = float(info["hook_seconds"]), float(info["poll_seconds"])  # type: ignore[arg-type]
    print(
        f"rank 0 inside the harness: {hooks / harness_steps * 1e6:.1f} us a step, of which the polls "
        f"{in_polls / harness_steps * 1e6:.1f} us ({in_polls / max(1, polls) * 1e3:.2f} ms a poll); "
        f"the steps' other hooks {(hooks - in_polls) / harness_steps * 1e6:.1f} us"
    )
    print(f"harness_direct_time_ratio: {1 + hooks / (statistics.median(bare_times) * harness_steps):.4f} "
          "(rank 0's time inside the harness's calls over the bare step time)")
    print(f"pair_ratio_stdev: {statistics.stdev(ratios):.4f}")
    print(f"pair_ratio_median: {statistics.median(ratios):.4f}")
    print(f"harness_cpu_time_ratio: {cpu_ratio:.4f} (rank 0's process CPU time, total over pairs)")
    print(f"bare_step_ms_median: {statistics.median(bare_times) * 1e3:.3f}")
    print(f"harness_step_ms_median: {statistics.median(harness_times) * 1e3:.3f}")
    print(f"harness_step_time_ratio: {ratio:.4f}")
    print(f"harness_step_time_ratio_ci_low: {low:.4f}")
    print(f"harness_step_time_ratio_ci_high: {high:.4f}")


if __name__ == "__main__":
    main()
