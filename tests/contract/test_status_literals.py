"""No status key with a nested shape is read or written through a string literal outside the contract package.

The shapes of ``status.control``, ``status.workload`` (and the report), ``status.energy``, ``status.policy`` and
``status.placement`` are defined once, by the records of ``etj_contract``; the operator and the harness go
through those records or the contract's key constants. This test reads every module of both packages with
``ast`` (importing nothing) and fails on a string literal used as a key of one of those sections:

* ``x["avoidedNodes"]``, ``x.get("lowCycles")``, ``x.pop(...)``, ``x.setdefault(...)``, ``"k" in x`` and a dict
  display ``{"checkpointRequested": ...}``, for every key that is specific to a section;
* the same for a generic key (``name``, ``time``, ``joules``...) when the receiver's text names a section
  (``energy.get("joules")``, ``drain["reason"]``), because ``meta["name"]`` is no status read;
* ``status.get("energy")`` and the like for the section keys themselves, when the receiver's text says status.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import etj_contract as c
from etj_contract import report as r
from etj_contract import sections as s

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (ROOT / "operator" / "etj_operator", ROOT / "workloads" / "etj_workload")

SECTIONS = frozenset({c.CONTROL, c.WORKLOAD, s.ENERGY, s.POLICY, s.PLACEMENT, s.KUEUE, c.FORECAST})
NESTED_KEYS = frozenset(
    {
        *(getattr(c, name) for name in c.names.__all__ if name.startswith(("CONTROL_", "WORKLOAD_"))),
        *r.STAGE_KEYS.values(),
        r.CHECKPOINT_ACKNOWLEDGED,
        r.CHECKPOINT_STEP,
        r.CHECKPOINT_EPOCH,
        r.CHECKPOINT_PATH,
        r.CHECKPOINT_TIME,
        r.PROFILE_CHOSEN_WATTS,
        r.PROFILE_CANDIDATES,
        *s.ENERGY_KEYS.values(),
        *s.SERIES_KEYS.values(),
        *s.POLICY_KEYS.values(),
        *s.DRAIN_KEYS.values(),
        *s.PLACEMENT_KEYS.values(),
        *s.KUEUE_KEYS.values(),
        *s.BREAKDOWN_KEYS.values(),
        *s.NETWORK_MODEL_KEYS.values(),
        *s.BASELINE_KEYS.values(),
        *s.FORECAST_KEYS.values(),
        *s.RATE_WINDOW_KEYS.values(),
        *r.COMMUNICATION_KEYS.values(),
        r.STAGE_PARAM_RATIO,
        r.STAGE_SIZE_RATIO,
        # keys of a status written before the time rule, read by the records only
        "carbonSince",
        "lastTime",
    }
) - SECTIONS - {"completionTime"}  # status.forecast.completionTime is also the job's own status.completionTime
#: Keys that other objects have too (metadata, spec, env, pods): flagged only on a receiver that names a section.
GENERIC = frozenset(
    {
        "name",
        "time",
        "step",
        "epoch",
        "path",
        "source",
        "t",
        "since",
        "reason",
        "done",
        "requested",
        "watts",
        "pod",
        "joules",
        "history",
        "series",
        "applied",
        "loss",
        "accuracy",
        "simulated",
        "stages",
        "checkpoint",
        "acknowledged",
        "candidates",
        "kilowattHours",  # also spec.energy.energyBudget.kilowattHours
        "message",  # also every condition's
        "admitted",
        "flavors",
        "clusterQueue",  # also a Workload's status.admission
        "queueName",  # also a Workload's spec
    }
)
#: Receivers that hold another format which reuses the status' names on purpose, per module ("{" stands for
#: the module's dict displays): the energy report's own JSON summary (``etj report``), which the plot and the
#: command's last lines read back (its ``forecast`` and breakdown ``split``, ``network``
#: and ``model`` objects); the simulated GPU's state file (read by the sandbox, not a status).
OTHER_FORMATS = {
    "operator/etj_operator/report.py": ("summary", "totals", "entry", "forecast", "split", "network", "model", "{"),
    "workloads/etj_workload/gpu.py": ("{",),
}
#: Words that, in a receiver's text, say it holds a status section.
SECTION_WORDS = (
    "energy", "control", "policy", "placement", "workload", "drain", "series", "stage", "checkpoint", "section",
)


def _modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted(package.rglob("*.py"))


def _key_uses(tree: ast.AST) -> Iterator[tuple[int, str, str]]:
    """(line, key, receiver text) for every literal key read or written in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            if isinstance(node.slice.value, str):
                yield node.lineno, node.slice.value, ast.unparse(node.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value, ast.unparse(node.func.value)
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            # "k" in mapping (a substring test on a call's result, "x" in s.lower(), is no key use)
            if any(isinstance(op, ast.In | ast.NotIn) for op in node.ops) and not any(
                isinstance(x, ast.Call) for x in node.comparators
            ):
                yield node.lineno, node.left.value, " ".join(ast.unparse(x) for x in node.comparators)
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    yield key.lineno, key.value, "{...}"


def _violation(key: str, receiver: str, other_formats: tuple[str, ...]) -> bool:
    text = receiver.lower()
    if receiver.isupper() or receiver.startswith(other_formats):
        return False  # the contract's own key maps (ENERGY_KEYS["joules"]), or another format
    if key in SECTIONS:
        return "status" in text
    if key not in NESTED_KEYS:
        return False
    if receiver == "{...}":
        return key not in GENERIC
    if key in GENERIC:
        return any(word in text for word in SECTION_WORDS)
    return True


def violations(source: str, other_formats: tuple[str, ...] = ()) -> list[tuple[int, str, str]]:
    """The literal status-key uses in one module's source."""
    uses = _key_uses(ast.parse(source))
    return [(line, key, rcv) for line, key, rcv in uses if _violation(key, rcv, other_formats)]


def test_no_status_key_is_spelled_outside_the_contract() -> None:
    found = []
    for path in _modules():
        other_formats = OTHER_FORMATS.get(path.relative_to(ROOT).as_posix(), ())
        for line, key, receiver in violations(path.read_text(), other_formats):
            found.append(f"{path.relative_to(ROOT)}:{line}: {receiver}[{key!r}]")
    assert found == [], "use the contract's records or key constants:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        'status.get("energy")',
        'x["avoidedNodes"]',
        'policy.get("lowCycles", 0)',
        'energy.get("joules")',
        'drain["reason"]',
        '"checkpointRequested" in control',
        'patch = {"stopRequested": True}',
        'status.pop("placement", None)',
    ],
)
def test_the_checker_sees_each_kind_of_use(source: str) -> None:
    assert violations(source) != []


@pytest.mark.parametrize(
    "source",
    [
        'meta["name"]',
        'spec.get("energy")',
        'pod["status"]',
        'env.get("source")',
        "status.get(c.CONTROL)",
        'body.get("status")',
    ],
)
def test_the_checker_passes_what_is_no_status_read(source: str) -> None:
    assert violations(source) == []
