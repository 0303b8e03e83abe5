"""One-shot GPU check for the harness (run on a machine with an NVIDIA GPU and NVML; a few minutes).

1. NVML readings of GPU 0 through etj_workload.gpu.NvmlGpu (name, UUID, power, energy counter, limits).
2. Apply a limit (midpoint of the constraints), read it back, restore the default, read it back.
   Without CAP_SYS_ADMIN/root this reports the typed permission error and the sweep is skipped.
3. Sweep power limits on the synthetic model (max down to min, ``--step-watts``): per limit, warm-up
   steps then measured steps; energy from NVML's counter (mJ), time from CUDA-synchronised wall time.
   Prints joules/step, seconds/step and the Zeus cost for eta=0.5, and the limit Auto would choose.
4. Auto against the sweep (issue 17): for each objective (energy, ZeusCost 0.5, maxSlowdown 1.05 and 1.10)
   the harness's own :class:`~etj_workload.power.PowerController` drives the card on the same model until it
   has decided (``--auto-steps`` at most), then the chosen limit is measured like a sweep point. Its regret
   is taken against the best sweep point for that objective (the "oracle over the sweep"), on the measured
   figures, and its profiling steps are counted. Lines ``gpu_auto_*`` sum it up.
5. A short end-to-end run of ``python -m etj_workload train`` with ETJ_GPU_BACKEND=nvml and Auto mode.
The default limit is restored in a ``finally`` block whatever happens (and after each Auto run). Results
also go to ``--out`` (JSON) for docs/benchmarks.md.

Usage: python bench/gpu/gpu_check.py [--step-watts 50 --warmup 20 --steps 60 --auto-steps 600 --out gpu-check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "workloads"), str(ROOT / "operator")]

from etj_workload import profiler  # noqa: E402
from etj_workload.gpu import GpuError, GpuPermissionError, NvmlGpu  # noqa: E402


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def training_step(args: argparse.Namespace) -> Callable[[], None]:
    """One optimizer step of the synthetic MLP on the GPU (the sweep's and Auto's workload)."""
    import torch
    from torch import nn

    from etj_workload.models import SyntheticMlp

    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = SyntheticMlp(width=args.width, depth=args.depth).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 256, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


def measure(gpu: NvmlGpu, step: Callable[[], None], watts: int, warmup: int, steps: int) -> profiler.Measurement:
    """Energy (NVML counter) and CUDA-synchronised time per step at ``watts`` after ``warmup`` steps."""
    import torch

    gpu.set_power_limit_mw(watts * 1000)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    energy_start_mj, start = gpu.energy_mj(), time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    joules = (gpu.energy_mj() - energy_start_mj) / 1000
    return profiler.Measurement(watts, joules / steps, seconds / steps, steps)


def sweep(gpu: NvmlGpu, args: argparse.Namespace, step: Callable[[], None]) -> list[dict[str, Any]]:
    low_mw, high_mw = gpu.power_limit_constraints_mw()
    candidates = profiler.candidate_limits_watts(low_mw / 1000, high_mw / 1000, args.step_watts)
    rows = []
    for watts in candidates:
        m = measure(gpu, step, watts, args.warmup, args.steps)
        row = {
            "watts": watts,
            "joulesPerStep": round(m.joules_per_step, 4),
            "secondsPerStep": round(m.seconds_per_step, 6),
            "averageWatts": round(m.joules_per_step / m.seconds_per_step, 1),
            "cost_eta0.5": round(profiler.limit_cost(m, 0.5, high_mw / 1000), 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


#: Auto's objectives in the comparison: name -> (eta, maxSlowdown).
AUTO_OBJECTIVES: dict[str, tuple[float, float | None]] = {
    "energy": (1.0, None),
    "zeuscost0.5": (0.5, None),
    "maxslowdown1.05": (1.0, 1.05),
    "maxslowdown1.10": (1.0, 1.10),
}


def best_of_sweep(rows: list[dict[str, Any]], eta: float, bound: float | None, max_watts: float) -> dict[str, Any]:
    """The sweep point with the least cost within the bound (the sweep's first row is the maximum limit)."""
    base = rows[0]["secondsPerStep"]
    feasible = [r for r in rows if bound is None or r["secondsPerStep"] <= bound * base] or rows[:1]

    def cost(r: dict[str, Any]) -> float:
        return float(eta * r["joulesPerStep"] + (1 - eta) * max_watts * r["secondsPerStep"])

    return min(feasible, key=cost)


def auto_against_sweep(gpu: NvmlGpu, args: argparse.Namespace, step: Callable[[], None],
                       rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Run Auto per objective on the card; score its choice against the best sweep point (measured)."""
    import torch

    from etj_workload.config import AutoPolicy, PowerPolicy
    from etj_workload.power import PowerController

    max_watts = gpu.power_limit_constraints_mw()[1] / 1000
    out: dict[str, Any] = {}
    for name, (eta, bound) in AUTO_OBJECTIVES.items():
        gpu.restore_power_limit()
        policy = PowerPolicy(mode="Auto", auto=AutoPolicy(eta=eta, max_slowdown=bound))
        controller = PowerController(gpu, policy, sync=torch.cuda.synchronize, enforcer="pod")
        controller.train_begin()
        steps = 0
        try:
            while controller.profiling and steps < args.auto_steps:
                controller.step_begin()
                start = time.perf_counter()
                step()
                torch.cuda.synchronize()  # a step's device time (the harness's is asynchronous wall time)
                controller.step_end(time.perf_counter() - start)
                steps += 1
        finally:
            controller.restore()
        chosen = controller.chosen_watts
        if chosen is None:
            out[name] = {"decided": False, "steps": steps}
            print(f"{name}: Auto had not decided after {steps} steps")
            continue
        m = measure(gpu, step, chosen, args.warmup, args.steps)
        gpu.restore_power_limit()
        best = best_of_sweep(rows, eta, bound, max_watts)
        auto_cost = eta * m.joules_per_step + (1 - eta) * max_watts * m.seconds_per_step
        best_cost = eta * best["joulesPerStep"] + (1 - eta) * max_watts * best["secondsPerStep"]
        slowdown = m.seconds_per_step / rows[0]["secondsPerStep"]
        out[name] = {
            "decided": True,
            "chosenWatts": chosen,
            "sweepBestWatts": best["watts"],
            "profileSteps": controller.profile_steps_total,
            "regretPct": round(100 * (auto_cost / best_cost - 1), 2),
            "slowdown": round(slowdown, 4),
            "report": controller.profile_report(),
        }
        print(json.dumps({k: v for k, v in out[name].items() if k != "report"}), flush=True)
    return out


def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    result_file = Path(args.out).with_suffix(".train.json")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "workloads"), str(ROOT / "operator")]),
        ETJ_GPU_BACKEND="nvml",
        ETJ_POWER_POLICY=json.dumps(
            {"mode": "Auto", "auto": {"eta": 0.5, "warmupSteps": 5, "profileSteps": 10, "stepWatts": 100}}
        ),
    )
    cmd = [
        sys.executable,
        "-m",
        "etj_workload",
        "train",
        "--model",
        "synthetic-mlp",
        "--width",
        str(args.width),
        "--depth",
        str(args.depth),
        "--batch-size",
        str(args.batch),
        "--samples",
        "65536",
        "--epochs",
        "3",
        "--result-file",
        str(result_file),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    print(proc.stdout[-2000:], proc.stderr[-4000:])
    out: dict[str, Any] = {"returncode": proc.returncode}
    if result_file.exists():
        out["result"] = json.loads(result_file.read_text())
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--step-watts", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-auto", action="store_true", help="no Auto-against-the-sweep runs")
    parser.add_argument("--auto-steps", type=int, default=600, help="most steps one Auto run may profile")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    section("NVML readings")
    try:
        gpu = NvmlGpu(index=0)
    except GpuError as e:
        print(f"no NVML GPU: {type(e).__name__}: {e}")
        return 2
    try:
        reading = gpu.reading().as_dict()
        low_mw, high_mw = gpu.power_limit_constraints_mw()
        reading.update(min_limit_mw=low_mw, max_limit_mw=high_mw, default_limit_mw=gpu.default_power_limit_mw())
        report["reading"] = reading
        print(json.dumps(reading))
        e0 = gpu.energy_mj()
        time.sleep(1.0)
        report["idle_energy_mj_per_second"] = gpu.energy_mj() - e0
        print(f"energy counter advanced {report['idle_energy_mj_per_second']} mJ in 1 s (idle)")

        section("apply and restore a limit")
        target_mw = (low_mw + high_mw) // 2 // 1000 * 1000
        can_set = True
        try:
            gpu.set_power_limit_mw(target_mw)
            applied = gpu.power_limit_mw()
            gpu.restore_power_limit()
            restored = gpu.power_limit_mw()
            report["set_restore"] = {"target_mw": target_mw, "applied_mw": applied, "restored_mw": restored}
            print(json.dumps(report["set_restore"]))
            print(
                "set/restore:",
                "OK" if applied == target_mw and restored == gpu.default_power_limit_mw() else "MISMATCH",
            )
        except GpuPermissionError as e:
            can_set = False
            report["set_restore"] = {"error": f"GpuPermissionError: {e}"}
            print(f"cannot set limits (needs root or CAP_SYS_ADMIN): {e}")

        if can_set:
            section(f"limit sweep on SyntheticMlp width={args.width} depth={args.depth} batch={args.batch}")
            step = training_step(args)
            rows = sweep(gpu, args, step)
            gpu.restore_power_limit()
            measurements = [profiler.Measurement(r["watts"], r["joulesPerStep"], r["secondsPerStep"]) for r in rows]
            chosen = profiler.choose_limit_watts(measurements, 0.5, high_mw / 1000)
            best_energy = min(rows, key=lambda r: r["joulesPerStep"])
            report["sweep"] = {
                "rows": rows,
                "auto_choice_eta0.5_watts": chosen,
                "min_energy_watts": best_energy["watts"],
            }
            print(f"auto choice (eta=0.5): {chosen} W; least energy per step at {best_energy['watts']} W")
            print(
                f"energy saving at least-energy limit vs max: "
                f"{(1 - best_energy['joulesPerStep'] / rows[0]['joulesPerStep']) * 100:.1f}% "
                f"for {(best_energy['secondsPerStep'] / rows[0]['secondsPerStep'] - 1) * 100:.1f}% more time"
            )
            if not args.skip_auto:
                section("Auto against the sweep (each objective: profile, decide, measure the choice)")
                try:
                    report["auto_vs_sweep"] = auto_against_sweep(gpu, args, step, rows)
                finally:
                    gpu.restore_power_limit()
    finally:
        try:
            gpu.restore_power_limit()
        finally:
            report["final_limit_mw"] = gpu.power_limit_mw()
    if not args.skip_train:
        section("end-to-end: python -m etj_workload train, nvml backend, Auto")
        report["train"] = end_to_end(args)
        print("final limit after training:", gpu.power_limit_mw(), "mW")
        report["final_limit_after_train_mw"] = gpu.power_limit_mw()
    gpu.close()
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nreport written to {args.out}")
    print(f"gpu_name: {report['reading']['name']}")
    final_mw = report.get("final_limit_after_train_mw", report["final_limit_mw"])
    print(f"limit_restored: {final_mw == reading['default_limit_mw']}")
    for name, result in report.get("auto_vs_sweep", {}).items():
        if result.get("decided"):
            print(f"gpu_auto_regret_pct_{name}: {result['regretPct']}")
            print(f"gpu_auto_profile_steps_{name}: {result['profileSteps']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
