"""Telemetry at scale: queries per cycle, cycle time and operator memory for 10/100/1000 jobs.

Method. For each job count N, one DCGM-format test exporter (tests/dcgm_exporter.py, in its own process)
serves N jobs x PODS pods x GPUS GPUs (default 4 x 8, a realistic multi-node DDP job: 1000 jobs =
32,000 GPUs = 96,000 series over power, energy and limit); a real Prometheus (Debian package, started
by tests/prometheus_server.py) scrapes it every second. A fresh client process, standing for the
operator, builds the pod index of all N jobs and runs CYCLES telemetry cycles with PrometheusTelemetry,
one after the other. It reports the requests per cycle (counted by the source and checked against
Prometheus's own prometheus_http_requests_total), the cycle time (median and max), that every GPU was
mapped, and the client's resident memory (VmRSS and peak VmHWM from /proc) before the first and after
the last cycle. Prometheus's own scrape duration (idle, and while the client queries) shows whether it
keeps up with the scrape interval (``--scrape-interval``, default 1 s).

    .venv/bin/python bench/telemetry_scale.py                 # 10, 100, 1000 jobs
    .venv/bin/python bench/telemetry_scale.py --jobs 10,100   # a quicker run

The last lines are ``telemetry_queries_per_cycle_<N>_jobs: <n>`` and ``telemetry_cycle_seconds_<N>_jobs:
<median>`` for each N. Figures go to docs/benchmarks.md ("Telemetry scale").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "operator"))

NAMESPACE = "bench"


def pod_name(job: int, replica: int) -> str:
    return f"job{job:04d}-worker-{replica}"


def rss_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of a process from /proc."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


# --- the exporter process -------------------------------------------------------------------------------
def serve_exporter(jobs: int, pods: int, gpus: int, conn: Any) -> None:
    from dcgm_exporter import DcgmExporter

    exporter = DcgmExporter(simulated=True, hostname="bench-node")
    for j in range(jobs):
        for r in range(pods):
            exporter.add_pod(NAMESPACE, pod_name(j, r), gpus=gpus, watts=300.0 + (j % 50) * 5)
    exporter.start()
    conn.send(exporter.port)
    conn.recv()  # any message: stop
    exporter.stop()


# --- the client ("operator") process -------------------------------------------------------------------
def run_client(url: str, jobs: int, pods: int, gpus: int, cycles: int, interval_seconds: float) -> dict[str, Any]:
    import requests as _http  # noqa: F401  (the baseline includes the HTTP client library)

    from etj_operator.telemetry.base import PodTarget
    from etj_operator.telemetry.prometheus import PrometheusTelemetry

    rss_start = rss_kib()
    targets = [PodTarget(NAMESPACE, pod_name(j, r), f"job{j:04d}") for j in range(jobs) for r in range(pods)]
    source = PrometheusTelemetry(url, timeout_seconds=30)
    times: list[float] = []
    requests: list[int] = []
    mapped: list[int] = []
    errors: list[str] = []

    async def cycles_loop() -> None:
        for _ in range(cycles):
            started = time.perf_counter()
            result = await source.collect(targets)
            elapsed = time.perf_counter() - started
            times.append(elapsed)
            requests.append(result.requests)
            mapped.append(len(result.samples))
            if result.error:
                errors.append(result.error)
            await asyncio.sleep(max(0.0, interval_seconds - elapsed))

    asyncio.run(cycles_loop())
    source.close()
    return {
        "times": times,
        "requests": requests,
        "mapped": mapped,
        "errors": errors,
        "rss_start_kib": rss_start["VmRSS"],
        "rss_end_kib": rss_kib()["VmRSS"],
        "hwm_kib": rss_kib()["VmHWM"],
    }


# --- one size ------------------------------------------------------------------------------------------
def measure(
    jobs: int, pods: int, gpus: int, cycles: int, interval_seconds: float, scrape_seconds: float
) -> dict[str, Any]:
    from prometheus_server import PrometheusServer, ScrapeJob

    expected = jobs * pods * gpus
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    exporter = ctx.Process(target=serve_exporter, args=(jobs, pods, gpus, child), daemon=True)
    exporter.start()
    server = None
    try:
        port = parent.recv()
        server = PrometheusServer([ScrapeJob("dcgm", [f"127.0.0.1:{port}"])], scrape_interval_seconds=scrape_seconds)
        server.start(timeout_seconds=120)
        server.wait_for_series(f"count(DCGM_FI_DEV_POWER_MGMT_LIMIT) >= {expected}", count=1, timeout_seconds=120)
        server.wait_for_scrapes(3, timeout_seconds=120)
        idle = server.query('max_over_time(scrape_duration_seconds{job="dcgm"}[5s])')
        data_idle_scrape = float(idle[0]["value"][1]) if idle else None
        before = server.query_api_requests()
        client = subprocess.run(
            [
                sys.executable,
                __file__,
                "--client",
                server.url,
                "--jobs",
                str(jobs),
                "--pods-per-job",
                str(pods),
                "--gpus-per-pod",
                str(gpus),
                "--cycles",
                str(cycles),
                "--interval",
                str(interval_seconds),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        data: dict[str, Any] = json.loads(client.stdout.strip().splitlines()[-1])
        data["prometheus_counted_queries"] = server.query_api_requests() - before
        window = f"{round(sum(data['times']) + cycles * interval_seconds + 2)}s"
        scrape = server.query(f'max_over_time(scrape_duration_seconds{{job="dcgm"}}[{window}])')
        up = server.query(f'min_over_time(up{{job="dcgm"}}[{window}])')
        data["idle_scrape_seconds"] = data_idle_scrape
        data["scrape_seconds_max"] = float(scrape[0]["value"][1]) if scrape else None
        data["target_up_whole_minute"] = bool(up) and float(up[0]["value"][1]) == 1.0
        data["prometheus_rss_kib"] = rss_kib(server.pid)["VmRSS"] if server.pid else None
        data["expected"] = expected
        return data
    finally:
        if server is not None:
            server.close()
        parent.send("stop")
        exporter.join(timeout=30)
        if exporter.is_alive():
            exporter.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="10,100,1000", help="comma-separated job counts")
    parser.add_argument("--pods-per-job", type=int, default=4)
    parser.add_argument("--gpus-per-pod", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between cycle starts")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="Prometheus scrape interval (s)")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(n) for n in args.jobs.split(",") if n]
    if args.client:
        print(
            json.dumps(
                run_client(args.client, sizes[0], args.pods_per_job, args.gpus_per_pod, args.cycles, args.interval)
            )
        )
        return 0

    from prometheus_server import find_prometheus

    binary = find_prometheus()
    if binary is None:
        print("prometheus binary not found (apt-get install -y prometheus)", file=sys.stderr)
        return 2
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; {version}")
    print(
        f"layout: {args.pods_per_job} pods x {args.gpus_per_pod} GPUs per job; 3 metrics; "
        f"scrape every {args.scrape_interval:g} s; "
        f"{args.cycles} cycles per size, one every {args.interval:g} s"
    )
    print(
        f"{'jobs':>6} {'GPUs':>7} {'series':>7} {'queries/cycle':>13} {'mapped':>7} {'cycle p50 s':>11} "
        f"{'cycle max s':>11} {'client RSS MiB':>15} {'peak MiB':>9} {'prom RSS MiB':>12} {'scrape s idle/load':>18}"
    )
    results: dict[int, dict[str, Any]] = {}
    for jobs in sizes:
        data = measure(jobs, args.pods_per_job, args.gpus_per_pod, args.cycles, args.interval, args.scrape_interval)
        results[jobs] = data
        queries = sorted(set(data["requests"]))
        prom_mib = f"{data['prometheus_rss_kib'] / 1024:.0f}" if data["prometheus_rss_kib"] else "?"
        scrape = "/".join(
            f"{v:.3f}" if v is not None else "?" for v in (data["idle_scrape_seconds"], data["scrape_seconds_max"])
        )
        print(
            f"{jobs:>6} {data['expected']:>7} {data['expected'] * 3:>7} {','.join(map(str, queries)):>13} "
            f"{min(data['mapped']):>7} {statistics.median(data['times']):>11.3f} {max(data['times']):>11.3f} "
            f"{data['rss_start_kib'] / 1024:>6.0f}->{data['rss_end_kib'] / 1024:<7.0f} "
            f"{data['hwm_kib'] / 1024:>9.0f} {prom_mib:>12} {scrape:>18}"
        )
        if data["errors"]:
            print(f"  errors: {data['errors'][:2]}")
        if min(data["mapped"]) != data["expected"]:
            print(f"  only {min(data['mapped'])} of {data['expected']} GPUs mapped in some cycle")
        holds = (
            data["target_up_whole_minute"]
            and max(data["idle_scrape_seconds"] or 0, data["scrape_seconds_max"] or 0) < args.scrape_interval
        )
        print(
            f"  Prometheus counted {data['prometheus_counted_queries']:.0f} queries for {args.cycles} cycles; "
            f"target up throughout: {data['target_up_whole_minute']}; "
            f"Prometheus keeps up with the {args.scrape_interval:g} s scrape: {'yes' if holds else 'NO'}"
        )
    for jobs, data in results.items():
        print(f"telemetry_cycle_seconds_{jobs}_jobs: {statistics.median(data['times']):.3f}")
    for jobs, data in results.items():
        print(f"telemetry_queries_per_cycle_{jobs}_jobs: {max(data['requests'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
