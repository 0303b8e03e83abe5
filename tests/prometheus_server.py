"""A real Prometheus server for tests (the Debian ``prometheus`` binary), scraping test exporters.

Not a test module. :class:`PrometheusServer` writes a config with one scrape job per :class:`ScrapeJob`
(scrape_interval 1 s by default), starts ``prometheus`` on 127.0.0.1 with a free port, a temporary
storage directory and ``--web.enable-lifecycle``, and waits until it is ready (and, with
``wait_up=True``, until every target has been scraped successfully). It can be stopped and started again
on the same port and storage (an outage), and never leaves a process behind: stop() terminates then
kills and reaps the process, a finalizer and an atexit hook do the same if a test forgets, and on Linux
the child gets SIGKILL when the thread that started it dies (PR_SET_PDEATHSIG; start it from the test's
main thread, not from a short-lived worker thread).

``honor_labels=False`` with ``target_labels={"pod": ..., "namespace": ...}`` reproduces what a
ServiceMonitor does in a cluster: the exporter's own pod/namespace labels then arrive in Prometheus as
``exported_pod``/``exported_namespace``.

Tests skip cleanly when the binary is absent (``make test`` sets ETJ_REQUIRE_SYSTEM_TOOLS, which turns the
skip into a failure, so no run of ``make test`` passes without them): use :func:`require_prometheus` (or the
``prometheus_binary`` argument). Usage::

    with DcgmExporter() as exporter, PrometheusServer([ScrapeJob("dcgm", [exporter.address])]) as prom:
        prom.wait_for_series('DCGM_FI_DEV_POWER_USAGE{pod="w-0"}', count=1)
        telemetry = PrometheusTelemetry(prom.url)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

__all__ = ["PrometheusServer", "ScrapeJob", "find_prometheus", "free_port", "live_processes", "require_prometheus"]

#: Processes started by this module and not yet reaped (pid -> Popen), for leak checks.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_LIVE_LOCK = threading.Lock()


def find_prometheus() -> str | None:
    """Path of the ``prometheus`` binary ($ETJ_PROMETHEUS_BINARY, PATH, /usr/bin), or None.

    The sandbox's rule (:func:`etj_operator.sandbox.prometheus.find_prometheus`): tests and sandbox find the
    same binary.
    """
    from etj_operator.sandbox.prometheus import find_prometheus as find

    return find()


def require_prometheus() -> str:
    """The binary's path, or skip the calling test with the reason."""
    import pytest

    binary = find_prometheus()
    if binary is None:
        reason = "the prometheus binary is not installed (apt-get install -y prometheus)"
        if os.environ.get("ETJ_REQUIRE_SYSTEM_TOOLS"):
            pytest.fail(f"{reason}; make test requires it (ETJ_ALLOW_SKIPS=1 skips instead)")
        pytest.skip(reason)
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def live_processes() -> list[int]:
    """PIDs of Prometheus processes this module started that are still running."""
    with _LIVE_LOCK:
        return [pid for pid, proc in _LIVE.items() if proc.poll() is None]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _terminate(proc: subprocess.Popen[bytes], grace_seconds: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL, reap: after this the process is gone."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
    with _LIVE_LOCK:
        _LIVE.pop(proc.pid, None)


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
    for proc in procs:
        _terminate(proc, grace_seconds=2.0)


@dataclass
class ScrapeJob:
    """One scrape job of the generated config."""

    name: str
    targets: Sequence[str]
    honor_labels: bool = True
    #: Labels added to the targets (with honor_labels=False, clashing exporter labels become exported_*).
    target_labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"
    #: Default: the server's scrape interval.
    scrape_interval_seconds: float | None = None
    scrape_timeout_seconds: float | None = None


class PrometheusServer:
    """A Prometheus process on 127.0.0.1 for one test (or module)."""

    def __init__(
        self,
        jobs: Sequence[ScrapeJob],
        *,
        scrape_interval_seconds: float = 1.0,
        binary: str | None = None,
        port: int | None = None,
        storage_dir: Path | None = None,
        log_level: str = "warn",
    ) -> None:
        self.jobs = list(jobs)
        self.scrape_interval_seconds = scrape_interval_seconds
        self.binary = binary or require_prometheus()
        self.port = port or free_port()
        self._own_dir = Path(tempfile.mkdtemp(prefix="etj-prometheus-"))
        self.storage_dir = storage_dir or self._own_dir / "data"
        self.config_path = self._own_dir / "prometheus.yml"
        self.log_path = self._own_dir / "prometheus.log"
        self.log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._write_config()
        # Last-resort cleanup when the object is collected without stop()/close().
        self._finalizer = weakref.finalize(self, PrometheusServer._cleanup, self._own_dir, [None])

    # --- config -----------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        def seconds(value: float) -> str:
            return f"{round(value * 1000)}ms"

        scrape_configs = []
        for job in self.jobs:
            interval = job.scrape_interval_seconds or self.scrape_interval_seconds
            timeout = job.scrape_timeout_seconds or interval
            scrape_configs.append(
                {
                    "job_name": job.name,
                    "honor_labels": job.honor_labels,
                    "metrics_path": job.metrics_path,
                    "scrape_interval": seconds(interval),
                    "scrape_timeout": seconds(min(timeout, interval)),
                    "static_configs": [{"targets": list(job.targets), "labels": dict(job.target_labels)}],
                }
            )
        config = {
            "global": {
                "scrape_interval": seconds(self.scrape_interval_seconds),
                "evaluation_interval": seconds(self.scrape_interval_seconds),
            },
            "scrape_configs": scrape_configs,
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # --- lifecycle -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running process, or None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.pid is not None

    def start(self, *, wait_up: bool = True, timeout_seconds: float = 30.0) -> PrometheusServer:
        """Start the process (same port and storage as before) and wait until ready (and targets up)."""
        if self.running:
            return self
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=2h",
            f"--log.level={self.log_level}",
        ]
        self._log_file = self.log_path.open("ab")
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # sets PR_SET_PDEATHSIG only
        )
        self._proc = proc
        with _LIVE_LOCK:
            _LIVE[proc.pid] = proc
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, PrometheusServer._cleanup, self._own_dir, [proc])
        try:
            self.wait_ready(timeout_seconds)
            if wait_up:
                self.wait_targets_up(timeout_seconds)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate (then kill) the process and reap it; storage is kept for a restart."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, *, wait_up: bool = True, timeout_seconds: float = 30.0) -> PrometheusServer:
        """stop() then start() on the same port and storage."""
        self.stop()
        return self.start(wait_up=wait_up, timeout_seconds=timeout_seconds)

    def close(self) -> None:
        """Stop and delete the temporary directory."""
        self.stop()
        self._finalizer()

    @staticmethod
    def _cleanup(directory: Path, procs: list[subprocess.Popen[bytes] | None]) -> None:
        for proc in procs:
            if proc is not None:
                _terminate(proc, grace_seconds=2.0)
        shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- waiting and reading -------------------------------------------------------------------------
    def log_tail(self, characters: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def _get(self, path: str, params: Mapping[str, str] | None = None, timeout_seconds: float = 5.0) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=timeout_seconds) as response:
            body = response.read()
        return json.loads(body) if path.startswith("/api/") else body.decode()

    def _wait(self, ready: Callable[[], bool], timeout_seconds: float, what: str) -> None:
        deadline = time.monotonic() + timeout_seconds
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                if ready():
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"prometheus: timed out after {timeout_seconds} s waiting for {what}\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def wait_ready(self, timeout_seconds: float = 30.0) -> None:
        """Wait until /-/ready answers 200."""
        self._wait(lambda: bool(self._get("/-/ready")), timeout_seconds, "/-/ready")

    def wait_targets_up(self, timeout_seconds: float = 30.0) -> None:
        """Wait until every configured target has been scraped successfully at least once."""
        expected = sum(len(job.targets) for job in self.jobs)

        def up() -> bool:
            active = self._get("/api/v1/targets", {"state": "active"})["data"]["activeTargets"]
            return sum(1 for t in active if t.get("health") == "up") >= expected

        self._wait(up, timeout_seconds, f"{expected} targets up")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list (raises on HTTP errors)."""
        answer = self._get("/api/v1/query", {"query": promql})
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for_series(self, promql: str, count: int = 1, timeout_seconds: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``promql`` returns at least ``count`` series; returns them."""
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            nonlocal found
            found = self.query(promql)
            return len(found) >= count

        self._wait(enough, timeout_seconds, f"{count} series of {promql}")
        return found

    def wait_for_scrapes(self, count: int = 2, timeout_seconds: float = 30.0) -> None:
        """Wait until every target has been scraped ``count`` more times (fresh data is in)."""
        targets = sum(len(job.targets) for job in self.jobs)

        def scrapes() -> float:
            rows = self.query("sum(count_over_time(up[1h]))")
            return float(rows[0]["value"][1]) if rows else 0.0

        start = scrapes()
        self._wait(lambda: scrapes() >= start + count * targets, timeout_seconds, f"{count} more scrapes")

    def query_api_requests(self) -> float:
        """How many /api/v1/query requests this server has answered (from its own /metrics)."""
        text = self._get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total
