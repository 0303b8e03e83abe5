"""CPU per API request: the operator's KubeApi (aiohttp on the event loop) against the `kubernetes` ApiClient.

Method: the API emulator serves on 127.0.0.1 in this process; each client runs in its own child process
(so its CPU time is its own) and creates N worker pods (the operator's real pod manifests, 16 requests in
flight), timed from the first request to the last answer. Two clients, side by side in one run, in turns
(A, B, A, B, ...):

* ``kubeapi``: etj_operator.kubeapi.KubeApi, what the operator uses (aiohttp, 16 pooled connections);
* ``kubernetes``: the ``kubernetes`` package's ApiClient (``call_api``, urllib3 with a 16-connection pool)
  on a 16-thread pool, the usual way to call it from asyncio, as the operator did before.

Prints per round the CPU ms per request of each; ends with the medians and their ratio.

    .venv/bin/python bench/api_client.py            # 900 requests per client per round, 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def client(mode: str, n: int, prefix: str) -> None:
    """Child process: create n pods with one client; print 'cpu_seconds wall_seconds'."""
    from etj_operator import builders
    from etj_operator.kubeapi import KubeApi, load_connection
    from etj_operator.models import parse_spec

    from jobs import job_manifest

    spec = parse_spec(job_manifest("x", replicas=4)["spec"])
    pods = []
    for i in range(n):
        ref = builders.JobRef(name=f"{prefix}-{i}", namespace="default", uid="u", labels={})
        pods.append(builders.build_worker_pod(ref, spec, 0, 0))

    async def with_kubeapi() -> None:
        api = KubeApi(load_connection(), max_connections=16)
        await asyncio.gather(*(api.create(p) for p in pods))
        await api.aclose()

    async def with_kubernetes() -> None:
        from concurrent.futures import ThreadPoolExecutor

        from kubernetes import client as k8s
        from kubernetes import config

        configuration = k8s.Configuration()
        config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = 16
        api_client = k8s.ApiClient(configuration)
        pool = ThreadPoolExecutor(max_workers=16)

        def create(pod: dict) -> None:
            params = api_client.param_serialize(
                method="POST",
                resource_path="/api/v1/namespaces/default/pods",
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=pod,
                auth_settings=["BearerToken"],
            )
            response = api_client.call_api(*params, _request_timeout=30)
            response.read()
            assert response.status == 201, response.status

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, create, p) for p in pods))
        pool.shutdown()

    cpu0, wall0 = time.process_time(), time.monotonic()
    asyncio.run(with_kubeapi() if mode == "kubeapi" else with_kubernetes())
    print(f"{time.process_time() - cpu0} {time.monotonic() - wall0}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=["kubeapi", "kubernetes"], help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="p", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.requests, args.prefix)
        return 0

    from etj_operator.sandbox.emulator import EmulatorServer

    per_request: dict[str, list[float]] = {"kubeapi": [], "kubernetes": []}
    with tempfile.TemporaryDirectory() as tmp, EmulatorServer() as server:
        env = dict(os.environ, KUBECONFIG=str(server.write_kubeconfig(Path(tmp) / "kubeconfig")))
        for round_ in range(args.rounds):
            for mode in ("kubeapi", "kubernetes"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--client",
                        mode,
                        "--requests",
                        str(args.requests),
                        "--prefix",
                        f"{mode}-{round_}",
                    ],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.split()
                cpu, wall = float(out[0]), float(out[1])
                ms = cpu * 1000 / args.requests
                per_request[mode].append(ms)
                print(
                    f"round {round_ + 1} {mode:10s}: {args.requests} creates in {wall:.2f} s, "
                    f"{ms:.3f} ms CPU per request",
                    flush=True,
                )
    kubeapi = statistics.median(per_request["kubeapi"])
    kubernetes = statistics.median(per_request["kubernetes"])
    print()
    print(f"api_cpu_ms_per_request_kubeapi: {kubeapi:.3f}")
    print(f"api_cpu_ms_per_request_kubernetes_client: {kubernetes:.3f}")
    print(f"api_cpu_ratio_kubernetes_client_to_kubeapi: {kubernetes / kubeapi:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
