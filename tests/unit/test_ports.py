"""The writer protocols: KubeApi satisfies them, and the unit tests' API doubles type-check against them.

mypy checks the operator's packages only (pyproject's [tool.mypy]); the doubles live in test modules, so
this test runs mypy on those modules: a double whose signature drifts from the protocol (a ``dict`` where
the reconciler passes a ``Mapping``, a missing ``delete``) fails here, not as a puzzling test elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from etj_operator.kubeapi import ClusterConnection, KubeApi
from etj_operator.ports import JobWriter, ObjectCreator

ROOT = Path(__file__).resolve().parents[2]

#: The test modules whose API doubles implement a protocol of etj_operator.ports.
MODULES_WITH_DOUBLES = (
    "tests/unit/test_events.py",
    "tests/unit/test_metrics.py",
    "tests/unit/test_reconciler_events.py",
    "tests/unit/test_reconciler_gone.py",
    "tests/unit/test_reconciler_identity.py",
    "tests/unit/test_reconciler_refusal.py",
)


def test_the_api_wrapper_is_a_job_writer_and_an_object_creator() -> None:
    api = KubeApi(ClusterConnection(host="http://127.0.0.1:1"))
    assert isinstance(api, JobWriter) and isinstance(api, ObjectCreator)


@pytest.mark.slow  # about 7 s on a cold mypy cache, well under 1 s after
def test_the_api_doubles_type_check_against_the_protocols() -> None:
    pytest.importorskip("mypy")
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--follow-imports=silent",
        # The test functions themselves are not annotated; their bodies are still checked.
        "--allow-untyped-defs",
        "--allow-incomplete-defs",
        "--check-untyped-defs",
        # Its own cache: these options differ from `make typecheck`'s, which would otherwise re-check.
        "--cache-dir",
        str(ROOT / ".mypy_cache" / "test-ports"),
        *MODULES_WITH_DOUBLES,
    ]
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "MYPYPATH": "tests"}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
