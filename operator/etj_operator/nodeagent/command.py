"""``etj node-agent``: run the node agent of one node in the foreground (the DaemonSet's entry point).

The parser is built here (``etj_operator.cli`` adds it); the agent's libraries (grpcio, NVML) are imported only
when the command runs, so ``etj --help`` needs neither.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from etj_contract import agent as a

__all__ = ["add_node_agent_parser", "run_node_agent"]

logger = logging.getLogger(__name__)


def add_node_agent_parser(sub: Any) -> None:
    """Add ``node-agent`` to the ``etj`` subcommands."""
    p = sub.add_parser(
        "node-agent",
        help="enforce jobs' GPU power limits on this node and export them (a DaemonSet's entry point)",
        description="Apply each EfficientTrainingJob's per-GPU power limit to the GPUs its pods hold on this node, "
        "reset every other GPU to its default limit, and export the applied limits (docs/node-agent.md).",
    )
    p.add_argument("--node", default=None, help=f"this node's name (default: ${a.ENV_NODE_NAME})")
    p.add_argument("--pod-resources-socket", default=a.DEFAULT_POD_RESOURCES_SOCKET,
                   help="the kubelet's PodResources socket (default %(default)s)")
    p.add_argument("--pod-resources-timeout", type=float, default=5.0, help="seconds per List call (default 5)")
    p.add_argument("--resource", action="append", default=None,
                   help=f"device-plugin resource whose devices are GPUs (repeatable; default {a.RESOURCE_NVIDIA_GPU})")
    p.add_argument("--backend", choices=("nvml", "simulated"), default="nvml", help="GPU backend (default nvml)")
    p.add_argument("--simulated-state-dir", default=None,
                   help="the simulated node's directory (its GPUs' state: gpus.json); needed by --backend simulated")
    p.add_argument("--simulated-gpus", type=int, default=8,
                   help="GPUs of a simulated node made anew (default 8; an existing state file keeps its own)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between cycles (default 10)")
    p.add_argument("--grace", type=float, default=120.0,
                   help="seconds an unreadable kubelet or API is bridged with its last good answer (default 120)")
    p.add_argument("--metrics-port", type=int, default=a.DEFAULT_AGENT_METRICS_PORT,
                   help="port of /metrics and /healthz (default %(default)s; 0: a free one)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics (default %(default)s)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument("--keep-limits-on-exit", action="store_true",
                   help="leave the GPUs' limits as they are when stopped (default: reset them to their defaults)")
    p.add_argument("--once", action="store_true",
                   help="run one cycle, print the metrics and exit (limits are not reset)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run_node_agent)


def run_node_agent(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or SIGINT; 0 on a clean stop, 1 when it cannot start."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = args.node or os.environ.get(a.ENV_NODE_NAME)
    if not node:
        print(f"etj node-agent: give --node or set {a.ENV_NODE_NAME} (the downward API's spec.nodeName)",
              file=sys.stderr)
        return 1
    if args.backend == "simulated" and not args.simulated_state_dir:
        print("etj node-agent: --backend simulated needs --simulated-state-dir", file=sys.stderr)
        return 1
    try:
        from etj_operator.nodeagent.agent import AgentSettings
        from etj_operator.nodeagent.gpus import GpuBackend, GpuError, NvmlBackend, SimulatedBackend
        from etj_operator.nodeagent.podresources import PodResourcesClient
    except ImportError as e:
        print(f"etj node-agent: {e} (pip install 'efficient-training-operator[operator]')", file=sys.stderr)
        return 1
    backend: GpuBackend
    try:
        if args.backend == "simulated":
            backend = SimulatedBackend(Path(args.simulated_state_dir), node, count=args.simulated_gpus)
            logger.info("simulated GPUs: %s", backend.path)
        else:
            backend = NvmlBackend()
    except GpuError as e:
        print(f"etj node-agent: {e}", file=sys.stderr)
        return 1
    settings = AgentSettings(
        node=node,
        interval_seconds=args.interval,
        grace_seconds=args.grace,
        resources=tuple(args.resource or (a.RESOURCE_NVIDIA_GPU,)),
        reset_on_exit=not args.keep_limits_on_exit,
    )
    allocations = PodResourcesClient(args.pod_resources_socket, args.pod_resources_timeout)
    try:
        return asyncio.run(_main(settings, backend, allocations, args))
    finally:
        backend.close()


async def _main(settings: Any, backend: Any, allocations: Any, args: argparse.Namespace) -> int:
    from etj_operator.kubeapi import KubeApi, load_connection
    from etj_operator.nodeagent.agent import NodeAgent
    from etj_operator.nodeagent.kube import KubeClusterReader
    from etj_operator.nodeagent.metrics import MetricsServer

    api = KubeApi(load_connection(args.kubeconfig), max_connections=4, timeout_seconds=10.0)
    agent = NodeAgent(settings, backend, allocations, KubeClusterReader(api))
    try:
        if args.once:
            await agent.cycle()
            sys.stdout.write(agent.metrics_text)
            return 0
        server = MetricsServer(lambda: agent.metrics_text, agent.healthy, args.metrics_port, args.metrics_host)
        server.start()
        logger.info("metrics on http://%s:%d/metrics", args.metrics_host, server.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await agent.run(stop)
        finally:
            server.stop()
        return 0
    finally:
        await api.aclose()
