"""etj_operator.kueue (pure): the Workload the operator makes, how an admission places the pods, and each step of
the integration's decision, alone and through the whole pass (jobpass.decide_pass)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etj_contract import KUEUE, ControlSection, KueueSection, PolicySection, WorkloadReport
from etj_operator import conditions as cond
from etj_operator import contract as c
from etj_operator import kueue
from etj_operator.builders import JobRef, build_worker_pod
from etj_operator.jobpass import PassObservation, decide_pass
from etj_operator.lifecycle import PodView
from etj_operator.models import parse_spec

from jobs import job_manifest

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
UID = "uid-digits"
JOB = JobRef("digits", "default", UID, {c.LABEL_KUEUE_QUEUE: "team-a"})


def spec_of(**overrides: Any):
    body = job_manifest("digits", **overrides)
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 2}}
    return parse_spec(body["spec"], "digits")


def workload(spec=None, *, conditions: tuple[tuple[str, str, str, str], ...] = (), admission: dict | None = None,
             checks: list | None = None) -> dict[str, Any]:
    wl = kueue.build_workload(JOB, spec or spec_of(), "team-a")
    wl["metadata"].update(uid="wl-uid", resourceVersion="7", generation=1)
    status: dict[str, Any] = {"conditions": [
        {"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": "2026-12-01T11:00:00Z"}
        for t, s, r, m in conditions]}
    if admission is not None:
        status["admission"] = admission
    if checks is not None:
        status["admissionChecks"] = checks
    wl["status"] = status
    return wl


ADMISSION = {"clusterQueue": "cq", "podSetAssignments": [
    {"name": "worker", "flavors": {"nvidia.com/gpu": "h100", "cpu": "default"}, "resourceUsage": {}, "count": 2}]}
ADMITTED = (("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue cq"),
            ("Admitted", "True", "Admitted", "The workload is admitted"))
FLAVORS = {
    "h100": {"metadata": {"name": "h100"}, "spec": {"nodeLabels": {"pool": "h100", "zone": "a"},
                                                    "tolerations": [{"key": "gpu", "operator": "Exists"}]}},
    "default": {"metadata": {"name": "default"}, "spec": {"nodeLabels": {"zone": "b", "arch": "x86"}}},
}
EVICTED = ("Evicted", "True", "Preempted", "Preempted to accommodate a workload")


def pods(phase: str = "Running", terminating: bool = False, n: int = 2) -> list[PodView]:
    return [PodView(f"digits-worker-{i}", i, 0, phase, terminating=terminating, uid=f"p{i}", owner_uid=UID)
            for i in range(n)]


def decide(view: kueue.KueueView, status: dict | None = None, spec=None, live=(), report=None,
           now: datetime = T0, timeout: float = 120.0) -> tuple[kueue.KueueStep, dict[str, Any]]:
    status = copy.deepcopy(status or {})
    step = kueue.decide(view, JOB, spec or spec_of(), status, list(live), now=now, generation=1,
                        report=report or WorkloadReport(), checkpoint_timeout_seconds=timeout)
    return step, status


def queued(status: dict[str, Any]) -> dict[str, Any]:
    return cond.find(status.get("conditions") or [], cond.QUEUED) or {}


# ----- the Workload ------------------------------------------------------------------------------------------


def test_the_workload_name_is_the_jobs_and_its_uids_and_fits_a_label_value():
    name = kueue.workload_name("digits", UID)
    assert name == kueue.workload_name("digits", UID) and name.startswith("etj-digits-")
    assert name != kueue.workload_name("digits", "another-uid")
    assert len(kueue.workload_name("a" * 51, UID)) <= 63


def test_the_workload_is_owned_by_the_job_with_one_pod_set_of_the_templates_requests():
    spec = spec_of(replicas=3)
    job = JobRef("digits", "default", UID, {c.LABEL_KUEUE_QUEUE: "team-a", kueue.LABEL_PRIORITY_CLASS: "urgent"})
    priority = kueue.Priority(kueue.PriorityClassRef("kueue.x-k8s.io", "WorkloadPriorityClass", "urgent"), 100)
    wl = kueue.build_workload(job, spec, "team-a", priority)
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["kind"] == "Workload"
    meta = wl["metadata"]
    assert meta["ownerReferences"][0]["uid"] == UID and meta["ownerReferences"][0]["controller"] is True
    assert meta["labels"][c.LABEL_JOB_NAME] == "digits" and meta["labels"][kueue.LABEL_JOB_UID] == UID
    assert meta["labels"][kueue.LABEL_PRIORITY_CLASS] == "urgent"
    assert meta["annotations"][kueue.ANNOTATION_PODSET_DIGEST] == kueue.podset_digest(spec, "team-a")
    assert wl["spec"]["queueName"] == "team-a"
    assert wl["spec"]["priority"] == 100
    assert wl["spec"]["priorityClassRef"] == {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass",
                                              "name": "urgent"}
    [pod_set] = wl["spec"]["podSets"]
    assert pod_set["name"] == "worker" and pod_set["count"] == 3 and "minCount" not in pod_set
    assert pod_set["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 2}


def test_an_elastic_job_that_may_start_smaller_asks_for_partial_admission():
    assert kueue.pod_set(spec_of(replicas=3, elastic={"minReplicas": 1, "maxReplicas": 4}))["minCount"] == 1
    assert "minCount" not in kueue.pod_set(spec_of(replicas=2, elastic={"minReplicas": 2, "maxReplicas": 4}))


def test_the_pod_set_template_keeps_labels_and_annotations_but_not_kueues_pod_integration():
    template = job_manifest("x")["spec"]["template"]
    template["metadata"] = {"labels": {"app": "x", c.LABEL_KUEUE_QUEUE: "q", kueue.LABEL_POD_GROUP: "g"},
                            "annotations": {kueue.ANNOTATION_POD_GROUP_TOTAL: "2", "note": "n"}, "name": "ignored"}
    meta = kueue.pod_set(spec_of(template=template))["template"]["metadata"]
    assert meta == {"labels": {"app": "x"}, "annotations": {"note": "n"}}


def test_the_priority_class_is_the_labels_then_the_templates():
    labels = {kueue.LABEL_PRIORITY_CLASS: "urgent"}
    template = job_manifest("x")["spec"]["template"]
    template["spec"]["priorityClassName"] = "gold"
    assert kueue.priority_class_of(labels, spec_of(template=template)).kind == "WorkloadPriorityClass"
    ref = kueue.priority_class_of({}, spec_of(template=template))
    assert (ref.group, ref.kind, ref.name) == ("scheduling.k8s.io", "PriorityClass", "gold")
    assert kueue.priority_class_of({}, spec_of()) is None
    missing = kueue.priority_from(ref, None)
    assert isinstance(missing, str) and "PriorityClass 'gold'" in missing and "priorityClassName" in missing
    assert isinstance(kueue.priority_from(ref, {"value": "high"}), str)
    assert kueue.priority_from(ref, {"value": 7}) == kueue.Priority(ref, 7)


# ----- the placement ---------------------------------------------------------------------------------------------


def test_the_admissions_flavors_give_node_selectors_and_tolerations_first_flavor_first():
    wl = workload(conditions=ADMITTED, admission=ADMISSION)
    where = kueue.placement(wl, FLAVORS, spec_of())
    assert isinstance(where, kueue.Placement)
    assert where.cluster_queue == "cq" and where.count == 2
    # flavors by name: "default" before "h100"; between flavors the first value of a key wins
    assert where.node_selector == {"zone": "b", "arch": "x86", "pool": "h100"}
    assert where.tolerations == ({"key": "gpu", "operator": "Exists"},)


def test_a_template_selector_that_disagrees_with_the_flavor_is_a_conflict_and_one_that_agrees_is_not():
    template = job_manifest("x")["spec"]["template"]
    template["spec"]["nodeSelector"] = {"pool": "h100"}
    wl = workload(conditions=ADMITTED, admission={"clusterQueue": "cq", "podSetAssignments": [
        {"name": "worker", "flavors": {"nvidia.com/gpu": "h100"}, "count": 2}]})
    where = kueue.placement(wl, FLAVORS, spec_of(template=template))
    assert isinstance(where, kueue.Placement) and where.node_selector == {"zone": "a"}  # pool already there
    template["spec"]["nodeSelector"] = {"pool": "a100"}
    problem = kueue.placement(wl, FLAVORS, spec_of(template=template))
    assert isinstance(problem, kueue.PlacementProblem) and problem.permanent
    assert "pool=h100" in problem.message and "pool=a100" in problem.message


def test_an_unknown_flavor_waits():
    wl = workload(conditions=ADMITTED, admission=ADMISSION)
    problem = kueue.placement(wl, {"h100": FLAVORS["h100"]}, spec_of())
    assert isinstance(problem, kueue.PlacementProblem) and not problem.permanent
    assert problem.reason == kueue.REASON_FLAVOR_NOT_FOUND and "default" in problem.message


def test_ready_admission_checks_add_their_pod_set_updates_pending_ones_do_not():
    update = {"name": "worker", "nodeSelector": {"provisioned": "yes"}, "labels": {"l": "1"},
              "annotations": {"a": "2"}, "tolerations": [{"key": "prov", "operator": "Exists"}]}
    checks = [
        {"name": "prov", "state": "Ready", "message": "", "lastTransitionTime": "x", "podSetUpdates": [update]},
        {"name": "later", "state": "Pending", "message": "", "lastTransitionTime": "x",
         "podSetUpdates": [{"name": "worker", "nodeSelector": {"not": "yet"}}]},
    ]
    where = kueue.placement(workload(conditions=ADMITTED, admission=ADMISSION, checks=checks), FLAVORS, spec_of())
    assert where.node_selector["provisioned"] == "yes" and "not" not in where.node_selector
    assert where.labels == {"l": "1"} and where.annotations == {"a": "2"}
    assert {"key": "prov", "operator": "Exists"} in where.tolerations


def test_shaping_a_pod_adds_the_placement_and_drops_kueues_pod_integration_labels():
    template = job_manifest("x")["spec"]["template"]
    template["metadata"] = {"labels": {c.LABEL_KUEUE_QUEUE: "q", kueue.LABEL_POD_GROUP: "g", "app": "x"}}
    template["spec"]["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
    spec = spec_of(template=template)
    where = kueue.placement(workload(spec, conditions=ADMITTED, admission=ADMISSION), FLAVORS, spec)
    pod = build_worker_pod(JOB, spec, 0, 0)
    kueue.shape_pod(pod, where)
    labels = pod["metadata"]["labels"]
    assert c.LABEL_KUEUE_QUEUE not in labels and kueue.LABEL_POD_GROUP not in labels and labels["app"] == "x"
    assert pod["spec"]["nodeSelector"] == {"zone": "b", "arch": "x86", "pool": "h100"}
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}]  # once
    assert labels[c.LABEL_JOB_NAME] == "digits"


# ----- the decision ------------------------------------------------------------------------------------------


def test_without_a_workload_one_is_made_and_the_job_waits():
    step, status = decide(kueue.KueueView("team-a"))
    assert step.queued and step.managed and step.placement is None
    assert step.writes.create is not None and step.writes.create["metadata"]["name"] == kueue.workload_name(
        "digits", UID)
    assert queued(status)["status"] == "True" and queued(status)["reason"] == kueue.REASON_WORKLOAD_CREATED
    assert [e.reason for e in step.events] == [kueue.REASON_WORKLOAD_CREATED]
    section = KueueSection.from_status(status[KUEUE])
    assert section.queue_name == "team-a" and not section.admitted and section.workload_name
    again, _ = decide(kueue.KueueView("team-a"), status)  # the informer has not shown it yet: no second Event
    assert again.writes.create is not None and again.events == []


def test_an_unreadable_priority_class_keeps_the_job_queued_without_a_workload():
    step, status = decide(kueue.KueueView("team-a", priority_problem="PriorityClass 'gold' does not exist"))
    assert step.queued and step.writes.create is None
    assert queued(status)["reason"] == kueue.REASON_PRIORITY_CLASS_NOT_FOUND and "gold" in queued(status)["message"]


def test_a_pending_workload_shows_kueues_reason_and_message():
    wl = workload(conditions=(("QuotaReserved", "False", "Pending", "couldn't assign flavors: 1 more needed"),))
    step, status = decide(kueue.KueueView("team-a", wl))
    assert step.queued and step.writes.empty
    said = (queued(status)["reason"], queued(status)["message"])
    assert said == ("Pending", "couldn't assign flavors: 1 more needed")
    reserved = workload(conditions=(ADMITTED[0], ("Admitted", "False", "UnsatisfiedChecks", "waiting for prov")),
                        admission=ADMISSION)
    step, status = decide(kueue.KueueView("team-a", reserved, FLAVORS))
    assert step.queued and queued(status)["reason"] == "UnsatisfiedChecks"


def test_an_admitted_workload_runs_the_job_placed_and_says_so_once():
    wl = workload(conditions=ADMITTED, admission=ADMISSION)
    step, status = decide(kueue.KueueView("team-a", wl, FLAVORS))
    assert not step.queued and step.placement is not None and step.replicas is None
    assert queued(status)["status"] == "False" and queued(status)["reason"] == kueue.REASON_ADMITTED
    section = KueueSection.from_status(status[KUEUE])
    assert section.admitted and section.cluster_queue == "cq" and section.pod_count == 2
    assert section.flavors == {"nvidia.com/gpu": "h100", "cpu": "default"}
    assert [e.reason for e in step.events] == [kueue.REASON_ADMITTED]
    again, _ = decide(kueue.KueueView("team-a", wl, FLAVORS), status)
    assert again.events == []


def test_a_partial_admission_runs_as_many_pods_as_admitted():
    spec = spec_of(replicas=3, elastic={"minReplicas": 1, "maxReplicas": 3})
    admission = copy.deepcopy(ADMISSION)
    admission["podSetAssignments"][0]["count"] = 2
    step, status = decide(kueue.KueueView("team-a", workload(spec, conditions=ADMITTED, admission=admission),
                                          FLAVORS), spec=spec)
    assert step.replicas == 2 and "2 of 3 pods" in queued(status)["message"]


def test_an_evicted_job_with_a_checkpoint_drains_before_its_pods_stop_then_is_requeued():
    spec = spec_of(checkpoint={"path": "/ckpt"})
    wl = workload(spec, conditions=(*ADMITTED, EVICTED), admission=ADMISSION)
    running = {KUEUE: KueueSection(queue_name="team-a", admitted=True).to_status()}
    step, status = decide(kueue.KueueView("team-a", wl, FLAVORS), running, spec, live=pods())
    assert not step.queued  # the pods keep running until the checkpoint
    assert ControlSection.from_status(status["control"]).checkpoint_requested == 1
    assert PolicySection.from_status(status["policy"]).drain.reason == kueue.DRAIN_EVICTION
    section = KueueSection.from_status(status[KUEUE])
    assert section.draining and section.requeues == 1 and section.reason == "Preempted"
    assert {e.reason for e in step.events} == {"Evicted", "CheckpointRequested"}

    # not yet acknowledged: still draining, nothing new asked
    waiting, status2 = decide(kueue.KueueView("team-a", wl, FLAVORS), status, spec, live=pods())
    assert not waiting.queued and waiting.events == []
    assert ControlSection.from_status(status2["control"]).checkpoint_requested == 1
    # acknowledged: the pods stop (queued), the drain record goes; the admission stays while pods exist
    report = WorkloadReport.from_status({"checkpoint": {"acknowledged": 1}})
    stop, status3 = decide(kueue.KueueView("team-a", wl, FLAVORS), status2, spec, live=pods(), report=report)
    assert stop.queued and stop.writes.status is None
    assert PolicySection.from_status(status3.get("policy")).drain is None
    assert queued(status3)["reason"] == "Preempted" and "once its pods are gone" in queued(status3)["message"]
    assert KueueSection.from_status(status3[KUEUE]).requeues == 1
    # the pods are gone: the admission is cleared as Kueue's jobframework does
    gone, _ = decide(kueue.KueueView("team-a", wl, FLAVORS), status3, spec, report=report)
    assert gone.queued and gone.writes.status is not None
    name, version, patch = gone.writes.status
    assert (name, version) == (wl["metadata"]["name"], "7") and patch["admission"] is None
    by_type = {x["type"]: x for x in patch["conditions"]}
    assert by_type["Requeued"]["status"] == "True" and by_type["Requeued"]["reason"] == "Preempted"
    assert by_type["QuotaReserved"]["status"] == "False" and by_type["QuotaReserved"]["reason"] == "Pending"
    assert by_type["Admitted"]["status"] == "False" and by_type["Admitted"]["reason"] == "NoReservation"
    assert by_type["Evicted"]["status"] == "True"  # Kueue resets it when it admits again


def test_an_evicted_job_without_a_checkpoint_stops_at_once_and_a_silent_harness_times_out():
    wl = workload(conditions=(*ADMITTED, EVICTED), admission=ADMISSION)
    running = {KUEUE: KueueSection(queue_name="team-a", admitted=True).to_status()}
    step, _ = decide(kueue.KueueView("team-a", wl, FLAVORS), running, live=pods())
    assert step.queued
    spec = spec_of(checkpoint={"path": "/ckpt"})
    first, status = decide(kueue.KueueView("team-a", wl, FLAVORS), running, spec, live=pods())
    assert not first.queued
    late, _ = decide(kueue.KueueView("team-a", wl, FLAVORS), status, spec, live=pods(),
                     now=T0 + timedelta(seconds=121))
    assert late.queued and "CheckpointTimeout" in [e.reason for e in late.events]


def test_an_outdated_workload_is_replaced_once_the_pods_are_gone():
    wl = workload(spec_of(replicas=2), conditions=ADMITTED, admission=ADMISSION)
    step, status = decide(kueue.KueueView("team-a", wl, FLAVORS), spec=spec_of(replicas=3), live=pods())
    assert step.queued and step.writes.delete is None and queued(status)["reason"] == kueue.REASON_WORKLOAD_OUTDATED
    step, _ = decide(kueue.KueueView("team-a", wl, FLAVORS), status, spec=spec_of(replicas=3))
    assert step.writes.delete == (wl["metadata"]["name"], "wl-uid")
    renamed, _ = decide(kueue.KueueView("team-b", wl, FLAVORS))  # another queue outdates it too
    assert renamed.queued and renamed.writes.delete is not None


def test_a_workload_kueue_finished_fails_the_job_one_the_operator_finished_is_replaced_when_the_job_runs_again():
    wl = workload(conditions=(("Finished", "True", "MaximumExecutionTimeExceeded", "ran too long"),))
    step, _ = decide(kueue.KueueView("team-a", wl))
    assert step.fail is not None and step.fail[0] == kueue.REASON_WORKLOAD_FINISHED and "ran too long" in step.fail[1]
    ours = workload(conditions=(("Finished", "True", "Failed", "spec.x: invalid"),))  # then the spec was fixed
    step, status = decide(kueue.KueueView("team-a", ours))
    assert step.fail is None and step.queued and step.writes.delete == (ours["metadata"]["name"], "wl-uid")
    assert queued(status)["reason"] == kueue.REASON_WORKLOAD_FINISHED


def test_a_suspended_job_gives_its_workload_back_and_a_job_without_a_queue_leaves_kueue():
    wl = workload(conditions=ADMITTED, admission=ADMISSION)
    step, status = decide(kueue.KueueView("team-a", wl), spec=spec_of(suspend=True), live=pods())
    assert not step.queued and step.writes.delete is None  # the lifecycle stops the pods first
    step, status = decide(kueue.KueueView("team-a", wl), spec=spec_of(suspend=True))
    assert step.writes.delete == (wl["metadata"]["name"], "wl-uid")
    assert KueueSection.from_status(status[KUEUE]).reason == kueue.REASON_SUSPENDED
    step, status = decide(kueue.KueueView("", wl), {KUEUE: {"queueName": "team-a", "admitted": True}})
    assert step.writes.delete is not None and not step.managed and KUEUE not in status


def test_after_the_lifecycle_a_finished_job_finishes_its_workload_and_a_running_one_reports_pods_ready():
    wl = workload(conditions=ADMITTED, admission=ADMISSION)
    view = kueue.KueueView("team-a", wl, FLAVORS)
    done = kueue.KueueStep()
    status = {"phase": "Succeeded", "conditions": [{"type": "Succeeded", "status": "True", "message": "w0 completed"}]}
    kueue.after_lifecycle(view, done, status, T0)
    _, _, patch = done.writes.status
    finished = next(x for x in patch["conditions"] if x["type"] == "Finished")
    assert (finished["status"], finished["reason"], finished["message"]) == ("True", "Succeeded", "w0 completed")
    assert len(patch["conditions"]) == 3 and "admission" not in patch

    running, _ = decide(view)
    kueue.after_lifecycle(view, running, {"phase": "Running"}, T0)
    ready = running.writes.status[2]["conditions"][-1]
    assert (ready["type"], ready["status"]) == ("PodsReady", "True")
    wl_ready = workload(conditions=(*ADMITTED, ("PodsReady", "True", "PodsReady", "all")), admission=ADMISSION)
    again, _ = decide(kueue.KueueView("team-a", wl_ready, FLAVORS))
    kueue.after_lifecycle(kueue.KueueView("team-a", wl_ready, FLAVORS), again, {"phase": "Running"}, T0)
    assert again.writes.status is None  # unchanged: nothing written


# ----- through the whole pass ---------------------------------------------------------------------------------


def body(**spec: Any) -> dict[str, Any]:
    job = job_manifest("digits", **spec)
    job["metadata"]["labels"] = {c.LABEL_KUEUE_QUEUE: "team-a"}
    job["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 2}}
    return job


def test_a_queued_job_has_no_pod_and_phase_queued_its_running_pods_are_deleted():
    result = decide_pass(PassObservation(body=body(), pods=[], now=T0, kueue=kueue.KueueView("team-a")))
    assert result.plan.status["phase"] == "Queued" and result.plan.create_pods == []
    assert result.kueue is not None and result.kueue.writes.create is not None
    running = body()
    running["status"] = {"phase": "Running", "startTime": "2026-12-01T11:00:00Z", "conditions": [
        {"type": "Running", "status": "True", "reason": "PodsRunning", "message": "",
         "lastTransitionTime": "2026-12-01T11:00:00Z"}]}
    result = decide_pass(PassObservation(body=running, pods=pods(), now=T0, kueue=kueue.KueueView("team-a")))
    assert sorted(result.plan.delete_pods) == ["digits-worker-0", "digits-worker-1"] and not result.plan.create_pods
    # as for a suspended job: the clock stops (activeDeadlineSeconds counts from the next start), nothing runs
    assert "startTime" not in result.plan.status
    assert not cond.is_true(result.plan.status["conditions"], cond.RUNNING)


def test_an_admitted_job_gets_its_pods_and_a_partial_admission_fewer():
    spec = parse_spec(body()["spec"], "digits")
    wl = workload(spec, conditions=ADMITTED, admission=ADMISSION)
    result = decide_pass(PassObservation(body=body(), pods=[], now=T0, kueue=kueue.KueueView("team-a", wl, FLAVORS)))
    assert result.plan.create_pods == [0, 1] and result.kueue.placement is not None
    elastic = body(replicas=3, elastic={"minReplicas": 1, "maxReplicas": 3})
    spec = parse_spec(elastic["spec"], "digits")
    admission = copy.deepcopy(ADMISSION)
    admission["podSetAssignments"][0]["count"] = 2
    wl = workload(spec, conditions=ADMITTED, admission=admission)
    result = decide_pass(PassObservation(body=elastic, pods=[], now=T0, kueue=kueue.KueueView("team-a", wl, FLAVORS)))
    assert result.plan.create_pods == [0, 1] and result.spec.replicas == 2


def test_without_kueue_the_queue_label_changes_nothing():
    result = decide_pass(PassObservation(body=body(), pods=[], now=T0))
    assert result.plan.create_pods == [0, 1] and result.kueue is None and KUEUE not in result.plan.status


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_job_that_finished_marks_its_workload_finished(phase):
    spec = parse_spec(body()["spec"], "digits")
    wl = workload(spec, conditions=ADMITTED, admission=ADMISSION)
    finished = body()
    final = {"type": phase, "status": "True", "reason": "X", "message": "done",
             "lastTransitionTime": "2026-12-01T11:00:00Z"}
    finished["status"] = {"phase": phase, "conditions": [final]}
    result = decide_pass(PassObservation(body=finished, pods=[], now=T0, kueue=kueue.KueueView("team-a", wl)))
    patch = result.kueue.writes.status[2]
    assert next(x for x in patch["conditions"] if x["type"] == "Finished")["reason"] == phase


def test_while_an_evicted_job_drains_no_pod_is_replaced():
    job = body(checkpoint={"path": "/ckpt"})
    spec = parse_spec(job["spec"], "digits")
    wl = workload(spec, conditions=(*ADMITTED, EVICTED), admission=ADMISSION)
    job["status"] = {"phase": "Running", KUEUE: KueueSection(queue_name="team-a", admitted=True).to_status()}
    one_left = pods(n=1)  # a worker went missing just as Kueue evicted the job
    result = decide_pass(PassObservation(body=job, pods=one_left, now=T0, kueue=kueue.KueueView("team-a", wl, FLAVORS)))
    assert KueueSection.from_status(result.plan.status[KUEUE]).draining
    assert result.plan.create_pods == [] and result.plan.status["replicaStatuses"]["Worker"]["pending"] == 0
