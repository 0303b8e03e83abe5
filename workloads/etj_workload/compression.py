"""Compression stages: pruning (torch.nn.utils.prune) and int8 weight-only quantization (torchao).

Sizes are honest serialized sizes: ``torch.save`` of the model's state dict (pruned weights made
permanent), in bytes, both raw and deflated with zlib level 9. Pruning alone does not shrink a dense
tensor; its zeros only pay off once the bytes are entropy-coded, which is why the *compressed* size
is the one the stages report as ``sizeBytesBefore``/``sizeBytesAfter`` (``serializedFormat`` says so) and
the raw size is reported beside it.

Quantized weights (torchao ``Int8Tensor``) are for inference: a kept quantize stage ends training, so
plans should trigger it last (e.g. at the final epoch, which fires after training).
"""

from __future__ import annotations

import copy
import io
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

import etj_contract as contract
from etj_workload.config import CompressionPlan, PruneSpec, Stage

__all__ = [
    "SERIALIZED_FORMAT",
    "CompressionManager",
    "SizeReport",
    "StageResult",
    "apply_prune",
    "count_parameters",
    "export_state_dict",
    "quantized_copy",
    "restore_snapshot",
    "serialized_size",
    "snapshot",
]

log = logging.getLogger(__name__)

SERIALIZED_FORMAT = "torch.save(state_dict)+zlib9"

Evaluate = Callable[[nn.Module], float]


def _weighted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def apply_prune(model: nn.Module, spec: PruneSpec) -> list[str]:
    """Prune ``spec.amount`` of every Linear/Conv2d weight in place; return the pruned module names.

    ``l1Unstructured`` zeroes the smallest-magnitude weights of each tensor; ``lnStructured`` removes whole
    output rows/filters by L2 norm and spares the last layer (its rows are the classes). The pruning
    stays a reparametrization (``weight_orig`` times ``weight_mask``) so training keeps the zeros.
    """
    modules = _weighted_modules(model)
    if spec.method == "lnStructured":
        modules = modules[:-1]
    for _, module in modules:
        order = list(module._parameters)
        if spec.method == "l1Unstructured":
            prune.l1_unstructured(module, "weight", amount=spec.amount)  # type: ignore[no-untyped-call]
        else:
            prune.ln_structured(module, "weight", amount=spec.amount, n=2, dim=0)  # type: ignore[no-untyped-call]
        _keep_parameter_order(module, order, "weight", "weight_orig")
    return [n for n, _ in modules]


def _keep_parameter_order(module: nn.Module, before: list[str], old: str, new: str) -> None:
    """Put parameter ``new`` where ``old`` was among the module's parameters (torch appends it).

    Pruning renames ``weight`` to ``weight_orig`` (and undoing it back); with the position kept,
    ``model.parameters()`` lists the same tensors in the same order whether the model is pruned or not, so an
    optimizer built on a model whose pruning was re-created (a framework resuming makes its optimizer after
    that) lines up, index by index, with the state saved from one built before the pruning.
    """
    params = module._parameters
    if old not in before or new not in params:
        return
    rank = {(new if name == old else name): i for i, name in enumerate(before)}
    for name, param in sorted([(n, params.pop(n)) for n in list(params)], key=lambda np: rank.get(np[0], len(rank))):
        params[name] = param


def _make_permanent(model: nn.Module) -> None:
    for _, module in _weighted_modules(model):
        if prune.is_pruned(module) and hasattr(module, "weight_orig"):
            prune.remove(module, "weight")  # type: ignore[no-untyped-call]


def _copy(model: nn.Module) -> nn.Module:
    """Deep-copy a model that may carry pruning reparametrizations.

    A pruned module's ``weight`` attribute is recomputed by a forward pre-hook and, after a forward with
    autograd on, is a non-leaf tensor that ``deepcopy`` refuses; recompute it without autograd first.
    """
    with torch.no_grad():
        for _, module in _weighted_modules(model):
            if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
                orig: torch.Tensor = getattr(module, "weight_orig")  # noqa: B009 - typed access
                mask: torch.Tensor = getattr(module, "weight_mask")  # noqa: B009
                module.weight = orig * mask
    return copy.deepcopy(model)


def export_state_dict(model: nn.Module) -> dict[str, Any]:
    """Return the state dict a deployment would ship: pruning made permanent, masks dropped."""
    exported = _copy(model)
    _make_permanent(exported)
    return exported.state_dict()


@dataclass(frozen=True)
class SizeReport:
    """Serialized size of a model. Units: bytes."""

    raw_bytes: int
    compressed_bytes: int


def serialized_size(model: nn.Module) -> SizeReport:
    """Return the raw and zlib-compressed size of ``torch.save`` of the exported state dict."""
    buffer = io.BytesIO()
    torch.save(export_state_dict(model), buffer)
    raw = buffer.getvalue()
    return SizeReport(len(raw), len(zlib.compress(raw, 9)))


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    dequantize = getattr(tensor, "dequantize", None)
    if type(tensor) is not torch.Tensor and type(tensor) is not nn.Parameter and callable(dequantize):
        return dequantize()  # type: ignore[no-any-return]
    return tensor


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (total, non-zero) parameters, counting effective (masked or dequantized) weights."""
    total = nonzero = 0
    for name, tensor in export_state_dict(model).items():
        if name.endswith("_mask") or (not tensor.is_floating_point() and type(tensor) is torch.Tensor):
            continue
        dense = _dense(tensor).detach()
        total += dense.numel()
        nonzero += int(torch.count_nonzero(dense).item())
    return total, nonzero


def quantized_copy(model: nn.Module) -> nn.Module:
    """Return a copy with every Linear weight quantized to int8 (torchao weight-only, per channel).

    Convolutions stay in float: torchao's int8 weight-only config targets linear layers.
    """
    from etj_workload.thirdparty import import_torchao

    import_torchao()  # once, without its known import-time notices (etj_workload.thirdparty)
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantized = _copy(model).eval()
    _make_permanent(quantized)
    quantize_(quantized, Int8WeightOnlyConfig())
    return quantized


@dataclass
class _Snapshot:
    state: dict[str, torch.Tensor]
    pruned: frozenset[str]


def snapshot(model: nn.Module) -> _Snapshot:
    """Copy the model's tensors and pruning structure, for :func:`restore_snapshot`."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pruned = frozenset(n for n, m in _weighted_modules(model) if prune.is_pruned(m))
    return _Snapshot(state, pruned)


def restore_snapshot(model: nn.Module, saved: _Snapshot) -> None:
    """Undo what happened since :func:`snapshot`: remove new pruning, copy the saved tensors back in place.

    Parameters keep their identity (DDP and the optimizer hold references to them).
    """
    for name, module in _weighted_modules(model):
        if prune.is_pruned(module) and name not in saved.pruned:
            order = list(module._parameters)
            prune.remove(module, "weight")  # type: ignore[no-untyped-call]
            _keep_parameter_order(module, order, "weight_orig", "weight")
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            tensor.copy_(saved.state[key])


@dataclass
class StageResult:
    """What one stage did (status.workload.stages[] in camelCase)."""

    name: str
    applied: bool
    rolled_back: bool
    step: int
    epoch: int
    params_total: int
    params_nonzero: int
    size_bytes_before: int
    size_bytes_after: int
    raw_size_bytes_before: int
    raw_size_bytes_after: int
    accuracy_before: float
    accuracy_after: float
    #: When the stage was applied or rolled back (RFC 3339); None in a checkpoint of an older harness.
    time: str | None = None
    #: N1: the non-zero parameters before the stage (None in a checkpoint of an older harness).
    params_nonzero_before: int | None = None

    def to_status(self) -> dict[str, Any]:
        """Return the camelCase dict for status.workload.stages (the contract's record writes it)."""
        return contract.StageResult(
            name=self.name,
            applied=self.applied,
            rolled_back=self.rolled_back,
            step=self.step,
            epoch=self.epoch,
            params_total=self.params_total,
            params_nonzero_before=self.params_nonzero_before,
            params_nonzero=self.params_nonzero,
            size_bytes_before=self.size_bytes_before,
            size_bytes_after=self.size_bytes_after,
            raw_size_bytes_before=self.raw_size_bytes_before,
            raw_size_bytes_after=self.raw_size_bytes_after,
            serialized_format=SERIALIZED_FORMAT,
            accuracy_before=round(self.accuracy_before, 6),
            accuracy_after=round(self.accuracy_after, 6),
            time=self.time,
        ).to_status()


@dataclass
class CompressionManager:
    """Runs the plan's stages on a model; every rank holds one and applies stages at the same steps.

    ``evaluate`` must return the job-wide test accuracy (0..1), identical on every rank.
    """

    plan: CompressionPlan
    evaluate: Evaluate
    results: list[StageResult] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    quantized: nn.Module | None = None
    guard_stopped: bool = False

    @property
    def done(self) -> frozenset[str]:
        """Stages applied or rolled back (never tried twice)."""
        return frozenset(r.name for r in self.results)

    def due(self, *, epoch: int, step: int, final: bool = False) -> list[Stage]:
        """Return stages whose epoch/step trigger has been reached (``final``: training is over)."""
        out = []
        for stage in self.plan.stages:
            if stage.name in self.done:
                continue
            t = stage.trigger
            by_epoch = t.epoch is not None and (epoch >= t.epoch or final)
            by_step = t.step is not None and (step >= t.step or final)
            if by_epoch or by_step:
                out.append(stage)
        return out

    def apply(self, stage: Stage, model: nn.Module, *, epoch: int, step: int) -> StageResult:
        """Apply ``stage`` to ``model`` (the unwrapped module), guard it, and record the result."""
        was_training = model.training
        model.eval()
        accuracy_before = self.evaluate(self.quantized or model)
        size_before = serialized_size(self.quantized or model)
        _, nonzero_before = count_parameters(self.quantized or model)
        saved = snapshot(model)
        quantized: nn.Module | None = None
        if stage.prune is not None:
            apply_prune(model, stage.prune)
            candidate = model
        else:
            quantized = quantized_copy(model)
            candidate = quantized
        accuracy_after = self.evaluate(candidate)
        size_after = serialized_size(candidate)
        total, nonzero = count_parameters(candidate)
        drop = accuracy_before - accuracy_after
        rolled_back = drop > self.plan.guard.max_drop
        if rolled_back:
            log.warning(
                "stage %s dropped accuracy by %.2f points (allowed %.2f): %s",
                stage.name,
                drop * 100,
                self.plan.guard.max_drop * 100,
                "rolled back" if self.plan.guard.action == "Rollback" else "rolled back and stopping",
            )
            restore_snapshot(model, saved)
            self.guard_stopped = self.plan.guard.action == "Stop"
        else:
            self.kept.append(stage.name)
            if quantized is not None:
                self.quantized = quantized
        model.train(was_training)
        result = StageResult(
            name=stage.name,
            applied=not rolled_back,
            rolled_back=rolled_back,
            step=step,
            epoch=epoch,
            params_total=total,
            params_nonzero=nonzero,
            size_bytes_before=size_before.compressed_bytes,
            size_bytes_after=size_after.compressed_bytes,
            raw_size_bytes_before=size_before.raw_bytes,
            raw_size_bytes_after=size_after.raw_bytes,
            accuracy_before=accuracy_before,
            accuracy_after=accuracy_after,
            time=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            params_nonzero_before=nonzero_before,
        )
        self.results.append(result)
        return result

    def state_dict(self) -> dict[str, Any]:
        """Return the stage bookkeeping a checkpoint keeps."""
        return {"kept": list(self.kept), "results": [r.__dict__ for r in self.results], "stopped": self.guard_stopped}

    def reapply_structure(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Before loading a checkpoint's model state: re-create the pruning of kept prune stages.

        Also restores the bookkeeping; a kept quantize stage is re-derived from the loaded weights by
        :meth:`requantize` after the load.
        """
        self.results = [StageResult(**r) for r in state.get("results", [])]
        self.kept = list(state.get("kept", []))
        self.guard_stopped = bool(state.get("stopped", False))
        for name in self.kept:
            stage = self.plan.stage(name)
            if stage is not None and stage.prune is not None:
                apply_prune(model, stage.prune)

    def requantize(self, model: nn.Module) -> None:
        """After loading a checkpoint: rebuild the quantized model if a quantize stage was kept."""
        for name in self.kept:
            stage = self.plan.stage(name)
            if stage is not None and stage.quantize is not None:
                self.quantized = quantized_copy(model)
