import dataclasses

import pytest

from etj_operator import builders
from etj_operator import contract as c
from etj_operator.models import InvalidSpecError, parse_spec

from jobs import job_manifest


def make(name="digits", labels=None, **overrides):
    body = job_manifest(name=name, namespace="ml", **overrides)
    if labels:
        body["metadata"]["labels"] = labels
    return builders.JobRef.from_body(body), parse_spec(body["spec"], name)


def trainer(pod):
    return next(x for x in pod["spec"]["containers"] if x["name"] == "trainer")


def test_children_are_owned_and_labelled():
    job, _ = make()
    for manifest in (
        builders.build_service_account(job),
        builders.build_role(job),
        builders.build_role_binding(job, "digits-etj"),
        builders.build_service(job),
        builders.build_report(job),
    ):
        meta = manifest["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"][c.LABEL_JOB_NAME] == "digits"
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "name": "digits",
            "uid": "uid-digits",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_role_is_limited_to_the_job_itself():
    job, _ = make()
    rules = builders.build_role(job)["rules"]
    assert all(rule["resourceNames"] == ["digits"] for rule in rules)
    assert {(r["resources"][0], v) for r in rules for v in r["verbs"]} == {
        (c.PLURAL, "get"),
        (c.PLURAL, "watch"),
        (c.REPORT_PLURAL, "get"),
        (f"{c.REPORT_PLURAL}/status", "patch"),
    }
    # nothing on the job's status: phase, restarts, energy, control... are the operator's alone
    assert not [r for r in rules if f"{c.PLURAL}/status" in r["resources"]]


def test_the_report_is_the_jobs_own_and_starts_empty():
    job, _ = make()
    report = builders.build_report(job)
    assert report["apiVersion"] == c.API_VERSION and report["kind"] == c.REPORT_KIND
    assert report["metadata"]["name"] == "digits" and report["metadata"]["namespace"] == "ml"
    assert report["metadata"]["labels"] == builders.child_labels(job)
    assert report["metadata"]["ownerReferences"] == [builders.owner_reference(job)]
    assert "status" not in report and "spec" not in report


def test_service_is_headless_and_publishes_unready_pods():
    job, _ = make()
    svc = builders.build_service(job)
    assert svc["metadata"]["name"] == "digits"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {c.LABEL_JOB_NAME: "digits"}


def test_worker_pod_shape():
    job, spec = make(labels={c.LABEL_KUEUE_QUEUE: "team-a"})
    pod = builders.build_worker_pod(job, spec, 1, gang_generation=2)
    meta = pod["metadata"]
    assert meta["name"] == "digits-worker-1"
    assert meta["labels"][c.LABEL_REPLICA_INDEX] == "1"
    assert meta["labels"][c.LABEL_ROLE] == c.ROLE_WORKER
    # the job's queue label stays on the job: on a pod it would make Kueue's pod integration admit pods one by one
    assert c.LABEL_KUEUE_QUEUE not in meta["labels"]
    assert meta["annotations"][c.ANNOTATION_GANG_GENERATION] == "2"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["hostname"] == "digits-worker-1"
    assert pod["spec"]["subdomain"] == "digits"
    assert pod["spec"]["serviceAccountName"] == "digits-etj"
    env = {v["name"]: v["value"] for v in trainer(pod)["env"]}
    assert env["USER_VAR"] == "kept"
    assert env[c.ENV_RANK] == "1"
    assert "securityContext" not in trainer(pod)


def test_user_env_cannot_shadow_the_operators():
    job, spec = make(
        template={"spec": {"containers": [{"name": "trainer", "image": "x", "env": [{"name": "RANK", "value": "9"}]}]}}
    )
    env = trainer(builders.build_worker_pod(job, spec, 0, 0))["env"]
    assert [v["value"] for v in env if v["name"] == "RANK"] == ["0"]


def test_sys_admin_only_when_power_is_managed():
    job, spec = make(energy={"power": {"mode": "Fixed", "limitWatts": 300}})
    pod = builders.build_worker_pod(job, spec, 0, 0)
    assert trainer(pod)["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
    job, spec = make(energy={"power": {"mode": "Unmanaged", "budgetWatts": 500}})
    assert trainer(builders.build_worker_pod(job, spec, 0, 0))["securityContext"]["capabilities"]["add"] == [
        "SYS_ADMIN"
    ]


def test_with_the_node_agent_no_trainer_gets_sys_admin():
    options = builders.PodOptions(node_agent=True)
    for power in ({"mode": "Fixed", "limitWatts": 300}, {"mode": "Unmanaged", "budgetWatts": 500},
                  {"mode": "Auto"}, {"mode": "Auto", "budgetWatts": 500}):
        job, spec = make(energy={"power": power})
        assert options.agent_enforces(spec)  # Auto too: its harness asks for candidates in its report
        shaped = trainer(builders.build_worker_pod(job, spec, 0, 0, options))
        assert "securityContext" not in shaped
        assert {"name": c.ENV_ETJ_POWER_ENFORCER, "value": c.POWER_ENFORCER_AGENT} in shaped["env"]


def test_without_the_node_agent_pods_carry_no_enforcer_variable():
    template = job_manifest()["spec"]["template"]
    template["spec"]["containers"][0]["env"] = [{"name": c.ENV_ETJ_POWER_ENFORCER, "value": "agent"}]
    job, spec = make(template=template, energy={"power": {"mode": "Fixed", "limitWatts": 300}})
    assert not builders.PodOptions().agent_enforces(spec)
    env = trainer(builders.build_worker_pod(job, spec, 0, 0))["env"]
    assert c.ENV_ETJ_POWER_ENFORCER not in {v["name"] for v in env}  # the template's is dropped: the pod enforces


def test_checkpoint_volume_is_mounted():
    job, spec = make(checkpoint={"path": "/ckpt", "volume": {"persistentVolumeClaim": {"claimName": "c"}}})
    pod = builders.build_worker_pod(job, spec, 0, 0)
    assert {"name": "etj-checkpoint", "persistentVolumeClaim": {"claimName": "c"}} in pod["spec"]["volumes"]
    assert {"name": "etj-checkpoint", "mountPath": "/ckpt"} in trainer(pod)["volumeMounts"]


def test_pods_always_run_as_the_jobs_own_service_account():
    """A template naming another ServiceAccount (team-sa, shared by two jobs) is refused by the parser; one that
    got through anyway (an older CRD, no CEL) still runs as <job>-etj, and only that is bound."""
    template = {"spec": {"serviceAccountName": "team-sa", "serviceAccount": "team-sa",
                         "containers": [{"name": "trainer", "image": "x"}]}}
    with pytest.raises(InvalidSpecError) as refused:
        make(template=template)
    fields = [p.path for p in refused.value.problems]
    assert fields == ["spec.template.spec.serviceAccountName", "spec.template.spec.serviceAccount"]
    assert all("remove" in p.fix for p in refused.value.problems)
    assert "digits-etj" in refused.value.problems[0].message
    job, spec = make()
    spec = dataclasses.replace(spec, template=template)
    pod = builders.build_worker_pod(job, spec, 0, 0)
    assert pod["spec"]["serviceAccountName"] == "digits-etj" and "serviceAccount" not in pod["spec"]
    assert builders.pod_service_account(spec, job) == "digits-etj"
    assert builders.build_role_binding(job)["subjects"] == [
        {"kind": "ServiceAccount", "name": "digits-etj", "namespace": "ml"}
    ]
    with pytest.raises(ValueError, match="digits-etj only"):
        builders.build_role_binding(job, "team-sa")


def test_a_template_may_name_the_jobs_own_service_account():
    job, spec = make(
        template={"spec": {"serviceAccountName": "digits-etj", "containers": [{"name": "trainer", "image": "x"}]}}
    )
    assert builders.build_worker_pod(job, spec, 0, 0)["spec"]["serviceAccountName"] == "digits-etj"


def test_builders_do_not_mutate_the_spec():
    job, spec = make()
    before = repr(spec.template)
    builders.build_worker_pod(job, spec, 0, 0)
    assert repr(spec.template) == before


# ----- the world annotation: what shapes the pods, from the spec alone --------------------------------------


def world_of(**overrides):
    _, spec = make(**overrides)
    return builders.world_of(spec)


def test_every_worker_pod_carries_the_spec_s_world():
    job, spec = make()
    annotations = [builders.build_worker_pod(job, spec, i, 0)["metadata"]["annotations"] for i in range(2)]
    assert {a[c.ANNOTATION_WORLD] for a in annotations} == {builders.format_world(builders.world_of(spec))}
    assert builders.parse_world(annotations[0][c.ANNOTATION_WORLD]) == builders.world_of(spec)


def test_the_world_of_a_spec_is_stable():
    # Pinned: a change here restarts every running gang when the operator is upgraded. Change it only on purpose
    # (and say so in the release notes); adding a new field is safe (fields a pod lacks are no change).
    assert builders.format_world(world_of()) == (
        "checkpoint=-,compression=-,elastic=-,nprocPerNode=1,power=e7e6ff1e023f,replicas=2,template=1390999c44b3"
    )


def test_the_world_depends_on_the_spec_only_not_on_what_the_operator_adds():
    base = world_of()
    assert world_of(name="other", labels={c.LABEL_KUEUE_QUEUE: "team-b"}) == base  # not the job's identity
    # key order of the template is not meaning: canonical JSON
    template = job_manifest()["spec"]["template"]
    container = template["spec"]["containers"][0]
    template["spec"]["containers"][0] = dict(reversed(list(container.items())))
    assert world_of(template=template) == base
    # defaults written out or left to the parser are the same world (a newer CRD filling in defaults)
    assert world_of(elastic=None, nprocPerNode=1, compression={"stages": []}) == base
    spelled = world_of(energy={"power": {"mode": "Auto"}})
    assert spelled == world_of(energy={"power": {"mode": "Auto", "auto": {"eta": 0.5, "warmupSteps": 5}}})


def test_the_world_changes_with_each_field_that_reaches_the_pods():
    base = world_of()
    changed = {
        "replicas": world_of(replicas=3),
        "nprocPerNode": world_of(nprocPerNode=2),
        "elastic": world_of(elastic={"minReplicas": 1, "maxReplicas": 4}),
        "template": world_of(template={"spec": {"containers": [{"name": "trainer", "image": "v2"}]}}),
        "checkpoint": world_of(checkpoint={"path": "/ckpt"}),
        "power": world_of(energy={"power": {"mode": "Fixed", "limitWatts": 300}}),
        "compression": world_of(
            compression={"stages": [{"name": "p", "trigger": {"epoch": 1}, "prune": {"amount": 0.5}}]}
        ),
    }
    for field, other in changed.items():
        assert other[field] != base.get(field, other[field] + "!"), field
    assert builders.world_changes(base, changed["replicas"]) == ["replicas 2 -> 3"]
    assert builders.world_changes(base, changed["template"]) == ["template changed"]
    assert builders.world_changes(base, changed["power"]) == ["energy.power changed"]
    assert "replicas" not in changed["elastic"]  # an elastic job scales without a restart
    # fields that do not reach the pods are not in the world
    assert world_of(runPolicy={"backoffLimit": 9}, energy={"energyBudget": {"kilowattHours": 3}}) == base
    assert world_of(energy={"power": {"budgetWatts": 500}}) == world_of(energy={"power": {"budgetWatts": 900}})


def test_a_world_annotation_reads_back_and_bad_pairs_are_skipped():
    world = world_of()
    assert builders.parse_world(builders.format_world(world)) == world
    assert builders.parse_world(None) == {} and builders.parse_world("") == {}
    assert builders.parse_world("replicas=2,garbage,=x,nprocPerNode=") == {"replicas": "2"}


# ----- env collisions ---------------------------------------------------------------------------------------


def test_the_replaced_user_variables_are_named_and_are_exactly_the_ones_dropped():
    template = job_manifest()["spec"]["template"]
    template["spec"]["containers"][0]["env"] = [
        {"name": "WORLD_SIZE", "value": "99"},
        {"name": "USER_VAR", "value": "kept"},
        {"name": "ETJ_CHECKPOINT_DIR", "value": "/mine"},  # generated only with spec.checkpoint
        {"name": "MASTER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    job, spec = make(template=template)
    assert builders.env_overrides(spec) == ("MASTER_ADDR", "WORLD_SIZE")
    pod = builders.build_worker_pod(job, spec, 0, 0)
    env = trainer(pod)["env"]
    names = [v["name"] for v in env]
    assert len(names) == len(set(names))
    user_left = {v["name"] for v in env if v["name"] not in builders.generated_env_names(spec)}
    assert user_left == {"USER_VAR", "ETJ_CHECKPOINT_DIR"}
    assert next(v for v in env if v["name"] == "WORLD_SIZE")["value"] == "2"
    _, with_checkpoint = make(template=template, checkpoint={"path": "/ckpt"})
    assert builders.env_overrides(with_checkpoint) == ("ETJ_CHECKPOINT_DIR", "MASTER_ADDR", "WORLD_SIZE")
    _, plain = make()
    assert builders.env_overrides(plain) == ()


def test_a_template_that_names_the_power_enforcer_is_told_it_was_replaced():
    """Only the operator says who enforces the caps: the template's ETJ_POWER_ENFORCER goes, and is named."""
    template = job_manifest()["spec"]["template"]
    template["spec"]["containers"][0]["env"] = [{"name": c.ENV_ETJ_POWER_ENFORCER, "value": c.POWER_ENFORCER_POD}]
    job, spec = make(template=template, energy={"power": {"mode": "Fixed", "limitWatts": 300}})
    assert builders.env_overrides(spec) == (c.ENV_ETJ_POWER_ENFORCER,)
    without_agent = trainer(builders.build_worker_pod(job, spec, 0, 0))["env"]
    assert c.ENV_ETJ_POWER_ENFORCER not in {v["name"] for v in without_agent}
    with_agent = trainer(builders.build_worker_pod(job, spec, 0, 0, builders.PodOptions(node_agent=True)))["env"]
    assert [v["value"] for v in with_agent if v["name"] == c.ENV_ETJ_POWER_ENFORCER] == [c.POWER_ENFORCER_AGENT]
