"""The telemetry hub's own metric families, on the operator's registry (served with :mod:`etj_operator.metrics`)."""

from __future__ import annotations

from prometheus_client import Counter

from etj_operator.metrics import REGISTRY

__all__ = ["TELEMETRY_REJECTED_SERIES"]

#: GPU series a source read under a managed pod's name but did not count for it, by source and kind of reason
#: (``node``, ``before_start``, ``too_many_gpus``, ``duplicate``, ``not_held``: telemetry.base.REJECT_*).
TELEMETRY_REJECTED_SERIES = Counter(
    "etj_telemetry_rejected_series_total",
    "GPU series read under a managed pod's name and not counted for it (another node, older than the pod, "
    "more GPUs than it requested, a second copy of a GPU, a GPU the node agent does not list for it).",
    ["source", "reason"],
    registry=REGISTRY,
)
