"""Chaos harness: a scripted kubelet and harness, an operator that is killed and restarted, and the invariants.

Not a test module. The pieces:

* :class:`Lifecycle`: what one job is scripted to do, gang generation by gang generation (run, then succeed
  or have one pod crash), and the terminal phase and restart count that script must end in.
* :class:`ScriptedKubelet`: a thread that plays the kubelet and the training harness for every job: pods go
  Pending -> Running; once the operator has a baseline reading of every GPU of the gang the pods draw power
  (in the DCGM exporter, when there is one); after the gang's run time the script's outcome is applied.
  It also samples every job's ``status.energy.joules`` on each pass and records any decrease.
* :class:`PodCreations`: an admission hook of the emulator that records every pod creation the server
  commits, with its job, index and gang generation (the operator's POSTs answered 201).
* :class:`ChaosOperator`: the real operator, one incarnation at a time, either an ``OperatorThread``
  (stopped cleanly) or an :class:`operator_process.OperatorProcess` (killed with SIGKILL), restarted on a
  seeded schedule.
* :class:`FailoverOperators`: two operator processes under leader election; each fault hits the leader
  (SIGSTOP past its lease then SIGCONT, SIGKILL and a new standby, or its client cut off from the API
  server by an emulator fault while the standby's is not).
* :func:`check_invariants`: terminal phases, no duplicate pods, no orphan or leftover pods, energy, and
  (:func:`doubled_events`) no Event posted twice.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from operator_process import OperatorProcess

from etj_operator import contract as c
from etj_operator.leader import LeaseRecord
from etj_operator.runner import OperatorThread
from etj_operator.sandbox.emulator import ApiError, EmulatorServer
from etj_operator.sandbox.identities import OPERATOR_NAME, OPERATOR_NAMESPACE

from emulated import NS, wait_until
from jobs import job_manifest

SUCCEED = "succeed"
FAIL = "fail"  # one pod crashes (exit 1) after the gang's run time
CRASH_PENDING = "crash-pending"  # one pod fails before it ever runs (exit 128, StartError)
CRASH_ALL = "crash-all"  # every pod of the gang dies at once (exit 137, a node lost)
CRASHES = (FAIL, CRASH_PENDING, CRASH_ALL)
RUN_ON = "run-on"  # the gang never ends by itself: only the operator stops it (an energy budget)
KINDS = ("succeed", "fail-then-succeed", "exhaust-backoff")


@dataclass
class Lifecycle:
    """The script of one job."""

    name: str
    kind: str
    replicas: int
    outcomes: list[str]  # per gang generation
    backoff_limit: int
    clean_pod_policy: str
    run_seconds: float
    fail_index: int
    watts: float
    expected_phase: str
    expected_restarts: int
    #: spec.energy.energyBudget.kilowattHours with action Stop (None: no budget).
    budget_kwh: float | None = None
    #: The Failed condition's reason a Failed script must end with.
    expected_reason: str = "BackoffLimitExceeded"

    def manifest(self, energy: bool) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "replicas": self.replicas,
            "runPolicy": {"backoffLimit": self.backoff_limit, "cleanPodPolicy": self.clean_pod_policy},
        }
        if energy:
            spec["energy"] = {"telemetry": {"source": "Prometheus", "intervalSeconds": 1}}
            if self.budget_kwh is not None:
                spec["energy"]["energyBudget"] = {"kilowattHours": self.budget_kwh, "action": "Stop"}
        body = job_manifest(self.name, **spec)
        for key in ("uid", "generation"):
            body["metadata"].pop(key)
        return body


def make_lifecycles(seed: int, count: int, run_seconds: tuple[float, float] = (1.5, 3.0)) -> list[Lifecycle]:
    """``count`` seeded job scripts, the three kinds in equal shares, shuffled."""
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(count)]
    rng.shuffle(kinds)
    lifecycles = []
    for i, kind in enumerate(kinds):
        replicas = rng.randint(1, 3)
        if kind == "succeed":
            outcomes, backoff, phase, restarts = [SUCCEED], rng.randint(0, 2), "Succeeded", 0
        elif kind == "fail-then-succeed":
            outcomes, backoff, phase, restarts = [FAIL, SUCCEED], rng.randint(1, 3), "Succeeded", 1
        else:
            backoff = rng.randint(0, 1)
            outcomes, phase, restarts = [FAIL] * (backoff + 1), "Failed", backoff
        lifecycles.append(
            Lifecycle(
                name=f"chaos-{seed}-{i:02d}",
                kind=kind,
                replicas=replicas,
                outcomes=outcomes,
                backoff_limit=backoff,
                clean_pod_policy=rng.choice(["None", "Running", "All"]),
                run_seconds=rng.uniform(*run_seconds),
                fail_index=rng.randrange(replicas),
                watts=float(rng.choice([150, 250, 400, 600])),
                expected_phase=phase,
                expected_restarts=restarts,
            )
        )
    return lifecycles


def make_budget_lifecycles(seed: int, count: int) -> list[Lifecycle]:
    """Jobs that would run on for ever at 600 W per GPU under a budget of a few seconds' energy (action Stop):
    the operator must stop each one, Failed with EnergyBudgetExceeded, however its workload reports."""
    rng = random.Random(seed)
    return [
        Lifecycle(
            name=f"budget-{seed}-{i:02d}",
            kind="budget-stop",
            replicas=rng.randint(1, 2),
            outcomes=[RUN_ON],
            backoff_limit=rng.randint(0, 2),
            clean_pod_policy=rng.choice(["None", "Running", "All"]),
            run_seconds=1e9,
            fail_index=0,
            watts=600.0,
            expected_phase="Failed",
            expected_restarts=0,
            budget_kwh=round(rng.uniform(0.0003, 0.0008), 6),
            expected_reason="EnergyBudgetExceeded",
        )
        for i in range(count)
    ]


def make_crash_lifecycles(seed: int, count: int) -> list[Lifecycle]:
    """Jobs whose gangs crash at seeded random steps (before running, while running, all at once) 0-3 times,
    then succeed; every third one runs out of backoffLimit on its last crash instead."""
    rng = random.Random(seed)
    lifecycles = []
    for i in range(count):
        replicas = rng.randint(1, 3)
        crashes = [rng.choice(CRASHES) for _ in range(rng.randint(1, 3))]
        exhaust = i % 3 == 2
        outcomes = crashes if exhaust else [*crashes, SUCCEED]
        lifecycles.append(
            Lifecycle(
                name=f"crash-{seed}-{i:02d}",
                kind="crash-until-backoff" if exhaust else "crash-then-succeed",
                replicas=replicas,
                outcomes=outcomes,
                backoff_limit=len(crashes) - 1 if exhaust else len(crashes) + rng.randint(0, 2),
                clean_pod_policy=rng.choice(["None", "Running", "All"]),
                run_seconds=rng.uniform(0.0, 1.5),
                fail_index=rng.randrange(replicas),
                watts=300.0,
                expected_phase="Failed" if exhaust else "Succeeded",
                expected_restarts=len(crashes) - 1 if exhaust else len(crashes),
            )
        )
    return lifecycles


def pod_meta(pod: dict[str, Any]) -> tuple[str, int, int]:
    """(job, replica index, gang generation) of a worker pod."""
    meta = pod["metadata"]
    return (
        meta["labels"][c.LABEL_JOB_NAME],
        int(meta["labels"][c.LABEL_REPLICA_INDEX]),
        int(meta["annotations"][c.ANNOTATION_GANG_GENERATION]),
    )


class PodCreations:
    """Admission hook: every pod create the emulator commits, as (namespace, job, index, generation)."""

    def __init__(self, server: EmulatorServer) -> None:
        self.records: list[tuple[str, str, int, int]] = []
        self._lock = threading.Lock()
        server.call(lambda emulator: emulator.admission.append(self))

    def __call__(self, rt: Any, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if rt.group == "" and rt.plural == "pods" and old is None and c.LABEL_JOB_NAME in obj["metadata"]["labels"]:
            job, index, generation = pod_meta(obj)
            with self._lock:
                self.records.append((obj["metadata"].get("namespace") or NS, job, index, generation))

    def duplicates(self) -> dict[tuple[str, str, int, int], int]:
        """Pods created more than once for the same job, index and gang generation."""
        with self._lock:
            counts = Counter(self.records)
        return {key: n for key, n in counts.items() if n > 1}

    def count(self, job: str) -> int:
        with self._lock:
            return sum(1 for r in self.records if r[1] == job)


@dataclass
class _Gang:
    generation: int
    powered_at: float | None = None
    done: bool = False


class ScriptedKubelet:
    """Plays the kubelet and the harness for the scripted jobs, from its own thread."""

    def __init__(self, server: EmulatorServer, exporter: Any | None = None, poll_seconds: float = 0.05) -> None:
        self.server = server
        self.exporter = exporter
        self.poll_seconds = poll_seconds
        self.scripts: dict[str, Lifecycle] = {}
        self.gangs: dict[str, _Gang] = {}
        self.energy_seen: dict[str, float] = {}
        self.energy_decreases: list[tuple[str, float, float]] = []
        self.errors: list[str] = []
        self._seen: dict[str, float] = {}  # pod uid -> first seen (monotonic)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="scripted-kubelet", daemon=True)

    def add(self, script: Lifecycle) -> None:
        """Start following a job (call before the job is created)."""
        if self.exporter is not None:
            for i in range(script.replicas):
                self.exporter.add_pod(NS, f"{script.name}-worker-{i}", gpus=1, watts=0.0)
        with self._lock:
            self.scripts[script.name] = script

    def start(self) -> ScriptedKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> ScriptedKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop -------------------------------------------------------------------------------------
    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                self._pass()
            except ApiError as e:  # an object vanished between list and write: look again next pass
                if e.code not in (404, 409, 422):
                    self.errors.append(f"kubelet: {e}")
            except Exception as e:  # reported by the test, never swallowed
                self.errors.append(f"kubelet: {type(e).__name__}: {e}")
            self._stop.wait(self.poll_seconds)

    def _power(self, pod: str, watts: float) -> None:
        if self.exporter is not None:
            self.exporter.set_power(NS, pod, watts)

    def _pass(self) -> None:
        with self._lock:
            scripts = dict(self.scripts)
        pods = self.server.list("pods", NS, label_selector=c.LABEL_JOB_NAME)
        by_job: dict[str, list[dict[str, Any]]] = {}
        now = time.monotonic()
        for pod in pods:
            job, _, _ = pod_meta(pod)
            if job in scripts and not pod["metadata"].get("deletionTimestamp"):
                by_job.setdefault(job, []).append(pod)
        for name, script in scripts.items():
            job = self.server.get(c.PLURAL, NS, name)
            status = (job or {}).get("status") or {}
            self._watch_energy(name, status)
            live = by_job.get(name, [])
            # pods that are gone or finished draw nothing
            running_names = {p["metadata"]["name"] for p in live if p["status"].get("phase") in ("Running",)}
            for i in range(script.replicas):
                pod_name = f"{name}-worker-{i}"
                idle = pod_name not in running_names and self.exporter is not None
                if idle and self.exporter.power_watts(NS, pod_name) > 0:
                    self._power(pod_name, 0.0)
            if job is None or status.get("phase") in ("Succeeded", "Failed"):
                continue
            for pod in live:
                uid = pod["metadata"]["uid"]
                self._seen.setdefault(uid, now)
                if pod["status"].get("phase") == "Pending" and now - self._seen[uid] >= 0.1:
                    _, index, generation = pod_meta(pod)
                    crash = generation < len(script.outcomes) and script.outcomes[generation] == CRASH_PENDING
                    if crash and index == script.fail_index:
                        self.server.set_pod_phase(NS, pod["metadata"]["name"], "Failed", exit_code=128,
                                                  reason="StartError")
                    else:
                        self.server.set_pod_phase(NS, pod["metadata"]["name"], "Running")
            self._drive_gang(script, status, live, now)

    def _watch_energy(self, name: str, status: dict[str, Any]) -> None:
        joules = float(((status.get("energy") or {}).get("joules")) or 0.0)
        before = self.energy_seen.get(name, 0.0)
        if joules < before:
            self.energy_decreases.append((name, before, joules))
        self.energy_seen[name] = max(before, joules)

    def _baselined(self, status: dict[str, Any], running: list[dict[str, Any]]) -> bool:
        # series are keyed "<pod UID>/<GPU>": a re-created pod of the same name has a baseline of its own
        series = ((status.get("energy") or {}).get("series")) or {}
        uids = {key.split("/", 1)[0] for key in series}
        return all(p["metadata"]["uid"] in uids for p in running)

    def _drive_gang(self, script: Lifecycle, status: dict[str, Any], live: list[dict[str, Any]], now: float) -> None:
        gens = {pod_meta(p)[2] for p in live}
        if len(gens) != 1:
            return
        (generation,) = gens
        if generation >= len(script.outcomes):
            self.errors.append(f"{script.name}: a gang of generation {generation} beyond the script")
            return
        gang = self.gangs.get(script.name)
        if gang is None or gang.generation != generation:
            gang = self.gangs[script.name] = _Gang(generation)
        if gang.done:
            return
        running = [p for p in live if p["status"].get("phase") == "Running"]
        if len(running) != script.replicas:
            return
        if gang.powered_at is None:
            if self.exporter is not None and not self._baselined(status, running):
                return  # the first reading of a GPU is its baseline: draw nothing before it
            for p in running:
                self._power(p["metadata"]["name"], script.watts)
            gang.powered_at = now
            return
        if now - gang.powered_at < script.run_seconds or script.outcomes[generation] == RUN_ON:
            return
        gang.done = True
        by_index = {pod_meta(p)[1]: p["metadata"]["name"] for p in running}
        outcome = script.outcomes[generation]
        if outcome in (FAIL, CRASH_PENDING):
            pod = by_index[script.fail_index]
            self._power(pod, 0.0)
            self.server.set_pod_phase(NS, pod, "Failed", exit_code=1)
        elif outcome == CRASH_ALL:
            for pod in by_index.values():
                self._power(pod, 0.0)
                self.server.set_pod_phase(NS, pod, "Failed", exit_code=137, reason="NodeLost")
        else:
            for index in sorted(by_index, reverse=True):  # worker 0 last: its success ends the job
                self._power(by_index[index], 0.0)
                self.server.set_pod_phase(NS, by_index[index], "Succeeded", exit_code=0)


class ChaosOperator:
    """The operator, one incarnation at a time: an OperatorThread (graceful stop) or a process (SIGKILL)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self._thread: OperatorThread | None = None
        self._process: OperatorProcess | None = None
        self.restarts: Counter[str] = Counter()

    def start(self, kind: str) -> None:
        if kind == "thread":
            self._thread = OperatorThread(quiet=True).start()
        else:
            self._process = OperatorProcess(self.env, self.log_dir).start()

    def stop(self, *, hard: bool) -> str:
        """End the incarnation: SIGKILL for a process when ``hard``; returns what was done."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
            return "thread-stop"
        if self._process is not None:
            if hard:
                self._process.kill()
            else:
                self._process.terminate()
            self._process = None
            return "sigkill" if hard else "sigterm"
        return "none"

    def restart(self, rng: random.Random, down_seconds: float) -> str:
        kind = rng.choice(["thread", "process", "process"])
        what = self.stop(hard=True)
        self.restarts[what] += 1
        time.sleep(down_seconds)
        self.start(kind)
        return what

    def tick(self) -> None:
        """Nothing is pending between restarts of a single operator."""

    def close(self) -> None:
        self.stop(hard=False)


#: Lease timings of the failover runs (seconds): short, so that a run sees many handovers.
FAILOVER_LEASE = {
    "ETJ_LEASE_DURATION_SECONDS": "3",
    "ETJ_RENEW_DEADLINE_SECONDS": "2",
    "ETJ_RETRY_PERIOD_SECONDS": "0.5",
}
FAILOVER_KINDS = ("sigstop", "sigkill", "cutoff")


class FailoverOperators:
    """Two operator processes with leader election; :meth:`restart` applies a seeded fault to the leader.

    A paused leader is resumed, and a cut-off leader reconnected, a seeded 0.5-2 s after its lease ran out:
    it comes back as a standby. A killed leader is replaced by a new standby process. One fault at a time:
    the next waits until the previous one is undone and a live process holds the Lease.
    """

    def __init__(self, server: EmulatorServer, env: dict[str, str], log_dir: Path) -> None:
        self.server = server
        self.env = {
            **env,
            "ETJ_LEADER_ELECTION": "true",
            "ETJ_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE,
            "ETJ_LEADER_ELECTION_LEASE_NAME": OPERATOR_NAME,
            **FAILOVER_LEASE,
        }
        self.lease_seconds = float(FAILOVER_LEASE["ETJ_LEASE_DURATION_SECONDS"])
        self.log_dir = log_dir
        self.procs: dict[str, OperatorProcess] = {}
        self.restarts: Counter[str] = Counter()
        self._started = 0
        #: identity -> (monotonic time to undo the fault, how to undo it)
        self._pending: dict[str, tuple[float, Any]] = {}

    def _start_one(self) -> str:
        self._started += 1
        identity = f"op-{self._started}"
        env = {**self.env, "ETJ_LEADER_ELECTION_IDENTITY": identity}
        self.procs[identity] = OperatorProcess(env, self.log_dir).start()
        return identity

    def start(self, kind: str = "process") -> None:
        self._start_one()
        self._start_one()

    def leader(self) -> str | None:
        lease = self.server.get("leases", OPERATOR_NAMESPACE, OPERATOR_NAME)
        holder = LeaseRecord.from_lease(lease).holder if lease else ""
        return holder if holder in self.procs and holder not in self._pending else None

    def tick(self) -> None:
        """Undo the faults whose time has come (the process rejoins as a standby)."""
        now = time.monotonic()
        for identity, (when, undo) in list(self._pending.items()):
            if now >= when:
                undo()
                del self._pending[identity]

    def settle(self) -> str:
        """Undo every pending fault, then wait until a live process leads; its identity."""
        for identity, (_, undo) in list(self._pending.items()):
            undo()
            del self._pending[identity]
        return str(wait_until(self.leader, 4 * self.lease_seconds + 10, "a leader among the live operators"))

    def restart(self, rng: random.Random, down_seconds: float) -> str:
        leader = self.settle()
        kind = rng.choice(FAILOVER_KINDS)
        proc = self.procs[leader]
        later = time.monotonic() + self.lease_seconds + rng.uniform(0.5, 2.0)
        if kind == "sigkill":
            proc.kill()
            del self.procs[leader]
            self._start_one()
        elif kind == "sigstop":
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGSTOP)
            pid = proc.pid
            self._pending[leader] = (later, lambda: os.kill(pid, signal.SIGCONT))
        else:
            # every request of its own API client answered 503 (kopf's job watch, which names no identity,
            # stays up): it cannot renew, steps down, and rejoins once the server answers again
            fault = self.server.faults.add(status=503, times=None, user_agent_regex=re.escape(f"({leader})"))
            self._pending[leader] = (later, lambda: self.server.faults.remove(fault))
        self.restarts[kind] += 1
        return kind

    def close(self) -> None:
        with contextlib.suppress(AssertionError):
            self.settle()
        for proc in self.procs.values():
            proc.terminate()
        self.procs.clear()


def doubled_events(server: EmulatorServer, scripts: list[Lifecycle]) -> tuple[list[str], int]:
    """Events posted more often than their decisions were made (JobCreated once, GangRestarted at most once
    per restart), and how many jobs have no JobCreated at all.

    An Event is advisory and posted after the decision is written, with the lowest priority: a leader
    killed or cut off with Events still queued loses them (counted, not a failure); posting one twice is.
    """
    doubled = []
    missing = 0
    for s in scripts:
        events = server.list("events", NS, field_selector=f"involvedObject.name={s.name}")
        counts: Counter[str] = Counter()
        for event in events:
            counts[event.get("reason", "")] += int(event.get("count") or 1)
        if counts["JobCreated"] > 1:
            doubled.append(f"{s.name}: JobCreated x{counts['JobCreated']}")
        missing += counts["JobCreated"] == 0
        status = (server.get(c.PLURAL, NS, s.name) or {}).get("status") or {}
        restarts = int(status.get("restarts") or 0)
        if counts["GangRestarted"] > restarts:
            doubled.append(f"{s.name}: GangRestarted x{counts['GangRestarted']} for {restarts} restarts")
    return doubled, missing


@dataclass
class Report:
    lifecycles: int = 0
    restarts: dict[str, int] = field(default_factory=dict)
    duplicates: dict[Any, int] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    energy_errors: dict[str, float] = field(default_factory=dict)
    total_joules: float = 0.0
    total_truth: float = 0.0
    doubled_events: list[str] = field(default_factory=list)
    #: Jobs whose JobCreated Event was lost (queued in an operator that was killed or cut off).
    missing_events: int = 0
    #: Doubled Events fail the run (the failover runs); elsewhere they are only printed.
    check_events: bool = False

    @property
    def max_energy_error(self) -> float:
        return max(self.energy_errors.values(), default=0.0)

    def line(self) -> str:
        overall = abs(self.total_joules - self.total_truth) / self.total_truth if self.total_truth else 0.0
        return (
            f"chaos: lifecycles={self.lifecycles} restarts={dict(self.restarts)} duplicates={len(self.duplicates)} "
            f"orphans={len(self.orphans)} wrong={len(self.wrong)} energy_max_rel_error={self.max_energy_error:.5f} "
            f"energy_total_rel_error={overall:.5f} joules={self.total_joules:.0f} "
            f"doubled_events={len(self.doubled_events)} lost_job_created_events={self.missing_events}"
        )


def terminal(server: EmulatorServer, scripts: list[Lifecycle]) -> bool:
    for s in scripts:
        job = server.get(c.PLURAL, NS, s.name)
        if job is None or ((job.get("status") or {}).get("phase")) not in ("Succeeded", "Failed"):
            return False
    return True


def leftover_pods(server: EmulatorServer, scripts: list[Lifecycle]) -> list[str]:
    """Pods that should not be there: owner gone, an old gang's pod, or live pods against cleanPodPolicy."""
    jobs = {j["metadata"]["uid"]: j for j in server.list(c.PLURAL, NS)}
    by_name = {s.name: s for s in scripts}
    bad = []
    for pod in server.list("pods", NS, label_selector=c.LABEL_JOB_NAME):
        name = pod["metadata"]["name"]
        owners = [o["uid"] for o in pod["metadata"].get("ownerReferences") or []]
        job = next((jobs[u] for u in owners if u in jobs), None)
        if job is None:
            bad.append(f"{name}: its job is gone")
            continue
        status = job.get("status") or {}
        _, _, generation = pod_meta(pod)
        phase = pod["status"].get("phase")
        if generation != int(status.get("restarts") or 0) and phase in ("Pending", "Running"):
            bad.append(f"{name}: generation {generation} still {phase} (job restarts={status.get('restarts')})")
        script = by_name.get(job["metadata"]["name"])
        policy = script.clean_pod_policy if script else "Running"
        if status.get("phase") in ("Succeeded", "Failed"):
            if policy == "All":
                bad.append(f"{name}: kept although cleanPodPolicy is All")
            elif policy == "Running" and phase in ("Pending", "Running"):
                bad.append(f"{name}: still {phase} although cleanPodPolicy is Running")
    return bad


def check_outcomes(server: EmulatorServer, scripts: list[Lifecycle]) -> list[str]:
    wrong = []
    for s in scripts:
        status = (server.get(c.PLURAL, NS, s.name) or {}).get("status") or {}
        got = (status.get("phase"), status.get("restarts"))
        if got != (s.expected_phase, s.expected_restarts):
            wrong.append(f"{s.name} ({s.kind}): {got} != {(s.expected_phase, s.expected_restarts)}")
        elif s.expected_phase == "Failed":
            failed = next((x for x in status.get("conditions") or [] if x["type"] == "Failed"), {})
            if failed.get("reason") != s.expected_reason:
                wrong.append(f"{s.name}: Failed for {failed.get('reason')}, not {s.expected_reason}")
        if s.budget_kwh is not None and s.expected_phase == "Failed":
            used = float((status.get("energy") or {}).get("kilowattHours") or 0.0)
            if used < s.budget_kwh:
                wrong.append(f"{s.name}: stopped at {used} kWh, under its {s.budget_kwh} kWh budget")
    return wrong


def energy_errors(server: EmulatorServer, exporter: Any, scripts: list[Lifecycle], report: Report) -> None:
    """Per job: status.energy.joules against the exporter's exact integral over what accounting covers.

    Per GPU series, from its baseline (``since``: the first reading the operator had, as documented in
    docs/energy.md; a pod that starts while the operator is down is baselined at the first reading after
    the restart) to its last reading. Anything lost or counted twice across restarts inside that window
    shows up here.
    """
    for s in scripts:
        energy = ((server.get(c.PLURAL, NS, s.name) or {}).get("status") or {}).get("energy") or {}
        truth = 0.0
        for key, entry in (energy.get("series") or {}).items():
            pod = entry.get("pod") or key.split("/", 1)[0]  # keys are "<pod UID>/<GPU>"; the name is beside
            # the sample times are scrape starts; the counters were read when the exporter rendered them
            start = exporter.served_at_or_after(float(entry["since"]))
            end = exporter.served_at_or_after(float(entry["t"]))
            truth += exporter.energy_joules_between(NS, pod, start, end)
        joules = float(energy.get("joules") or 0.0)
        report.total_joules += joules
        report.total_truth += truth
        report.energy_errors[s.name] = abs(joules - truth) / truth if truth else (0.0 if joules == 0 else 1.0)


def run_chaos(
    server,
    exporter,
    env,
    log_dir,
    *,
    seed: int,
    count: int,
    concurrency: int,
    restart_every,
    deadline_seconds,
    scripts=None,
    restart_after_starts=None,
    hostile=None,
    failover: bool = False,
) -> Report:
    rng = random.Random(seed)
    scripts = scripts or make_lifecycles(seed, count)
    count = len(scripts)
    creations = PodCreations(server)
    operator: ChaosOperator | FailoverOperators = (
        FailoverOperators(server, env, log_dir) if failover else ChaosOperator(env, log_dir)
    )
    report = Report(lifecycles=count, check_events=failover)
    operator.start(rng.choice(["thread", "process"]))
    try:
        with ScriptedKubelet(server, exporter) as kubelet, hostile or contextlib.nullcontext():
            waiting = list(scripts)
            started: list = []
            next_restart = time.monotonic() + rng.uniform(*restart_every)
            # also by progress, so the number of kills does not depend on how fast the jobs run: a kill
            # after every few job starts (seeded), wherever the running jobs are in their lifecycles then
            starts_left = rng.randint(*restart_after_starts) if restart_after_starts else None
            deadline = time.monotonic() + deadline_seconds
            while True:
                active = [s for s in started if not terminal(server, [s])]
                while waiting and len(active) < concurrency:
                    script = waiting.pop(0)
                    kubelet.add(script)
                    server.create(c.PLURAL, script.manifest(energy=exporter is not None), namespace=NS)
                    started.append(script)
                    active.append(script)
                    if starts_left is not None:
                        starts_left -= 1
                        if starts_left <= 0 and restart_after_starts:
                            operator.restart(rng, down_seconds=rng.uniform(0.0, 1.0))
                            starts_left = rng.randint(*restart_after_starts)
                if not waiting and not active:
                    break
                assert not kubelet.errors, kubelet.errors
                if hostile is not None:
                    assert not hostile.breaches, hostile.breaches
                    assert not hostile.errors, hostile.errors
                operator.tick()
                if time.monotonic() > next_restart:
                    operator.restart(rng, down_seconds=rng.uniform(0.0, 1.0))
                    next_restart = time.monotonic() + rng.uniform(*restart_every)
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"not every job finished within {deadline_seconds} s: "
                        f"{[(s.name, s.kind) for s in active]}; {check_outcomes(server, active)}"
                    )
                time.sleep(0.05)
            # one more hard restart with everything finished: nothing is created or deleted again
            before = len(creations.records)
            operator.restart(rng, down_seconds=0.0)
            if isinstance(operator, FailoverOperators):
                operator.settle()  # the fault undone and a leader again: it, too, must create nothing
                time.sleep(operator.lease_seconds)
            wait_until(lambda: not leftover_pods(server, scripts), 20, "finished gangs cleaned up")
            time.sleep(1.0)
            assert len(creations.records) == before
            report.wrong = check_outcomes(server, scripts)
            report.duplicates = creations.duplicates()
            report.orphans = leftover_pods(server, scripts)
            report.doubled_events, report.missing_events = doubled_events(server, scripts)
            assert not kubelet.energy_decreases, kubelet.energy_decreases
            if exporter is not None:
                energy_errors(server, exporter, scripts, report)
            # delete a seeded half of the jobs with the operator up: their pods go with them
            gone = rng.sample(scripts, len(scripts) // 2)
            for script in gone:
                server.delete(c.PLURAL, NS, script.name)
            wait_until(lambda: all(server.get(c.PLURAL, NS, s.name) is None for s in gone), 30, "deleted jobs gone")
            wait_until(lambda: not leftover_pods(server, scripts), 20, "no pod outlives its job")
        report.restarts = dict(operator.restarts)
    finally:
        operator.close()
    return report


def assert_clean(report: Report, minimum_restarts: int) -> None:
    print(report.line())
    assert report.wrong == []
    assert report.duplicates == {}
    assert report.orphans == []
    if report.check_events:
        assert report.doubled_events == [], report.doubled_events
    assert sum(report.restarts.values()) >= minimum_restarts
    if report.energy_errors:
        worst = max(report.energy_errors, key=report.energy_errors.get)
        assert report.max_energy_error <= 0.01, (worst, report.energy_errors[worst])
