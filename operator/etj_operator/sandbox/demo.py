"""``make demo``: the real operator runs, measures, throttles and compresses a real DDP job on this machine.

No cluster and no GPU are needed.

It starts a sandbox in this process (API emulator with validation, process kubelet, operator; see
:mod:`etj_operator.sandbox.sandbox`), applies every manifest of ``workloads/examples/``, shows a live table
of each job (phase, power, energy, per-GPU limit, stage, accuracy, step) until all of them finish, then
writes each job's report (JSON + PNG, :func:`etj_operator.report.write_report`) and prints where.
The GPUs are simulated (the harness's power model): every power and energy figure on screen says so.
"""

from __future__ import annotations

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

from etj_contract import ENERGY, SIMULATED_SUFFIX, ControlSection, EnergySection, WorkloadReport
from etj_operator import contract as c
from etj_operator.sandbox.sandbox import REPO_ROOT, Sandbox, SandboxOptions, crd_path

__all__ = ["DEFAULT_EXAMPLES", "DEFAULT_REPORT_DIR", "DEFAULT_STATE_DIR", "DemoResult", "crd_path", "demo", "run_demo"]

DEFAULT_EXAMPLES = REPO_ROOT / "workloads" / "examples"
#: The demo's sandbox state (logs, checkpoints): beside, not inside, a default `etj sandbox up` state.
DEFAULT_STATE_DIR = Path(".etj-sandbox") / "demo"
#: Where the reports go (JSON + PNG per job).
DEFAULT_REPORT_DIR = Path("reports")
SIMULATED_NOTE = "GPU power and energy are SIMULATED: no GPU here, the harness's power model (source=simulated)"


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


def _table(jobs: Sequence[Mapping[str, Any]], pods: Mapping[str, list[str]], elapsed: float) -> Group:
    table = Table(title=f"EfficientTrainingJobs in the sandbox ({elapsed:.0f} s)", title_justify="left")
    for column in ("job", "phase", "pods", "power W*", "energy J*", "limit W/GPU", "stage", "accuracy",
                   "step", "epoch"):
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
            _fmt(energy.joules if energy else None, ".0f"),
            _fmt(control.power_limit_watts_per_gpu),
            str(status.get("stage") or "-"),
            _fmt(accuracy * 100 if accuracy is not None else None, ".1f", "%"),
            _fmt(workload.step),
            _fmt(workload.epoch),
        )
    return Group(table, Text(f"* {SIMULATED_NOTE}", style="yellow"))


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
        acc = (f"accuracy {acc_b * 100:.1f}% -> {acc_a * 100:.1f}%"
               if acc_b is not None and acc_a is not None else "accuracy -")
        lines.append(f"  stage {stage.name}: {outcome} at epoch {stage.epoch}, {size} (zlib), {acc}")
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
        console.print(f"[yellow]{SIMULATED_NOTE}[/]")
        for file in files:
            sandbox.apply_file(file)
            shown = file.relative_to(REPO_ROOT) if file.is_relative_to(REPO_ROOT) else file
            console.print(f"applied {shown}")
        if not wanted:
            console.print(f"[red]no {c.KIND} in {', '.join(str(f) for f in files)}")
            return result
        result.caps = {name: None for _, name in wanted}

        def snapshot() -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
            jobs = [j for ns, name in wanted if (j := server.get(c.PLURAL, ns, name)) is not None]
            pods: dict[str, list[str]] = {}
            for pod in server.list("pods"):
                job_name = (pod["metadata"].get("labels") or {}).get(c.LABEL_JOB_NAME)
                if job_name:
                    pods.setdefault(job_name, []).append(
                        f"{pod['metadata']['name'].removeprefix(job_name + '-')}:"
                        f"{(pod.get('status') or {}).get('phase', 'Pending')}")
            for job in jobs:
                cap = _sections(job)[2].power_limit_watts_per_gpu
                name = job["metadata"]["name"]
                if isinstance(cap, int) and (result.caps.get(name) is None or cap < (result.caps[name] or cap)):
                    result.caps[name] = cap
            return jobs, pods

        def finished(jobs: Sequence[Mapping[str, Any]]) -> bool:
            return len(jobs) == len(wanted) and all(
                (j.get("status") or {}).get("phase") in c.TERMINAL_PHASES for j in jobs)

        jobs, pods = snapshot()
        use_live = console.is_terminal if live is None else live
        deadline = started + timeout_seconds
        if use_live:
            with Live(_table(jobs, pods, 0), console=console, refresh_per_second=4) as view:
                while not finished(jobs) and time.monotonic() < deadline:
                    time.sleep(refresh_seconds)
                    jobs, pods = snapshot()
                    view.update(_table(jobs, pods, time.monotonic() - started))
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
                            f" energy {_fmt(e.joules if e else None, '.0f')} J* limit"
                            f" {_fmt(ctl.power_limit_watts_per_gpu)} W/GPU"
                            f" stage {st.get('stage') or '-'}")
            console.print(_table(jobs, pods, time.monotonic() - started))
        result.jobs = jobs
        result.succeeded = finished(jobs) and all((j.get("status") or {}).get("phase") == "Succeeded" for j in jobs)
        if not finished(jobs):
            console.print(f"[red]the jobs did not finish within {timeout_seconds:.0f} s")
        _summarise(console, sandbox, result, report_dir)
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
        console.print(f"  throttle: {f'capped at {cap} W per GPU' if cap else 'never applied'}"
                      f" (budget {_fmt(budget)} W for the job)")
        chosen = workload.power_profile.chosen_watts if workload.power_profile else None
        accuracy = workload.accuracy
        console.print(f"  Auto power profile chose {_fmt(chosen)} W per GPU; final accuracy"
                      f" {_fmt(accuracy * 100 if accuracy is not None else None, '.1f', '%')}; stop reason"
                      f" {workload.stop_reason or '-'}")
        for line in _stage_lines(job):
            console.print(line)
        if status.get("phase") != "Succeeded":
            _show_pod_logs(console, sandbox, job)
        json_path, png_path = write_report(job, report_dir)
        result.reports.append((json_path.resolve(), png_path.resolve()))
        console.print(f"  report: {json_path.resolve()}")
        console.print(f"          {png_path.resolve()}  (simulated GPU data, labelled in the plot)")


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
