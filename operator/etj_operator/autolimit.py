"""Mode Auto through the node agent: the operator's answer to the harness's candidate limit (pure).

With the node agent (``ETJ_NODE_AGENT=true``) an Auto pod has no privilege to set a GPU limit. Its harness
asks for each candidate in its report (``powerProfile.requestedWatts``, numbered by ``powerProfile
.requestSeq``); the operator answers in ``status.control.autoLimitWattsPerGPU`` (with ``autoRequestSeq``, the
number answered), and the node agent applies the answer to the GPUs the job's pods hold.

The request is the workload's word, advice only:

* it is clamped into the range the operator allows for a GPU (``ETJ_GPU_MIN_LIMIT_WATTS`` ..
  ``ETJ_GPU_MAX_LIMIT_WATTS``), and never above the operator's throttle (``powerLimitWattsPerGPU``);
* a request the report's parse dropped (not an integer, negative, above the CRD's bound) is ignored: the
  answer in force stays;
* a clamped or ignored request is named once, in one Event when its request number is first answered, not on
  every pass. The clamp itself is recomputed on every pass, so a throttle that arrives or lifts moves the
  answer at once;
* no request (none yet, or the harness withdrew it) answers nothing: the agent gives the GPUs their default
  limit, or the throttle.

Outside mode Auto the answer is cleared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from etj_contract import ControlSection, PowerProfile
from etj_contract import report as r
from etj_operator.lifecycle import Event

__all__ = ["AUTO_LIMIT_CLAMPED", "AUTO_LIMIT_IGNORED", "answer_auto_request"]

#: Event reasons: a request answered with another value, and one that could not be read.
AUTO_LIMIT_CLAMPED: Final = "AutoLimitClamped"
AUTO_LIMIT_IGNORED: Final = "AutoLimitRequestIgnored"

_REQUEST_KEYS: Final = (f".{r.PROFILE_REQUESTED_WATTS}", f".{r.PROFILE_REQUEST_SEQ}")


def _request_problems(problems: Sequence[str]) -> list[str]:
    """The report's parse problems that concern the request (``...powerProfile.requestedWatts: ...``)."""
    out = []
    for problem in problems:
        path = getattr(problem, "path", str(problem).split(":", 1)[0])
        if path.endswith(_REQUEST_KEYS):
            out.append(str(problem))
    return out


def answer_auto_request(
    mode: str,
    control: ControlSection,
    profile: PowerProfile | None,
    report_problems: Sequence[str],
    *,
    min_watts: int,
    max_watts: int,
) -> tuple[ControlSection, list[Event]]:
    """The control section with the answer to the report's request, and the Events to post (see the module).

    ``control``: the section as the other policies left it this pass (its throttle is the ceiling).
    ``profile``, ``report_problems``: the parsed report's powerProfile and what its parse dropped.
    """
    if mode != "Auto":
        if control.auto_limit_watts_per_gpu is None and not control.auto_request_seq:
            return control, []
        return dataclasses.replace(control, auto_limit_watts_per_gpu=None, auto_request_seq=0), []
    throttle = control.power_limit_watts_per_gpu
    ceiling = max_watts if throttle is None else min(max_watts, throttle)
    floor = min(min_watts, ceiling)
    requested = profile.requested_watts if profile is not None else None
    seq = (profile.request_seq if profile is not None else None) or 0
    new = seq != control.auto_request_seq
    problems = _request_problems(report_problems)
    events: list[Event] = []
    if requested is None:
        if problems:  # asked, but unreadable: the answer in force stays (under today's ceiling)
            kept = control.auto_limit_watts_per_gpu
            watts = None if kept is None else max(floor, min(ceiling, kept))
            if new:
                kept_text = "no limit" if watts is None else f"{watts} W per GPU"
                message = f"Auto limit request {seq} ignored ({'; '.join(problems)}); keeping {kept_text}"
                events.append(Event("Warning", AUTO_LIMIT_IGNORED, message))
            return dataclasses.replace(control, auto_limit_watts_per_gpu=watts, auto_request_seq=seq), events
        return dataclasses.replace(control, auto_limit_watts_per_gpu=None, auto_request_seq=seq), events
    watts = max(floor, min(ceiling, requested))
    if new and watts != requested:
        why = f"the throttle's {throttle} W" if throttle is not None and requested > ceiling else (
            f"the allowed {floor}..{ceiling} W")
        message = f"Auto limit request {seq} asked {requested} W per GPU, outside {why}: answering {watts} W"
        events.append(Event("Normal", AUTO_LIMIT_CLAMPED, message))
    return dataclasses.replace(control, auto_limit_watts_per_gpu=watts, auto_request_seq=seq), events
