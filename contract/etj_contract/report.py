"""The two status sections operator and harness hand each other, as typed records both sides parse and write.

* :class:`WorkloadReport` (with :class:`CheckpointAck`, :class:`StageResult`, :class:`PowerProfile`): the
  workload's word. The harness's rank 0 writes it to the status of its job's ``EfficientTrainingJobReport``
  (the only object its ServiceAccount may write, docs/security.md); the operator reads it from there and mirrors
  it into the job's ``status.workload``.
* :class:`ControlSection`: the operator's ``status.control``, which the harness reads and obeys.

``from_status(mapping)`` never raises: each field of the wrong type, out of its bounds, too long or too many is
dropped, and named by its path in the record's ``problems`` (``status.stages[2].paramsTotal: ...``); input that
is not an object at all gives an empty record with one problem. ``to_status()`` returns the camelCase dict
(keys of :mod:`etj_contract.names`), holding only the fields that are set, so
``from_status(x.to_status()) == x``. The bounds below are the report CRD's (``crds/efficienttrainingjobreports
.yaml`` states them again for the API server; ``tests/contract/test_report.py`` checks they agree), so a record
read from an API server that skipped the schema is bounded as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from etj_contract import names as n
from etj_contract._fields import MAX_TEXT_LENGTH as _MAX_TEXT_LENGTH
from etj_contract._fields import FieldProblem, describe_value
from etj_contract._fields import Fields as _Fields
from etj_contract._fields import set_fields as _set
from etj_contract.plans import COMPRESSION_BOUNDS

__all__ = [
    "CHECKPOINT_ACKNOWLEDGED",
    "CHECKPOINT_EPOCH",
    "CHECKPOINT_PATH",
    "CHECKPOINT_STEP",
    "CHECKPOINT_TIME",
    "COMMUNICATION_KEYS",
    "MAX_CANDIDATES",
    "MAX_NAME_LENGTH",
    "MAX_PATH_LENGTH",
    "MAX_REQUESTED_WATTS",
    "MAX_STAGES",
    "MAX_TEXT_LENGTH",
    "PROFILE_CANDIDATES",
    "PROFILE_CHOSEN_WATTS",
    "PROFILE_REQUESTED_WATTS",
    "PROFILE_REQUEST_SEQ",
    "STAGE_KEYS",
    "STAGE_PARAM_RATIO",
    "STAGE_SIZE_RATIO",
    "CheckpointAck",
    "CommunicationStats",
    "ControlSection",
    "FieldProblem",
    "PowerProfile",
    "ProfileCandidate",
    "StageResult",
    "WorkloadReport",
    "describe_value",
]

# --- bounds (the report CRD's maxLength / maxItems) --------------------------------------------------------
#: A compression stage's name is a DNS label (the plan's bound).
MAX_NAME_LENGTH: Final = COMPRESSION_BOUNDS.max_name_length
#: Short strings: gpuSource, stopReason, timestamps, a stage's serializedFormat, control.stageRequested.
MAX_TEXT_LENGTH: Final = _MAX_TEXT_LENGTH
#: checkpoint.path (Linux's PATH_MAX).
MAX_PATH_LENGTH: Final = 4096
#: stages[]: one result per stage of the plan, and a plan has at most 16 (spec.compression.stages).
MAX_STAGES: Final = COMPRESSION_BOUNDS.max_stages
#: powerProfile.candidates[]: candidate limits of the Auto profile (stepWatts >= 5 W over a GPU's range).
MAX_CANDIDATES: Final = 512
#: powerProfile.requestedWatts: the most a request may ask (far above any GPU's range; the operator clamps).
MAX_REQUESTED_WATTS: Final = 10_000

# --- keys of the nested objects ------------------------------------------------------------------------------
CHECKPOINT_ACKNOWLEDGED: Final = "acknowledged"
CHECKPOINT_STEP: Final = "step"
CHECKPOINT_EPOCH: Final = "epoch"
CHECKPOINT_PATH: Final = "path"
CHECKPOINT_TIME: Final = "time"
PROFILE_CHOSEN_WATTS: Final = "chosenWatts"
PROFILE_CANDIDATES: Final = "candidates"
#: Mode Auto with the node agent: the candidate limit the harness asks for (W per GPU), and its request number.
PROFILE_REQUESTED_WATTS: Final = "requestedWatts"
PROFILE_REQUEST_SEQ: Final = "requestSeq"
#: powerProfile's other keys: attribute name -> camelCase key (the choice without the cap, why, how long it took).
_PROFILE_KEYS: Final[Mapping[str, str]] = {
    "uncapped_watts": "uncappedWatts",
    "reason": "reason",
    "profile_steps": "profileSteps",
    "slowdown": "slowdown",
    "slowdown_margin": "slowdownMargin",
}
#: stages[] items: attribute name -> camelCase key, in the order the harness writes them.
STAGE_KEYS: Final[Mapping[str, str]] = {
    "name": "name",
    "applied": "applied",
    "rolled_back": "rolledBack",
    "step": "step",
    "epoch": "epoch",
    "params_total": "paramsTotal",
    "params_nonzero_before": "paramsNonzeroBefore",
    "params_nonzero": "paramsNonzero",
    "size_bytes_before": "sizeBytesBefore",
    "size_bytes_after": "sizeBytesAfter",
    "raw_size_bytes_before": "rawSizeBytesBefore",
    "raw_size_bytes_after": "rawSizeBytesAfter",
    "serialized_format": "serializedFormat",
    "accuracy_before": "accuracyBefore",
    "accuracy_after": "accuracyAfter",
    "time": "time",
}
#: stages[] keys the record derives (written by :meth:`StageResult.to_status`, recomputed on reading, never
#: taken from the input): N1/N2, the non-zero parameters before over after, and the serialized size before over
#: after.
STAGE_PARAM_RATIO: Final = "paramRatio"
STAGE_SIZE_RATIO: Final = "sizeRatio"
#: communication's keys: attribute name -> camelCase key.
COMMUNICATION_KEYS: Final[Mapping[str, str]] = {
    "steps": "steps",
    "step_seconds": "stepSeconds",
    "comm_seconds": "commSeconds",
    "bytes_sent": "bytesSent",
    "world_size": "worldSize",
    "backend": "backend",
    "since": "since",
}
_CANDIDATE_KEYS: Final[Mapping[str, str]] = {
    "watts": "watts",
    "joules_per_step": "joulesPerStep",
    "seconds_per_step": "secondsPerStep",
    "cost": "cost",
}


# --- status.workload.checkpoint ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointAck:
    """The last checkpoint: the control request number it acknowledges, and where and when it was saved."""

    acknowledged: int | None = None
    step: int | None = None
    epoch: int | None = None
    path: str | None = None
    time: str | None = None

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> CheckpointAck:
        f = _Fields(raw, path, problems)
        return cls(
            acknowledged=f.integer(CHECKPOINT_ACKNOWLEDGED),
            step=f.integer(CHECKPOINT_STEP),
            epoch=f.integer(CHECKPOINT_EPOCH),
            path=f.string(CHECKPOINT_PATH, MAX_PATH_LENGTH),
            time=f.string(CHECKPOINT_TIME),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict (set fields only)."""
        return _set(
            {
                CHECKPOINT_ACKNOWLEDGED: self.acknowledged,
                CHECKPOINT_STEP: self.step,
                CHECKPOINT_EPOCH: self.epoch,
                CHECKPOINT_PATH: self.path,
                CHECKPOINT_TIME: self.time,
            }
        )


# --- status.workload.stages[] --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageResult:
    """What one compression stage did (one item of ``stages``); a stage without a usable name is dropped."""

    name: str
    applied: bool | None = None
    rolled_back: bool | None = None
    step: int | None = None
    epoch: int | None = None
    params_total: int | None = None
    #: N1: the model's non-zero parameters before the stage.
    params_nonzero_before: int | None = None
    #: N2: the non-zero parameters after it.
    params_nonzero: int | None = None
    size_bytes_before: int | None = None
    size_bytes_after: int | None = None
    raw_size_bytes_before: int | None = None
    raw_size_bytes_after: int | None = None
    serialized_format: str | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    #: When the stage was applied or rolled back (RFC 3339).
    time: str | None = None

    @property
    def kept(self) -> bool:
        """Applied and not rolled back (the Stage column shows the last one kept)."""
        return bool(self.applied) and not self.rolled_back

    @property
    def param_ratio(self) -> float | None:
        """N1/N2: non-zero parameters before over after (None: either unknown, or N2 is 0)."""
        return _ratio(self.params_nonzero_before, self.params_nonzero)

    @property
    def size_ratio(self) -> float | None:
        """Serialized size before over after (None: either unknown, or the size after is 0)."""
        return _ratio(self.size_bytes_before, self.size_bytes_after)

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> StageResult | None:
        if not isinstance(raw, Mapping):
            problems.append(FieldProblem(path, f"expected an object, found {describe_value(raw)}", "dropped"))
            return None
        f = _Fields(raw, path, problems)
        name = f.string("name", MAX_NAME_LENGTH)
        if not name:
            found = f"no usable name ({'empty' if name == '' else 'missing or malformed'})"
            problems.append(FieldProblem(path, found, "dropped"))
            return None
        k = STAGE_KEYS
        return cls(
            name=name,
            applied=f.boolean(k["applied"]),
            rolled_back=f.boolean(k["rolled_back"]),
            step=f.integer(k["step"]),
            epoch=f.integer(k["epoch"]),
            params_total=f.integer(k["params_total"]),
            params_nonzero_before=f.integer(k["params_nonzero_before"]),
            params_nonzero=f.integer(k["params_nonzero"]),
            size_bytes_before=f.integer(k["size_bytes_before"]),
            size_bytes_after=f.integer(k["size_bytes_after"]),
            raw_size_bytes_before=f.integer(k["raw_size_bytes_before"]),
            raw_size_bytes_after=f.integer(k["raw_size_bytes_after"]),
            serialized_format=f.string(k["serialized_format"]),
            accuracy_before=f.number(k["accuracy_before"], 0.0, 1.0),
            accuracy_after=f.number(k["accuracy_after"], 0.0, 1.0),
            time=f.string(k["time"]),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict (set fields only), with the derived ratios (rounded to 4 decimals) when known."""
        out = _set({key: getattr(self, attr) for attr, key in STAGE_KEYS.items()})
        for key, ratio in ((STAGE_PARAM_RATIO, self.param_ratio), (STAGE_SIZE_RATIO, self.size_ratio)):
            if ratio is not None:
                out[key] = round(ratio, 4)
        return out


def _ratio(before: int | None, after: int | None) -> float | None:
    if before is None or after is None or after <= 0:
        return None
    return before / after


# --- status.workload.communication ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CommunicationStats:
    """Rank 0's timing of gradient communication, cumulative since ``since`` (the harness process's start).

    ``steps``: training steps timed; ``step_seconds``: their wall time; ``comm_seconds``: the time within them
    that gradient communication was in flight (overlapping buckets counted once), estimated as ``steps`` x the
    mean communication span of the iterations DDP samples for its own runtime statistics (the first 10, then
    every 100th); ``bytes_sent``: the bytes all ranks sent for it (estimated from the gradient buckets and the
    ring allreduce's traffic, not measured); ``world_size``: the
    ranks; ``backend``: the process group's backend (nccl, gloo). The workload's word: the operator attributes
    energy by it (docs/energy.md), never decides a policy from it.
    """

    steps: int | None = None
    step_seconds: float | None = None
    comm_seconds: float | None = None
    bytes_sent: int | None = None
    world_size: int | None = None
    backend: str | None = None
    since: str | None = None

    @property
    def fraction(self) -> float | None:
        """The share of step time with communication in flight, 0..1 (None: nothing timed yet)."""
        if self.step_seconds is None or self.comm_seconds is None or self.step_seconds <= 0:
            return None
        return min(1.0, self.comm_seconds / self.step_seconds)

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> CommunicationStats:
        f = _Fields(raw, path, problems)
        k = COMMUNICATION_KEYS
        return cls(
            steps=f.integer(k["steps"]),
            step_seconds=f.number(k["step_seconds"], 0.0),
            comm_seconds=f.number(k["comm_seconds"], 0.0),
            bytes_sent=f.integer(k["bytes_sent"]),
            world_size=f.integer(k["world_size"], 1),
            backend=f.string(k["backend"]),
            since=f.string(k["since"]),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict (set fields only)."""
        return _set({key: getattr(self, attr) for attr, key in COMMUNICATION_KEYS.items()})


# --- status.workload.powerProfile ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ProfileCandidate:
    """One candidate limit the Auto mode measured."""

    watts: int | None = None
    joules_per_step: float | None = None
    seconds_per_step: float | None = None
    cost: float | None = None

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> ProfileCandidate:
        f = _Fields(raw, path, problems)
        k = _CANDIDATE_KEYS
        return cls(
            watts=f.integer(k["watts"]),
            joules_per_step=f.number(k["joules_per_step"], 0.0),
            seconds_per_step=f.number(k["seconds_per_step"], 0.0),
            cost=f.number(k["cost"], 0.0),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict (set fields only)."""
        return _set({key: getattr(self, attr) for attr, key in _CANDIDATE_KEYS.items()})


@dataclass(frozen=True)
class PowerProfile:
    """The Auto power mode's profile: the limit chosen (None while profiling) and the candidates measured.

    ``uncapped_watts``: the limit the job would pick without the operator's cap (absent: not known while the
    cap binds); ``reason``: why the choice (optimum, bound, flat, fallback, cap); ``profile_steps``: steps
    spent profiling so far; ``slowdown`` and ``slowdown_margin``: the chosen limit's measured step time over
    the uncapped one, and the half-width of that ratio's confidence interval.

    ``requested_watts`` and ``request_seq`` (mode Auto with the node agent, ``ETJ_POWER_ENFORCER=agent``): the
    per-GPU limit the harness asks for, which the operator clamps and answers in ``status.control``
    (:attr:`ControlSection.auto_limit_watts_per_gpu`), and the request's number (one more per new request).
    Advice, never trusted: a value above :data:`MAX_REQUESTED_WATTS` is dropped here, the operator clamps the rest.
    """

    chosen_watts: int | None = None
    candidates: tuple[ProfileCandidate, ...] | None = None
    uncapped_watts: int | None = None
    reason: str | None = None
    profile_steps: int | None = None
    slowdown: float | None = None
    slowdown_margin: float | None = None
    requested_watts: int | None = None
    request_seq: int | None = None

    @classmethod
    def _read(cls, raw: Any, path: str, problems: list[str]) -> PowerProfile:
        f = _Fields(raw, path, problems)
        items = f.items(PROFILE_CANDIDATES, MAX_CANDIDATES)
        candidates = None
        if items is not None:
            candidates = []
            for i, item in enumerate(items):
                where = f"{path}.{PROFILE_CANDIDATES}[{i}]"
                if isinstance(item, Mapping):
                    candidates.append(ProfileCandidate._read(item, where, problems))
                else:
                    problems.append(FieldProblem(where, f"expected an object, found {describe_value(item)}", "dropped"))
        k = _PROFILE_KEYS
        requested = f.integer(PROFILE_REQUESTED_WATTS)
        if requested is not None and requested > MAX_REQUESTED_WATTS:
            found = f"expected an integer <= {MAX_REQUESTED_WATTS}, found {describe_value(requested)}"
            problems.append(FieldProblem(f"{path}.{PROFILE_REQUESTED_WATTS}", found, "dropped"))
            requested = None
        return cls(
            chosen_watts=f.integer(PROFILE_CHOSEN_WATTS),
            candidates=None if candidates is None else tuple(candidates),
            uncapped_watts=f.integer(k["uncapped_watts"]),
            reason=f.string(k["reason"]),
            profile_steps=f.integer(k["profile_steps"]),
            slowdown=f.number(k["slowdown"], 0.0),
            slowdown_margin=f.number(k["slowdown_margin"], 0.0),
            requested_watts=requested,
            request_seq=f.integer(PROFILE_REQUEST_SEQ),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict (set fields only)."""
        candidates = None if self.candidates is None else [c.to_status() for c in self.candidates]
        more = {key: getattr(self, attr) for attr, key in _PROFILE_KEYS.items()}
        return _set(
            {
                PROFILE_CHOSEN_WATTS: self.chosen_watts,
                PROFILE_CANDIDATES: candidates,
                **more,
                PROFILE_REQUESTED_WATTS: self.requested_watts,
                PROFILE_REQUEST_SEQ: self.request_seq,
            }
        )


# --- the report ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkloadReport:
    """The workload's report (the report object's ``status``; mirrored into the job's ``status.workload``).

    The workload's word, never a decision: the operator takes progress, stage results and checkpoint
    acknowledgements from it, never energy (docs/security.md).
    """

    epoch: int | None = None
    step: int | None = None
    samples_per_second: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    gpu_source: str | None = None
    power_profile: PowerProfile | None = None
    power_limit_watts: float | None = None
    checkpoint: CheckpointAck | None = None
    stages: tuple[StageResult, ...] | None = None
    stop_reason: str | None = None
    update_time: str | None = None
    #: The global steps the whole job plans (None: the program does not say).
    steps_total: int | None = None
    #: Samples per global step (the global batch).
    samples_per_step: int | None = None
    communication: CommunicationStats | None = None
    #: What :meth:`from_status` dropped, each naming the field's path (not part of the status, nor of equality).
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_status(cls, status: Any, path: str = "status") -> WorkloadReport:
        """Parse a report's status (or the job's ``status.workload``); never raises (see the module)."""
        problems: list[str] = []
        f = _Fields(status, path, problems)
        profile = f.mapping(n.WORKLOAD_POWER_PROFILE)
        checkpoint = f.mapping(n.WORKLOAD_CHECKPOINT)
        communication = f.mapping(n.WORKLOAD_COMMUNICATION)
        items = f.items(n.WORKLOAD_STAGES, MAX_STAGES)
        stages = None
        if items is not None:
            read = [StageResult._read(s, f"{path}.{n.WORKLOAD_STAGES}[{i}]", problems) for i, s in enumerate(items)]
            stages = tuple(s for s in read if s is not None)
        return cls(
            epoch=f.integer(n.WORKLOAD_EPOCH),
            step=f.integer(n.WORKLOAD_STEP),
            samples_per_second=f.number(n.WORKLOAD_SAMPLES_PER_SECOND, 0.0),
            loss=f.number(n.WORKLOAD_LOSS),
            accuracy=f.number(n.WORKLOAD_ACCURACY, 0.0, 1.0),
            gpu_source=f.string(n.WORKLOAD_GPU_SOURCE),
            power_profile=None
            if profile is None
            else PowerProfile._read(profile, f"{path}.{n.WORKLOAD_POWER_PROFILE}", problems),
            power_limit_watts=f.number(n.WORKLOAD_POWER_LIMIT_WATTS, 0.0),
            checkpoint=None
            if checkpoint is None
            else CheckpointAck._read(checkpoint, f"{path}.{n.WORKLOAD_CHECKPOINT}", problems),
            stages=stages,
            stop_reason=f.string(n.WORKLOAD_STOP_REASON),
            update_time=f.string(n.WORKLOAD_UPDATED),
            steps_total=f.integer(n.WORKLOAD_STEPS_TOTAL),
            samples_per_step=f.integer(n.WORKLOAD_SAMPLES_PER_STEP, 1),
            communication=None
            if communication is None
            else CommunicationStats._read(communication, f"{path}.{n.WORKLOAD_COMMUNICATION}", problems),
            problems=tuple(problems),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict (set fields only), as the harness writes it."""
        return _set(
            {
                n.WORKLOAD_EPOCH: self.epoch,
                n.WORKLOAD_STEP: self.step,
                n.WORKLOAD_SAMPLES_PER_SECOND: self.samples_per_second,
                n.WORKLOAD_LOSS: self.loss,
                n.WORKLOAD_ACCURACY: self.accuracy,
                n.WORKLOAD_GPU_SOURCE: self.gpu_source,
                n.WORKLOAD_POWER_PROFILE: None if self.power_profile is None else self.power_profile.to_status(),
                n.WORKLOAD_POWER_LIMIT_WATTS: self.power_limit_watts,
                n.WORKLOAD_CHECKPOINT: None if self.checkpoint is None else self.checkpoint.to_status(),
                n.WORKLOAD_STAGES: None if self.stages is None else [s.to_status() for s in self.stages],
                n.WORKLOAD_STOP_REASON: self.stop_reason,
                n.WORKLOAD_UPDATED: self.update_time,
                n.WORKLOAD_STEPS_TOTAL: self.steps_total,
                n.WORKLOAD_SAMPLES_PER_STEP: self.samples_per_step,
                n.WORKLOAD_COMMUNICATION: None if self.communication is None else self.communication.to_status(),
            }
        )

    @property
    def acknowledged_checkpoint(self) -> int | None:
        """The control request number the last checkpoint acknowledges (None: none)."""
        return None if self.checkpoint is None else self.checkpoint.acknowledged

    @property
    def last_kept_stage(self) -> str | None:
        """The name of the last stage applied and not rolled back (the job's Stage column), or None."""
        kept = [s.name for s in self.stages or () if s.kept]
        return kept[-1] if kept else None


# --- status.control ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlSection:
    """The operator's ``status.control``, as the harness obeys it (absent fields are None/0/False).

    ``auto_limit_watts_per_gpu`` and ``auto_request_seq`` (mode Auto with the node agent): the limit the node
    agent applies to the job's GPUs, the operator's answer to the harness's ``powerProfile.requestedWatts``
    (clamped into the allowed range, never above the throttle), and the ``requestSeq`` it answers.
    """

    power_limit_watts_per_gpu: int | None = None
    checkpoint_requested: int = 0
    stop_requested: bool = False
    stage_requested: str | None = None
    energy_fraction: float | None = None
    auto_limit_watts_per_gpu: int | None = None
    auto_request_seq: int = 0
    #: What :meth:`from_status` dropped, each naming the field's path (not part of the status, nor of equality).
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_status(cls, control: Any, path: str = f"status.{n.CONTROL}") -> ControlSection:
        """Parse ``status.control``; never raises (see the module)."""
        problems: list[str] = []
        f = _Fields(control, path, problems)
        limit = f.number(n.CONTROL_POWER_LIMIT_WATTS_PER_GPU, 0.0)
        auto = f.number(n.CONTROL_AUTO_LIMIT_WATTS_PER_GPU, 0.0)
        return cls(
            power_limit_watts_per_gpu=None if limit is None else int(limit),
            checkpoint_requested=f.integer(n.CONTROL_CHECKPOINT_REQUESTED) or 0,
            stop_requested=bool(f.boolean(n.CONTROL_STOP_REQUESTED)),
            stage_requested=f.string(n.CONTROL_STAGE_REQUESTED, MAX_NAME_LENGTH) or None,
            energy_fraction=f.number(n.CONTROL_ENERGY_FRACTION, 0.0),
            auto_limit_watts_per_gpu=None if auto is None else int(auto),
            auto_request_seq=f.integer(n.CONTROL_AUTO_REQUEST_SEQ) or 0,
            problems=tuple(problems),
        )

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict: the fields that are set (a zero request number and False are left out)."""
        return _set(
            {
                n.CONTROL_POWER_LIMIT_WATTS_PER_GPU: self.power_limit_watts_per_gpu,
                n.CONTROL_CHECKPOINT_REQUESTED: self.checkpoint_requested or None,
                n.CONTROL_STOP_REQUESTED: self.stop_requested or None,
                n.CONTROL_STAGE_REQUESTED: self.stage_requested,
                n.CONTROL_ENERGY_FRACTION: self.energy_fraction,
                n.CONTROL_AUTO_LIMIT_WATTS_PER_GPU: self.auto_limit_watts_per_gpu,
                n.CONTROL_AUTO_REQUEST_SEQ: self.auto_request_seq or None,
            }
        )
