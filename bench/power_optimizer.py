"""Auto power mode vs Zeus vs an oracle, on the SIMULATED GPU (issue 17). No GPU is needed or used.

Every run is one training job of ``--steps`` steps (10,000) on the harness's simulated H100 SXM
(``etj_workload.power_model``, calibrated to published capping results: docs/harness.md), with profiling
charged to the job:

* **Auto** is the harness's own :class:`~etj_workload.power.PowerController` (its profiler, windows, caps)
  over a :class:`~etj_workload.gpu.SimulatedGpu` on a fake clock, with the spec's default ``auto`` settings
  (``eta`` and ``maxSlowdown`` from the objective) and the job's length as its horizon.
* **Zeus** is the real ``zeus`` package from PyPI (``GlobalPowerLimitOptimizer`` with its ``Energy``,
  ``ZeusCost`` or ``MaxSlowdownConstraint`` selector, its defaults: wait 1, warmup 10, profile 40 steps,
  25 W apart) and a real ``ZeusMonitor``, driven through a fake GPU backend (``zeus.device.gpu.GPUs``) over the
  same simulated GPU and clock. Zeus reads the energy counter and the time there as on a real card.
* The **oracle** knows the model: the fixed limit (1 W resolution) with the least job objective within the
  bound, no profiling.

A step's full-clock time is 1 s times a noise factor ``1 + sigma * z`` (``z`` standard normal, clipped at
+-3.5; the same factor scales its energy: the GPU works the whole step) and, in the stress cases, a start-up
factor. Job totals use each step's figures without the noise factor (the mean), so the noise only acts
through what the optimizers measure. Objectives: the job's energy; ZeusCost(0.5) = ``0.5 E + 0.5 * 700 W * T``;
``maxSlowdown`` b: the job's energy with its whole time (profiling included) at most b times the uncapped
job's. Regret: ``objective / oracle's - 1``. A run is over its bound when its job time exceeds ``b`` times the
uncapped job time by more than the slowdown margin Auto reports (the half-width of its confidence interval,
99.7%); for Zeus, which states none, by more than 0.

The grid: compute fraction {0.3, 0.5, 0.7, 0.9, 1.0} x step noise {0, 5%} x objective {energy, ZeusCost 0.5,
maxSlowdown 1.05, 1.10} x ``--seeds`` seeds (20). Then the stress cases: a slow start (3x, decaying over 40
steps), a limit that takes 3 steps to settle, an evaluation at every epoch end (60 s busy), a cap of 450 W from
step 100 to 3,000, and a workload change at step 5,000 (a compression stage: the step 40% shorter and more
memory-bound). It ends with the headline lines of issue 17.

Usage: ``python bench/power_optimizer.py [--seeds 20] [--steps 10000] [--no-zeus] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("workloads", "operator", "contract")]

from etj_workload import power_model as pm  # noqa: E402
from etj_workload import profiler  # noqa: E402
from etj_workload.config import AutoPolicy, PowerPolicy  # noqa: E402
from etj_workload.gpu import SimulatedGpu  # noqa: E402
from etj_workload.power import PowerController  # noqa: E402

FRACTIONS = (0.3, 0.5, 0.7, 0.9, 1.0)
NOISES = (0.0, 0.05)
OBJECTIVES: dict[str, tuple[float, float | None]] = {  # name -> (eta, maxSlowdown)
    "energy": (1.0, None),
    "zeuscost0.5": (0.5, None),
    "maxslowdown1.05": (1.0, 1.05),
    "maxslowdown1.10": (1.0, 1.10),
}
STEPS_PER_EPOCH = 1000
FULL_CLOCK_SECONDS = 1.0


# --- the job ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stress:
    """What happens to the job besides training (all off by default)."""

    slow_start: float = 1.0
    """Factor of the first steps' time (3: three times slower), decaying with ``slow_start_steps``."""
    slow_start_steps: float = 40.0
    settle_steps: int = 0
    """Steps a new limit takes to take effect."""
    eval_seconds: float = 0.0
    """Busy seconds of an evaluation at every epoch end (between steps)."""
    cap: tuple[int, int, int] | None = None
    """(from step, to step, watts): the operator's cap in that interval."""
    change_at: int | None = None
    """The step at which a compression stage changes the workload (time x0.6, compute fraction -0.2)."""


@dataclass(frozen=True)
class Scenario:
    fraction: float
    noise: float
    objective: str
    seed: int
    steps: int = 10_000
    stress: Stress = field(default_factory=Stress)
    name: str = ""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def workload(fraction: float, changed: bool = False) -> pm.SimulatedPowerModel:
    """The simulated H100 running a workload of ``fraction`` compute (after a stage: more memory-bound)."""
    if changed:
        fraction = max(0.1, fraction - 0.2)
    return replace(pm.H100_SXM, compute_fraction=fraction)


def start_factor(stress: Stress, step: int) -> float:
    if stress.slow_start <= 1.0:
        return 1.0
    return 1.0 + (stress.slow_start - 1.0) * math.exp(-step / stress.slow_start_steps)


def cap_at(stress: Stress, step: int) -> int | None:
    if stress.cap is None:
        return None
    begin, end, watts = stress.cap
    return watts if begin <= step < end else None


def objective_of(name: str, joules: float, seconds: float) -> float:
    eta, _ = OBJECTIVES[name]
    return eta * joules + (1 - eta) * pm.H100_SXM.max_limit_watts * seconds


@dataclass
class JobTotals:
    joules: float = 0.0
    seconds: float = 0.0
    profile_steps: int = 0
    margin: float = 0.0
    chosen: list[int] = field(default_factory=list)


class SimJob:
    """One job on one simulated GPU: runs steps, keeps the noise-free totals, fires the stress events."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed * 7919 + int(sc.fraction * 100) * 31 + int(sc.noise * 1000))
        self.clock = FakeClock()
        self.model = workload(sc.fraction)
        self.gpu = SimulatedGpu(
            model=self.model,
            sleep_slowdown=True,
            clock=self.clock,
            sleep=self.clock.advance,
            settle_steps=sc.stress.settle_steps,
        )
        self.step = 0
        self.totals = JobTotals()
        self.full_seconds = FULL_CLOCK_SECONDS

    def change_workload(self) -> None:
        self.model = workload(self.sc.fraction, changed=True)
        self.gpu.model = self.model
        self.full_seconds = FULL_CLOCK_SECONDS * 0.6

    def run_step(self) -> float:
        """One training step: returns its device time (noisy), accounts its mean energy and time."""
        z = max(-3.5, min(3.5, self.rng.gauss(0.0, 1.0)))
        noise = max(0.2, 1.0 + self.sc.noise * z)
        mean_full = self.full_seconds * start_factor(self.sc.stress, self.step)
        e0 = self.gpu.energy_mj()
        self.clock.advance(mean_full * noise)
        seconds = self.gpu.account_step(mean_full * noise)
        joules = (self.gpu.energy_mj() - e0) / 1000.0
        self.totals.joules += joules / noise
        self.totals.seconds += seconds / noise
        self.step += 1
        return seconds

    def evaluate(self) -> None:
        if self.sc.stress.eval_seconds > 0:
            self.clock.advance(self.sc.stress.eval_seconds)
            self.gpu.account_step(self.sc.stress.eval_seconds)

    def fast_forward(self, steps: int) -> None:
        """``steps`` more steps at the limit in force with nothing else happening (mean figures)."""
        limit = self.gpu.power_limit_mw() / 1000.0
        mean_full = self.full_seconds
        self.totals.joules += steps * pm.step_energy_joules(self.model, limit, mean_full)
        self.totals.seconds += steps * pm.step_seconds(self.model, limit, mean_full)
        self.step += steps

    def quiet_from(self, step: int) -> bool:
        """Whether nothing happens from ``step`` on but training at one limit (the rest can be fast-forwarded)."""
        s = self.sc.stress
        if s.cap is not None and step < s.cap[1]:
            return False
        if s.change_at is not None and step <= s.change_at:
            return False
        return start_factor(s, step) < 1.0001 and s.eval_seconds == 0


# --- the oracle -----------------------------------------------------------------------------------------------
def oracle(sc: Scenario) -> tuple[float, float, float]:
    """``(objective, job seconds, uncapped job seconds)`` of the best fixed limit(s), no profiling."""
    eta, bound = OBJECTIVES[sc.objective]
    joules = seconds = base = 0.0
    segments = [(0, sc.stress.change_at or sc.steps, False)]
    if sc.stress.change_at is not None:
        segments.append((sc.stress.change_at, sc.steps, True))
    for begin, end, changed in segments:
        model = workload(sc.fraction, changed)
        full = FULL_CLOCK_SECONDS * (0.6 if changed else 1.0)
        best = pm.analytic_optimal_limit_watts(model, eta, bound, resolution_watts=1.0)
        for step in range(begin, end):
            f = start_factor(sc.stress, step) * full
            cap = cap_at(sc.stress, step)
            limit = best if cap is None else min(best, cap)
            joules += pm.step_energy_joules(model, limit, f)
            seconds += pm.step_seconds(model, limit, f)
            base += pm.step_seconds(model, model.max_limit_watts, f)
    return objective_of(sc.objective, joules, seconds), seconds, base


# --- Auto -------------------------------------------------------------------------------------------------------
def run_auto(sc: Scenario) -> JobTotals:
    eta, bound = OBJECTIVES[sc.objective]
    job = SimJob(sc)
    policy = PowerPolicy(mode="Auto", auto=AutoPolicy(eta=eta, max_slowdown=bound))
    controller = PowerController(job.gpu, policy, enforcer="pod", horizon_steps=sc.steps)
    controller.train_begin()
    while job.step < sc.steps:
        step = job.step
        cap = cap_at(sc.stress, step)
        controller.set_cap(cap)
        if sc.stress.change_at is not None and step == sc.stress.change_at:
            job.change_workload()
            controller.workload_changed()
        if step > 0 and step % STEPS_PER_EPOCH == 0:
            controller.interrupt()  # the harness's PowerCallback at the epoch boundary
        state, plan = controller.state, controller.plan
        if plan is not None and state is not None and profiler.settled(plan, state) and job.quiet_from(step):
            job.fast_forward(sc.steps - step)
            break
        controller.step_begin()
        seconds = job.run_step()
        controller.step_end(seconds)
        if job.step % STEPS_PER_EPOCH == 0:
            job.evaluate()
            controller.interrupt()  # on_evaluate
    d = controller.decision
    job.totals.profile_steps = controller.profile_steps_total
    job.totals.margin = d.slowdown_margin if d is not None and d.slowdown_margin is not None else 0.0
    job.totals.chosen = [controller.chosen_watts or 0]
    controller.restore()
    return job.totals


# --- Zeus -------------------------------------------------------------------------------------------------------
class ZeusUnavailable(RuntimeError):
    pass


def _zeus_modules() -> dict[str, Any]:
    try:
        import zeus
        import zeus.device.gpu as zgpu
        import zeus.monitor.energy as zenergy
        import zeus.optimizer.power_limit as zpl
        from zeus.device.gpu.common import GPU, GPUs
        from zeus.monitor import ZeusMonitor
    except ImportError as e:  # pragma: no cover - depends on the bench extra
        raise ZeusUnavailable(f"zeus is not installed ({e}); pip install -e '.[bench]'") from e
    return {"zeus": zeus, "zgpu": zgpu, "zenergy": zenergy, "zpl": zpl, "GPU": GPU, "GPUs": GPUs,
            "ZeusMonitor": ZeusMonitor}


def _fake_backend(z: dict[str, Any], job: SimJob, cap: Callable[[], int | None]) -> Any:
    """A zeus GPU backend (``zeus.device.gpu.GPUs``) of one GPU: the job's simulated GPU."""
    gpu_base, gpus_base = z["GPU"], z["GPUs"]
    sim = job.gpu

    class SimulatedZeusGPU(gpu_base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(0)
            self.own_mw = sim.power_limit_mw()

        def supports_nonblocking_setters(self) -> bool:
            return False

        def get_name(self) -> str:
            return sim.name()

        def get_power_management_limit_constraints(self) -> tuple[int, int]:
            return sim.power_limit_constraints_mw()

        def get_power_management_limit(self) -> int:
            return sim.power_limit_mw()

        def apply(self) -> None:
            c = cap()
            target = self.own_mw if c is None else min(self.own_mw, c * 1000)
            if target != sim.power_limit_mw():
                sim.set_power_limit_mw(target)

        def set_power_management_limit(self, power_limit_mw: int, block: bool = True) -> None:
            self.own_mw = int(power_limit_mw)
            self.apply()

        def reset_power_management_limit(self, block: bool = True) -> None:
            self.set_power_management_limit(sim.default_power_limit_mw())

        def set_persistence_mode(self, enabled: bool, block: bool = True) -> None:
            pass

        def get_persistence_mode(self) -> bool:
            return True

        def get_supported_memory_clocks(self) -> list[int]:
            return []

        def set_memory_locked_clocks(self, min_clock_mhz: int, max_clock_mhz: int, block: bool = True) -> None:
            pass

        def reset_memory_locked_clocks(self, block: bool = True) -> None:
            pass

        def get_supported_graphics_clocks(self, memory_clock_mhz: int | None = None) -> list[int]:
            return []

        def set_gpu_locked_clocks(self, min_clock_mhz: int, max_clock_mhz: int, block: bool = True) -> None:
            pass

        def reset_gpu_locked_clocks(self, block: bool = True) -> None:
            pass

        def get_average_power_usage(self) -> int:
            return sim.power_mw()

        def get_instant_power_usage(self) -> int:
            return sim.power_mw()

        def get_average_memory_power_usage(self) -> int:
            return 0

        def supports_get_total_energy_consumption(self) -> bool:
            return True

        def get_total_energy_consumption(self) -> int:
            return sim.energy_mj()

        def get_gpu_temperature(self) -> int:
            return 60

    class SimulatedZeusGPUs(gpus_base):  # type: ignore[misc, valid-type]
        def __init__(self, ensure_homogeneous: bool = False) -> None:
            self._gpus = [SimulatedZeusGPU()]

        def __del__(self) -> None:
            pass

        @property
        def gpus(self) -> list[Any]:
            return self._gpus

    return SimulatedZeusGPUs()


def run_zeus(sc: Scenario, z: dict[str, Any]) -> JobTotals:
    eta, bound = OBJECTIVES[sc.objective]
    job = SimJob(sc)
    current_cap: list[int | None] = [None]
    backend = _fake_backend(z, job, lambda: current_cap[0])
    z["zgpu"]._gpus = backend  # zeus.device.get_gpus() returns this backend
    z["zenergy"].time = job.clock  # ZeusMonitor's clock (``from time import time``): the job's
    z["zenergy"].sync_execution_fn = lambda *a, **k: None  # nothing asynchronous to wait for
    zpl = z["zpl"]
    selector: Any
    if bound is not None:
        selector = zpl.MaxSlowdownConstraint(factor=bound)
    elif eta >= 1.0:
        selector = zpl.Energy()
    else:
        selector = zpl.ZeusCost(eta_knob=eta, world_size=1)
    monitor = z["ZeusMonitor"](gpu_indices=[0], cpu_indices=[])
    plo = zpl.GlobalPowerLimitOptimizer(monitor, optimum_selector=selector)
    zgpu = backend.gpus[0]
    while job.step < sc.steps:
        step = job.step
        cap = cap_at(sc.stress, step)
        if cap != current_cap[0]:
            current_cap[0] = cap
            zgpu.apply()  # the operator's throttle binds the card (a node agent's cap)
        if sc.stress.change_at is not None and step == sc.stress.change_at:
            job.change_workload()
        done = isinstance(plo.state, zpl.Done)
        if done and job.quiet_from(step):
            job.fast_forward(sc.steps - step)
            break
        plo.on_step_begin()
        if not isinstance(plo.state, zpl.Done):
            job.totals.profile_steps += 1
        job.run_step()
        if job.step % STEPS_PER_EPOCH == 0:
            plo.on_epoch_end()
            job.evaluate()
    job.totals.chosen = [job.gpu.power_limit_mw() // 1000]
    job.gpu.restore_power_limit()
    return job.totals


# --- the grid -----------------------------------------------------------------------------------------------------
@dataclass
class Row:
    scenario: Scenario
    who: str
    regret: float
    profile_steps: int
    over_bound: bool
    slowdown: float
    chosen: int


def score(sc: Scenario, who: str, totals: JobTotals) -> Row:
    best, best_seconds, base = oracle(sc)
    _, bound = OBJECTIVES[sc.objective]
    value = objective_of(sc.objective, totals.joules, totals.seconds)
    slowdown = totals.seconds / base
    # Over the bound: slower than the bound allows (or, where the operator's cap makes the bound unreachable,
    # than the oracle under the same cap), by more than the reported margin.
    allowed = max(bound or 0.0, best_seconds / base)
    over = bound is not None and slowdown > allowed * (1 + totals.margin) + 1e-9
    chosen = totals.chosen[-1] if totals.chosen else 0
    return Row(sc, who, value / best - 1, totals.profile_steps, over, slowdown, chosen)


def grid(seeds: int, steps: int) -> list[Scenario]:
    return [
        Scenario(c, s, o, seed, steps)
        for c in FRACTIONS
        for s in NOISES
        for o in OBJECTIVES
        for seed in range(seeds)
    ]


def stress_cases(steps: int) -> list[Scenario]:
    cases = [
        ("slow start 3x", Stress(slow_start=3.0)),
        ("settling limit (3 steps)", Stress(settle_steps=3)),
        ("evaluation at epoch ends (60 s)", Stress(eval_seconds=60.0)),
        ("cap 450 W, steps 100-3000", Stress(cap=(100, 3000, 450))),
        ("workload change at step 5000", Stress(change_at=5000)),
    ]
    out = []
    for name, stress in cases:
        for objective in ("energy", "maxslowdown1.05"):
            for noise in NOISES:
                for seed in range(3):
                    out.append(Scenario(0.7, noise, objective, seed, steps, stress, name))
    return out


def summarize(rows: list[Row], who: str) -> dict[str, Any]:
    mine = [r for r in rows if r.who == who]
    return {
        "runs": len(mine),
        "regret_pct_mean": 100 * statistics.fmean(r.regret for r in mine),
        "regret_pct_worst": 100 * max(r.regret for r in mine),
        "profile_steps_mean": statistics.fmean(r.profile_steps for r in mine),
        "over_bound_runs": sum(r.over_bound for r in mine),
    }


def table(rows: list[Row], who: list[str]) -> None:
    print(f"\n{'objective':<16} {'c':>4} {'noise':>5} | " + " | ".join(
        f"{w:>5} mean/worst regret %, steps, over" for w in who))
    keys = sorted({(r.scenario.objective, r.scenario.fraction, r.scenario.noise) for r in rows})
    for o, c, s in keys:
        parts = []
        for w in who:
            rs = [r for r in rows if r.who == w and (r.scenario.objective, r.scenario.fraction, r.scenario.noise)
                  == (o, c, s)]
            if not rs:
                continue
            parts.append(
                f"{100 * statistics.fmean(r.regret for r in rs):6.2f} {100 * max(r.regret for r in rs):6.2f} "
                f"{statistics.fmean(r.profile_steps for r in rs):6.0f} {sum(r.over_bound for r in rs):3d}"
            )
        print(f"{o:<16} {c:>4} {s:>5} | " + " | ".join(f"{p:>38}" for p in parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--no-zeus", action="store_true", help="Auto and the oracle only")
    parser.add_argument("--no-stress", action="store_true")
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args()
    z: dict[str, Any] | None = None
    if not args.no_zeus:
        try:
            z = _zeus_modules()
            print(f"zeus {z['zeus'].__version__}: GlobalPowerLimitOptimizer over a fake GPU backend")
        except ZeusUnavailable as e:
            print(f"Zeus left out: {e}")
    started = time.perf_counter()
    rows: list[Row] = []
    for sc in grid(args.seeds, args.steps):
        rows.append(score(sc, "auto", run_auto(sc)))
        if z is not None:
            rows.append(score(sc, "zeus", run_zeus(sc, z)))
    who = ["auto"] + (["zeus"] if z is not None else [])
    table(rows, who)
    stress: list[Row] = []
    if not args.no_stress:
        for sc in stress_cases(args.steps):
            stress.append(score(sc, "auto", run_auto(sc)))
            if z is not None:
                stress.append(score(sc, "zeus", run_zeus(sc, z)))
        print("\nstress cases (compute fraction 0.7, 3 seeds each, noise 0 and 5%):")
        for name in dict.fromkeys(r.scenario.name for r in stress):
            for objective in ("energy", "maxslowdown1.05"):
                line = [f"  {name:<34} {objective:<16}"]
                for w in who:
                    rs = [r for r in stress if r.who == w and r.scenario.name == name
                          and r.scenario.objective == objective]
                    line.append(
                        f"{w}: worst regret {100 * max(r.regret for r in rs):6.2f}%, slowdown "
                        f"{max(r.slowdown for r in rs):.3f}, over {sum(r.over_bound for r in rs)}, "
                        f"steps {statistics.fmean(r.profile_steps for r in rs):.0f}"
                    )
                oracle_slowdown = max(oracle(r.scenario)[1] / oracle(r.scenario)[2] for r in stress
                                      if r.scenario.name == name and r.scenario.objective == objective)
                line.append(f"oracle slowdown {oracle_slowdown:.3f}")
                print(" | ".join(line))
    elapsed = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps([
            {"who": r.who, "fraction": r.scenario.fraction, "noise": r.scenario.noise,
             "objective": r.scenario.objective, "seed": r.scenario.seed, "stress": r.scenario.name,
             "regret": r.regret, "profile_steps": r.profile_steps, "over_bound": r.over_bound,
             "slowdown": r.slowdown, "chosen": r.chosen} for r in rows + stress], indent=1))
    print(f"\n{len(rows)} grid runs, {len(stress)} stress runs in {elapsed:.0f} s (simulated GPU, no GPU used)")
    auto = summarize(rows, "auto")
    print(f"auto_regret_pct_worst: {auto['regret_pct_worst']:.2f}")
    if z is not None:
        print(f"zeus_regret_pct_worst: {summarize(rows, 'zeus')['regret_pct_worst']:.2f}")
    print(f"auto_regret_pct_mean: {auto['regret_pct_mean']:.2f}")
    if z is not None:
        print(f"zeus_regret_pct_mean: {summarize(rows, 'zeus')['regret_pct_mean']:.2f}")
    print(f"auto_profile_steps_mean: {auto['profile_steps_mean']:.0f}")
    if z is not None:
        print(f"zeus_profile_steps_mean: {summarize(rows, 'zeus')['profile_steps_mean']:.0f}")
    print(f"auto_over_bound_runs: {auto['over_bound_runs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
