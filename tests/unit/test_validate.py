"""`etj validate` agrees with the API server: the corpus and the examples against the emulator, then each check.

The emulator side of the comparison is a create over HTTP, as kubectl sends it (JSON, ``fieldValidation=Strict``,
``dryRun=All``), so its verdict comes from the server's whole request path, not from the functions validate calls.
"""

from __future__ import annotations

import copy
import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from etj_operator import cli, contract
from etj_operator.cli import main
from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.validate import (
    EXIT_INVALID,
    EXIT_USAGE,
    EXIT_VALID,
    Report,
    Validator,
    load_crds,
    read_documents,
    validate_sources,
)

from jobs import job_manifest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "tests" / "badinput" / "corpus").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "workloads" / "examples").glob("*.yaml"))
PLURALS = {crd["spec"]["names"]["kind"]: crd["spec"]["names"]["plural"] for crd in load_crds(ROOT / "crds")}


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator.from_path(ROOT / "crds")


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(crds=[ROOT / "crds"]) as srv:
        yield srv


def emulator_verdict(server: EmulatorServer, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST the document as kubectl would (strict, dry run): the status code and the answer."""
    group_version = doc["apiVersion"]
    namespace = (doc.get("metadata") or {}).get("namespace") or "default"
    url = (f"{server.url}/apis/{group_version}/namespaces/{namespace}/{PLURALS[doc['kind']]}"
           "?fieldValidation=Strict&dryRun=All")
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def server_problems(code: int, answer: dict[str, Any]) -> list[tuple[str, str]]:
    """The (field, message) pairs a refusal names: its causes, or the unknown fields of a strict decoding error."""
    if code == 400 and answer["message"].startswith("strict decoding error: "):
        return [(f, f'unknown field "{f}"') for f in re.findall(r'unknown field "([^"]+)"', answer["message"])]
    causes = (answer.get("details") or {}).get("causes")
    if causes:
        return [(c["field"], c["message"]) for c in causes]
    field, _, message = answer["message"].split(" is invalid: ", 1)[-1].partition(": ")
    return [(field, message)]


@pytest.mark.parametrize("path", CORPUS + EXAMPLES, ids=lambda p: p.name)
def test_the_verdict_is_the_emulators_document_by_document(validator, server, path):
    report = validate_sources(validator, [str(path)])
    assert report.errors == []
    docs = [doc for _, doc, _ in read_documents(path.read_text())]
    assert len(report.documents) == len(docs)
    compared = 0
    for result, doc in zip(report.documents, docs, strict=True):
        if result.verdict == "skipped":
            assert not doc["apiVersion"].startswith(contract.GROUP), result
            continue
        code, answer = emulator_verdict(server, doc)
        admitted = code in (200, 201)
        assert result.admitted == admitted, (result, code, answer)
        # for every corpus case and example, the operator's parser adds nothing to the server's verdict
        assert result.verdict == ("valid" if admitted else "invalid"), result
        if not admitted:
            ours = [(p.field, p.message) for p in result.problems if p.stage != "operator"]
            theirs = server_problems(code, answer)
            # a real server reports strict decoding errors alone; validate reports them with the rest
            assert set(theirs) <= set(ours), (ours, theirs)
            if code == 422 and answer["details"].get("causes"):
                assert [x for x in ours if x not in theirs] == [], "validate found problems the server did not"
        compared += 1
    assert compared >= 1


def test_the_comparison_covers_the_corpus_and_both_examples():
    assert len(CORPUS) >= 40 and {p.name for p in EXAMPLES} >= {"digits-ddp.yaml", "foreign-ddp.yaml"}


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_each_corpus_case_is_refused_naming_its_field(validator, path):
    field = re.search(r"^# field: (\S+)", path.read_text(), re.MULTILINE).group(1)
    (result,) = validate_sources(validator, [str(path)]).documents
    assert result.verdict == "invalid" and result.admitted is False
    assert any(field in f"{p.field}: {p.message}" for p in result.problems), result.problems


def check(validator: Validator, doc: Any) -> Report:
    return validate_sources(validator, ["-"], stdin=io.StringIO(yaml.safe_dump_all([doc])))


def job(**spec: Any) -> dict[str, Any]:
    body = job_manifest("checked", **spec)
    del body["metadata"]["uid"], body["metadata"]["generation"]
    return body


def test_a_valid_job_is_valid(validator):
    (result,) = check(validator, job()).documents
    assert (result.verdict, result.admitted, result.problems) == ("valid", True, [])
    assert (result.kind, result.namespace, result.name) == (contract.KIND, "default", "checked")


def test_unknown_fields_are_refused_as_with_strict_field_validation(validator):
    body = job(replicass=2, energy={"powr": {"mode": "Fixed"}})
    (result,) = check(validator, body).documents
    assert result.verdict == "invalid"
    assert sorted((p.stage, p.field) for p in result.problems) == [("decoding", "spec.energy.powr"),
                                                                    ("decoding", "spec.replicass")]


def test_preserve_unknown_fields_subtrees_are_free(validator):
    body = job(checkpoint={"path": "/ckpt", "volume": {"persistentVolumeClaim": {"claimName": "c"}}})
    pod = body["spec"]["template"]["spec"]
    pod["nodeSelector"] = {"pool": "a100"}
    pod["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    (result,) = check(validator, body).documents
    assert result.verdict == "valid", result.problems


def test_a_wrong_api_version_or_kind_of_the_group_is_invalid(validator):
    wrong_version = {**job(), "apiVersion": f"{contract.GROUP}/v1"}
    wrong_kind = {**job(), "kind": "EfficientTrainingJobs"}
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    results = validate_sources(validator, ["-"], stdin=io.StringIO(yaml.safe_dump_all(
        [wrong_version, wrong_kind, foreign]))).documents
    assert [(r.verdict, [p.field for p in r.problems]) for r in results] == [
        ("invalid", ["apiVersion"]), ("invalid", ["kind"]), ("skipped", [])]
    assert 'no matches for kind "EfficientTrainingJob" in version "efficienttraining.dev/v1"' in str(
        results[0].problems[0])
    assert "efficienttraining.dev/v1alpha1" in results[0].problems[0].message


def test_every_problem_at_once_with_its_field(validator):
    # prune.amount out of range in a stage that also lacks its trigger, and a negative energy budget
    body = job(energy={"energyBudget": {"kilowattHours": -1}},
               compression={"stages": [{"name": "p", "prune": {"amount": 1.5}}]})
    (result,) = check(validator, body).documents
    fields = [p.field for p in result.problems]
    assert {"spec.compression.stages[0].trigger", "spec.compression.stages[0].prune.amount",
            "spec.energy.energyBudget.kilowattHours"} <= set(fields)
    budget = next(p for p in result.problems if p.field == "spec.energy.energyBudget.kilowattHours")
    assert budget.message.endswith("should be greater than 0") and "required" not in budget.message.lower()


def test_a_bad_name_is_reported_with_the_schema_and_cel_causes(validator):
    body = job(replicas=0)
    body["metadata"]["name"] = "Jöb"
    (result,) = check(validator, body).documents
    fields = [p.field for p in result.problems]
    assert fields.count("metadata.name") == 2  # the server's name check, and the CRD's RFC 1035 rule (CEL)
    assert "spec.replicas" in fields


def test_the_operator_stage_reports_what_the_server_admits_but_the_operator_refuses():
    # a server without the CRD's rule for Fixed admits a Fixed job without limitWatts; the operator fails it
    crds = load_crds(ROOT / "crds")
    crd = next(c for c in crds if c["spec"]["names"]["kind"] == contract.KIND)
    power = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["energy"][
        "properties"]["power"]
    power.pop("x-kubernetes-validations")
    lenient = Validator(crds)
    (result,) = check(lenient, job(energy={"power": {"mode": "Fixed"}})).documents
    assert (result.verdict, result.admitted) == ("invalid", True)
    assert [(p.stage, p.field) for p in result.problems] == [("operator", "spec.energy.power.limitWatts")]
    assert "fix:" in result.problems[0].message


def test_yaml_as_kubectl_reads_it(validator):
    text = """\
apiVersion: efficienttraining.dev/v1alpha1
kind: EfficientTrainingJob
metadata: {name: dates}
spec:
  template:
    metadata: {annotations: {created: 2024-01-01}}
    spec:
      containers: [{name: trainer, image: x}]
---
apiVersion: efficienttraining.dev/v1alpha1
kind: EfficientTrainingJob
metadata: {name: twice}
spec:
  replicas: 1
  replicas: 2
  template: {spec: {containers: [{name: trainer, image: x}]}}
---
---
apiVersion: v1
kind: List
items:
  - {apiVersion: efficienttraining.dev/v1alpha1, kind: EfficientTrainingJob, metadata: {name: in-a-list},
     spec: {replicas: 0, template: {spec: {containers: [{name: trainer}]}}}}
"""
    results = validate_sources(validator, ["-"], stdin=io.StringIO(text)).documents
    assert [(r.name, r.line, r.verdict) for r in results] == [
        ("dates", 1, "valid"),  # a timestamp-looking annotation is a string, as in the JSON kubectl sends
        ("twice", 10, "invalid"),
        ("in-a-list", 19, "invalid"),
    ]
    assert results[1].problems[0].message == 'line 15: key "replicas" already set in map (line 14)'
    assert results[2].note == "item 0 of a List" and results[2].problems[0].field == "spec.replicas"


def test_text_that_is_not_yaml_is_invalid_where_it_breaks(validator):
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: [\n"
    results = validate_sources(validator, ["-"], stdin=io.StringIO(text)).documents
    assert [(r.verdict, r.line) for r in results] == [("skipped", 1), ("invalid", 6)]
    assert results[1].problems[0].message.startswith("not YAML: ")


# ----- the command ----------------------------------------------------------------------------------------

def write(tmp_path: Path, name: str, *docs: Any) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(list(docs)))
    return str(path)


def test_exit_codes(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", job())
    bad = write(tmp_path, "bad.yaml", job(replicas=0))
    other = write(tmp_path, "other.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    assert main(["validate", good]) == EXIT_VALID
    assert main(["validate", good, bad]) == EXIT_INVALID
    assert main(["validate", other]) == EXIT_INVALID  # nothing of the API group to validate
    assert "no document of efficienttraining.dev found" in capsys.readouterr().err
    assert main(["validate", good, str(tmp_path / "missing.yaml")]) == EXIT_USAGE
    assert main(["validate", "--crds", str(tmp_path / "other.yaml"), good]) == EXIT_USAGE
    assert "no CustomResourceDefinition" in capsys.readouterr().err


def test_text_output_names_each_document_and_problem(tmp_path, capsys):
    path = write(tmp_path, "jobs.yaml", job(), job(replicass=1))
    assert main(["validate", path]) == EXIT_INVALID
    out, err = capsys.readouterr()
    second = Path(path).read_text().splitlines().index("---") + 2  # the line after the separator
    assert out.splitlines() == [
        f"{path}:1: EfficientTrainingJob default/checked: valid",
        f"{path}:{second}: EfficientTrainingJob default/checked: invalid",
        '  [decoding] spec.replicass: unknown field "spec.replicass"',
    ]
    assert err.splitlines()[-1].startswith("1 valid, 1 invalid, 0 skipped")


def test_stdin_folders_and_json_output(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "jobs"
    (folder / "team").mkdir(parents=True)
    write(folder / "team", "a.yaml", job())
    write(folder, "b.yml", job(replicas="two"))
    (folder / "notes.txt").write_text("not a manifest")
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(job(energy={"power": {"mode": "Fixed"}}))))
    assert main(["validate", "-o", "json", str(folder), "-"]) == EXIT_INVALID
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is False and data["summary"] == {"valid": 1, "invalid": 2, "skipped": 0}
    assert [(d["source"], d["verdict"]) for d in data["documents"]] == [
        (str(folder / "b.yml"), "invalid"), (str(folder / "team" / "a.yaml"), "valid"), ("-", "invalid")]
    stdin_doc = data["documents"][2]
    assert stdin_doc["apiVersion"] == "efficienttraining.dev/v1alpha1" and stdin_doc["admitted"] is False
    assert stdin_doc["problems"] == [{"stage": "admission", "field": "spec.energy.power.limitWatts",
                                      "message": "Required value: mode Fixed needs limitWatts (the per-GPU power"
                                                 " limit in watts)", "reason": "FieldValueRequired"}]


def test_the_examples_are_valid(capsys):
    assert main(["validate", *map(str, EXAMPLES)]) == EXIT_VALID
    out = capsys.readouterr().out
    assert "digits-ddp: valid" in out and "ConfigMap foreign-ddp-script: skipped" in out


def test_without_the_emulators_libraries_validate_names_its_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cel_expr_python", None)
    assert main(["validate", write(tmp_path, "a.yaml", job())]) == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [
        "etj validate: the emulator's libraries are not installed (cel_expr_python): "
        "pip install 'efficient-training-operator[validate]'"]


def test_the_validator_leaves_the_crds_it_was_given_alone():
    crds = load_crds(ROOT / "crds")
    before = copy.deepcopy(crds)
    Validator(crds)
    assert crds == before
    assert cli.COMMAND_EXTRAS["validate"] == ("validate",)
