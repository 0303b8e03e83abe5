"""A hostile workload for the chaos suite: every write a job's pod token has, tried against the operator's state.

Not a test module. :class:`HostileWorkload` is a thread that, for each job it is given, takes a token of the
job's ServiceAccount (``<job>-etj``, as the pod's projected token volume would give it) and, at seeded random
moments while the job runs, sends the forgeries a compromised training program would: the job's phase,
restarts, energy, control and policy through the status subresource, a bigger backoffLimit through the job
itself, another job's report, a new report, pods, and its own report's metadata. Every one of them must be
refused (401/403); any other answer is recorded as a breach. It also writes what the token may write, its own
report's status (a far-future checkpoint acknowledgement and a made-up progress), which the operator treats as
the workload's word: advice, never a decision.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from etj_operator import contract as c
from etj_operator.sandbox.emulator import ApiError, EmulatorServer

from emulated import NS

MERGE = "application/merge-patch+json"


@dataclass(frozen=True)
class Attempt:
    """One request the token sends; ``allowed`` says whether the trust boundary lets it through."""

    what: str
    method: str
    path: str
    body: Any
    allowed: bool = False


def job_path(name: str, subresource: str = "") -> str:
    tail = f"/{subresource}" if subresource else ""
    return f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{NS}/{c.PLURAL}/{name}{tail}"


def report_path(name: str | None, subresource: str = "") -> str:
    base = f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{NS}/{c.REPORT_PLURAL}"
    if name is None:
        return base
    return f"{base}/{name}" + (f"/{subresource}" if subresource else "")


def attempts(job: str, other: str) -> list[Attempt]:
    """Everything the pod of ``job`` tries; ``other`` is another running job of the same namespace."""
    status = job_path(job, "status")
    forged = [
        ("phase Succeeded", {"status": {"phase": "Succeeded"}}),
        ("restarts 0", {"status": {"restarts": 0}}),
        ("energy reset", {"status": {"energy": {"joules": 0, "series": {}, "history": []}}}),
        ("energy list", {"status": {"energy": []}}),
        ("control stop", {"status": {"control": {c.CONTROL_STOP_REQUESTED: True}}}),
        ("policy forged", {"status": {"policy": {"budgetNotified": True, "drain": []}}}),
        ("conditions forged", {"status": {"conditions": []}}),
        ("workload forged", {"status": {c.WORKLOAD: {c.WORKLOAD_STEP: 10**9}}}),
    ]
    own_report = {
        "status": {
            c.WORKLOAD_STEP: 10**6,
            c.WORKLOAD_CHECKPOINT: {"acknowledged": 10**6},
        }
    }
    return [
        *(Attempt(f"job status: {what}", "PATCH", status, body) for what, body in forged),
        Attempt("job spec: backoffLimit", "PATCH", job_path(job), {"spec": {"runPolicy": {"backoffLimit": 100}}}),
        Attempt("job: delete", "DELETE", job_path(job), None),
        Attempt("other job's status", "PATCH", job_path(other, "status"), {"status": {"phase": "Failed"}}),
        Attempt("other job's report", "PATCH", report_path(other, "status"), own_report),
        Attempt("report: create", "POST", report_path(None), {
            "apiVersion": c.API_VERSION, "kind": c.REPORT_KIND, "metadata": {"name": f"{job}-forged"},
        }),
        Attempt("own report: metadata", "PATCH", report_path(job), {"metadata": {"ownerReferences": []}}),
        Attempt("own report: delete", "DELETE", report_path(job), None),
        Attempt("pod: delete own", "DELETE", f"/api/v1/namespaces/{NS}/pods/{job}-worker-0", None),
        Attempt("pod: create", "POST", f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{job}-rogue"},
            "spec": {"containers": [{"name": "x", "image": "x"}]},
        }),
        Attempt("own report status", "PATCH", report_path(job, "status"), own_report, allowed=True),
    ]


@dataclass
class HostileWorkload:
    """Sends :func:`attempts` for each registered job, in a seeded random order, until stopped."""

    server: EmulatorServer
    seed: int
    period_seconds: float = 0.05
    breaches: list[str] = field(default_factory=list)
    refused: int = 0
    accepted: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="hostile-workload", daemon=True)

    def __enter__(self) -> HostileWorkload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _token(self, job: str) -> str | None:
        if job not in self._tokens:
            try:
                self._tokens[job] = self.server.service_account_token(NS, f"{job}-etj")
            except ApiError:
                return None  # the operator has not made the job's ServiceAccount yet
        return self._tokens[job]

    def _send(self, token: str, attempt: Attempt) -> int:
        data = None if attempt.body is None else json.dumps(attempt.body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": MERGE if attempt.method == "PATCH" else
                   "application/json"}
        request = urllib.request.Request(self.server.url + attempt.path, data=data, method=attempt.method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception as e:  # reported by the test, never swallowed
                self.errors.append(f"hostile: {type(e).__name__}: {e}")
            self._stop.wait(self.period_seconds)

    def _round(self) -> None:
        jobs = [j["metadata"]["name"] for j in self.server.list(c.PLURAL, NS)
                if (j.get("status") or {}).get("phase") not in (None, "Succeeded", "Failed")]
        if not jobs:
            return
        job = self._rng.choice(jobs)
        others = [j for j in jobs if j != job]
        token = self._token(job)
        if token is None:
            return
        choices = attempts(job, self._rng.choice(others) if others else job)
        if not others:  # alone: "another job" would be itself
            choices = [a for a in choices if not a.what.startswith("other job")]
        attempt = self._rng.choice(choices)
        code = self._send(token, attempt)
        if attempt.allowed:
            # its own report may be missing for a moment (404), or its values refused by the schema (422)
            if code in (200, 201):
                self.accepted += 1
            elif code not in (404, 409, 422):
                self.errors.append(f"{job}: {attempt.what} answered {code}")
        elif code in (401, 403):
            self.refused += 1
        else:
            self.breaches.append(f"{job}: {attempt.what} ({attempt.method} {attempt.path}) answered {code}")
