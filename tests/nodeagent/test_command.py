"""``etj node-agent``: its parser, its refusals, and one cycle end to end (kubelet socket, API, simulated GPUs)."""

from __future__ import annotations

import pytest
from agentkit import NODE, FakeApiServer, holds, job, pod

from etj_contract import agent as a
from etj_contract import names as n
from etj_operator import cli
from etj_operator.nodeagent.gpus import SimulatedBackend, simulated_uuid
from etj_operator.nodeagent.podresources import PodResourcesServer


def test_the_parser_has_node_agent_with_its_defaults(monkeypatch):
    args = cli.build_parser().parse_args(["node-agent"])
    assert args.backend == "nvml"
    assert args.pod_resources_socket == a.DEFAULT_POD_RESOURCES_SOCKET
    assert args.metrics_port == a.DEFAULT_AGENT_METRICS_PORT
    assert (args.interval, args.grace, args.keep_limits_on_exit, args.once) == (10.0, 120.0, False, False)


def test_it_needs_a_node_and_a_state_dir_for_simulated_gpus(monkeypatch, capsys):
    monkeypatch.delenv(a.ENV_NODE_NAME, raising=False)
    assert cli.main(["node-agent", "--backend", "simulated", "--simulated-state-dir", "/tmp/x"]) == 1
    assert "--node" in capsys.readouterr().err
    assert cli.main(["node-agent", "--node", NODE, "--backend", "simulated"]) == 1
    assert "--simulated-state-dir" in capsys.readouterr().err


def test_one_cycle_end_to_end(tmp_path, monkeypatch, capsys, cluster):
    owner = cluster.add_job(job("resnet", "uid-resnet", limit=300, cap=260))
    cluster.add_pod(pod("resnet-worker-0", "pod-0", owner))
    gpu0 = simulated_uuid(NODE, 0)
    node_dir = tmp_path / "node"
    socket = tmp_path / "kubelet.sock"
    with FakeApiServer(cluster) as api, PodResourcesServer(socket, [holds("resnet-worker-0", gpu0)]):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
            f"clusters: [{{name: t, cluster: {{server: '{api.url}'}}}}]\n"
            "users: [{name: t, user: {token: agent-token}}]\n"
            "contexts: [{name: t, context: {cluster: t, user: t}}]\n"
        )
        monkeypatch.setenv(a.ENV_NODE_NAME, NODE)
        code = cli.main(["node-agent", "--once", "--backend", "simulated", "--simulated-state-dir", str(node_dir),
                         "--simulated-gpus", "2", "--pod-resources-socket", str(socket),
                         "--kubeconfig", str(kubeconfig)])
    assert code == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(n.METRIC_POWER_MGMT_LIMIT + "{") and gpu0 in x)
    assert 'pod="resnet-worker-0"' in line and 'source="simulated"' in line and line.endswith(" 260.000000")
    gpus = SimulatedBackend(node_dir, NODE)
    assert [gpus.read_limit(d).limit_mw for d in gpus.inventory().devices] == [260_000, 700_000]


def test_help_describes_the_agent(capsys):
    with pytest.raises(SystemExit):
        cli.main(["node-agent", "--help"])
    assert "PodResources" in capsys.readouterr().out
