"""Chaos: the operator is stopped, SIGKILLed and restarted at seeded random points while jobs run their
lifecycles (succeed; one pod crashes, then the restarted gang succeeds; crashes until backoffLimit).

The operator runs for real against the API emulator, energy comes from a real Prometheus scraping a
DCGM-format exporter whose ground truth is exact. After the run every job is in its scripted terminal phase
with its scripted restart count, no pod was created twice for the same job, index and gang generation, no
pod outlives its job or its gang, energy never went down and matches ground truth within 1%.
"""

from __future__ import annotations

import random
import time

import pytest
from chaos_support import (
    ChaosOperator,
    PodCreations,
    Report,
    ScriptedKubelet,
    check_outcomes,
    energy_errors,
    leftover_pods,
    make_crash_lifecycles,
    make_lifecycles,
    terminal,
)
from operator_process import live_processes

from etj_operator import contract as c

from emulated import NS, wait_until

pytestmark = pytest.mark.slow


def run_chaos(
    server,
    exporter,
    env,
    log_dir,
    *,
    seed: int,
    count: int,
    concurrency: int,
    restart_every,
    deadline_seconds,
    scripts=None,
) -> Report:
    rng = random.Random(seed)
    scripts = scripts or make_lifecycles(seed, count)
    count = len(scripts)
    creations = PodCreations(server)
    operator = ChaosOperator(env, log_dir)
    report = Report(lifecycles=count)
    operator.start(rng.choice(["thread", "process"]))
    try:
        with ScriptedKubelet(server, exporter) as kubelet:
            waiting = list(scripts)
            started: list = []
            next_restart = time.monotonic() + rng.uniform(*restart_every)
            deadline = time.monotonic() + deadline_seconds
            while True:
                active = [s for s in started if not terminal(server, [s])]
                while waiting and len(active) < concurrency:
                    script = waiting.pop(0)
                    kubelet.add(script)
                    server.create(c.PLURAL, script.manifest(energy=exporter is not None), namespace=NS)
                    started.append(script)
                    active.append(script)
                if not waiting and not active:
                    break
                assert not kubelet.errors, kubelet.errors
                if time.monotonic() > next_restart:
                    operator.restart(rng, down_seconds=rng.uniform(0.0, 1.0))
                    next_restart = time.monotonic() + rng.uniform(*restart_every)
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"not every job finished within {deadline_seconds} s: "
                        f"{[(s.name, s.kind) for s in active]}; {check_outcomes(server, active)}"
                    )
                time.sleep(0.05)
            # one more hard restart with everything finished: nothing is created or deleted again
            before = len(creations.records)
            operator.restart(rng, down_seconds=0.0)
            wait_until(lambda: not leftover_pods(server, scripts), 20, "finished gangs cleaned up")
            time.sleep(1.0)
            assert len(creations.records) == before
            report.wrong = check_outcomes(server, scripts)
            report.duplicates = creations.duplicates()
            report.orphans = leftover_pods(server, scripts)
            assert not kubelet.energy_decreases, kubelet.energy_decreases
            if exporter is not None:
                energy_errors(server, exporter, scripts, report)
            # delete a seeded half of the jobs with the operator up: their pods go with them
            gone = rng.sample(scripts, len(scripts) // 2)
            for script in gone:
                server.delete(c.PLURAL, NS, script.name)
            wait_until(lambda: all(server.get(c.PLURAL, NS, s.name) is None for s in gone), 30, "deleted jobs gone")
            wait_until(lambda: not leftover_pods(server, scripts), 20, "no pod outlives its job")
        report.restarts = dict(operator.restarts)
    finally:
        operator.close()
    return report


def assert_clean(report: Report, minimum_restarts: int) -> None:
    print(report.line())
    assert report.wrong == []
    assert report.duplicates == {}
    assert report.orphans == []
    assert sum(report.restarts.values()) >= minimum_restarts
    if report.energy_errors:
        worst = max(report.energy_errors, key=report.energy_errors.get)
        assert report.max_energy_error <= 0.01, (worst, report.energy_errors[worst])


def test_thirty_lifecycles_survive_operator_kills_and_restarts(chaos_server, exporter, chaos_env, tmp_path):
    report = run_chaos(
        chaos_server,
        exporter,
        chaos_env,
        tmp_path,
        seed=20240611,
        count=30,
        concurrency=12,
        restart_every=(0.8, 2.5),
        deadline_seconds=150,
    )
    assert_clean(report, minimum_restarts=8)
    assert live_processes() == []


def test_pods_crash_at_random_steps_while_the_operator_restarts(chaos_server, chaos_env, tmp_path):
    """Crashes before a pod runs, while it runs, the whole gang at once; 1-3 per job; no energy here."""
    scripts = make_crash_lifecycles(seed=7, count=12)
    report = run_chaos(
        chaos_server,
        None,
        chaos_env,
        tmp_path,
        seed=7,
        count=len(scripts),
        concurrency=12,
        restart_every=(0.5, 2.0),
        deadline_seconds=120,
        scripts=scripts,
    )
    assert_clean(report, minimum_restarts=3)
    restarts = sum(s.expected_restarts for s in scripts)
    assert restarts >= 12  # every job crashed at least once; most were restarted as a gang


@pytest.mark.chaos_long
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_chaos_run(chaos_server, exporter, chaos_env, tmp_path, seed):
    report = run_chaos(
        chaos_server,
        exporter,
        chaos_env,
        tmp_path,
        seed=seed,
        count=60,
        concurrency=15,
        restart_every=(1.0, 6.0),
        deadline_seconds=600,
    )
    assert_clean(report, minimum_restarts=15)
    assert live_processes() == []
