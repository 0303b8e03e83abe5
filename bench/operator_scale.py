"""Operator scale on the API emulator: N concurrent jobs of 4 pods each, against a baseline in the same run.

Method: the emulator (test infrastructure) serves on 127.0.0.1 in this process; the operator runs as a
separate process (`python -m etj_operator operator`) so its RSS and CPU are its own. A fake Prometheus
answers the telemetry queries (empty results) and counts them. For each N the bench applies N jobs at once
and records when each job was applied (just before its create call) and when the emulator answered the
create of its 4th pod (the request log's ``answered_at``; one monotonic clock, this process). The bench
learns that every pod is there from a counter bumped as the emulator answers each pod create (no polling
of the request log during the burst, no watch thread: a thread of this process shares the emulator's
interpreter lock). Then it plays the kubelet (all pods Running; later every worker Succeeded, as DDP ranks
end together), waits for every job to succeed, deletes the jobs and counts the operator's API requests
(watches excluded) per job lifecycle. Telemetry queries per cycle come from the operator's own counters,
cross-checked with what the fake Prometheus received.

**Baseline** (bench/scale_baseline.py): each 100-job burst of the operator (and the 1000-job one) is followed
by the same burst against a fresh emulator served to a minimal client instead: the requests the operator sent
for each job during its burst (method, path, body; taken from the emulator as it served them), replayed per
job in the operator's order, the requests the operator sends together sent together, as soon as the job
appears on the client's job watch; aiohttp with the operator's connection limit (16) and, like the operator's
supervisor, at most 8 jobs at once, first come first served (``--unbounded-baseline``: no such bound); the
operator's watches open (read, not decoded, but the job watch). Same figures, the client's own process CPU.
The ratios operator / baseline are the operator's cost over what the API itself costs for the same requests
on this machine.

**1000-job burst**: the same burst, latency only (p50, p99, CPU per job). **Failover**: leader election on,
two operator processes (op-a, op-b; lease 15 s, renew deadline 10 s, retry 2 s: the chart's defaults), 20
jobs running; op-a (the leader) gets SIGKILL; the figure is the time from the kill to the first write (not a
GET, not the Lease) that op-b sent and the emulator answered under 300 (its User-Agent names op-b). Three
failovers (``--failover-repeat``), each with a fresh emulator and operators; the headline is their median.

Prints, per N: p50/p99 apply-to-all-pods-created latency, the operator's CPU time per job during the
burst, operator RSS, requests per job lifecycle, telemetry queries per cycle. The burst of 100 jobs runs
``--repeat`` times (5; each with a fresh emulator and operator, the extra ones measuring latency only),
each followed by its baseline: the headline p50/p99 are the medians over those bursts, the ratios the
medians of the operator's over the medians of the baseline's. Ends with the headline lines of issues 6 and
15. About 5 minutes on 2 cores.

    .venv/bin/python bench/operator_scale.py            # 10, 100 (x5, + baseline), 500, paced, 1000, failover
    .venv/bin/python bench/operator_scale.py --jobs 100 --repeat 3 --paced-rate 0 --big-jobs 0 --failover-jobs 0
    .venv/bin/python bench/operator_scale.py --jobs --paced-rate 0 --big-jobs 0   # failover only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from operator_process import OperatorProcess  # noqa: E402
from scale_baseline import RequestCapture, build_plan, operator_watches, plan_summary  # noqa: E402

from etj_operator import contract as c  # noqa: E402
from etj_operator.config import OperatorConfig  # noqa: E402
from etj_operator.leader import LeaseRecord  # noqa: E402
from etj_operator.sandbox.emulator import EmulatorServer  # noqa: E402

from jobs import job_manifest  # noqa: E402

REPLICAS = 4
TELEMETRY_INTERVAL_SECONDS = 2.0
JOB_PATTERN = r"scale-\d+"
#: The chart's leader election defaults (values.yaml leaderElection): lease, renew deadline, retry period.
CHART_LEASE = (15.0, 10.0, 2.0)
LEASE_NAMESPACE, LEASE_NAME = "default", "etj-operator"
#: What a burst reports (operator's or baseline's).
FIGURES = ("jobs", "p50_ms", "p99_ms", "cpu_ms_per_job", "wall_s", "applied_s")


class FakePrometheus:
    """Answers /api/v1/query with an empty vector and counts the queries."""

    def __init__(self) -> None:
        self.queries = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.lock:
                    outer.queries += 1
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def pod_creation_times(server: EmulatorServer) -> dict[str, float]:
    """When the emulator answered each pod's successful create (monotonic clock, this process)."""
    return {
        r.name: r.answered_at
        for r in server.requests
        if r.verb == "create" and r.resource == "pods" and r.status == 201 and r.name
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def operator_counters(port: int) -> tuple[float, float]:
    """(telemetry requests so far, telemetry cycles so far) from the operator's own /metrics."""
    import urllib.request

    requests = cycles = 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("etj_telemetry_requests_total{"):
                requests += float(line.rsplit(" ", 1)[1])
            elif line.startswith("etj_telemetry_cycle_seconds_count"):
                cycles += float(line.rsplit(" ", 1)[1])
    return requests, cycles


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait(predicate: Any, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)


def is_operator(user_agent: str) -> bool:
    return "kopf" in user_agent or user_agent.startswith("etj-operator/")


def burst(
    server: EmulatorServer, capture: RequestCapture, n_jobs: int, pid: int, rate_per_second: float = 0.0
) -> dict[str, Any]:
    """Apply n jobs (at once, or paced) and wait for all their pods; latencies and the CPU of ``pid``."""
    gc.collect()  # quiesce this process (the emulator's) before the burst: no collection of old garbage
    server.clear_requests()
    capture.start()
    applied: dict[str, float] = {}
    cpu_before = cpu_seconds(pid)
    start = time.monotonic()
    for i in range(n_jobs):
        name = f"scale-{i}"
        manifest = job_manifest(name, replicas=REPLICAS)
        manifest["spec"]["energy"] = {"telemetry": {"source": "Prometheus", "intervalSeconds": 1}}
        if rate_per_second > 0:  # paced arrivals instead of one burst
            time.sleep(max(0.0, (start + i / rate_per_second) - time.monotonic()))
        applied[name] = time.monotonic()
        server.create(c.PLURAL, manifest, namespace="default")
    applied_s = time.monotonic() - start
    wait(lambda: capture.pods_created >= n_jobs * REPLICAS, 600 + n_jobs, "all pods", poll=0.02)
    until = time.monotonic()
    cpu_ms_per_job = (cpu_seconds(pid) - cpu_before) * 1000 / n_jobs
    entries = capture.stop()
    pod_created = pod_creation_times(server)

    def last_pod(name: str) -> float:
        return max(pod_created[f"{name}-worker-{k}"] for k in range(REPLICAS))

    latencies_ms = [(last_pod(n) - applied[n]) * 1000 for n in applied]
    return {
        "jobs": n_jobs,
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": percentile(latencies_ms, 99),
        "cpu_ms_per_job": cpu_ms_per_job,
        "wall_s": until - start,
        "applied_s": applied_s,
        "until": until,
        "entries": entries,
        "names": list(applied),
    }


def operator_env(kubeconfig: Path, prometheus: FakePrometheus, metrics_port: int) -> dict[str, str]:
    return dict(
        os.environ,
        KUBECONFIG=str(kubeconfig),
        ETJ_METRICS_PORT=str(metrics_port),
        ETJ_RECONCILE_INTERVAL_SECONDS="5",
        ETJ_TELEMETRY_INTERVAL_SECONDS=str(TELEMETRY_INTERVAL_SECONDS),
        ETJ_PROMETHEUS_URL=prometheus.url,
    )


def run(
    n_jobs: int,
    prometheus: FakePrometheus,
    rate_per_second: float = 0.0,
    latency_only: bool = False,
    plan: bool = False,
    bound_baseline: bool = True,
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmulatorServer(crds=[ROOT / "crds"]) as server,  # the job's CRD and its report's
    ):
        capture = RequestCapture(server)
        kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
        metrics_port = free_port()
        env = operator_env(kubeconfig, prometheus, metrics_port)
        log = open(Path(tmp) / "operator.log", "wb")  # noqa: SIM115
        operator = subprocess.Popen(
            [sys.executable, "-m", "etj_operator", "operator", "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait(lambda: any("kopf" in r.user_agent and r.verb == "watch" for r in server.requests), 60, "operator")
            time.sleep(1.0)
            watches = operator_watches(server.requests, is_operator)
            b = burst(server, capture, n_jobs, operator.pid, rate_per_second)
            peak_rss = rss_mb(operator.pid)
            result: dict[str, Any] = {k: b[k] for k in FIGURES}
            if plan:
                config = OperatorConfig.from_env(env)
                uids = {n: str((server.get(c.PLURAL, "default", n) or {})["metadata"]["uid"]) for n in b["names"]}
                result["plan"] = build_plan(
                    b["entries"],
                    is_operator=is_operator,
                    job_pattern=JOB_PATTERN,
                    job_uids=uids,
                    until=b["until"],
                    watches=watches,
                    jobs_path_suffix=f"/{c.PLURAL}",
                    max_connections=config.max_workers,  # KubeApi's connection limit
                    max_jobs_at_once=config.max_concurrent_reconciles if bound_baseline else 0,
                )
            if latency_only:
                return result
            applied = b["names"]

            # telemetry: queries per cycle over a few cycles, with every job registered
            for name in applied:
                for k in range(REPLICAS):
                    server.set_pod_phase("default", f"{name}-worker-{k}", "Running", pod_ip=f"127.0.9.{k + 1}")
            time.sleep(3 * TELEMETRY_INTERVAL_SECONDS)
            q0 = prometheus.queries
            r0, c0 = operator_counters(metrics_port)
            time.sleep(5 * TELEMETRY_INTERVAL_SECONDS)
            r1, c1 = operator_counters(metrics_port)
            cycles = c1 - c0
            queries_per_cycle = (r1 - r0) / cycles if cycles else float("nan")
            # cross-check: what the fake Prometheus received in the same window
            received_per_cycle = (prometheus.queries - q0) / cycles if cycles else float("nan")
            peak_rss = max(peak_rss, rss_mb(operator.pid))

            # DDP ranks end together: every worker exits 0 (worker 0 last, as the lifecycle keys on it)
            for name in applied:
                for k in reversed(range(REPLICAS)):
                    server.set_pod_phase("default", f"{name}-worker-{k}", "Succeeded")

            def succeeded() -> bool:
                return all(
                    ((server.get(c.PLURAL, "default", n) or {}).get("status") or {}).get("phase") == "Succeeded"
                    for n in applied
                )

            wait(succeeded, 600, "all jobs succeeded")
            for name in applied:
                server.delete(c.PLURAL, "default", name)
            wait(lambda: not server.list(c.PLURAL, "default"), 600, "all jobs deleted")
            time.sleep(1.0)
            peak_rss = max(peak_rss, rss_mb(operator.pid))
            lifecycle = [
                r
                for r in server.requests
                if r.verb not in ("watch", None)
                and is_operator(r.user_agent)
                and not (r.verb == "list" and r.resource in ("customresourcedefinitions", "namespaces"))
            ]
            by_kind: dict[str, int] = {}
            refused: dict[str, int] = {}  # answers >= 300 (conflicts, invalid patches): requests sent again
            for r in lifecycle:
                key = f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
                by_kind[key] = by_kind.get(key, 0) + 1
                if r.status >= 300:
                    refused[f"{key} {r.status}"] = refused.get(f"{key} {r.status}", 0) + 1
        finally:
            operator.terminate()
            try:
                operator.wait(15)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
            log.close()
    return {
        **result,
        "rss_mb": peak_rss,
        "requests_per_job": len(lifecycle) / n_jobs,
        "queries_per_cycle": queries_per_cycle,
        "received_per_cycle": received_per_cycle,
        "requests_by_kind": by_kind,
        "refused_by_kind": refused,
    }


class _Lines:
    """Lines of a child's stdout, read by a thread (so that waiting for one can time out)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line.decode().strip())
        self.lines.put("")

    def next(self, timeout: float, what: str) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"timed out waiting for {what}") from None


def run_baseline(plan: dict[str, Any]) -> dict[str, Any]:
    """The same burst against a fresh emulator, served to the minimal client replaying ``plan``."""
    n_jobs = len(plan["jobs"])
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmulatorServer(crds=[ROOT / "crds"]) as server,
    ):
        capture = RequestCapture(server)
        kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(plan))
        err = open(Path(tmp) / "baseline.log", "wb")  # noqa: SIM115
        client = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "scale_baseline.py"), str(plan_path)],
            env=dict(os.environ, KUBECONFIG=str(kubeconfig)),
            stdout=subprocess.PIPE,
            stderr=err,
        )
        try:
            assert client.stdout is not None
            lines = _Lines(client.stdout)
            if lines.next(60, "the baseline client's watches") != "ready":
                raise RuntimeError(f"the baseline client failed: {Path(err.name).read_text()[-2000:]}")
            time.sleep(1.0)  # as the operator's run: a second between its watches and the burst
            b = burst(server, capture, n_jobs, client.pid)
            summary = json.loads(lines.next(120, "the baseline client to finish its jobs") or "{}")
        finally:
            client.kill()
            client.wait()
            err.close()
    return {**{k: b[k] for k in FIGURES}, "summary": summary}


def failover(n_jobs: int, prometheus: FakePrometheus, lease: tuple[float, float, float]) -> dict[str, Any]:
    """Two operators with leader election; SIGKILL the leader; seconds to the new leader's first write."""
    duration, deadline, retry = lease
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmulatorServer(crds=[ROOT / "crds"]) as server,
    ):
        capture = RequestCapture(server)
        kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
        env = {
            **operator_env(kubeconfig, prometheus, 0),
            "ETJ_LEADER_ELECTION": "true",
            "ETJ_LEADER_ELECTION_NAMESPACE": LEASE_NAMESPACE,
            "ETJ_LEADER_ELECTION_LEASE_NAME": LEASE_NAME,
            "ETJ_LEASE_DURATION_SECONDS": str(duration),
            "ETJ_RENEW_DEADLINE_SECONDS": str(deadline),
            "ETJ_RETRY_PERIOD_SECONDS": str(retry),
        }

        def holder() -> str:
            obj = server.get("leases", LEASE_NAMESPACE, LEASE_NAME)
            return LeaseRecord.from_lease(obj).holder if obj else ""

        a = OperatorProcess({**env, "ETJ_LEADER_ELECTION_IDENTITY": "op-a"}, Path(tmp))
        b = OperatorProcess({**env, "ETJ_LEADER_ELECTION_IDENTITY": "op-b"}, Path(tmp))
        try:
            a.start()
            wait(lambda: holder() == "op-a", 3 * duration, "op-a leading")
            b.start()
            capture.start()
            for i in range(n_jobs):
                manifest = job_manifest(f"scale-{i}", replicas=REPLICAS)
                server.create(c.PLURAL, manifest, namespace="default")
            wait(lambda: capture.pods_created >= n_jobs * REPLICAS, 120, "all pods")
            capture.stop()
            for i in range(n_jobs):
                for k in range(REPLICAS):
                    server.set_pod_phase("default", f"scale-{i}-worker-{k}", "Running", pod_ip=f"127.0.9.{k + 1}")

            def running() -> bool:
                return all(
                    ((server.get(c.PLURAL, "default", f"scale-{i}") or {}).get("status") or {}).get("phase")
                    == "Running"
                    for i in range(n_jobs)
                )

            wait(running, 120, "all jobs running")
            time.sleep(2 * retry + 1.0)  # op-b has read the Lease a few times: a standby in its steady state
            a_pid = a.pid
            killed = time.monotonic()
            a.kill()  # SIGKILL
            print(f"    op-a (pid {a_pid}) killed; waiting for op-b's first write", flush=True)

            def first_write() -> Any:
                for r in server.requests:
                    if (
                        "(op-b)" in r.user_agent
                        and r.method not in ("GET", "HEAD")
                        and r.resource != "leases"
                        and r.started_at >= killed
                        and 0 < r.status < 300
                    ):
                        return r
                return None

            wait(lambda: first_write() is not None, 3 * duration + 30, "op-b's first write", poll=0.05)
            write = first_write()
            records = server.requests
            renewals = [
                r.answered_at
                for r in records
                if "(op-a)" in r.user_agent and r.resource == "leases" and r.method == "PUT" and r.status == 200
                and r.answered_at <= killed
            ]
            takeover = min(
                (
                    r.answered_at
                    for r in records
                    if "(op-b)" in r.user_agent and r.resource == "leases" and r.method in ("PUT", "POST")
                    and r.status < 300 and r.started_at >= killed
                ),
                default=float("nan"),
            )
            new_holder = holder()
        finally:
            b.terminate()
            a.kill()
    return {
        "jobs": n_jobs,
        "lease": lease,
        "seconds": write.answered_at - killed,
        "takeover_seconds": takeover - killed,
        "since_last_renewal": killed - max(renewals) if renewals else float("nan"),
        "first_write": f"{write.method} {write.path} -> {write.status}",
        "holder": new_holder,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="*", default=[10, 100, 500])
    parser.add_argument(
        "--paced-rate", type=float, default=10.0, help="also run 100 jobs arriving at this rate (jobs/s); 0: skip"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="bursts of 100 jobs to run (latency only after the first); median"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="no baseline runs (after the 100-job bursts, after the big one)"
    )
    parser.add_argument(
        "--unbounded-baseline", action="store_true",
        help="the baseline replays every job at once (default: at most as many jobs as the operator's passes)",
    )
    parser.add_argument("--big-jobs", type=int, default=1000, help="the big burst (latency only); 0: skip")
    parser.add_argument("--failover-jobs", type=int, default=20, help="jobs running at the failover; 0: skip")
    parser.add_argument("--failover-repeat", type=int, default=3, help="failovers to run (each fresh); median")
    parser.add_argument(
        "--lease", type=float, nargs=3, default=list(CHART_LEASE), metavar=("DURATION", "RENEW_DEADLINE", "RETRY"),
        help="leader election timings for the failover, seconds (default: the chart's, 15 10 2)",
    )
    args = parser.parse_args()
    prometheus = FakePrometheus()
    results = {}
    bursts: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    t0 = time.monotonic()
    bound = not args.unbounded_baseline

    def progress(text: str) -> None:
        print(f"--- [{time.monotonic() - t0:5.0f} s] {text}", flush=True)

    def baseline_of(r: dict[str, Any]) -> dict[str, Any]:
        plan = r.pop("plan")
        progress(f"baseline of that burst: {plan_summary(plan)}")
        bl = run_baseline(plan)
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(bl["summary"].get("statuses", {}).items()))
        print(
            f"baseline apply->all pods: p50 {bl['p50_ms']:.0f} ms, p99 {bl['p99_ms']:.0f} ms; client CPU in the "
            f"burst {bl['cpu_ms_per_job']:.2f} ms/job; burst done in {bl['wall_s']:.1f} s; answers {statuses}",
            flush=True,
        )
        return bl

    for n in args.jobs:
        progress(f"{n} jobs x {REPLICAS} pods")
        with_plan = n == 100 and not args.no_baseline
        r = run(n, prometheus, plan=with_plan, bound_baseline=bound)
        results[n] = r
        print(
            f"apply->all pods: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; operator CPU in the burst "
            f"{r['cpu_ms_per_job']:.1f} ms/job; operator RSS {r['rss_mb']:.0f} MB; "
            f"requests/job lifecycle {r['requests_per_job']:.1f}; telemetry queries/cycle {r['queries_per_cycle']:.2f} "
            f"(Prometheus received {r['received_per_cycle']:.2f}/cycle)",
            flush=True,
        )
        print("    requests by kind (all jobs):", json.dumps(r["requests_by_kind"], sort_keys=True), flush=True)
        print("    of which answered >= 300:", json.dumps(r["refused_by_kind"], sort_keys=True), flush=True)
        if n == 100:  # the headline burst: repeated at once, before bigger runs leave a bigger heap behind
            bursts.append(r)
            if with_plan:
                baselines.append(baseline_of(r))
            for i in range(1, args.repeat):
                progress(f"100 jobs x {REPLICAS} pods, burst {i + 1} of {args.repeat} (latency only)")
                b = run(100, prometheus, latency_only=True, plan=with_plan, bound_baseline=bound)
                print(
                    f"apply->all pods: p50 {b['p50_ms']:.0f} ms, p99 {b['p99_ms']:.0f} ms; "
                    f"operator CPU in the burst {b['cpu_ms_per_job']:.1f} ms/job",
                    flush=True,
                )
                bursts.append(b)
                if with_plan:
                    baselines.append(baseline_of(b))
    paced = None
    if args.paced_rate > 0 and 100 in results:
        progress(f"100 jobs x {REPLICAS} pods, arriving at {args.paced_rate:g} jobs/s")
        paced = run(100, prometheus, args.paced_rate)
        print(f"apply->all pods: p50 {paced['p50_ms']:.0f} ms, p99 {paced['p99_ms']:.0f} ms", flush=True)
    big = big_baseline = None
    if args.big_jobs > 0:
        progress(f"{args.big_jobs} jobs x {REPLICAS} pods in one burst (latency only)")
        big = run(args.big_jobs, prometheus, latency_only=True, plan=not args.no_baseline, bound_baseline=bound)
        print(
            f"apply->all pods: p50 {big['p50_ms']:.0f} ms, p99 {big['p99_ms']:.0f} ms; operator CPU in the burst "
            f"{big['cpu_ms_per_job']:.1f} ms/job; jobs applied in {big['applied_s']:.1f} s, burst done in "
            f"{big['wall_s']:.1f} s",
            flush=True,
        )
        if not args.no_baseline:
            big_baseline = baseline_of(big)
    failovers: list[dict[str, Any]] = []
    lease = (args.lease[0], args.lease[1], args.lease[2])
    for i in range(args.failover_repeat if args.failover_jobs > 0 else 0):
        progress(
            f"failover {i + 1} of {args.failover_repeat}: 2 operators, {args.failover_jobs} jobs running, lease "
            f"{lease[0]:g} s / renew deadline {lease[1]:g} s / retry {lease[2]:g} s; SIGKILL to the leader"
        )
        fo = failover(args.failover_jobs, prometheus, lease)
        print(
            f"first write by the new leader {fo['seconds']:.2f} s after the kill ({fo['first_write']}); it took the "
            f"Lease at {fo['takeover_seconds']:.2f} s; the kill came {fo['since_last_renewal']:.2f} s after op-a's "
            f"last renewal; holder now {fo['holder']}",
            flush=True,
        )
        failovers.append(fo)
    progress("done")
    print()
    if paced is not None:
        print(f"scale_paced_p50_ms_100_jobs: {paced['p50_ms']:.1f}")
        print(f"scale_paced_p99_ms_100_jobs: {paced['p99_ms']:.1f}")
    if bursts:
        p50s = [b["p50_ms"] for b in bursts]
        p99s = [b["p99_ms"] for b in bursts]
        print(f"scale_p50_ms_100_jobs_each_burst: {' '.join(f'{v:.0f}' for v in p50s)}")
        print(f"scale_p99_ms_100_jobs_each_burst: {' '.join(f'{v:.0f}' for v in p99s)}")
        print(f"scale_operator_cpu_ms_per_job_100_jobs: {statistics.median(b['cpu_ms_per_job'] for b in bursts):.2f}")
        print(f"scale_p50_ms_100_jobs: {statistics.median(p50s):.1f}")
        print(f"scale_p99_ms_100_jobs: {statistics.median(p99s):.1f}")
    if baselines:
        base50 = " ".join(f"{b['p50_ms']:.0f}" for b in baselines)
        base99 = " ".join(f"{b['p99_ms']:.0f}" for b in baselines)
        print(f"scale_baseline_p50_ms_100_jobs_each_burst: {base50}")
        print(f"scale_baseline_p99_ms_100_jobs_each_burst: {base99}")
        print(f"scale_baseline_p50_ms_100_jobs: {statistics.median(b['p50_ms'] for b in baselines):.1f}")
        print(f"scale_baseline_p99_ms_100_jobs: {statistics.median(b['p99_ms'] for b in baselines):.1f}")
        base_cpu = statistics.median(b["cpu_ms_per_job"] for b in baselines)
        print(f"scale_baseline_cpu_ms_per_job_100_jobs: {base_cpu:.2f}")
    if 500 in results:
        print(f"scale_rss_mb_500_jobs: {results[500]['rss_mb']:.1f}")
    if results:
        largest = max(results)
        print(f"scale_requests_per_job: {results[largest]['requests_per_job']:.1f}")
    for n, r in sorted(results.items()):
        print(f"scale_telemetry_queries_per_cycle_{n}_jobs: {r['queries_per_cycle']:.2f}")
    if big is not None:
        print(f"scale_p50_ms_{big['jobs']}_jobs: {big['p50_ms']:.1f}")
        print(f"scale_operator_cpu_ms_per_job_{big['jobs']}_jobs: {big['cpu_ms_per_job']:.2f}")
    if big is not None and big_baseline is not None:
        n = big["jobs"]
        print(f"scale_baseline_p50_ms_{n}_jobs: {big_baseline['p50_ms']:.1f}")
        print(f"scale_baseline_p99_ms_{n}_jobs: {big_baseline['p99_ms']:.1f}")
        print(f"scale_baseline_cpu_ms_per_job_{n}_jobs: {big_baseline['cpu_ms_per_job']:.2f}")
        print(f"scale_burst_p50_ratio_{n}_jobs: {big['p50_ms'] / big_baseline['p50_ms']:.2f}")
        print(f"scale_burst_p99_ratio_{n}_jobs: {big['p99_ms'] / big_baseline['p99_ms']:.2f}")
        print(f"scale_cpu_per_job_ratio_{n}_jobs: {big['cpu_ms_per_job'] / big_baseline['cpu_ms_per_job']:.2f}")
    if failovers:
        print(f"scale_failover_lease_seconds: {lease[0]:g} (renew deadline {lease[1]:g}, retry {lease[2]:g})")
        each = " ".join(f"{f['seconds']:.2f}" for f in failovers)
        print(f"scale_failover_seconds_each: {each}")
        takeovers = " ".join(f"{f['takeover_seconds']:.2f}" for f in failovers)
        print(f"scale_failover_lease_takeover_seconds_each: {takeovers}")
    # the headline lines of issue 15 (item 5), last
    if baselines:

        def ratio(key: str) -> float:
            return float(statistics.median(b[key] for b in bursts) / statistics.median(b[key] for b in baselines))

        print(f"scale_burst_p50_ratio_100_jobs: {ratio('p50_ms'):.2f}")
        print(f"scale_burst_p99_ratio_100_jobs: {ratio('p99_ms'):.2f}")
        print(f"scale_cpu_per_job_ratio: {ratio('cpu_ms_per_job'):.2f}")
    if big is not None:
        print(f"scale_p99_ms_{big['jobs']}_jobs: {big['p99_ms']:.1f}")
    if failovers:
        print(f"scale_failover_seconds: {statistics.median(f['seconds'] for f in failovers):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
