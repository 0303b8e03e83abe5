import dataclasses
from datetime import UTC, datetime, timedelta

from etj_operator import conditions as cond
from etj_operator.lifecycle import Observation, PodView, reconcile
from etj_operator.models import InvalidSpecError, parse_spec

from jobs import job_manifest

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def observe(status=None, pods=(), now=NOW, generation=1, **overrides):
    spec_raw = job_manifest(**overrides)["spec"]
    try:
        spec, error = parse_spec(spec_raw, "digits"), None
    except InvalidSpecError as e:
        spec, error = None, e
    return Observation("digits", generation, spec, error, status or {}, list(pods), now)


def pod(index, phase="Running", gen=0, terminating=False, exit_code=None):
    return PodView(f"digits-worker-{index}", index, gen, phase, terminating, exit_code)


def running(n=2, gen=0):
    return [pod(i, "Running", gen) for i in range(n)]


def step(status=None, pods=(), **kw):
    plan = reconcile(observe(status, pods, **kw))
    return plan, plan.status


def test_new_job_creates_children_and_all_pods():
    plan, status = step()
    assert plan.ensure_children
    assert plan.create_pods == [0, 1]
    assert status["phase"] == "Pending"
    assert cond.is_true(status["conditions"], cond.CREATED)
    assert status["startTime"] == "2026-01-01T12:00:00Z"
    assert status["observedGeneration"] == 1 and status["restarts"] == 0
    assert status["replicaStatuses"] == {
        "Worker": {"active": 0, "pending": 2, "succeeded": 0, "failed": 0, "terminating": 0}
    }


def test_existing_pods_are_not_recreated():
    _, status = step()
    plan, status = step(status, running())
    assert plan.create_pods == [] and not plan.ensure_children
    assert status["phase"] == "Running"
    assert status["replicaStatuses"] == {
        "Worker": {"active": 2, "pending": 0, "succeeded": 0, "failed": 0, "terminating": 0}
    }


def test_a_missing_pod_is_recreated_alone():
    _, status = step()
    plan, _ = step(status, [pod(0)])
    assert plan.create_pods == [1]


def test_failure_restarts_the_whole_gang_then_recreates_it():
    _, status = step()
    _, status = step(status, running())
    plan, status = step(status, [pod(0), pod(1, "Failed", exit_code=137)])
    assert sorted(plan.delete_pods) == ["digits-worker-0", "digits-worker-1"]
    assert status["restarts"] == 1 and status["phase"] == "Restarting"
    assert "digits-worker-1 failed with exit code 137" in cond.find(status["conditions"], cond.RESTARTING)["message"]
    assert any(e.reason == "GangRestarted" for e in plan.events)
    # old pods still terminating: names are held, nothing is created yet
    plan, status = step(status, [pod(0, "Running", terminating=True), pod(1, "Failed", terminating=True)])
    assert plan.create_pods == [] and plan.delete_pods == []
    # a stale pod the index still shows as live (old generation) is deleted again, and while it exists no
    # pod of the new generation is created (not even worker 1, whose name is free)
    plan, status = step(status, [pod(0, "Running", gen=0)])
    assert plan.delete_pods == ["digits-worker-0"] and plan.create_pods == []
    plan, status = step(status, [])
    assert plan.create_pods == [0, 1]
    _, status = step(status, running(gen=1))
    assert status["phase"] == "Running"
    assert cond.is_true(status["conditions"], cond.RUNNING)
    assert not cond.is_true(status["conditions"], cond.RESTARTING)


def test_backoff_limit_exhausted_fails_and_stops_running_pods():
    status = {"restarts": 1, "phase": "Running"}
    plan, status = step(status, [pod(0, gen=1), pod(1, "Failed", gen=1, exit_code=3)], runPolicy={"backoffLimit": 1})
    assert status["phase"] == "Failed"
    failed = cond.find(status["conditions"], cond.FAILED)
    assert failed["reason"] == cond.REASON_BACKOFF_LIMIT_EXCEEDED
    assert "digits-worker-1 failed with exit code 3" in failed["message"]
    assert "backoffLimit 1" in failed["message"]
    assert plan.delete_pods == ["digits-worker-0"]  # the running one; the failed pod stays for its logs
    assert status["completionTime"]


def test_backoff_limit_stops_running_pods_even_with_clean_pod_policy_none():
    status = {"restarts": 0}
    plan, _ = step(
        status, [pod(0), pod(1, "Failed", exit_code=1)], runPolicy={"backoffLimit": 0, "cleanPodPolicy": "None"}
    )
    assert plan.delete_pods == ["digits-worker-0"]


def test_success_and_clean_pod_policy():
    _, status = step()
    plan, status = step(status, [pod(0, "Succeeded"), pod(1, "Running")])
    assert status["phase"] == "Succeeded"
    assert plan.delete_pods == ["digits-worker-1"]  # cleanPodPolicy Running (default)
    plan, _ = step(status, [pod(0, "Succeeded"), pod(1, "Succeeded")], runPolicy={"cleanPodPolicy": "All"})
    assert sorted(plan.delete_pods) == ["digits-worker-0", "digits-worker-1"]
    plan, _ = step(status, [pod(0, "Succeeded"), pod(1, "Running")], runPolicy={"cleanPodPolicy": "None"})
    assert plan.delete_pods == []


def test_finished_job_is_frozen():
    _, status = step()
    _, status = step(status, [pod(0, "Succeeded"), pod(1, "Succeeded")])
    plan, after = step(status, [pod(0, "Failed", exit_code=1)])
    assert after["phase"] == "Succeeded" and plan.create_pods == []


def test_ttl_after_finished():
    _, status = step()
    _, status = step(status, [pod(0, "Succeeded")], runPolicy={"ttlSecondsAfterFinished": 30})
    plan, _ = step(status, [], now=NOW + timedelta(seconds=10), runPolicy={"ttlSecondsAfterFinished": 30})
    assert not plan.delete_job and plan.requeue_after_seconds == 20
    plan, _ = step(status, [], now=NOW + timedelta(seconds=31), runPolicy={"ttlSecondsAfterFinished": 30})
    assert plan.delete_job


def test_active_deadline():
    _, status = step(runPolicy={"activeDeadlineSeconds": 60})
    plan, status2 = step(status, running(), now=NOW + timedelta(seconds=30), runPolicy={"activeDeadlineSeconds": 60})
    assert status2["phase"] == "Running" and plan.requeue_after_seconds == 30
    plan, status3 = step(status2, running(), now=NOW + timedelta(seconds=61), runPolicy={"activeDeadlineSeconds": 60})
    assert status3["phase"] == "Failed"
    assert cond.find(status3["conditions"], cond.FAILED)["reason"] == cond.REASON_DEADLINE_EXCEEDED
    assert sorted(plan.delete_pods) == ["digits-worker-0", "digits-worker-1"]


def test_suspend_and_resume():
    _, status = step()
    _, status = step(status, running())
    plan, status = step(status, running(), suspend=True)
    assert status["phase"] == "Suspended" and sorted(plan.delete_pods) == ["digits-worker-0", "digits-worker-1"]
    assert cond.is_true(status["conditions"], cond.SUSPENDED)
    assert "startTime" not in status
    plan, status = step(status, [], suspend=True)
    assert plan.create_pods == [] and plan.events == []
    plan, status = step(status, [], now=NOW + timedelta(minutes=5))
    assert plan.create_pods == [0, 1]
    assert not cond.is_true(status["conditions"], cond.SUSPENDED)
    assert status["startTime"] == "2026-01-01T12:05:00Z"
    assert status["phase"] == "Pending"


def test_invalid_spec_fails_without_pods_and_recovers_when_fixed():
    plan, status = step(replicas=0)
    assert status["phase"] == "Failed"
    invalid = cond.find(status["conditions"], cond.INVALID)
    assert invalid["status"] == "True" and "spec.replicas" in invalid["message"]
    assert plan.create_pods == [] and not plan.ensure_children
    plan, status = step(status, generation=2)
    assert status["phase"] == "Pending" and plan.create_pods == [0, 1]
    assert not cond.is_true(status["conditions"], cond.INVALID)
    assert not cond.is_true(status["conditions"], cond.FAILED)


def test_scale_down_deletes_extra_pods():
    _, status = step()
    plan, _ = step(status, running(3), replicas=2)
    assert plan.delete_pods == ["digits-worker-2"]


def test_events_only_on_transitions():
    plan, status = step()
    assert [e.reason for e in plan.events] == ["JobCreated"]
    plan, status = step(status, running())
    assert [e.reason for e in plan.events] == ["PodsRunning"]
    plan, status = step(status, running())
    assert plan.events == []


def test_pod_view_reads_exit_codes():
    view = PodView.from_pod(
        {
            "metadata": {"name": "p", "labels": {"i": "2"}, "annotations": {"g": "3"}, "deletionTimestamp": "x"},
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "trainer", "state": {"terminated": {"exitCode": 42, "reason": "Error"}}}
                ],
            },
        },
        "i",
        "g",
    )
    assert (view.index, view.gang_generation, view.exit_code, view.reason, view.terminating) == (
        2,
        3,
        42,
        "Error",
        True,
    )


def test_workers_finishing_before_worker_0_keep_the_job_running():
    _, status = step()
    _, status = step(status, running())
    plan, status = step(status, [pod(0, "Running"), pod(1, "Succeeded")])
    assert status["phase"] == "Running" and plan.create_pods == [] and plan.events == []


# ----- graceful deletion: a new generation only once the old one is gone from the API -----------------


def observe_with(status, pods, **fields):
    """An observation with the energy policies' fields (hold, recreate, ...) set."""
    return dataclasses.replace(observe(status, pods), **fields)


def restarted_status():
    """The status right after a gang restart was decided (both old pods deleted, restarts = 1)."""
    _, status = step()
    _, status = step(status, running())
    plan, status = step(status, [pod(0), pod(1, "Failed", exit_code=1)])
    assert status["restarts"] == 1 and plan.create_pods == []
    return status


def test_no_new_worker_while_the_old_worker_0_is_still_terminating():
    status = restarted_status()
    # worker 1 (failed) went at once; worker 0 is still on its node, stopping within its grace period
    plan, status = step(status, [pod(0, "Running", terminating=True)])
    assert plan.create_pods == [] and plan.delete_pods == []  # deleted once already: not deleted again
    assert status["phase"] == "Restarting"
    assert status["replicaStatuses"]["Worker"] == {
        "active": 0, "pending": 0, "succeeded": 0, "failed": 0, "terminating": 1
    }
    # its phase may turn terminal while it terminates (the kubelet reports the exit): still not a new failure
    plan, status = step(status, [pod(0, "Failed", terminating=True, exit_code=143)])
    assert plan.create_pods == [] and status["restarts"] == 1 and status["phase"] == "Restarting"
    plan, status = step(status, [])
    assert plan.create_pods == [0, 1]
    assert status["replicaStatuses"]["Worker"]["pending"] == 2
    assert status["replicaStatuses"]["Worker"]["terminating"] == 0


def test_a_terminating_pod_of_the_new_generation_blocks_creation_too():
    # a stray terminating pod of the current generation (deleted by hand) beside a missing one
    status = restarted_status()
    plan, status = step(status, [pod(1, "Pending", gen=1, terminating=True)])
    assert plan.create_pods == []
    plan, status = step(status, [])
    assert plan.create_pods == [0, 1]


def test_resume_waits_until_the_suspended_pods_are_gone():
    _, status = step()
    _, status = step(status, running())
    plan, status = step(status, running(), suspend=True)
    assert sorted(plan.delete_pods) == ["digits-worker-0", "digits-worker-1"]
    terminating = [pod(0, terminating=True), pod(1, terminating=True)]
    plan, status = step(status, terminating, suspend=True)
    assert status["phase"] == "Suspended" and status["replicaStatuses"]["Worker"]["terminating"] == 2
    plan, status = step(status, terminating[:1])  # resumed while worker 0 still terminates
    assert plan.create_pods == [] and not cond.is_true(status["conditions"], cond.SUSPENDED)
    plan, status = step(status, [])
    assert plan.create_pods == [0, 1]


def test_a_reschedule_deletes_the_gang_and_recreates_it_only_once_it_is_gone():
    _, status = step()
    _, status = step(status, running())
    plan = reconcile(observe_with(status, running(), recreate=True, rescheduling=True))
    assert sorted(plan.delete_pods) == ["digits-worker-0", "digits-worker-1"] and plan.create_pods == []
    status = plan.status
    assert status["phase"] == "Rescheduling"
    plan = reconcile(observe_with(status, [pod(0, terminating=True)], rescheduling=True))
    assert plan.create_pods == [] and plan.status["phase"] == "Rescheduling"
    plan = reconcile(observe_with(plan.status, [], rescheduling=True))
    assert plan.create_pods == [0, 1]
    assert plan.status["restarts"] == 0  # a move is not a restart


def test_a_pause_resumes_only_once_the_paused_pods_are_gone():
    _, status = step()
    _, status = step(status, running())
    plan = reconcile(observe_with(status, running(), hold="Paused"))
    assert plan.status["phase"] == "Paused" and len(plan.delete_pods) == 2
    plan = reconcile(observe_with(plan.status, [pod(1, terminating=True)]))
    assert plan.create_pods == []
    plan = reconcile(observe_with(plan.status, []))
    assert plan.create_pods == [0, 1]


def test_scale_down_creates_nothing_while_the_extra_pod_goes():
    _, status = step()
    plan, status = step(status, [pod(0), pod(2)])  # worker 1 missing, worker 2 beyond the new size
    assert plan.delete_pods == ["digits-worker-2"] and plan.create_pods == []
    plan, status = step(status, [pod(0), pod(2, terminating=True)])
    assert plan.create_pods == []
    plan, status = step(status, [pod(0)])
    assert plan.create_pods == [1]
