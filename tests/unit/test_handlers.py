"""What the handler registry may and may not contain (assumptions other code relies on)."""

from __future__ import annotations

from etj_operator import handlers


def test_no_handler_needs_kopf_state_on_objects():
    # NoDiffBase/NoProgress and "no finalizer on jobs" hold only while there are no change handlers
    # (on.create/update/delete/resume/field), daemons or timers; adding one must revisit those choices.
    assert list(handlers.REGISTRY._changing.get_all_handlers()) == []
    assert list(handlers.REGISTRY._spawning.get_all_handlers()) == []
    watching = {h.id for h in handlers.REGISTRY._watching.get_all_handlers()}
    indexing = {h.id for h in handlers.REGISTRY._indexing.get_all_handlers()}
    assert watching == {"job_deleted", "node_power_pressure"}
    assert indexing == {"job_watch"}  # pods: podwatch.PodInformer, not Kopf


def test_the_null_storages_keep_nothing():
    body = {"metadata": {"name": "j", "annotations": {"a": "b"}}, "spec": {"x": 1}}
    assert handlers.NoDiffBase().build(body=body) == {}  # type: ignore[arg-type]
    assert handlers.NoDiffBase().fetch(body=body) is None  # type: ignore[arg-type]
    assert handlers.NoProgress().fetch(key="h", body=body) is None  # type: ignore[arg-type]
    essence = {"spec": {"x": 1}}
    assert handlers.NoProgress().clear(essence=essence) is essence  # type: ignore[arg-type]
