"""The ``etj`` command: run the operator, validate manifests, run the demo."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etj_operator import contract
from etj_operator.models import InvalidSpecError, parse_spec


def _operator(args: argparse.Namespace) -> int:
    from etj_operator.runner import run_operator

    run_operator(args.namespace or (), args.liveness, verbose=args.verbose)
    return 0


def _validate(args: argparse.Namespace) -> int:
    """Check job manifests offline (e.g. in a GitOps pipeline) with the operator's own parser."""
    import yaml

    bad = 0
    seen = 0
    for file in args.files:
        try:
            documents = list(yaml.safe_load_all(Path(file).read_text()))
        except (OSError, yaml.YAMLError) as e:
            print(f"{file}: cannot read: {e}", file=sys.stderr)
            bad += 1
            continue
        for doc in documents:
            if not isinstance(doc, dict) or doc.get("kind") != contract.KIND:
                continue
            seen += 1
            name = (doc.get("metadata") or {}).get("name", "?")
            try:
                parse_spec(doc.get("spec"), name)
            except InvalidSpecError as e:
                bad += 1
                for problem in e.problems:
                    print(f"{file}: {name}: {problem}")
                continue
            print(f"{file}: {name}: ok")
    if seen == 0 and bad == 0:
        print(f"no {contract.KIND} found in {', '.join(args.files)}", file=sys.stderr)
        return 1
    return 1 if bad else 0


def _demo(args: argparse.Namespace) -> int:
    from etj_operator.sandbox.demo import run_demo

    return run_demo(Path(args.manifest) if args.manifest else None)


def _sandbox(args: argparse.Namespace) -> int:
    from etj_operator.sandbox import sandbox

    state_dir = Path(args.state_dir)
    if args.action == "up":
        options = sandbox.SandboxOptions(state_dir=state_dir, host=args.host, port=args.port,
                                         max_grace_seconds=args.grace)
        return sandbox.up(options)
    if args.action == "down":
        return sandbox.down(state_dir)
    if args.action == "status":
        return sandbox.status(state_dir)
    return sandbox.logs(state_dir, args.pod, args.namespace)


def _add_sandbox_parser(sub: Any) -> None:
    """``etj sandbox up|down|status|logs``: the local sandbox (API emulator, process kubelet, operator)."""
    from etj_operator.sandbox.sandbox import DEFAULT_PORT, DEFAULT_STATE_DIR

    sb = sub.add_parser("sandbox", help="run the operator and its jobs on this machine, without a cluster")
    actions = sb.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="state directory (default %(default)s)")
    sb_up = actions.add_parser("up", parents=[common], help="start the sandbox in the foreground (Ctrl-C stops it)")
    sb_up.add_argument("--host", default="127.0.0.1")
    sb_up.add_argument("--port", type=int, default=DEFAULT_PORT, help="API port (0: a free one; default %(default)s)")
    sb_up.add_argument("--grace", type=float, default=30.0, help="cap of pods' termination grace period (s)")
    actions.add_parser("down", parents=[common], help="stop the sandbox of the state directory")
    actions.add_parser("status", parents=[common], help="show whether a sandbox runs, and its pods' processes")
    sb_logs = actions.add_parser("logs", parents=[common], help="print a pod's log")
    sb_logs.add_argument("pod")
    sb_logs.add_argument("-n", "--namespace", default=None)
    sb.set_defaults(func=_sandbox)


def _report(args: argparse.Namespace) -> int:
    from etj_operator.report import run_report_command

    return run_report_command(args.job, args.namespace, args.out, args.kubeconfig, args.from_file)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``etj``."""
    parser = argparse.ArgumentParser(prog="etj", description="EfficientTrainingJob operator and tools")
    sub = parser.add_subparsers(dest="command", required=True)

    op = sub.add_parser("operator", help="run the operator (in a cluster: the container's entry point)")
    op.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable)")
    op.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint URL")
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=_operator)

    val = sub.add_parser("validate", help="check EfficientTrainingJob manifests offline")
    val.add_argument("files", nargs="+")
    val.set_defaults(func=_validate)

    demo = sub.add_parser("demo", help="run the example job end to end in the sandbox (no cluster, no GPU)")
    demo.add_argument("--manifest", help="job manifest (default: workloads/examples/digits-ddp.yaml)")
    demo.set_defaults(func=_demo)

    rep = sub.add_parser("report", help="write a job's energy report (<job>-report.json and <job>-report.png)")
    rep.add_argument("job", help="EfficientTrainingJob name")
    rep.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig context's)")
    rep.add_argument("--out", default=".", help="output directory (default: .)")
    rep.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    rep.add_argument("-f", "--file", dest="from_file", default=None, help="read the job from a saved manifest instead")
    rep.set_defaults(func=_report)

    _add_sandbox_parser(sub)

    from etj_operator.nodeagent.command import add_node_agent_parser

    add_node_agent_parser(sub)  # `etj node-agent`: the GPU node agent (docs/node-agent.md)
    return parser


#: The modules of the ``operator`` extra (pyproject.toml): a core install without them has no ``etj``.
OPERATOR_LIBRARIES = ("kopf", "aiohttp", "kubernetes", "prometheus_api_client", "prometheus_client", "yaml")
OPERATOR_EXTRA_HINT = "pip install 'efficient-training-operator[operator]'"


def missing_operator_libraries() -> list[str]:
    """The operator's libraries that cannot be imported here (looked up, not imported)."""
    return [
        name
        for name in OPERATOR_LIBRARIES
        if (sys.modules[name] is None if name in sys.modules else importlib.util.find_spec(name) is None)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``etj`` command."""
    if missing := missing_operator_libraries():
        print(f"etj: the operator's libraries are not installed ({', '.join(missing)}): {OPERATOR_EXTRA_HINT}",
              file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
