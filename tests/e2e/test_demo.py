"""`make demo` as a user runs it: the operator makes the example job's pods and service."""

import io

from rich.console import Console

from etj_operator.sandbox.demo import run_demo


def test_demo_shows_pods_env_and_service(monkeypatch):
    monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("ETJ_METRICS_PORT", "0")
    out = io.StringIO()
    assert run_demo(console=Console(file=out, width=200)) == 0
    text = out.getvalue()
    assert "digits-ddp-worker-0" in text and "digits-ddp-worker-1" in text
    assert "MASTER_ADDR" in text and "digits-ddp-worker-0.digits-ddp.default.svc" in text
    assert "ETJ_COMPRESSION_PLAN" in text
    assert "clusterIP=None" in text
    assert "phase=Pending" in text and "Created=True" in text
