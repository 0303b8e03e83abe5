"""The real operator as a child process, for tests that kill it hard (SIGKILL) and start it again.

Not a test module. :class:`OperatorProcess` runs ``python -m etj_operator operator`` with the environment
the test gives (KUBECONFIG of an emulator, ETJ_* settings), waits until kopf's liveness endpoint answers,
and can be stopped gracefully (SIGTERM) or killed (SIGKILL, no cleanup of any kind: what a node failure or
an OOM kill does to the operator's pod). It never leaves a process behind: ``kill``/``terminate`` reap the
child, an atexit hook kills leftovers, and the child gets SIGKILL when the thread that started it dies
(PR_SET_PDEATHSIG; start it from the test's main thread).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_LIVE_LOCK = threading.Lock()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def live_processes() -> list[int]:
    """PIDs of operator processes this module started that are still running."""
    with _LIVE_LOCK:
        return [pid for pid, proc in _LIVE.items() if proc.poll() is None]


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class OperatorProcess:
    """One run of the operator in a child process (start it again with a new instance)."""

    def __init__(self, env: Mapping[str, str], log_dir: Path | None = None) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.liveness_port = _free_port()
        directory = log_dir or Path(tempfile.mkdtemp(prefix="etj-operator-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / f"operator-{self.liveness_port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_seconds: float = 60.0) -> OperatorProcess:
        """Start the child and wait until its liveness endpoint answers 200 (kopf is watching)."""
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "etj_operator", "operator", "--liveness", url],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # sets PR_SET_PDEATHSIG only
            )
        with _LIVE_LOCK:
            _LIVE[self._proc.pid] = self._proc
        deadline = time.monotonic() + timeout_seconds
        while True:
            if self._proc.poll() is not None:
                self._reap()
                raise RuntimeError(f"the operator exited during startup; log: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"the operator was not live within {timeout_seconds} s; log: {self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, mid-request if it was in one; then reaped."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGKILL)
        self._reap()

    def terminate(self, grace_seconds: float = 20.0) -> None:
        """SIGTERM (kopf stops its handlers cleanly), SIGKILL after the grace period; then reaped."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            try:
                self._proc.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap()

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout=10)
        with _LIVE_LOCK:
            _LIVE.pop(proc.pid, None)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.terminate()
