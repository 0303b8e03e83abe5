"""Bad-input helpers: the corpus, posting manifests as kubectl does, and the three admission set-ups.

Not a test module. Admission set-ups of the emulator:

* ``full``: the emulator's default admission (the CRD's OpenAPI schema, list types, then its CEL rules through
  a real CEL engine): what a current API server with the CRD does;
* ``schema``: the CRD's structural schema only (types, enums, minimums, patterns, required, list types): an
  API server that does not evaluate CEL (``x-kubernetes-validations``), e.g. before Kubernetes 1.25;
* ``none``: no validation beyond pruning and defaulting: only the operator stands.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from etj_operator import contract as c
from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.sandbox.emulator.admission import ValidationMode, configure
from etj_operator.sandbox.emulator.authn import ADMIN_TOKEN

CORPUS = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Case:
    """One corpus file: the manifest and the field path its error must name."""

    path: Path
    field: str
    why: str
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def id(self) -> str:
        return self.path.stem


def corpus() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        header = dict(
            line[2:].split(": ", 1) for line in text.splitlines() if line.startswith("# ") and ": " in line
        )
        cases.append(Case(path, header["field"], header["why"], yaml.safe_load(text)))
    return cases


def set_admission(server: EmulatorServer, mode: ValidationMode) -> None:
    """Switch the emulator's admission of custom resources: ``full``, ``schema`` (no CEL) or ``none``."""
    server.call(lambda emulator: configure(emulator, mode))


@dataclass
class Answer:
    code: int
    body: dict[str, Any]

    @property
    def text(self) -> str:
        """The message and every cause's field and message, for looking up a field path."""
        causes = (self.body.get("details") or {}).get("causes") or []
        return " ".join([str(self.body.get("message", ""))] + [f"{x.get('field')}: {x.get('message')}" for x in causes])


def post(server: EmulatorServer, manifest: dict[str, Any], strict: bool = True) -> Answer:
    """POST a job as ``kubectl create`` does (``fieldValidation=Strict``); never raises for HTTP errors."""
    namespace = manifest["metadata"].get("namespace", "default")
    url = f"{server.url}/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{c.PLURAL}"
    if strict:
        url += "?fieldValidation=Strict"
    request = urllib.request.Request(
        url,
        data=json.dumps(manifest).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}",
                 "User-Agent": "badinput-test"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, json.loads(response.read() or b"{}"))
    except urllib.error.HTTPError as e:
        return Answer(e.code, json.loads(e.read() or b"{}"))


def invalid_condition(server: EmulatorServer, name: str, namespace: str = "default") -> dict[str, Any] | None:
    """The job's Invalid condition once the operator has failed it (phase Failed), else None."""
    status = (server.get(c.PLURAL, namespace, name) or {}).get("status") or {}
    if status.get("phase") != "Failed":
        return None
    return next((x for x in status.get("conditions") or [] if x["type"] == "Invalid" and x["status"] == "True"), None)
