"""Tables for kubectl get: the columns and cells a real server prints for pods, events and custom resources."""

from __future__ import annotations

from etj_operator.sandbox.emulator.resources import BUILTIN_RESOURCES
from etj_operator.sandbox.emulator.tables import build_table, column_value


def rtype(plural: str, group: str = ""):
    return next(rt for rt in BUILTIN_RESOURCES if rt.plural == plural and rt.group == group)


def pod(status: dict, **meta) -> dict:
    return {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z", **meta},
            "spec": {"containers": [{"name": "trainer"}]}, "status": status}


def test_pod_status_cell_follows_the_kubelet_reasons_and_terminating():
    cases = [
        ({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
         {}, "ContainerCreating"),
        ({"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}, {}, "Running"),
        ({"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"exitCode": 0,
                                                                               "reason": "Completed"}}}]},
         {}, "Completed"),
        ({"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 3}}}]}, {}, "ExitCode:3"),
        ({"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "signal": 9}}}]},
         {}, "Signal:9"),
        ({"phase": "Running"}, {"deletionTimestamp": "2026-01-01T00:01:00Z"}, "Terminating"),
        ({"phase": "Failed", "reason": "Evicted"}, {}, "Evicted"),
    ]
    for status, meta, expected in cases:
        assert column_value(pod(status, **meta), "__pod_status") == expected, (status, meta)


def test_event_table_has_the_real_columns_with_name_only_when_wide():
    event = {"metadata": {"name": "job.1"}, "type": "Warning", "reason": "BackOff", "count": 4,
             "involvedObject": {"kind": "EfficientTrainingJob", "name": "job"},
             "message": "gang restart\n", "source": {"component": "etj-operator"},
             "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z"}
    table = build_table(rtype("events"), [event], 7)
    names = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert names[:4] == [("Last Seen", 0), ("Type", 0), ("Reason", 0), ("Object", 0)]
    assert ("Name", 1) in names and ("Message", 0) in names
    cells = dict(zip([n for n, _ in names], table["rows"][0]["cells"], strict=True))
    assert cells["Object"] == "efficienttrainingjob/job"
    assert cells["Message"] == "gang restart"
    assert cells["Source"] == "etj-operator"
    assert cells["Count"] == "4"
    assert cells["Subobject"] == ""
    assert cells["Name"] == "job.1"
    assert table["metadata"]["resourceVersion"] == "7"


def test_events_k8s_io_fields_fill_the_same_columns():
    event = {"metadata": {"name": "e"}, "type": "Normal", "reason": "Created", "note": "made",
             "regarding": {"kind": "Pod", "name": "w-0"}, "reportingController": "etj-operator",
             "eventTime": "2026-01-01T00:00:00.000000Z"}
    assert column_value(event, "__event_object") == "pod/w-0"
    assert column_value(event, "__event_message") == "made"
    assert column_value(event, "__event_source") == "etj-operator"
    assert column_value(event, "__event_count") == "1"


def test_other_kinds_get_name_and_age():
    table = build_table(rtype("configmaps"), [{"metadata": {"name": "cm"}}], 1)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age"]
    assert table["rows"][0]["cells"] == ["cm", "<none>"]
