"""Step-time overhead of the harness vs. a bare DDP loop, 2 ranks (gloo, CPU), in one run.

Each rank alternates blocks of bare steps and harness steps on the same DDP model (interleaving cancels
drift such as CPU frequency changes), then compares median step times. The harness runs as in a pod:
simulated GPU (accounting only, no slowdown sleeping), Unmanaged power, control poll every 10 steps
(an all-gather), no API server, no metrics endpoint.

Usage: .venv/bin/python bench/harness_overhead.py [--blocks 20 --block-steps 20 --width 512]
Ends with ``harness_step_time_ratio: <x>`` (target <= 1.01).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("workloads", "operator")]

from etj_workload.config import HarnessEnv  # noqa: E402
from etj_workload.gpu import SimulatedGpu  # noqa: E402
from etj_workload.harness import Harness  # noqa: E402
from etj_workload.models import SyntheticMlp  # noqa: E402


def worker(
    rank: int, world: int, port: int, args: argparse.Namespace, queue: mp.Queue[tuple[list[float], list[float]]]
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DistributedDataParallel(SyntheticMlp(width=args.width, depth=args.depth))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 256)
    y = torch.randint(0, 10, (args.batch,))

    def one_step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    env = HarnessEnv(control_poll_steps=10)
    harness = Harness(
        model,
        optimizer,
        evaluate=lambda m: 0.0,
        steps_per_epoch=10**9,
        samples_per_step=args.batch * world,
        env=env,
        gpu=SimulatedGpu(index=rank),
        install_signal_handlers=False,
    )
    harness.train_begin()
    harness.epoch_begin(0)
    for _ in range(5):
        one_step()
    bare: list[float] = []
    with_harness: list[float] = []
    for _ in range(args.blocks):
        for _ in range(args.block_steps):
            start = time.perf_counter()
            one_step()
            bare.append(time.perf_counter() - start)
        for _ in range(args.block_steps):
            start = time.perf_counter()
            harness.step_begin()
            loss = one_step()
            harness.step_end(loss)
            with_harness.append(time.perf_counter() - start)
    harness.close()
    if rank == 0:
        queue.put((bare, with_harness))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--block-steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue: mp.Queue[tuple[list[float], list[float]]] = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, 2, port, args, queue)) for r in range(2)]
    for p in procs:
        p.start()
    bare, with_harness = queue.get(timeout=600)
    for p in procs:
        p.join()
    bare_ms, harness_ms = statistics.median(bare) * 1e3, statistics.median(with_harness) * 1e3
    print(f"model: SyntheticMlp width={args.width} depth={args.depth} batch/rank={args.batch}, 2 ranks gloo CPU")
    print(f"steps per variant: {len(bare)}")
    print(f"bare_step_ms_median: {bare_ms:.3f}")
    print(f"harness_step_ms_median: {harness_ms:.3f}")
    print(f"bare_step_ms_mean: {statistics.mean(bare) * 1e3:.3f}")
    print(f"harness_step_ms_mean: {statistics.mean(with_harness) * 1e3:.3f}")
    print(f"harness_step_time_ratio: {harness_ms / bare_ms:.4f}")


if __name__ == "__main__":
    main()
