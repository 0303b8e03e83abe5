"""Operator scale on the API emulator: N concurrent jobs of 4 pods each.

Method: the emulator (test infrastructure) serves on 127.0.0.1 in this process; the operator runs as a
separate process (`python -m etj_operator operator`) so its RSS is its own. A fake Prometheus answers the
telemetry queries (empty results) and counts them. For each N the bench applies N jobs at once and records
when each job was applied (just before its create call) and when the emulator answered the create of its
4th pod (the request log's ``answered_at``; one monotonic clock, this process). Earlier versions timed the
pods by a watch stream read by a thread of this process: that thread shared the emulator's interpreter
lock and slowed the server under test, so it is gone. Then it
plays the kubelet (all pods Running; later every worker Succeeded, as DDP ranks end together), waits for
every job to succeed, deletes the jobs and counts the operator's API requests (watches excluded) per job
lifecycle. Telemetry queries per cycle come from the operator's own counters, cross-checked with what the
fake Prometheus received.

Prints, per N: p50/p99 apply-to-all-pods-created latency, the operator's CPU time per job during the
burst, operator RSS, requests per job lifecycle, telemetry queries per cycle. The burst of 100 jobs runs
``--repeat`` times (5; each with a fresh emulator and operator, the extra ones measuring latency only):
the headline p50/p99 are the medians over those bursts, and every burst's figures are printed too. Ends
with the headline lines of issue 6.

    .venv/bin/python bench/operator_scale.py            # 10, 100, 500 jobs
    .venv/bin/python bench/operator_scale.py --jobs 10  # quick
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from etj_operator import contract as c  # noqa: E402
from etj_operator.sandbox.emulator import EmulatorServer  # noqa: E402

from jobs import job_manifest  # noqa: E402

REPLICAS = 4
TELEMETRY_INTERVAL_SECONDS = 2.0


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


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def run(
    n_jobs: int, prometheus: FakePrometheus, rate_per_second: float = 0.0, latency_only: bool = False
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmulatorServer(crds=[ROOT / "crds"]) as server,  # the job's CRD and its report's
    ):
        kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
        metrics_port = free_port()
        env = dict(
            os.environ,
            KUBECONFIG=str(kubeconfig),
            ETJ_METRICS_PORT=str(metrics_port),
            ETJ_RECONCILE_INTERVAL_SECONDS="5",
            ETJ_TELEMETRY_INTERVAL_SECONDS=str(TELEMETRY_INTERVAL_SECONDS),
            ETJ_PROMETHEUS_URL=prometheus.url,
        )
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
            gc.collect()  # quiesce this process (the emulator's) before the burst: no collection of old garbage
            server.clear_requests()
            applied: dict[str, float] = {}
            cpu_before = cpu_seconds(operator.pid)
            start = time.monotonic()
            for i in range(n_jobs):
                name = f"scale-{i}"
                manifest = job_manifest(name, replicas=REPLICAS)
                manifest["spec"]["energy"] = {"telemetry": {"source": "Prometheus", "intervalSeconds": 1}}
                if rate_per_second > 0:  # paced arrivals instead of one burst
                    time.sleep(max(0.0, (start + i / rate_per_second) - time.monotonic()))
                applied[name] = time.monotonic()
                server.create(c.PLURAL, manifest, namespace="default")

            pod_created: dict[str, float] = {}

            def last_pod(name: str) -> float | None:
                times = [pod_created.get(f"{name}-worker-{k}") for k in range(REPLICAS)]
                return None if None in times else max(t for t in times if t is not None)

            def all_created() -> bool:
                pod_created.update(pod_creation_times(server))
                return all(last_pod(n) is not None for n in applied)

            wait(all_created, 600, "all pods")
            latencies_ms = [((last_pod(n) or 0.0) - applied[n]) * 1000 for n in applied]
            burst_cpu_ms_per_job = (cpu_seconds(operator.pid) - cpu_before) * 1000 / n_jobs
            peak_rss = rss_mb(operator.pid)
            if latency_only:
                return {
                    "jobs": n_jobs,
                    "p50_ms": statistics.median(latencies_ms),
                    "p99_ms": percentile(latencies_ms, 99),
                    "cpu_ms_per_job": burst_cpu_ms_per_job,
                }

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
            operator_requests = [
                r
                for r in server.requests
                if r.verb not in ("watch", None)
                and ("kopf" in r.user_agent or r.user_agent.startswith("etj-operator/"))
                and not (r.verb == "list" and r.resource in ("customresourcedefinitions", "namespaces"))
            ]
            lifecycle = operator_requests
            per_job = len(lifecycle) / n_jobs
            by_kind: dict[str, int] = {}
            for r in lifecycle:
                key = f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
                by_kind[key] = by_kind.get(key, 0) + 1
        finally:
            operator.terminate()
            try:
                operator.wait(15)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
            log.close()
    return {
        "jobs": n_jobs,
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": percentile(latencies_ms, 99),
        "cpu_ms_per_job": burst_cpu_ms_per_job,
        "rss_mb": peak_rss,
        "requests_per_job": per_job,
        "queries_per_cycle": queries_per_cycle,
        "received_per_cycle": received_per_cycle,
        "requests_by_kind": by_kind,
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
    args = parser.parse_args()
    prometheus = FakePrometheus()
    results = {}
    bursts: list[dict[str, Any]] = []
    for n in args.jobs:
        print(f"--- {n} jobs x {REPLICAS} pods", flush=True)
        r = run(n, prometheus)
        results[n] = r
        print(
            f"apply->all pods: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; operator CPU in the burst "
            f"{r['cpu_ms_per_job']:.1f} ms/job; operator RSS {r['rss_mb']:.0f} MB; "
            f"requests/job lifecycle {r['requests_per_job']:.1f}; telemetry queries/cycle {r['queries_per_cycle']:.2f} "
            f"(Prometheus received {r['received_per_cycle']:.2f}/cycle)",
            flush=True,
        )
        print("    requests by kind (all jobs):", json.dumps(r["requests_by_kind"], sort_keys=True), flush=True)
        if n == 100:  # the headline burst: repeated at once, before bigger runs leave a bigger heap behind
            bursts.append(r)
            for i in range(1, args.repeat):
                print(f"--- 100 jobs x {REPLICAS} pods, burst {i + 1} of {args.repeat} (latency only)", flush=True)
                b = run(100, prometheus, latency_only=True)
                print(
                    f"apply->all pods: p50 {b['p50_ms']:.0f} ms, p99 {b['p99_ms']:.0f} ms; "
                    f"operator CPU in the burst {b['cpu_ms_per_job']:.1f} ms/job",
                    flush=True,
                )
                bursts.append(b)
    paced = None
    if args.paced_rate > 0 and 100 in results:
        print(f"--- 100 jobs x {REPLICAS} pods, arriving at {args.paced_rate:g} jobs/s", flush=True)
        paced = run(100, prometheus, args.paced_rate)
        print(f"apply->all pods: p50 {paced['p50_ms']:.0f} ms, p99 {paced['p99_ms']:.0f} ms", flush=True)
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
    if 500 in results:
        print(f"scale_rss_mb_500_jobs: {results[500]['rss_mb']:.1f}")
    largest = max(results)
    print(f"scale_requests_per_job: {results[largest]['requests_per_job']:.1f}")
    for n, r in sorted(results.items()):
        print(f"scale_telemetry_queries_per_cycle_{n}_jobs: {r['queries_per_cycle']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
