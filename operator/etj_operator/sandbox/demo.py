"""``make demo``: the real operator runs, measures, throttles and compresses a real DDP job on this machine.

No cluster and no GPU are needed.

It starts a sandbox in this process (API emulator with validation, process kubelet, operator, the node agent as
a process, the node's simulated DCGM exporter and, when installed, Prometheus; see
:mod:`etj_operator.sandbox.sandbox`), applies ``workloads/examples/digits-ddp.yaml`` (or the manifests given),
shows a live table of each job (phase, power, energy, the per-GPU limit the operator asks and the one the node
agent applied, stage, accuracy, step) until all of them finish, then writes each job's report (JSON + PNG,
:func:`etj_operator.report.write_report`) and prints where. The GPUs are simulated (the harness's power model,
on the sandbox node's simulated GPUs): every power and energy figure on screen says so.

Who applied a cap is read from the node agent's own metrics (``DCGM_FI_DEV_POWER_MGMT_LIMIT`` read back and the
agent's ``reason``, scraped every refresh while the job's pods hold their GPUs), not from what was asked; after
the jobs, the node's GPU state file shows whether every GPU went back to its default.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from etj_contract import (
    ENERGY,
    FORECAST_DISPLAY_KEYS,
    SIMULATED_SUFFIX,
    ConditionType,
    ControlSection,
    EnergySection,
    ForecastSection,
    WorkloadReport,
)
from etj_contract import agent as a
from etj_operator import contract as c
from etj_operator.packagedata import data_path
from etj_operator.report import summary_lines
from etj_operator.sandbox.agents import AGENT_CAP_REASONS, AgentGpu, agent_gpus, node_gpu_limits
from etj_operator.sandbox.sandbox import REPO_ROOT, Sandbox, SandboxOptions, crd_path

__all__ = ["DEFAULT_EXAMPLES", "DEFAULT_REPORT_DIR", "DEFAULT_STATE_DIR", "DemoResult", "crd_path", "demo", "run_demo"]

#: The demo's job: the harness example. ``etj demo --manifest workloads/examples/foreign-ddp.yaml`` runs the
#: foreign program instead (measured through the node's DCGM exporter and Prometheus).
DEFAULT_EXAMPLES = data_path("examples", "digits-ddp.yaml")  # the packaged copy in a wheel
#: The demo's sandbox state (logs, checkpoints): beside, not inside, a default `etj sandbox up` state.
DEFAULT_STATE_DIR = Path(".etj-sandbox") / "demo"
#: Where the reports go (JSON + PNG per job).
DEFAULT_REPORT_DIR = Path("reports")
#: The remaining time in status.forecast.display (kubectl's ETA column).
ETA = FORECAST_DISPLAY_KEYS["remaining"]
SIMULATED_NOTE = ("GPU power and energy are SIMULATED: no GPU here, the harness's power model (source=simulated;"
                  " Prometheus jobs: the node's simulated DCGM exporter)")


@dataclass
class DemoResult:
    """What the demo did: the final jobs, the report files, whether every job succeeded."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    reports: list[tuple[Path, Path]] = field(default_factory=list)
    state_dir: Path = DEFAULT_STATE_DIR
    succeeded: bool = False
    seconds: float = 0.0
    #: The lowest per-GPU cap the operator set on each job while the demo watched (None: never throttled).
    caps: dict[str, int | None] = field(default_factory=dict)
    #: Jobs whose status said PowerCapEnforced=True at some point (the GPUs reported the cap asked).
    enforced: set[str] = field(default_factory=set)
    #: Per job, per GPU UUID: the lowest limit the node agent applied for it, as its metrics read it back (W).
    agent_caps: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Per job: every reason the node agent gave for its GPUs (``JobCeiling``, ``PodManaged``, ...).
    agent_reasons: dict[str, set[str]] = field(default_factory=dict)
    #: After the jobs: ``UUID -> (limit, default)`` of the node's GPUs (mW), from its state file (None: no node).
    node_gpus_after: dict[str, tuple[int, int]] | None = None


def _manifests(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.yaml")) if path.is_dir() else [path])
    return files


def _job_docs(files: Sequence[Path]) -> list[tuple[str, str]]:
    jobs = []
    for file in files:
        for doc in yaml.safe_load_all(file.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == c.KIND:
                meta = doc.get("metadata") or {}
                jobs.append((meta.get("namespace") or "default", str(meta.get("name"))))
    return jobs


def _fmt(value: Any, spec: str = "", unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and spec:
        return f"{value:{spec}}{unit}"
    return f"{value}{unit}"


def _agent_column(gpus: Sequence[AgentGpu]) -> str:
    """The limits the node agent read back on a job's GPUs, with the reason when it did not cap them."""
    if not gpus:
        return "-"
    return ", ".join(f"{g.limit_watts:.0f}" + ("" if g.capped_by_agent else f" ({g.reason})")
                     for g in gpus if g.limit_watts is not None) or "-"


def _table(jobs: Sequence[Mapping[str, Any]], pods: Mapping[str, list[str]], elapsed: float,
           agent: Mapping[str, Sequence[AgentGpu]] | None = None) -> Group:
    agent = agent or {}
    table = Table(title=f"EfficientTrainingJobs in the sandbox ({elapsed:.0f} s)", title_justify="left")
    for column in ("job", "phase", "pods", "power W*", "energy J*", "limit W/GPU", "node agent W*", "stage",
                   "accuracy", "step", "epoch"):
        table.add_column(column, no_wrap=True, justify="right" if column not in ("job", "phase", "pods", "stage")
                         else "left")
    for job in jobs:
        status = job.get("status") or {}
        energy, workload, control = _sections(job)
        name = job["metadata"]["name"]
        accuracy = workload.accuracy
        table.add_row(
            name,
            str(status.get("phase") or "Pending"),
            ", ".join(pods.get(name, [])) or "-",
            _fmt(energy.current_watts if energy else None, ".0f"),
            _fmt(energy.joules if energy and energy.measured else None, ".0f"),
            _fmt(control.power_limit_watts_per_gpu),
            _agent_column(agent.get(name, ())),
            str(status.get("stage") or "-"),
            _fmt(accuracy * 100 if accuracy is not None else None, ".1f", "%"),
            _fmt(workload.step),
            _fmt(workload.epoch),
        )
    notes = [Text(f"* {SIMULATED_NOTE}", style="yellow"),
             Text("  limit W/GPU: what the operator asks (status.control); node agent W: the limits the node agent"
                  " read back on the job's simulated node GPUs", style="dim")]
    return Group(table, *notes)


def _sections(job: Mapping[str, Any]) -> tuple[EnergySection | None, WorkloadReport, ControlSection]:
    """The job's energy (None: no readings yet), its workload's report and its control, as the contract reads them."""
    status = job.get("status") or {}
    energy = EnergySection.from_status(status[ENERGY]) if isinstance(status.get(ENERGY), Mapping) else None
    return energy, WorkloadReport.from_status(status.get(c.WORKLOAD)), ControlSection.from_status(status.get(c.CONTROL))


def _stage_lines(job: Mapping[str, Any]) -> list[str]:
    lines = []
    for stage in _sections(job)[1].stages or ():
        outcome = "applied" if stage.applied else ("rolled back" if stage.rolled_back else "not applied")
        before, after = stage.size_bytes_before, stage.size_bytes_after
        acc_b, acc_a = stage.accuracy_before, stage.accuracy_after
        size = f"{before:,} -> {after:,} B" if before is not None and after is not None else "size -"
        if stage.size_ratio is not None:
            size += f" (x{stage.size_ratio:.2f} smaller)"
        n1, n2 = stage.params_nonzero_before, stage.params_nonzero
        params = f"non-zero params N1 {_fmt(n1, ',')} -> N2 {_fmt(n2, ',')}" + (
            f" (N1/N2 {stage.param_ratio:.2f})" if stage.param_ratio is not None else "")
        acc = (f"accuracy {acc_b * 100:.1f}% -> {acc_a * 100:.1f}%"
               if acc_b is not None and acc_a is not None else "accuracy -")
        lines.append(f"  stage {stage.name}: {outcome} at epoch {stage.epoch}, {params}, {size} (zlib), {acc}")
    return lines


def demo(
    manifests: Sequence[Path] = (DEFAULT_EXAMPLES,),
    *,
    console: Console | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    report_dir: Path | None = None,
    timeout_seconds: float = 170.0,
    refresh_seconds: float = 1.0,
    live: bool | None = None,
) -> DemoResult:
    """Run the demo and return what happened (see the module docstring); the sandbox is stopped on return."""
    console = console or Console()
    files = _manifests([Path(m) for m in manifests])
    wanted = _job_docs(files)
    report_dir = Path(report_dir) if report_dir is not None else DEFAULT_REPORT_DIR
    result = DemoResult(state_dir=Path(state_dir).resolve())
    started = time.monotonic()
    console.rule("[bold]EfficientTrainingJob operator: the sandbox demo (no cluster, no GPU)")
    sandbox = Sandbox(SandboxOptions(state_dir=Path(state_dir), port=0, max_grace_seconds=10.0))
    sandbox.start()
    try:
        server = sandbox.api
        console.print(f"API emulator on {server.url} (in-memory, validating), process kubelet, operator: started")
        for agent in sandbox.node_agents:
            console.print(f"node agent of {agent.node}: `etj node-agent --backend simulated` (pid"
                          f" {agent.proc.pid if agent.proc else '-'}, every {agent.interval_seconds:g} s) on"
                          f" {agent.gpus} simulated GPUs; the kubelet's PodResources socket {agent.socket}")
        for exporter in sandbox.dcgm_exporters:
            console.print(f"DCGM exporter of {exporter.node} (simulated power of every node GPU, from its pod's CPU"
                          f" use, capped by its limit): {exporter.metrics_url}")
        console.print(f"Prometheus: {sandbox.prometheus_note}")
        console.print(f"[yellow]{SIMULATED_NOTE}[/]")
        for file in files:
            sandbox.apply_file(file)
            shown = file.relative_to(REPO_ROOT) if file.is_relative_to(REPO_ROOT) else file
            console.print(f"applied {shown}")
        if not wanted:
            console.print(f"[red]no {c.KIND} in {', '.join(str(f) for f in files)}")
            return result
        result.caps = {name: None for _, name in wanted}
        agent_view: dict[str, list[AgentGpu]] = {}

        def snapshot() -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
            jobs = [j for ns, name in wanted if (j := server.get(c.PLURAL, ns, name)) is not None]
            pods: dict[str, list[str]] = {}
            job_of: dict[tuple[str, str], str] = {}
            for pod in server.list("pods"):
                job_name = (pod["metadata"].get("labels") or {}).get(c.LABEL_JOB_NAME)
                if job_name:
                    job_of[(pod["metadata"].get("namespace") or "default", pod["metadata"]["name"])] = job_name
                    pods.setdefault(job_name, []).append(
                        f"{pod['metadata']['name'].removeprefix(job_name + '-')}:"
                        f"{(pod.get('status') or {}).get('phase', 'Pending')}")
            for job in jobs:
                cap = _sections(job)[2].power_limit_watts_per_gpu
                name = job["metadata"]["name"]
                if isinstance(cap, int) and (result.caps.get(name) is None or cap < (result.caps[name] or cap)):
                    result.caps[name] = cap
                conditions = (job.get("status") or {}).get("conditions") or []
                enforced = ConditionType.POWER_CAP_ENFORCED
                if any(x.get("type") == enforced and x.get("status") == "True" for x in conditions):
                    result.enforced.add(name)
            agent_view.clear()
            for agent in sandbox.node_agents:
                for gpu in agent_gpus(agent.metrics()):
                    for holder in gpu.pods:
                        job_name = job_of.get(holder)
                        if job_name is None:
                            continue
                        agent_view.setdefault(job_name, []).append(gpu)
                        if gpu.reason:
                            result.agent_reasons.setdefault(job_name, set()).add(gpu.reason)
                        if gpu.capped_by_agent and gpu.limit_watts is not None:
                            seen = result.agent_caps.setdefault(job_name, {})
                            seen[gpu.uuid] = min(seen.get(gpu.uuid, gpu.limit_watts), gpu.limit_watts)
            return jobs, pods

        def finished(jobs: Sequence[Mapping[str, Any]]) -> bool:
            return len(jobs) == len(wanted) and all(
                (j.get("status") or {}).get("phase") in c.TERMINAL_PHASES for j in jobs)

        jobs, pods = snapshot()
        use_live = console.is_terminal if live is None else live
        deadline = started + timeout_seconds
        if use_live:
            with Live(_table(jobs, pods, 0, agent_view), console=console, refresh_per_second=4) as view:
                while not finished(jobs) and time.monotonic() < deadline:
                    time.sleep(refresh_seconds)
                    jobs, pods = snapshot()
                    view.update(_table(jobs, pods, time.monotonic() - started, agent_view))
        else:  # a log or a pipe: a line per job every few seconds instead of a redrawn table
            last_print = 0.0
            while not finished(jobs) and time.monotonic() < deadline:
                time.sleep(refresh_seconds)
                jobs, pods = snapshot()
                if time.monotonic() - last_print >= 5:
                    last_print = time.monotonic()
                    for job in jobs:
                        st = job.get("status") or {}
                        e, w, ctl = _sections(job)
                        console.print(
                            f"{time.monotonic() - started:5.0f} s {job['metadata']['name']}: {st.get('phase')}"
                            f" step {_fmt(w.step)} power {_fmt(e.current_watts if e else None, '.0f')} W*"
                            f" energy {_fmt(e.joules if e and e.measured else None, '.0f')} J* limit"
                            f" {_fmt(ctl.power_limit_watts_per_gpu)} W/GPU node agent"
                            f" {_agent_column(agent_view.get(job['metadata']['name'], ()))} W*"
                            f" stage {st.get('stage') or '-'}"
                            f" ETA {ForecastSection.from_status(st.get(c.FORECAST)).display()[ETA]}")
            console.print(_table(jobs, pods, time.monotonic() - started, agent_view))
        result.jobs = jobs
        result.succeeded = finished(jobs) and all((j.get("status") or {}).get("phase") == "Succeeded" for j in jobs)
        if not finished(jobs):
            console.print(f"[red]the jobs did not finish within {timeout_seconds:.0f} s")
        _summarise(console, sandbox, result, report_dir)
        _node_gpus_after(console, sandbox, result)
    finally:
        sandbox.stop()
        result.seconds = time.monotonic() - started
    console.print(f"sandbox stopped (every pod process ended); the demo took {result.seconds:.0f} s")
    return result


def _summarise(console: Console, sandbox: Sandbox, result: DemoResult, report_dir: Path) -> None:
    from etj_operator.report import write_report

    for job in result.jobs:
        name = job["metadata"]["name"]
        status = job.get("status") or {}
        energy, workload, _ = _sections(job)
        console.print(f"[bold]{name}[/]: {status.get('phase')}")
        if energy is None:
            console.print("  energy unknown (no readings)")
        else:
            source = energy.source + (SIMULATED_SUFFIX if energy.simulated else "")
            console.print(f"  energy {_fmt(energy.joules, ',.0f')} J ({_fmt(energy.kilowatt_hours, '.6f')} kWh),"
                          f" average {_fmt(energy.average_watts, '.0f')} W, peak {_fmt(energy.peak_watts, '.0f')} W"
                          f" - source: {source or '-'}")
        cap = result.caps.get(name)
        budget = (((job.get("spec") or {}).get("energy") or {}).get("power") or {}).get("budgetWatts")
        verdict = "" if not cap else (
            ", in force: the GPUs reported it (PowerCapEnforced)" if name in result.enforced
            else ", never reported by the GPUs (PowerCapEnforced stayed False)"
        )
        console.print(f"  throttle: {f'asked {cap} W per GPU' if cap else 'never asked'}"
                      f" (budget {_fmt(budget)} W for the job){verdict}")
        for line in _agent_lines(sandbox, result, name):
            console.print(line)
        chosen = workload.power_profile.chosen_watts if workload.power_profile else None
        accuracy = workload.accuracy
        if (status.get(c.WORKLOAD) or None) is None:
            console.print("  no workload report: the program does not use the harness (its energy and cap came"
                          " from the node: DCGM exporter, node agent)")
        else:
            console.print(f"  Auto power profile chose {_fmt(chosen)} W per GPU; final accuracy"
                          f" {_fmt(accuracy * 100 if accuracy is not None else None, '.1f', '%')}; stop reason"
                          f" {workload.stop_reason or '-'}")
        for line in _stage_lines(job):
            console.print(line)
        if status.get("phase") != "Succeeded":
            _show_pod_logs(console, sandbox, job)
        json_path, png_path = write_report(job, report_dir)
        summary = json.loads(json_path.read_text())
        for line in summary_lines(summary):
            console.print(line, markup=False, highlight=False)
        result.reports.append((json_path.resolve(), png_path.resolve()))
        console.print(f"  report: {json_path.resolve()}")
        console.print(f"          {png_path.resolve()}  (simulated GPU data, labelled in the plot)")


def _agent_lines(sandbox: Sandbox, result: DemoResult, job: str) -> list[str]:
    """What the node agent did to the job's GPUs, as its metrics showed it while the pods held them."""
    if not sandbox.node_agents:
        return ["  node agent: not running (the harness set the limits in its pods)"]
    nodes = ", ".join(agent.node for agent in sandbox.node_agents)
    caps = result.agent_caps.get(job, {})
    reasons = sorted(result.agent_reasons.get(job, set()))
    lines = []
    if caps:
        applied = ", ".join(f"{uuid[:12]}… {watts:.0f} W" for uuid, watts in sorted(caps.items()))
        why = ", ".join(r for r in reasons if r in AGENT_CAP_REASONS)
        lines.append(f"  cap applied by the node agent on {nodes}: {applied} ({why}; simulated, read back)")
    else:
        lines.append(f"  node agent on {nodes}: applied no cap to this job's GPUs (reasons seen:"
                     f" {', '.join(reasons) or 'none: it never saw the pods hold GPUs'})")
    if a.REASON_AUTO_CANDIDATE in reasons:
        lines.append("    Auto mode through the agent: the harness asks for each candidate limit in its report, the"
                     " operator clamps it")
        lines.append("    to the GPU's range and the throttle (status.control.autoLimitWattsPerGPU), and the agent"
                     " applies it (AutoCandidate); no SYS_ADMIN in the pod")
    if a.REASON_POD_MANAGED in reasons or a.REASON_JOB_CEILING in reasons:
        lines.append("    Auto mode in a pod that sets its own limits: the agent leaves the GPU alone (PodManaged),")
        lines.append("    lowering it only to the operator's throttle (JobCeiling); the pod runs at min(its own,"
                     " the node's)")
    return lines


def _node_gpus_after(console: Console, sandbox: Sandbox, result: DemoResult) -> None:
    """Wait (a few agent cycles at most) until every node GPU is back at its default, and say what is left."""
    kubelet = sandbox.kubelet
    gpus_file = kubelet.node_gpus_file if kubelet is not None else None
    if gpus_file is None:
        return
    cycles = 3 * max((agent.interval_seconds for agent in sandbox.node_agents), default=0.0) + 2
    deadline = time.monotonic() + cycles
    while True:
        limits = node_gpu_limits(gpus_file)
        if all(limit == default for limit, default in limits.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    result.node_gpus_after = limits
    capped = {uuid: limit for uuid, (limit, default) in limits.items() if limit != default}
    node = kubelet.config.node_name if kubelet is not None else "?"
    if not capped:
        defaults = sorted({default // 1000 for _, default in limits.values()})
        console.print(f"node {node} after the jobs: all {len(limits)} simulated GPUs back at their default"
                      f" {', '.join(map(str, defaults))} W (the node's GPU state file)")
    else:
        left = ", ".join(f"{uuid[:12]}… {limit / 1000:.0f} W" for uuid, limit in sorted(capped.items()))
        who = "the node agent did not reset them" if sandbox.node_agents else "no node agent runs to reset them"
        console.print(f"[red]node {node} after the jobs: caps left behind on {left} ({who}; simulated)")


def _show_pod_logs(console: Console, sandbox: Sandbox, job: Mapping[str, Any]) -> None:
    kubelet = sandbox.kubelet
    if kubelet is None:
        return
    namespace = job["metadata"].get("namespace") or "default"
    for index in range(int((job.get("spec") or {}).get("replicas", 1))):
        pod = f"{job['metadata']['name']}-worker-{index}"
        text = kubelet.read_log(namespace, pod)
        if text:
            console.print(f"[dim]last lines of {pod}'s log ({kubelet.log_path(namespace, pod)}):[/]")
            console.print("\n".join(text.splitlines()[-15:]), markup=False, highlight=False)


def run_demo(manifest: Path | None = None, console: Console | None = None) -> int:
    """``etj demo``: 0 when every job of the examples (or ``manifest``) succeeded."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log or a pipe: wide enough for the table
            console = Console(width=150)
    result = demo((manifest,) if manifest else (DEFAULT_EXAMPLES,), console=console)
    return 0 if result.succeeded else 1
