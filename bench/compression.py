"""Compression of the digits CNN: prune 50% (l1 unstructured), fine-tune, then int8 weight-only (torchao).

Single process on CPU. Trains the CNN (8 epochs), applies the stages through the harness's
CompressionManager (with its accuracy guard), and prints size (raw torch.save and zlib-compressed,
the figure the stages report), parameters, accuracy and CPU inference latency before and after.

Usage: .venv/bin/python bench/compression.py
Ends with ``compression_size_ratio: <x>`` and ``compression_accuracy_drop_points: <x>``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("workloads", "operator")]

from etj_workload import data as datasets  # noqa: E402
from etj_workload.compression import CompressionManager, count_parameters, serialized_size  # noqa: E402
from etj_workload.config import AccuracyGuard, CompressionPlan, PruneSpec, QuantizeSpec, Stage, Trigger  # noqa: E402
from etj_workload.models import DigitsCnn  # noqa: E402


def latency_ms(model: nn.Module, x: torch.Tensor, repeats: int = 200) -> float:
    model.eval()
    with torch.no_grad():
        for _ in range(20):
            model(x)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    d = datasets.digits()
    model = DigitsCnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()

    def evaluate(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            return float((m(d.test_x).argmax(dim=1) == d.test_y).float().mean())

    def train_epoch(epoch: int) -> None:
        model.train()
        for x, y in datasets.batches(d.train_x, d.train_y, batch_size=64, epoch=epoch, rank=0, world_size=1):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()

    plan = CompressionPlan(
        (
            Stage("prune50", Trigger(epoch=6), prune=PruneSpec(0.5, "l1Unstructured")),
            Stage("int8", Trigger(epoch=8), quantize=QuantizeSpec()),
        ),
        AccuracyGuard(max_drop=0.01, action="Rollback"),
    )
    manager = CompressionManager(plan, evaluate)
    for epoch in range(6):
        train_epoch(epoch)
    base_accuracy = evaluate(model)
    base_size = serialized_size(model)
    base_params = count_parameters(model)
    one, batch = d.test_x[:1], d.test_x
    base_lat1, base_latb = latency_ms(model, one), latency_ms(model, batch)
    prune_result = manager.apply(plan.stages[0], model, epoch=6, step=0)
    for epoch in range(6, 8):
        train_epoch(epoch)
    int8_result = manager.apply(plan.stages[1], model, epoch=8, step=0)
    final = manager.quantized if manager.quantized is not None else model
    final_accuracy = evaluate(final)
    final_size = serialized_size(final)
    final_params = count_parameters(final)
    lat1, latb = latency_ms(final, one), latency_ms(final, batch)
    print(f"stages: prune50 applied={prune_result.applied}, int8 applied={int8_result.applied}")
    print(f"params_total: {base_params[0]}  nonzero before: {base_params[1]}  after: {final_params[1]}")
    print(
        f"size_raw_bytes before: {base_size.raw_bytes}  after: {final_size.raw_bytes}  "
        f"ratio: {base_size.raw_bytes / final_size.raw_bytes:.2f}"
    )
    print(f"size_zlib_bytes before: {base_size.compressed_bytes}  after: {final_size.compressed_bytes}")
    print(f"accuracy before: {base_accuracy:.4f}  after: {final_accuracy:.4f}")
    print(f"cpu_latency_ms batch=1 before: {base_lat1:.3f}  after: {lat1:.3f}")
    print(f"cpu_latency_ms batch={len(batch)} before: {base_latb:.3f}  after: {latb:.3f}")
    print(f"compression_size_ratio: {base_size.compressed_bytes / final_size.compressed_bytes:.2f}")
    print(f"compression_accuracy_drop_points: {(base_accuracy - final_accuracy) * 100:.2f}")


if __name__ == "__main__":
    main()
