"""The collectives the harness needs, behind a small interface (torch.distributed or a single process)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["DistOps", "LocalOps", "TorchDistOps"]


class DistOps(Protocol):
    """Collectives every rank calls at the same step."""

    rank: int
    world_size: int

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Return every rank's ``obj``, indexed by rank."""

    def all_gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        """Return every rank's ``values`` (the same length on every rank), indexed by rank: one collective."""

    def reduce_window(self, joules: float, seconds: float) -> tuple[float, float]:
        """Return (sum of joules, max of seconds) over ranks."""

    def barrier(self) -> None:
        """Wait for every rank."""


class LocalOps:
    """A world of one."""

    rank = 0
    world_size = 1

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Return ``[obj]``."""
        return [obj]

    def all_gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        """Return ``[values]``, as floats."""
        return [[float(v) for v in values]]

    def reduce_window(self, joules: float, seconds: float) -> tuple[float, float]:
        """Return the input."""
        return joules, seconds

    def barrier(self) -> None:
        """Do nothing."""


class TorchDistOps:
    """torch.distributed collectives on the default process group (gloo or nccl)."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self._torch = torch
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        backend = dist.get_backend()
        self._device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        # newer torch names it all_gather_single (all_gather_into_tensor warns, deprecated); older has only the latter
        self._all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Gather picklable objects from every rank."""
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def all_gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        """Gather one float64 row per rank with a single tensor all-gather (no pickling; on the GPU under nccl).

        Every rank must pass the same number of values; NaN and the infinities travel as they are.
        """
        torch = self._torch
        row = torch.tensor(list(values), dtype=torch.float64, device=self._device)
        out = torch.empty(self.world_size * row.numel(), dtype=torch.float64, device=self._device)
        self._all_gather_single(out, row)  # the ranks' rows concatenated (gloo takes no stacked form)
        rows: list[list[float]] = out.view(self.world_size, row.numel()).tolist()
        return rows

    def reduce_window(self, joules: float, seconds: float) -> tuple[float, float]:
        """All-reduce the window: energy summed, time maxed."""
        energy = self._torch.tensor([joules], dtype=self._torch.float64, device=self._device)
        time = self._torch.tensor([seconds], dtype=self._torch.float64, device=self._device)
        self._dist.all_reduce(energy, op=self._dist.ReduceOp.SUM)
        self._dist.all_reduce(time, op=self._dist.ReduceOp.MAX)
        return float(energy.item()), float(time.item())

    def barrier(self) -> None:
        """Barrier on the default group."""
        self._dist.barrier()
