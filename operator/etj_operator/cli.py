"""The ``etj`` command: run the operator, validate manifests, run the demo."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etj_operator import __version__


def _operator(args: argparse.Namespace) -> int:
    from etj_operator.runner import run_operator

    run_operator(args.namespace or (), args.liveness, verbose=args.verbose)
    return 0


def _validate(args: argparse.Namespace) -> int:
    """Check manifests offline (e.g. in a GitOps pipeline) as the API server and the operator would."""
    from etj_operator import validate

    if missing := missing_libraries(validate.VALIDATE_LIBRARIES):
        print(f"etj validate: the emulator's libraries are not installed ({', '.join(missing)}): "
              f"{extra_hint('validate')}", file=sys.stderr)
        return validate.EXIT_USAGE
    try:
        validator = validate.Validator.from_path(args.crds)
    except validate.ValidateError as e:
        print(f"etj validate: {e}", file=sys.stderr)
        return validate.EXIT_USAGE
    report = validate.validate_sources(validator, args.files)
    if args.output == "json":
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
    else:
        report.write_text(sys.stdout, sys.stderr)
    return report.exit_code()


#: The modules the sandbox runs on (the ``sandbox`` extra) and those its pods run the harness with (``workload``).
SANDBOX_LIBRARIES = ("kmock", "jsonschema", "jsonpatch", "cel_expr_python", "rich")
WORKLOAD_LIBRARIES = ("torch", "torchao", "sklearn", "numpy")


def _needs(command: str, extras: dict[str, Sequence[str]]) -> bool:
    """Whether the extras' libraries are installed; if not, one line says which extra to install."""
    missing = {extra: names for extra, modules in extras.items() if (names := missing_libraries(modules))}
    if not missing:
        return True
    libraries = ", ".join(name for names in missing.values() for name in names)
    print(f"etj {command}: needs the {' and '.join(missing)} extra{'s' if len(missing) > 1 else ''} ({libraries}"
          f" not installed): {extra_hint(*extras)}", file=sys.stderr)
    return False


def _demo(args: argparse.Namespace) -> int:
    if not _needs("demo", {"sandbox": SANDBOX_LIBRARIES, "workload": WORKLOAD_LIBRARIES}):
        return 1
    from etj_operator.sandbox.demo import run_demo

    return run_demo(Path(args.manifest) if args.manifest else None)


def _sandbox(args: argparse.Namespace) -> int:
    if args.action == "up" and not _needs("sandbox", {"sandbox": SANDBOX_LIBRARIES}):
        return 1
    from etj_operator.sandbox import sandbox

    state_dir = Path(args.state_dir)
    if args.action == "up":
        options = sandbox.SandboxOptions(state_dir=state_dir, host=args.host, port=args.port,
                                         max_grace_seconds=args.grace, kueue=args.kueue)
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
    sb_up.add_argument("--kueue", action="store_true",
                       help="queue jobs through Kueue's Workloads: the operator as Kueue's integration (ETJ_KUEUE)"
                            " and a stand-in for Kueue's admission (not Kueue) with one flavor and the node's GPUs"
                            " as quota (docs/kueue.md)")
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
    parser.add_argument("--version", action="version", version=f"etj {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    op = sub.add_parser("operator", help="run the operator (in a cluster: the container's entry point)")
    op.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable)")
    op.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint URL")
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=_operator)

    val = sub.add_parser(
        "validate", help="check manifests offline as the API server (schema, CEL) and the operator would",
        description="Check EfficientTrainingJob manifests offline with the API server's decoding, schema and CEL"
        " rules (the API emulator's own code) and the operator's parser; every problem at once, with its field."
        " Documents of other API groups are skipped. Exit status: 0 every job valid; 1 a document invalid, or"
        " none of the API group found; 2 a usage or I/O error (docs/gitops.md).")
    val.add_argument("files", nargs="+", metavar="FILE",
                     help="a manifest (multi-document YAML or JSON), a folder of them (searched recursively for"
                     " *.yaml, *.yml, *.json), or - for standard input")
    val.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format (default: text)")
    val.add_argument("--crds", default=None, metavar="PATH",
                     help="a CRD file or a folder of them to validate against (default: the CRDs of this release)")
    val.set_defaults(func=_validate)

    demo = sub.add_parser("demo", help="run the example job end to end in the sandbox (no cluster, no GPU)")
    demo.add_argument("--manifest", help="job manifest (default: the packaged example digits-ddp.yaml)")
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
OPERATOR_LIBRARIES = ("kopf", "aiohttp", "kubernetes", "requests", "prometheus_client", "yaml")
OPERATOR_EXTRA_HINT = "pip install 'efficient-training-operator[operator]'"
#: Commands that need more than the operator extra, and the extras to name (each includes ``operator``).
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {"validate": ("validate",), "demo": ("sandbox", "workload"),
                                               "sandbox": ("sandbox",)}


def extra_hint(*extras: str) -> str:
    """The pip command that installs the project's ``extras``."""
    return f"pip install 'efficient-training-operator[{','.join(extras)}]'"


def missing_libraries(names: Sequence[str]) -> list[str]:
    """Those of ``names`` (modules) that cannot be imported here (looked up, not imported)."""
    missing = []
    for name in names:
        if name in sys.modules:
            absent = sys.modules[name] is None
        else:
            try:
                absent = importlib.util.find_spec(name) is None
            except ModuleNotFoundError:  # a dotted name whose package is missing
                absent = True
        if absent:
            missing.append(name)
    return missing


def missing_operator_libraries() -> list[str]:
    """The operator's libraries that cannot be imported here (looked up, not imported)."""
    return missing_libraries(OPERATOR_LIBRARIES)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``etj`` command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--version"]:  # works in every install, with or without the operator's libraries
        print(f"etj {__version__}")
        return 0
    if missing := missing_operator_libraries():
        command = COMMAND_EXTRAS.get(args_list[0]) if args_list else None
        hint = extra_hint(*command) if command else OPERATOR_EXTRA_HINT
        print(f"etj: the operator's libraries are not installed ({', '.join(missing)}): {hint}", file=sys.stderr)
        return 1
    args = build_parser().parse_args(args_list)
    code: int = args.func(args)
    return code
