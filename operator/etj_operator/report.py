"""The per-job energy report: a JSON summary and a PNG plot, from what the operator keeps in the job's status.

Inputs, all from the EfficientTrainingJob object:

* ``status.energy`` totals (joules, kilowattHours, averageWatts, peakWatts, gramsCO2e, source,
  lastSampleTime) and ``status.energy.history``: a bounded, downsampled list of points
  ``[unix_seconds, job_watts, per_gpu_limit_watts | null, cumulative_joules]``;
* ``status.energy.breakdown``: the measured energy split into compute, communication and unattributed, and
  the modelled network energy (:mod:`etj_operator.breakdown`);
* ``status.workload.stages``: compression stage results (name, applied, rolledBack, step, epoch, the non-zero
  parameters before and after (N1, N2) and their ratio, sizes and their ratio, accuracy before/after);
* ``status.forecast``: time and energy to completion (unknown, with the reason, when absent);

all read through the contract's records (:class:`~etj_contract.EnergySection`,
:class:`~etj_contract.WorkloadReport`, :class:`~etj_contract.ForecastSection`), so a malformed field is skipped,
never fatal;
* ``status.conditions``: Paused and Throttled with their lastTransitionTime;
* ``spec`` for the GPU count (replicas x nprocPerNode) and the energy budget.

The plot has two panels sharing a UTC time axis: job power with the power limit the GPUs reported (x GPUs),
stage and condition markers, a shaded span while the job is paused; and cumulative energy with the
budget line and the forecast energy at completion; under them a bar panel of the energy breakdown (measured:
compute, communication, unattributed, stacked; beside it the modelled network energy, hatched and labelled
modelled). Data from the simulated GPU is labelled as such in the JSON and the plot title.

:func:`write_report` takes a job dict (no cluster needed); :func:`fetch_job` reads one through the
operator's API wrapper (:class:`~etj_operator.kubeapi.KubeApi`, a plain GET of the object);
:func:`run_report_command` is what ``etj report`` runs (``--file`` reads a saved manifest instead of the
cluster). matplotlib (Agg backend), the API wrapper and the ``kubernetes`` client (only to read the
kubeconfig's current namespace) are imported only when needed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etj_contract import (
    BREAKDOWN_BASIS,
    ENERGY,
    ENERGY_KEYS,
    FORECAST,
    FORECAST_DISPLAY_KEYS,
    UNKNOWN,
    WORKLOAD,
    ConditionType,
    EnergyBreakdown,
    EnergySection,
    ForecastSection,
    WorkloadReport,
)
from etj_contract import JOULES_PER_KWH as _JOULES_PER_KWH
from etj_operator import contract

__all__ = [
    "HistoryPoint",
    "ReportError",
    "build_summary",
    "fetch_job",
    "parse_history",
    "plot_report",
    "run_report_command",
    "write_report",
]

JOULES_PER_KWH = _JOULES_PER_KWH
#: ``forecast.reason`` in the report when the job's status has no forecast at all.
NO_FORECAST = "NoForecast"
#: Condition types whose transitions the report marks.
MARKED_CONDITIONS = (ConditionType.PAUSED, ConditionType.THROTTLED)


class ReportError(Exception):
    """The report cannot be made (job not found, API unreachable, matplotlib missing)."""


@dataclass(frozen=True)
class HistoryPoint:
    """One point of ``status.energy.history``."""

    time_seconds: float
    job_watts: float
    per_gpu_limit_watts: float | None
    cumulative_joules: float


# --- reading the job ----------------------------------------------------------------------------------
def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _seconds(value: Any) -> float | None:
    """Unix seconds from a number or an RFC 3339 / ISO 8601 string; None otherwise."""
    number = _number(value)
    if number is not None:
        return number
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return None


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def parse_history(raw: Any) -> list[HistoryPoint]:
    """The valid points of ``status.energy.history``, sorted by time (malformed points are skipped)."""
    points: list[HistoryPoint] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, list | tuple) or len(item) < 4:
            continue
        t, watts, limit, joules = (_number(item[0]), _number(item[1]), _number(item[2]), _number(item[3]))
        if t is None or watts is None or joules is None:
            continue
        points.append(HistoryPoint(t, watts, limit, joules))
    points.sort(key=lambda p: p.time_seconds)
    return points


def _is_simulated(energy: EnergySection | None) -> bool:
    return energy is not None and (energy.simulated or "simulated" in energy.source.lower())


def _gpu_count(spec: Mapping[str, Any]) -> int | None:
    replicas, per_node = spec.get("replicas"), spec.get("nprocPerNode", 1)
    if isinstance(replicas, int) and isinstance(per_node, int) and replicas > 0 and per_node > 0:
        return replicas * per_node
    return None


def _budget_kwh(spec: Mapping[str, Any]) -> float | None:
    budget = _mapping(_mapping(spec.get("energy")).get("energyBudget"))
    return _number(budget.get("kilowattHours"))


def _stages(workload: WorkloadReport) -> list[dict[str, Any]]:
    stages = []
    for stage in workload.stages or ():
        acc_before, acc_after = stage.accuracy_before, stage.accuracy_after
        param_ratio, size_ratio = stage.param_ratio, stage.size_ratio
        when = _seconds(stage.time)
        stages.append(
            {
                "name": stage.name,
                "applied": bool(stage.applied),
                "rolledBack": bool(stage.rolled_back),
                "step": stage.step,
                "epoch": stage.epoch,
                "time": _iso(when),
                "timeSeconds": when,
                "paramsTotal": stage.params_total,
                # N1 and N2: the model's non-zero parameters before and after the stage; paramRatio = N1 / N2
                "paramsNonzeroBefore": stage.params_nonzero_before,
                "paramsNonzero": stage.params_nonzero,
                "paramRatio": None if param_ratio is None else round(param_ratio, 4),
                "sizeBytesBefore": stage.size_bytes_before,
                "sizeBytesAfter": stage.size_bytes_after,
                # before / after (the contract's sizeRatio): 2.0 is half the size
                "sizeRatio": None if size_ratio is None else round(size_ratio, 4),
                "accuracyBefore": acc_before,
                "accuracyAfter": acc_after,
                "accuracyDrop": round(acc_before - acc_after, 6)
                if acc_before is not None and acc_after is not None
                else None,
            }
        )
    return stages


def _forecast(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status.forecast`` as the report shows it: each figure, None while unknown, and why (``reason``)."""
    raw = status.get(FORECAST)
    if not isinstance(raw, Mapping):
        message = "the job's status holds no forecast (none computed yet, or an operator without forecasts)"
        return {"known": False, "reason": NO_FORECAST, "message": message}
    fc = ForecastSection.from_status(raw)
    known = fc.remaining_seconds is not None or fc.energy_at_completion_kwh is not None
    return {
        "known": known,
        "reason": fc.reason,
        "message": fc.message,
        "stepsDone": fc.steps_done,
        "stepsTotal": fc.steps_total,
        "stepsRemaining": fc.steps_remaining,
        "stepsPerSecond": fc.steps_per_second,
        "remainingSeconds": fc.remaining_seconds,
        "completionTime": _iso(fc.completion_seconds),
        "completionSeconds": fc.completion_seconds,
        "powerWatts": fc.power_watts,
        "energyToCompletionKilowattHours": fc.energy_to_completion_kwh,
        "energyAtCompletionKilowattHours": fc.energy_at_completion_kwh,
        "progressTime": _iso(fc.progress_seconds),
        "powerTime": _iso(fc.power_seconds),
        "simulated": fc.simulated,
        "display": fc.display(),
        # the remaining time as kubectl shows it (2m30s; "-" unknown)
        "eta": fc.display()[FORECAST_DISPLAY_KEYS["remaining"]],
    }


def _breakdown(measured: EnergySection | None) -> dict[str, Any]:
    """``status.energy.breakdown``: the measured energy's split (attributed) and the network's (modelled)."""
    split: EnergyBreakdown | None = measured.breakdown if measured is not None else None
    if split is None:
        reason = "no energy measured yet" if measured is None else "the job's status holds no energy breakdown"
        return {"known": False, "reason": reason}
    model = split.network_model
    return {
        "known": True,
        "computeJoules": split.compute_joules,
        "communicationJoules": split.communication_joules,
        "unattributedJoules": split.unattributed_joules,
        # the part of unattributedJoules measured since the last report whose window is still open
        "pendingJoules": split.pending_joules,
        "totalJoules": split.total_joules,
        "communicationFraction": split.communication_fraction,
        "basis": BREAKDOWN_BASIS,
        "note": "measured GPU energy, attributed by time windows; communication overlapped with compute counts as"
        " communication, so its share is an upper bound; unattributed: no timing covered the interval",
        "network": {
            "modelled": True,
            "label": "modelled (not measured): bytes sent x 8 x energy per bit; the network's, not in the GPU total",
            "bytes": split.network_bytes,
            "joulesModelled": split.network_joules_modelled,
            "model": None if model is None else model.to_status(),
        },
    }


def _conditions(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    marked = []
    for raw in status.get("conditions") or []:
        if isinstance(raw, Mapping) and raw.get("type") in MARKED_CONDITIONS:
            when = _seconds(raw.get("lastTransitionTime"))
            marked.append(
                {
                    "type": raw["type"],
                    "status": raw.get("status"),
                    "reason": raw.get("reason"),
                    "message": raw.get("message"),
                    "lastTransitionTime": _iso(when),
                    "lastTransitionSeconds": when,
                }
            )
    return marked


def _history_summary(points: Sequence[HistoryPoint]) -> dict[str, Any]:
    if not points:
        return {"points": 0}
    duration = points[-1].time_seconds - points[0].time_seconds
    # Time-weighted mean of the recorded power (each point holds until the next).
    weighted = sum(a.job_watts * (b.time_seconds - a.time_seconds) for a, b in itertools.pairwise(points))
    limits = [p.per_gpu_limit_watts for p in points if p.per_gpu_limit_watts is not None]
    return {
        "points": len(points),
        "start": _iso(points[0].time_seconds),
        "end": _iso(points[-1].time_seconds),
        "durationSeconds": round(duration, 3),
        "joulesInHistory": round(points[-1].cumulative_joules - points[0].cumulative_joules, 3),
        "meanWatts": round(weighted / duration, 2) if duration > 0 else points[0].job_watts,
        "maxWatts": max(p.job_watts for p in points),
        "perGpuLimitWatts": {"min": min(limits), "max": max(limits)} if limits else None,
    }


def build_summary(job: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON summary of a job's energy (plain data, ready for ``json.dumps``)."""
    metadata, spec, status = _mapping(job.get("metadata")), _mapping(job.get("spec")), _mapping(job.get("status"))
    # Energy is unknown (None), never 0, when nothing was ever measured (no energy section, or one without
    # a reading: the operator leaves the totals out until a reading arrives).
    energy = EnergySection.from_status(status[ENERGY]) if isinstance(status.get(ENERGY), Mapping) else None
    measured = energy if energy is not None and energy.measured else None
    simulated = _is_simulated(energy)
    points = parse_history(energy.history if energy is not None else None)
    kwh = measured.kilowatt_hours if measured is not None else None
    budget = _budget_kwh(spec)
    workload = WorkloadReport.from_status(status.get(WORKLOAD))
    if measured is None:
        label = "no data"
    elif simulated:
        label = "simulated GPU (not measured hardware)"
    else:
        label = "measured"
    return {
        "job": {"name": metadata.get("name"), "namespace": metadata.get("namespace"), "uid": metadata.get("uid")},
        "generatedAt": _iso(datetime.now(UTC).timestamp()),
        "simulated": simulated,
        "dataLabel": label,
        "phase": status.get("phase"),
        "gpus": _gpu_count(spec),
        "energy": {
            "joules": measured.joules if measured is not None else None,
            "kilowattHours": kwh,
            "averageWatts": measured.average_watts if measured is not None else None,
            "peakWatts": measured.peak_watts if measured is not None else None,
            "currentWatts": energy.current_watts if energy is not None else None,
            "gramsCO2e": measured.grams_co2e if measured is not None else None,
            "source": energy.to_status()[ENERGY_KEYS["source"]] if energy is not None else None,
            "lastSampleTime": _iso(energy.last_sample_seconds) if energy is not None else None,
            "budgetKilowattHours": budget,
            "budgetUsedFraction": round(kwh / budget, 6) if kwh is not None and budget else None,
        },
        "history": _history_summary(points),
        ENERGY_KEYS["breakdown"]: _breakdown(measured),
        "forecast": _forecast(status),
        "stages": _stages(workload),
        "conditions": _conditions(status),
        "workload": {
            key: value
            for key, value in (
                (contract.WORKLOAD_EPOCH, workload.epoch),
                (contract.WORKLOAD_STEP, workload.step),
                (contract.WORKLOAD_ACCURACY, workload.accuracy),
            )
            if value is not None
        },
    }


# --- the plot ----------------------------------------------------------------------------------------
def _energy_unit(max_joules: float) -> tuple[str, float]:
    if max_joules >= 0.5 * JOULES_PER_KWH:
        return "kWh", JOULES_PER_KWH
    if max_joules >= 3600.0 * 0.5:
        return "Wh", 3600.0
    return "J", 1.0


def plot_report(job: Mapping[str, Any], png_path: Path, summary: Mapping[str, Any] | None = None) -> Path:
    """Draw the two-panel plot to ``png_path`` (matplotlib, Agg backend); raises ReportError without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is a dev/report dependency
        raise ReportError("the PNG plot needs matplotlib (pip install matplotlib)") from e

    summary = summary or build_summary(job)
    status = _mapping(job.get("status"))
    points = parse_history(_mapping(status.get(ENERGY)).get(ENERGY_KEYS["history"]))
    gpus = summary.get("gpus")
    name = f"{summary['job'].get('namespace')}/{summary['job'].get('name')}"
    title = f"Energy report: {name}"
    if summary["simulated"]:
        title += "  [SIMULATED GPU DATA]"

    fig = plt.figure(figsize=(11, 9.5))
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 2, 1.6])
    # Any, as plt.subplots' axes were: matplotlib's stubs do not take datetimes as data
    ax_power: Any = fig.add_subplot(grid[0])
    ax_energy: Any = fig.add_subplot(grid[1], sharex=ax_power)
    ax_split: Any = fig.add_subplot(grid[2])
    try:
        fig.suptitle(title, color="tab:red" if summary["simulated"] else "black")
        if not points:
            for ax in (ax_power, ax_energy):
                ax.text(0.5, 0.5, "no data: no samples recorded", ha="center", va="center", transform=ax.transAxes)
        else:
            times = [datetime.fromtimestamp(p.time_seconds, UTC) for p in points]
            ax_power.step(times, [p.job_watts for p in points], where="post", color="tab:blue", label="job power")
            if any(p.per_gpu_limit_watts is not None for p in points):
                scale = gpus or 1
                limits = [
                    p.per_gpu_limit_watts * scale if p.per_gpu_limit_watts is not None else math.nan for p in points
                ]
                label = f"power limit ({gpus} GPUs x per-GPU limit)" if gpus else "per-GPU power limit"
                ax_power.step(times, limits, where="post", color="tab:orange", linestyle="--", label=label)
            unit, divisor = _energy_unit(max(p.cumulative_joules for p in points))
            ax_energy.plot(times, [p.cumulative_joules / divisor for p in points], color="tab:green", label="energy")
            budget = summary["energy"].get("budgetKilowattHours")
            if budget:
                ax_energy.axhline(budget * JOULES_PER_KWH / divisor, color="tab:red", linestyle=":", label="budget")
            ax_energy.set_ylabel(f"cumulative energy ({unit})")
            _draw_forecast(ax_energy, summary["forecast"], points, divisor, unit)
            _mark_events(ax_power, ax_energy, summary, points[-1].time_seconds)
            ax_energy.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))  # type: ignore[no-untyped-call]
            ax_energy.set_xlabel("time (UTC)")
        _draw_breakdown(ax_split, summary[ENERGY_KEYS["breakdown"]])
        ax_power.set_ylabel("power (W)")
        ax_power.grid(True, alpha=0.3)
        ax_energy.grid(True, alpha=0.3)
        for ax in (ax_power, ax_energy):  # the breakdown's legend is beside its bars (_draw_breakdown)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize="small", framealpha=0.9)
        footer = f"source: {summary['energy'].get('source') or 'unknown'}"
        totals = summary["energy"]
        if totals.get("joules") is not None:
            footer += f"   total {totals['joules'] / 1000:.1f} kJ ({totals.get('kilowattHours') or 0:.4f} kWh)"
        if totals.get("gramsCO2e") is not None:
            footer += f"   {totals['gramsCO2e']:.1f} gCO2e"
        forecast = summary["forecast"]
        if not forecast.get("known"):
            footer += f"   forecast unknown ({forecast.get('reason') or 'no reason given'})"
        untimed = [
            f"{entry['name']} (step {entry.get('step')}{', rolled back' if entry['rolledBack'] else ''})"
            for entry in summary["stages"]
            if entry.get("timeSeconds") is None
        ]
        if untimed:
            footer += "   stages without a time: " + ", ".join(untimed)
        fig.text(0.01, 0.01, footer, fontsize="small", color="dimgray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path, dpi=100)
    finally:
        plt.close(fig)
    return png_path


def _draw_forecast(
    ax: Any, forecast: Mapping[str, Any], points: Sequence[HistoryPoint], divisor: float, unit: str
) -> None:
    """The forecast energy at completion, as text and, when near enough, as a dashed line to it.

    The line runs from the last point to the completion when that is within five times the plotted span of it.
    """
    kwh, when = forecast.get("energyAtCompletionKilowattHours"), forecast.get("completionSeconds")
    if not forecast.get("known") or kwh is None:
        return
    target = kwh * JOULES_PER_KWH / divisor
    text = f"forecast at completion: {kwh:.4g} kWh"
    if forecast.get("eta") not in (None, UNKNOWN):
        text += f", ETA {forecast['eta']}"
    if forecast.get("simulated"):
        text += " (simulated power)"
    last = points[-1]
    if when is not None:
        span = max(60.0, last.time_seconds - points[0].time_seconds)
        if when - last.time_seconds <= 5 * span:
            start = datetime.fromtimestamp(last.time_seconds, UTC)
            end = datetime.fromtimestamp(when, UTC)
            ax.plot([start, end], [last.cumulative_joules / divisor, target], color="tab:green", linestyle="--",
                    label=f"forecast ({unit} at completion)")
            ax.plot([end], [target], marker="o", color="tab:green")
    ax.text(0.01, 0.95, text, transform=ax.transAxes, va="top", fontsize="small", color="tab:green",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})


def _draw_breakdown(ax: Any, split: Mapping[str, Any]) -> None:
    """Two horizontal bars: the measured GPU energy stacked by attribution, and the modelled network energy."""
    if not split.get("known"):
        ax.text(0.5, 0.5, f"energy breakdown unknown: {split.get('reason')}", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    network = split["network"]
    modelled = network.get("joulesModelled")
    unit, divisor = _energy_unit(max(split["totalJoules"], modelled or 0.0))
    parts = (
        ("compute", split["computeJoules"], "tab:blue"),
        ("communication (upper bound)", split["communicationJoules"], "tab:orange"),
        ("unattributed (no timing)", split["unattributedJoules"], "lightgray"),
    )
    left = 0.0
    for label, joules, color in parts:
        ax.barh(1, joules / divisor, left=left, color=color, edgecolor="white", label=f"{label}: {joules:,.0f} J")
        left += joules / divisor
    if modelled is not None:
        ax.barh(0, modelled / divisor, color="white", edgecolor="tab:purple", hatch="//",
                label=f"network transfer, MODELLED: {modelled:,.3g} J")
        ax.text(modelled / divisor, 0, f"  {modelled:,.3g} J modelled (not measured, not in the GPU total)",
                va="center", fontsize="small", color="tab:purple")
    else:
        ax.text(0.0, 0, "  network transfer (modelled): unknown, no bytes reported", va="center", fontsize="small")
    ax.set_yticks([1, 0], ["GPU energy\n(measured)", "network\n(modelled)"])
    fraction = split.get("communicationFraction")
    share = "-" if fraction is None else f"{fraction:.1%}"
    ax.set_xlabel(f"energy ({unit}); communication share of the attributed energy {share}, {split['basis']}")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_ylim(-0.9, 1.5)
    ax.legend(loc="lower right", ncol=2, fontsize="small", framealpha=0.9)


def _mark_events(ax_power: Any, ax_energy: Any, summary: Mapping[str, Any], end_seconds: float) -> None:
    """Stage lines (green applied, red rolled back), condition transitions, and the current pause span."""
    for entry in summary["stages"]:
        when = entry.get("timeSeconds")
        if when is None:
            continue
        color = "tab:red" if entry["rolledBack"] else "tab:green"
        moment = datetime.fromtimestamp(when, UTC)
        for ax in (ax_power, ax_energy):
            ax.axvline(moment, color=color, linestyle="-.", alpha=0.8)
        label = entry["name"] + (" (rolled back)" if entry["rolledBack"] else "")
        ax_power.annotate(
            label,
            (moment, 0.97),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize="small",
            color=color,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
    for index, condition in enumerate(summary["conditions"]):
        when = condition.get("lastTransitionSeconds")
        if when is None:
            continue
        moment = datetime.fromtimestamp(when, UTC)
        active = condition.get("status") == "True"
        color = "dimgray" if condition["type"] == ConditionType.PAUSED else "tab:purple"
        if condition["type"] == ConditionType.PAUSED and active and when <= end_seconds:
            end = datetime.fromtimestamp(end_seconds, UTC)
            for ax in (ax_power, ax_energy):
                ax.axvspan(moment, end, color="lightgray", alpha=0.5)
        ax_power.axvline(moment, color=color, linestyle=":", alpha=0.9)
        text = f"{condition['type']}={condition.get('status')}"
        ax_power.annotate(
            text,
            (moment, 0.03 + 0.25 * (index % 3)),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="bottom",
            ha="left",
            fontsize="small",
            color=color,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )


def write_report(job: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<job>-report.json`` and ``<job>-report.png`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = str(_mapping(job.get("metadata")).get("name") or "job")
    summary = build_summary(job)
    png_path = out / f"{name}-report.png"
    summary["plot"] = png_path.name
    json_path = out / f"{name}-report.json"
    json_path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    plot_report(job, png_path, summary)
    return json_path, png_path


# --- reading the job from a cluster ------------------------------------------------------------------
def default_namespace(kubeconfig: str | None = None) -> str:
    """The kubeconfig's current-context namespace, else ``default``."""
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        namespace = _mapping(_mapping(active).get("context")).get("namespace")
        return str(namespace) if namespace else "default"
    except Exception:
        return "default"


def fetch_job(name: str, namespace: str, kubeconfig: str | None = None) -> dict[str, Any]:
    """GET the EfficientTrainingJob; raises ReportError when it is missing or the API is unreachable."""
    from etj_operator.kubeapi import RESOURCES, KubeApi, load_connection

    try:
        connection = load_connection(kubeconfig)
    except Exception as e:
        raise ReportError(f"cannot load Kubernetes credentials: {e}") from e
    path = RESOURCES[contract.KIND].path(namespace, name)

    async def get() -> dict[str, Any] | None:
        api = KubeApi(connection, max_connections=1)
        try:
            return await api.get(contract.KIND, namespace, name)
        finally:
            await api.aclose()

    try:
        job = asyncio.run(get())
    except Exception as e:
        raise ReportError(f"GET {path}: {e}") from e
    if job is None:
        raise ReportError(f"{contract.KIND} {namespace}/{name} not found")
    return job


def _load_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(f"cannot read {path}: {e}") from e
    if not isinstance(loaded, dict) or loaded.get("kind") != contract.KIND:
        raise ReportError(f"{path} does not hold an {contract.KIND}")
    return loaded


def _text(value: Any, spec: str = "") -> str:
    """A figure of the summary as text: ``-`` when unknown."""
    if value is None:
        return UNKNOWN
    if isinstance(value, (int, float)) and spec:
        return f"{value:{spec}}"
    return f"{value}"


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The breakdown's and the forecast's lines, as ``etj report`` and the demo print them.

    The breakdown: measured, attributed, and the network's, modelled. Figures marked ``*`` are simulated in the
    sandbox.
    """
    return [*_breakdown_lines(summary), _forecast_line(summary)]


def _breakdown_lines(summary: Mapping[str, Any]) -> list[str]:
    """The report's energy breakdown: measured and attributed, then the network's, modelled."""
    split = summary[ENERGY_KEYS["breakdown"]]
    if not split.get("known"):
        return [f"  energy breakdown: unknown ({split.get('reason')})"]
    total = split["totalJoules"] or 0.0

    def part(joules: float) -> str:
        return f"{joules:,.0f} J ({joules / total:.0%})" if total > 0 else f"{joules:,.0f} J"

    lines = [f"  energy breakdown* ({split['basis']}): compute {part(split['computeJoules'])}, communication"
             f" {part(split['communicationJoules'])} (an upper bound: overlapped time counts),"
             f" unattributed {part(split['unattributedJoules'])} (no timing covered it)"]
    network = split["network"]
    modelled, sent = network.get("joulesModelled"), network.get("bytes")
    if modelled is None:
        lines.append("  network transfer energy (modelled): unknown, the harness reported no bytes sent")
    else:
        model = network.get("model") or {}
        lines.append(f"  network transfer energy: {modelled:.3g} J MODELLED (not measured, not in the GPU total):"
                     f" {_text(sent, ',')} B x 8 x {_text(model.get('picojoulesPerBit'), '.3g')} pJ/bit"
                     f" ({_text(model.get('interNodeShare'), '.0%')} of the ring's hops between pods)")
    return lines


def _forecast_line(summary: Mapping[str, Any]) -> str:
    """The report's forecast: the figures when known, else unknown with the reason."""
    forecast = summary["forecast"]
    if not forecast.get("known"):
        why = forecast.get("message") or ""
        return f"  forecast: unknown ({forecast.get('reason') or '-'}{': ' + why if why else ''})"
    kwh = forecast.get("energyAtCompletionKilowattHours")
    return (f"  forecast: {_text(forecast.get('stepsRemaining'))} steps to go, ETA"
            f" {forecast.get('eta') or '-'}, energy at completion"
            f" {_text(kwh, '.6f')} kWh* ({forecast.get('reason') or '-'})")



def run_report_command(
    job: str,
    namespace: str | None = None,
    out_dir: str = ".",
    kubeconfig: str | None = None,
    from_file: str | None = None,
) -> int:
    """What ``etj report`` does: fetch the job (or read ``from_file``), write the report, print the paths."""
    try:
        if from_file:
            body = _load_file(from_file)
        else:
            body = fetch_job(job, namespace or default_namespace(kubeconfig), kubeconfig)
        json_path, png_path = write_report(body, out_dir)
    except ReportError as e:
        print(f"etj report: {e}", file=sys.stderr)
        return 1
    summary = json.loads(json_path.read_text())
    totals = summary["energy"]
    label = " (SIMULATED)" if summary["simulated"] else ""
    kwh = totals.get("kilowattHours")
    energy = f"{kwh} kWh" if kwh is not None else "energy unknown (no data)"
    print(
        f"{summary['job']['namespace']}/{summary['job']['name']}{label}: phase {summary.get('phase')}, "
        f"{energy}, source {totals.get('source') or 'unknown'}"
    )
    for line in summary_lines(summary):
        print(line)
    print(f"wrote {json_path}")
    print(f"wrote {png_path}")
    return 0
