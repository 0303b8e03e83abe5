from etj_operator import builders
from etj_operator import contract as c
from etj_operator.models import parse_spec

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
        (f"{c.PLURAL}/status", "get"),
        (f"{c.PLURAL}/status", "patch"),
    }


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
    assert meta["labels"][c.LABEL_KUEUE_QUEUE] == "team-a"
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


def test_checkpoint_volume_is_mounted():
    job, spec = make(checkpoint={"path": "/ckpt", "volume": {"persistentVolumeClaim": {"claimName": "c"}}})
    pod = builders.build_worker_pod(job, spec, 0, 0)
    assert {"name": "etj-checkpoint", "persistentVolumeClaim": {"claimName": "c"}} in pod["spec"]["volumes"]
    assert {"name": "etj-checkpoint", "mountPath": "/ckpt"} in trainer(pod)["volumeMounts"]


def test_template_service_account_is_kept_and_bound():
    job, spec = make(
        template={"spec": {"serviceAccountName": "team-sa", "containers": [{"name": "trainer", "image": "x"}]}}
    )
    assert builders.build_worker_pod(job, spec, 0, 0)["spec"]["serviceAccountName"] == "team-sa"
    assert builders.pod_service_account(spec, job) == "team-sa"


def test_builders_do_not_mutate_the_spec():
    job, spec = make()
    before = repr(spec.template)
    builders.build_worker_pod(job, spec, 0, 0)
    assert repr(spec.template) == before
