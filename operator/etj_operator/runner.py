"""Running the operator: in the foreground (the container's entry point) or in a thread (sandbox, tests)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

import kopf


def run_operator(
    namespaces: Sequence[str] = (),
    liveness_endpoint: str | None = None,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
    verbose: bool = False,
    quiet: bool = False,
) -> None:
    """Run the operator until stopped; watches all namespaces unless ``namespaces`` are given."""
    from etj_operator.handlers import REGISTRY

    kopf.configure(verbose=verbose, log_prefix=True)
    if quiet:  # the demo prints its own progress; keep only warnings from kopf and the HTTP server
        for name in ("kopf", "aiohttp.access", "etj_operator"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)  # "OS signals are ignored"
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            registry=REGISTRY,
            standalone=True,
            liveness_endpoint=liveness_endpoint,
            memo=kopf.Memo(namespaces=tuple(namespaces)),  # the pod informer watches the same namespaces
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    )


class OperatorThread:
    """The operator in a background thread with its own event loop; ``stop()`` ends it cleanly."""

    def __init__(
        self, namespaces: Sequence[str] = (), liveness_endpoint: str | None = None, quiet: bool = False
    ) -> None:
        self._quiet = quiet
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._namespaces = tuple(namespaces)
        self._liveness = liveness_endpoint
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="etj-operator", daemon=True)

    def _main(self) -> None:
        try:
            run_operator(self._namespaces, self._liveness, self._stop, self._ready, quiet=self._quiet)
        except BaseException as e:  # reported to the caller through .error and wait_ready()
            self.error = e
            logging.getLogger(__name__).exception("operator thread ended with an error")
            self._ready.set()

    def start(self, timeout_seconds: float = 30.0) -> OperatorThread:
        """Start the operator and wait until it watches resources."""
        self._thread.start()
        if not self._ready.wait(timeout_seconds):
            raise TimeoutError(f"the operator was not ready within {timeout_seconds} s")
        if self.error is not None:
            raise RuntimeError("the operator failed to start") from self.error
        return self

    def stop(self, timeout_seconds: float = 30.0) -> None:
        """Ask the operator to stop and wait for its thread."""
        self._stop.set()
        self._thread.join(timeout_seconds)
        if self._thread.is_alive():
            raise TimeoutError(f"the operator did not stop within {timeout_seconds} s")

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
