"""CPU per API request: the operator's KubeApi (aiohttp on the event loop) against other Python clients.

Method: the API emulator serves on 127.0.0.1 in this process; each client runs in its own child process
(so its CPU time is its own) and creates N worker pods (the operator's real pod manifests, 16 requests in
flight), its CPU time counted from the first request to the last answer (the client's set-up, such as
reading the kubeconfig, is not). The clients, side by side in one run, in turns
(A, B, C, ..., A, B, C, ...):

* ``kubeapi``: etj_operator.kubeapi.KubeApi, what the operator uses (aiohttp, 16 pooled connections);
* ``kubernetes``: the ``kubernetes`` package's ApiClient (``call_api``, urllib3 with a 16-connection pool)
  on a 16-thread pool, the usual way to call it from asyncio, as the operator did before;
* ``kubernetes_asyncio``: its ApiClient (aiohttp, 16 connections), dict bodies, answers not decoded;
* ``kr8s``: ``kr8s.asyncio`` ``Api.call_api`` (httpx), dict bodies serialised to JSON, answers not decoded;
* ``lightkube``: ``AsyncClient.create`` (httpx); it takes model objects only, so each dict becomes a
  ``Pod`` model and its answer is decoded into one: what the operator would pay with it.

The optional clients (all but the first two) come with the ``bench`` extra; a client that is not installed
is reported and left out. Prints per round the CPU ms per request of each; ends with the medians and
each client's ratio to KubeApi.

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

    span: dict[str, float] = {}

    def begin() -> None:  # the first request goes out: set-up (credentials, sessions) is not counted
        span.update(cpu=time.process_time(), wall=time.monotonic())

    def end() -> None:  # the last answer is in
        span.update(cpu=time.process_time() - span["cpu"], wall=time.monotonic() - span["wall"])

    async def with_kubeapi() -> None:
        api = KubeApi(load_connection(), max_connections=16)
        begin()
        await asyncio.gather(*(api.create(p) for p in pods))
        end()
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
        begin()
        await asyncio.gather(*(loop.run_in_executor(pool, create, p) for p in pods))
        end()
        pool.shutdown()

    async def with_kubernetes_asyncio() -> None:
        from kubernetes_asyncio import client as k8s
        from kubernetes_asyncio import config

        configuration = k8s.Configuration()
        await config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = 16
        async with k8s.ApiClient(configuration) as api_client:
            async def create(pod: dict) -> None:
                response = await api_client.call_api(
                    "/api/v1/namespaces/default/pods", "POST",
                    header_params={"Accept": "application/json", "Content-Type": "application/json"},
                    body=pod, auth_settings=["BearerToken"], _preload_content=False, _request_timeout=30)
                assert response.status == 201, response.status
                response.release()

            semaphore = asyncio.Semaphore(16)

            async def limited(pod: dict) -> None:
                async with semaphore:
                    await create(pod)

            begin()
            await asyncio.gather(*(limited(p) for p in pods))
            end()

    async def with_kr8s() -> None:
        import json

        import kr8s.asyncio

        api = await kr8s.asyncio.api(kubeconfig=os.environ["KUBECONFIG"])
        semaphore = asyncio.Semaphore(16)

        async def create(pod: dict) -> None:
            async with semaphore, api.call_api("POST", version="v1", url="pods", namespace="default",
                                               content=json.dumps(pod)) as response:
                assert response.status_code == 201, response.status_code

        begin()
        await asyncio.gather(*(create(p) for p in pods))
        end()

    async def with_lightkube() -> None:
        from lightkube import AsyncClient
        from lightkube.resources.core_v1 import Pod

        client = AsyncClient()
        semaphore = asyncio.Semaphore(16)

        async def create(pod: dict) -> None:
            async with semaphore:
                await client.create(Pod.from_dict(pod), namespace="default")

        begin()
        await asyncio.gather(*(create(p) for p in pods))
        end()
        await client.close()

    runners = {"kubeapi": with_kubeapi, "kubernetes": with_kubernetes,
               "kubernetes_asyncio": with_kubernetes_asyncio, "kr8s": with_kr8s, "lightkube": with_lightkube}
    asyncio.run(runners[mode]())
    print(f"{span['cpu']} {span['wall']}")


CLIENTS = ("kubeapi", "kubernetes", "kubernetes_asyncio", "kr8s", "lightkube")
#: The module each optional client needs (the ``bench`` extra).
OPTIONAL = {"kubernetes_asyncio": "kubernetes_asyncio", "kr8s": "kr8s", "lightkube": "lightkube"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="p", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.requests, args.prefix)
        return 0

    import importlib.util

    from etj_operator.sandbox.emulator import EmulatorServer

    clients = [c for c in CLIENTS if c not in OPTIONAL or importlib.util.find_spec(OPTIONAL[c]) is not None]
    for missing in sorted(set(CLIENTS) - set(clients)):
        print(f"{missing}: not installed (pip install -e '.[bench]'); left out", flush=True)
    per_request: dict[str, list[float]] = {c: [] for c in clients}
    with tempfile.TemporaryDirectory() as tmp, EmulatorServer() as server:
        env = dict(os.environ, KUBECONFIG=str(server.write_kubeconfig(Path(tmp) / "kubeconfig")))
        for round_ in range(args.rounds):
            for mode in clients:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--client",
                        mode,
                        "--requests",
                        str(args.requests),
                        "--prefix",
                        f"{mode.replace('_', '-')}-{round_}",
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
                    f"round {round_ + 1} {mode:18s}: {args.requests} creates in {wall:.2f} s, "
                    f"{ms:.3f} ms CPU per request",
                    flush=True,
                )
    medians = {c: statistics.median(v) for c, v in per_request.items()}
    names = {"kubernetes": "kubernetes_client"}
    print()
    for c in clients:
        print(f"api_cpu_ms_per_request_{names.get(c, c)}: {medians[c]:.3f}")
    for c in clients[1:]:
        print(f"api_cpu_ratio_{names.get(c, c)}_to_kubeapi: {medians[c] / medians['kubeapi']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
