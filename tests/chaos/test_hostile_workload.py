"""Chaos with a hostile workload: every job's pod token tries every write it has while the operator restarts.

Jobs succeed, crash until their backoffLimit, or run on until their energy budget stops them; meanwhile
:class:`hostile.HostileWorkload` forges, with each job's own ServiceAccount token, the job's phase, restarts,
energy, control, policy and conditions, a bigger backoffLimit, another job's status and report, new reports
and pods, and writes made-up progress and checkpoint acknowledgements to its own report (the one write it
may make). Afterwards every forgery was refused, every job ended in its scripted phase with its scripted
restart count (budget jobs: Failed with EnergyBudgetExceeded at or above their budget), no pod was made
twice, and energy matches the exporter's ground truth within 1 %.
"""

from __future__ import annotations

import pytest
from chaos_support import assert_clean, make_budget_lifecycles, make_lifecycles, run_chaos
from hostile import HostileWorkload
from operator_process import live_processes

pytestmark = pytest.mark.slow

SEED = 1207


def test_a_hostile_workload_changes_no_decision(chaos_server, exporter, chaos_env, tmp_path, monkeypatch):
    # a drain waits this long for a checkpoint acknowledgement that a forging workload may never send
    chaos_env["ETJ_CHECKPOINT_TIMEOUT_SECONDS"] = "3"
    monkeypatch.setenv("ETJ_CHECKPOINT_TIMEOUT_SECONDS", "3")
    scripts = make_lifecycles(SEED, 9) + make_budget_lifecycles(SEED, 3)
    hostile = HostileWorkload(chaos_server, seed=SEED)
    report = run_chaos(
        chaos_server,
        exporter,
        chaos_env,
        tmp_path,
        seed=SEED,
        count=len(scripts),
        concurrency=8,
        restart_every=(1.5, 4.0),
        deadline_seconds=150,
        scripts=scripts,
        hostile=hostile,
    )
    print(f"hostile: refused={hostile.refused} accepted={hostile.accepted} breaches={len(hostile.breaches)}")
    assert hostile.breaches == []
    assert hostile.errors == []
    assert hostile.refused >= 50  # the forgeries were really sent, not skipped
    assert_clean(report, minimum_restarts=2)
    assert live_processes() == []
