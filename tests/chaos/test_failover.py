"""Chaos with failovers: two operator processes under leader election while jobs run their lifecycles; at
seeded moments the leader is paused past its lease (SIGSTOP, then SIGCONT), killed (SIGKILL, a new standby
starts), or cut off from the API server while the standby is not.

Invariants as in the restart chaos (test_operator_restarts.py): every job in its scripted terminal phase with
its scripted restart count, no pod created twice for a job, index and gang generation, no orphan pod, energy
never decreasing and within 1% of the exporter's ground truth; and no Event posted twice (one JobCreated per
job, at most one GangRestarted per restart), which two acting operators would break.
"""

from __future__ import annotations

import pytest
from chaos_support import assert_clean, run_chaos
from operator_process import live_processes

pytestmark = pytest.mark.slow


def test_thirty_lifecycles_survive_leader_pauses_kills_and_partitions(chaos_server, exporter, chaos_env, tmp_path):
    report = run_chaos(
        chaos_server,
        exporter,
        chaos_env,
        tmp_path,
        seed=20261201,
        count=30,
        concurrency=10,
        restart_every=(2.0, 4.0),
        restart_after_starts=(3, 4),
        deadline_seconds=300,
        failover=True,
    )
    assert_clean(report, minimum_restarts=8)
    assert set(report.restarts) == {"sigstop", "sigkill", "cutoff"}, report.restarts
    assert live_processes() == []


@pytest.mark.chaos_long
@pytest.mark.parametrize("seed", [11, 12])
def test_long_failover_run(chaos_server, exporter, chaos_env, tmp_path, seed):
    report = run_chaos(
        chaos_server,
        exporter,
        chaos_env,
        tmp_path,
        seed=seed,
        count=60,
        concurrency=15,
        restart_every=(2.0, 6.0),
        restart_after_starts=(3, 5),
        deadline_seconds=900,
        failover=True,
    )
    assert_clean(report, minimum_restarts=15)
    assert live_processes() == []
