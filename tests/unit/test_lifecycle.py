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


# ----- identity: pods of another job (same name, another UID, or no owner) are never the job's --------------

import pytest  # noqa: E402

from etj_operator import builders  # noqa: E402

OLD_JOB = "uid-of-the-deleted-job"


def foreign(index, phase="Succeeded", owner=OLD_JOB, terminating=False, exit_code=None):
    """A pod under the job's labels that it does not own (an older job's, or an orphan when owner is None)."""
    return dataclasses.replace(pod(index, phase, terminating=terminating, exit_code=exit_code), owner_uid=owner)


def step_beside(status, pods, others, **kw):
    plan = reconcile(dataclasses.replace(observe(status, pods, **kw), foreign_pods=list(others)))
    return plan, plan.status


@pytest.mark.parametrize(
    ("others", "blocks"),
    [
        ([foreign(0, "Succeeded")], True),  # the old job's finished worker 0: its name is the new worker 0's
        ([foreign(1, "Failed", exit_code=1)], True),  # a finished pod holding a gang name
        ([foreign(0, "Running", terminating=True)], True),  # being garbage-collected, still on its node
        ([foreign(0, "Running", owner=None)], True),  # an orphan (kubectl delete --cascade=orphan)
        ([foreign(5, "Running", owner=None)], True),  # no gang name, but it runs under the job's DNS names
        ([foreign(5, "Succeeded")], False),  # finished, and holds no name of this gang
        ([], False),
    ],
    ids=["finished-worker-0", "failed-worker-1", "terminating", "orphan", "running-beyond-the-gang",
         "finished-beyond-the-gang", "none"],
)
def test_foreign_pods_are_never_counted_and_block_the_gang_while_they_hold_its_names(others, blocks):
    plan, status = step_beside(None, [], others)
    assert status["phase"] == "Pending"  # never Succeeded or Failed from another job's pods
    assert status["replicaStatuses"]["Worker"] == {
        "active": 0, "pending": 0 if blocks else 2, "succeeded": 0, "failed": 0, "terminating": 0
    }
    assert plan.delete_pods == []  # another job's pods are left to the garbage collector (or the user)
    assert plan.create_pods == ([] if blocks else [0, 1])
    assert cond.is_true(status["conditions"], cond.POD_NAME_TAKEN) is blocks
    warnings = [e for e in plan.events if e.reason == cond.REASON_POD_NAME_TAKEN]
    assert len(warnings) == (1 if blocks else 0)
    if blocks:
        assert warnings[0].type == "Warning"
        victim = others[0]
        assert victim.name in warnings[0].message
        assert (f"uid {OLD_JOB}" if victim.owner_uid else "no owner") in warnings[0].message
        assert "no worker pod is created until they are deleted" in warnings[0].message


def test_one_warning_per_blocking_episode_then_the_gang_runs_once_the_names_are_free():
    old = [foreign(0, "Succeeded"), foreign(1, "Succeeded")]
    plan, status = step_beside(None, [], old)
    assert [e.reason for e in plan.events] == ["PodNameTaken", "JobCreated"] and plan.ensure_children
    plan, status = step_beside(status, [], old)  # the collector has not come yet: no second Warning
    assert plan.events == [] and plan.create_pods == [] and status["phase"] == "Pending"
    plan, status = step_beside(status, [], [foreign(0, "Succeeded", terminating=True)])
    assert plan.events == [] and plan.create_pods == []
    plan, status = step_beside(status, [], [])  # gone: the new gang is created
    assert plan.create_pods == [0, 1]
    taken = cond.find(status["conditions"], cond.POD_NAME_TAKEN)
    assert taken["status"] == "False" and taken["reason"] == cond.REASON_POD_NAMES_FREE
    plan, status = step_beside(status, [], [foreign(0, "Running", owner=None)])  # a new episode: a new Warning
    assert [e.reason for e in plan.events] == ["PodNameTaken"]


# ----- spec changes: a pod of another world takes its whole gang with it ------------------------------------


def world(**spec):
    return tuple(sorted(builders.world_of(parse_spec(job_manifest(**spec)["spec"], "digits")).items()))


def at(pods, **spec):
    """The pods as made for the spec ``job_manifest(**spec)`` (their world annotation)."""
    return [dataclasses.replace(p, world=world(**spec)) for p in pods]


def running_status(**spec):
    _, status = step(**spec)
    _, status = step(status, at(running(spec.get("replicas", 2)), **spec), **spec)
    assert status["phase"] == "Running"
    return status


def test_replicas_2_to_3_on_a_running_gang_replaces_the_whole_gang_once_it_is_gone():
    status = running_status(replicas=2)
    old = at(running(2), replicas=2)
    plan, status = step(status, old, replicas=3)
    assert sorted(plan.delete_pods) == ["digits-worker-0", "digits-worker-1"]
    assert plan.create_pods == []  # no third pod beside a 2-node world
    assert status["phase"] == "Restarting" and status["restarts"] == 0  # not a failure: no backoffLimit spent
    restarting = cond.find(status["conditions"], cond.RESTARTING)
    assert restarting["status"] == "True" and restarting["reason"] == cond.REASON_SPEC_CHANGED
    assert restarting["message"].startswith("replicas 2 -> 3: restarting the gang with the new world")
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "SpecChanged")]
    # the deletes are not in the index yet: the same decision, no second Event, nothing created
    plan, status = step(status, old, replicas=3)
    assert plan.events == [] and plan.create_pods == []
    plan, status = step(status, [dataclasses.replace(p, terminating=True) for p in old], replicas=3)
    assert plan.create_pods == [] and status["phase"] == "Restarting"
    plan, status = step(status, [], replicas=3)
    assert plan.create_pods == [0, 1, 2]
    plan, status = step(status, at(running(3), replicas=3), replicas=3)
    assert status["phase"] == "Running" and status["restarts"] == 0
    assert not cond.is_true(status["conditions"], cond.RESTARTING) and plan.delete_pods == []


def test_a_half_applied_world_is_replaced_whole():
    # as an operator without worlds left it: a third pod for 3 nodes beside a running 2-node gang
    status = running_status(replicas=3)
    mixed = at(running(2), replicas=2) + at([pod(2)], replicas=3)
    plan, status = step(status, mixed, replicas=3)
    assert sorted(plan.delete_pods) == [f"digits-worker-{i}" for i in range(3)] and plan.create_pods == []
    assert "replicas 2 -> 3" in cond.find(status["conditions"], cond.RESTARTING)["message"]


@pytest.mark.parametrize(
    ("before", "after", "restart", "says"),
    [
        ({"replicas": 3}, {"replicas": 2}, True, "replicas 3 -> 2"),
        ({}, {"nprocPerNode": 4}, True, "nprocPerNode 1 -> 4"),
        ({}, {"checkpoint": {"path": "/ckpt"}}, True, "checkpoint changed"),
        ({}, {"energy": {"power": {"mode": "Fixed", "limitWatts": 300}}}, True, "energy.power changed"),
        ({}, {"energy": {"power": {"budgetWatts": 900}}}, True, "energy.power changed"),  # SYS_ADMIN now
        ({"energy": {"power": {"budgetWatts": 900}}}, {"energy": {"power": {"budgetWatts": 600}}}, False, ""),
        ({}, {"elastic": {"minReplicas": 1, "maxReplicas": 4}}, True, "elastic off -> 1:4:3"),
        ({}, {"runPolicy": {"backoffLimit": 9, "activeDeadlineSeconds": 3600}}, False, ""),
        ({}, {"energy": {"energyBudget": {"kilowattHours": 2}}}, False, ""),
        ({}, {"energy": {"placement": {"preferredNodePools": ["green"]}}}, False, ""),
        ({}, {"energy": {"telemetry": {"source": "Direct"}}}, False, ""),
    ],
    ids=["scale-down", "nproc", "checkpoint", "power-mode", "budget-set", "budget-value", "elastic-on",
         "run-policy", "energy-budget", "placement", "telemetry"],
)
def test_what_a_spec_change_on_a_running_job_does(before, after, restart, says):
    replicas = before.get("replicas", 2)
    status = running_status(**before)
    pods = at(running(replicas), **before)
    plan, status = step(status, pods, **{**before, **after})
    if restart:
        assert len(plan.delete_pods) == replicas and plan.create_pods == []
        assert status["phase"] == "Restarting" and status["restarts"] == 0
        assert says in cond.find(status["conditions"], cond.RESTARTING)["message"]
    else:
        assert plan.delete_pods == [] and plan.create_pods == [] and status["phase"] == "Running"
        assert not any(e.reason == "SpecChanged" for e in plan.events)


def test_a_template_change_says_so_and_names_no_digest():
    status = running_status()
    template = job_manifest()["spec"]["template"]
    template["spec"]["containers"][0]["image"] = "example.org/etj-workload:v2"
    _, status = step(status, at(running()), template=template)
    message = cond.find(status["conditions"], cond.RESTARTING)["message"]
    assert message.startswith("template changed: restarting the gang")
    assert "no spec.checkpoint" in message  # said when there is nothing to resume from


def test_pods_without_a_world_are_current_so_an_operator_upgrade_restarts_nothing():
    status = running_status()
    plan, status = step(status, running(), replicas=2, nprocPerNode=4)  # pods of an older operator
    assert plan.delete_pods == [] and status["phase"] == "Running"


def test_a_field_one_side_does_not_know_is_no_change():
    status = running_status()
    pods = [dataclasses.replace(p, world=(("nprocPerNode", "1"),)) for p in running()]  # fewer fields
    plan, status = step(status, pods)
    assert plan.delete_pods == [] and status["phase"] == "Running"


def test_scaling_an_elastic_job_adds_or_removes_pods_without_a_restart():
    elastic = {"elastic": {"minReplicas": 1, "maxReplicas": 4}}
    status = running_status(replicas=2, **elastic)
    plan, status = step(status, at(running(2), replicas=2, **elastic), replicas=3, **elastic)
    assert plan.delete_pods == [] and plan.create_pods == [2]  # c10d rendezvous takes the new node
    status = running_status(replicas=3, **elastic)
    plan, status = step(status, at(running(3), replicas=3, **elastic), replicas=2, **elastic)
    assert plan.delete_pods == ["digits-worker-2"] and plan.create_pods == []
    assert not any(e.reason == "SpecChanged" for e in plan.events)


def test_a_pod_of_the_old_world_failing_is_no_restart():
    status = running_status(replicas=2)
    old = at([pod(0), pod(1, "Failed", exit_code=143)], replicas=2)
    plan, status = step(status, old, replicas=3)
    assert status["restarts"] == 0 and status["phase"] == "Restarting" and len(plan.delete_pods) == 2
    assert cond.find(status["conditions"], cond.RESTARTING)["reason"] == cond.REASON_SPEC_CHANGED


def test_the_world_annotation_is_read_from_the_pod():
    annotation = builders.format_world(builders.world_of(parse_spec(job_manifest()["spec"], "digits")))
    body = {"metadata": {"name": "p", "labels": {"i": "0"}, "annotations": {"g": "0", "w": annotation}}}
    assert PodView.from_pod(body, "i", "g", "w").world == world()
    assert PodView.from_pod(body, "i", "g").world == ()  # no annotation name: unknown, i.e. current


# ----- env collisions ---------------------------------------------------------------------------------------


def test_the_variables_the_operator_replaces_are_named_once_per_generation():
    template = job_manifest()["spec"]["template"]
    template["spec"]["containers"][0]["env"] = [
        {"name": "RANK", "value": "7"},
        {"name": "KEEP_ME", "value": "1"},
        {"name": "MASTER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    plan, status = step(template=template)
    overridden = [e for e in plan.events if e.reason == cond.REASON_ENV_OVERRIDDEN]
    assert len(overridden) == 1 and overridden[0].type == "Warning"
    assert "MASTER_ADDR, RANK" in overridden[0].message and "KEEP_ME" not in overridden[0].message
    plan, status = step(status, template=template)  # the same generation: said already
    assert not any(e.reason == cond.REASON_ENV_OVERRIDDEN for e in plan.events)
    plan, status = step(status, generation=2, template=template)  # a new generation: said again
    assert [e.reason for e in plan.events if e.reason == cond.REASON_ENV_OVERRIDDEN] == ["EnvOverridden"]
    plan, _ = step()  # the default template sets none of them
    assert not any(e.reason == cond.REASON_ENV_OVERRIDDEN for e in plan.events)
