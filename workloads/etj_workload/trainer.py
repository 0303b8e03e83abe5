"""The ready trainer behind ``python -m etj_workload train``: the examples' models on real or synthetic data.

It is an ordinary DDP loop that calls the :class:`~etj_workload.harness.Harness` hooks, and doubles as
the reference for wiring the harness into your own loop.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from etj_workload import data as datasets
from etj_workload.config import HarnessEnv
from etj_workload.harness import Harness
from etj_workload.models import build_model

__all__ = ["TrainConfig", "run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Command-line settings of the ready trainer."""

    model: str = "digits-mlp"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    width: int = 1024
    depth: int = 4
    samples: int = 4096
    result_file: str | None = None
    stop_after_steps: int | None = None


def _init_distributed(env: HarnessEnv) -> torch.device:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", env.dist.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if env.dist.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    return device


def _make_evaluate(x: torch.Tensor, y: torch.Tensor, device: torch.device, rank: int, world_size: int) -> Any:
    shard_x, shard_y = x[rank::world_size].to(device), y[rank::world_size].to(device)

    def evaluate(module: nn.Module) -> float:
        logits = module(shard_x)
        counts = torch.tensor(
            [(logits.argmax(dim=1) == shard_y).sum().item(), len(shard_y)], dtype=torch.float64, device=device
        )
        if dist.is_initialized():
            dist.all_reduce(counts)
        return float(counts[0] / counts[1])

    return evaluate


def run(config: TrainConfig, env: HarnessEnv | None = None) -> int:
    """Train as ``config`` says under the harness; return the process exit code."""
    env = env or HarnessEnv.from_env()
    device = _init_distributed(env)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(config.seed)
    if config.model.startswith("digits"):
        data = datasets.digits(seed=config.seed)
    else:
        data = datasets.synthetic(samples=config.samples, seed=config.seed)
    module = build_model(config.model, width=config.width, depth=config.depth).to(device)
    model: nn.Module = module
    if dist.is_initialized():
        model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    steps_per_epoch = datasets.steps_per_epoch(len(data.train_x), config.batch_size, world_size)
    evaluate = _make_evaluate(data.test_x, data.test_y, device, rank, world_size)
    steps_total = config.epochs * steps_per_epoch
    if config.stop_after_steps is not None:
        steps_total = min(steps_total, config.stop_after_steps)
    with Harness(
        model,
        optimizer,
        evaluate=evaluate,
        steps_per_epoch=steps_per_epoch,
        samples_per_step=config.batch_size * world_size,
        env=env,
        stop_after_steps=config.stop_after_steps,
        steps_total=steps_total,
    ) as harness:
        position = harness.train_begin()
        for epoch in range(position.epoch, config.epochs):
            if harness.should_stop:
                break
            harness.epoch_begin(epoch)
            model.train()
            for x, y in datasets.batches(
                data.train_x,
                data.train_y,
                batch_size=config.batch_size,
                epoch=epoch,
                rank=rank,
                world_size=world_size,
                seed=config.seed,
                skip=harness.skip_batches(epoch),
            ):
                harness.step_begin()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                harness.step_end(loss)
                if harness.should_stop:
                    break
            if harness.should_stop:
                break
            harness.epoch_end(epoch)
        harness.train_end()
        if rank == 0:
            log.info("finished: %s", json.dumps(harness.status()))
        if rank == 0 and config.result_file:
            result = {"exitCode": harness.exit_code, "status": harness.status(), "world_size": world_size}
            tmp = config.result_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=2)
            os.replace(tmp, config.result_file)
        exit_code = harness.exit_code
    if dist.is_initialized():
        _teardown()
    return exit_code


#: How long a rank waits for its peers at each step of the teardown before it goes anyway.
TEARDOWN_TIMEOUT_SECONDS = 30.0


def _meet(store: Any, key: str, world_size: int, timeout_seconds: float) -> None:
    """Wait on the rendezvous store until every rank has counted itself in at ``key`` (bounded)."""
    try:
        store.add(key, 1)
        deadline = time.monotonic() + timeout_seconds
        while store.add(key, 0) < world_size:
            if time.monotonic() > deadline:
                log.warning("teardown: not every rank reached %s in %.0f s; going on", key, timeout_seconds)
                return
            time.sleep(0.01)
    except Exception as e:  # the store's host (rank 0) is gone: the others are past this point too
        log.debug("teardown: store unavailable at %s: %r", key, e)


def _teardown(timeout_seconds: float = TEARDOWN_TIMEOUT_SECONDS) -> None:
    """Tear the process group down so that no rank is aborted by gloo.

    A rank that closes its gloo connections while a peer is still inside a collective (the last barrier
    included: one rank leaves it before the other has read the final message) makes gloo's I/O thread throw
    in the peer, and the peer dies with SIGABRT ("terminate called without an active exception"): seen on a
    loaded 2-core machine even with a barrier first. So the ranks also meet on the rendezvous store (TCP,
    hosted by rank 0) once all are past the barrier, destroy their process groups, and meet again before
    exiting, so that rank 0, which hosts the store, leaves last.
    """
    world_size = dist.get_world_size()
    get_store = getattr(dist.distributed_c10d, "_get_default_store", None)
    store = get_store() if get_store is not None and world_size > 1 else None  # kept alive past destroy
    try:
        dist.barrier()
        if store is not None:
            _meet(store, "etj/teardown/past-barrier", world_size, timeout_seconds)
    finally:
        dist.destroy_process_group()
    if store is not None:
        _meet(store, "etj/teardown/destroyed", world_size, timeout_seconds)
