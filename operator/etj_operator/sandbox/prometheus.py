"""The sandbox's Prometheus: the real ``prometheus`` binary, scraping the nodes' simulated DCGM exporters.

On a cluster, Prometheus scrapes dcgm-exporter on every GPU node and the operator asks it one PromQL query per
metric per cycle (docs/telemetry.md). The sandbox does the same with the Debian ``prometheus`` binary when it
is installed (:func:`find_prometheus`: ``$ETJ_PROMETHEUS_BINARY``, then ``PATH``, then ``/usr/bin``): one
scrape job ``dcgm-exporter`` (``honor_labels: true``, so the exporter's ``pod``/``namespace`` labels are kept,
as dcgm-exporter's ServiceMonitor with honorLabels does) over the nodes' exporters, every second, on a free
port of 127.0.0.1, storage and log under ``<state>/prometheus/``. The sandbox then sets the operator's
``ETJ_PROMETHEUS_URL`` to it. Without the binary the sandbox runs without it and says so: jobs with
``telemetry.source: Direct`` are measured as before, jobs with ``Prometheus`` get no readings.

Like the node agent, the process carries the sandbox's state directory in its environment (``ETJ_SANDBOX_POD``
= :data:`PROMETHEUS_TAG`), so ``etj sandbox down`` or a later ``up`` stops it if its sandbox crashed.
tests/prometheus_server.py (the tests' own servers) finds the binary with :func:`find_prometheus` too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from etj_operator.sandbox.kubelet import ENV_POD_TAG, ENV_STATE_TAG, _free_port

__all__ = ["INSTALL_HINT", "PROMETHEUS_TAG", "SandboxPrometheus", "find_prometheus"]

log = logging.getLogger(__name__)

#: ``ETJ_SANDBOX_POD`` of the sandbox's Prometheus process.
PROMETHEUS_TAG: Final = "prometheus"
#: What to do when the binary is missing.
INSTALL_HINT: Final = "apt-get install -y prometheus, or set ETJ_PROMETHEUS_BINARY"


def find_prometheus() -> str | None:
    """Path of the ``prometheus`` binary ($ETJ_PROMETHEUS_BINARY, PATH, /usr/bin), or None."""
    explicit = os.environ.get("ETJ_PROMETHEUS_BINARY")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)


def _duration(seconds: float) -> str:
    return f"{max(round(seconds * 1000), 1)}ms"


@dataclass
class SandboxPrometheus:
    """A Prometheus process for one sandbox: :meth:`start` (waits until ready), :meth:`stop`."""

    #: The sandbox's state directory (the process tag; ``prometheus/`` under it holds config, data and log).
    sandbox_state_dir: Path
    #: ``host:port`` of each node's DCGM exporter.
    targets: Sequence[str]
    binary: str
    scrape_interval_seconds: float = 1.0
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def directory(self) -> Path:
        """``<state>/prometheus``: its config, its TSDB (``data/``) and its log."""
        return Path(self.sandbox_state_dir) / "prometheus"

    @property
    def config_path(self) -> Path:
        """The generated ``prometheus.yml``."""
        return self.directory / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        """The server's log."""
        return self.directory / "prometheus.log"

    @property
    def url(self) -> str:
        """Its base URL (the operator's ``ETJ_PROMETHEUS_URL``)."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, object]:
        """The scrape configuration: one job over the nodes' exporters, every ``scrape_interval_seconds``."""
        interval = _duration(self.scrape_interval_seconds)
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{
                "job_name": "dcgm-exporter",
                "honor_labels": True,
                "metrics_path": "/metrics",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": list(self.targets)}],
            }],
        }

    def argv(self) -> list[str]:
        """The command line."""
        return [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=2h",
                "--log.level=warn"]

    def start(self, timeout_seconds: float = 30.0) -> SandboxPrometheus:
        """Write the config, start the process and wait until ``/-/ready`` answers; RuntimeError if it does not."""
        import yaml

        if not self.port:
            self.port = _free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("# written by the etj sandbox: scrape the nodes' simulated DCGM exporters\n"
                                    + yaml.safe_dump(self.config(), sort_keys=False))
        env = {**os.environ, ENV_STATE_TAG: str(Path(self.sandbox_state_dir).resolve()), ENV_POD_TAG: PROMETHEUS_TAG}
        self._log = self.log_path.open("ab")
        self._log.write(f"# etj sandbox: Prometheus: {' '.join(self.argv())}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.argv(), env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.wait_ready(timeout_seconds)
        except BaseException:
            self.stop()
            raise
        log.info("Prometheus: pid %d on %s scraping %s", self.proc.pid, self.url, ", ".join(self.targets))
        return self

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, timeout_seconds: float = 30.0) -> None:
        """Return once ``/-/ready`` answers 200 (RuntimeError with its log if it exits or takes too long)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"prometheus exited ({code}):\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError), \
                    urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"prometheus was not ready in {timeout_seconds:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """SIGTERM, SIGKILL after the timeout, reap."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
