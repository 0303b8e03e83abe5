"""A plain PyTorch DDP training script: it knows nothing of the EfficientTrainingJob project.

No etj import, no metrics endpoint, no report: torch.distributed (nccl on GPUs, gloo on CPU) under torchrun,
a small MLP learning a fixed random teacher on synthetic data. Run it anywhere torchrun runs:

    torchrun --nproc-per-node 2 workloads/examples/foreign_ddp.py --steps 200

workloads/examples/foreign-ddp.yaml runs it as an EfficientTrainingJob (the script comes in a ConfigMap, the
same text as this file): the operator still measures its energy, from dcgm-exporter through Prometheus
(in the sandbox: the node's simulated DCGM exporter), and caps its GPUs through the node agent.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    """Train for ``--steps`` steps on every rank, then leave the process group."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500, help="optimizer steps (each rank)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=512, help="hidden units")
    parser.add_argument("--log-every", type=int, default=250)
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = nn.Sequential(nn.Linear(64, args.width), nn.ReLU(), nn.Linear(args.width, args.width), nn.ReLU(),
                          nn.Linear(args.width, 10)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    teacher = torch.randn(64, 10, generator=torch.Generator().manual_seed(7)).to(device)
    data = torch.Generator().manual_seed(1000 + rank)  # each rank its own shard of the synthetic data

    if rank == 0:
        print(f"foreign DDP: world {world}, backend {dist.get_backend()}, device {device}, {args.steps} steps",
              flush=True)
    started = time.monotonic()
    for step in range(1, args.steps + 1):
        x = torch.randn(args.batch_size, 64, generator=data).to(device)
        y = (x @ teacher).argmax(dim=1)
        loss = F.cross_entropy(ddp(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % args.log_every == 0 or step == args.steps):
            elapsed = time.monotonic() - started
            print(f"step {step} loss {loss.item():.4f} ({step / elapsed:.1f} steps/s)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
