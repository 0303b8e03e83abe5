"""Chaos: the operator is stopped, SIGKILLed and restarted at seeded random points while jobs run their
lifecycles (succeed; one pod crashes, then the restarted gang succeeds; crashes until backoffLimit).

The operator runs for real against the API emulator, energy comes from a real Prometheus scraping a
DCGM-format exporter whose ground truth is exact. After the run every job is in its scripted terminal phase
with its scripted restart count, no pod was created twice for the same job, index and gang generation, no
pod outlives its job or its gang, energy never went down and matches ground truth within 1%.
"""

from __future__ import annotations

import pytest
from chaos_support import assert_clean, make_crash_lifecycles, run_chaos
from operator_process import live_processes

pytestmark = pytest.mark.slow


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
        # also after every 2-3 job starts (seeded): at least 10 kills however fast the machine runs the jobs
        # (a timer alone gave 7-8 on a loaded 2-core machine, under the minimum)
        restart_after_starts=(2, 3),
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
        restart_after_starts=(2, 4),  # 60 jobs: at least 15 kills however fast the jobs run
        deadline_seconds=600,
    )
    assert_clean(report, minimum_restarts=15)
    assert live_processes() == []
