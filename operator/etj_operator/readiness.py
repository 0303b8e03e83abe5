"""The readiness endpoint (``GET /readyz``): 200 once this process can take over, 503 before.

A replica is ready when its informers have listed everything (the leader, and a standby that could lead
within a lease duration without a cold start). Kubernetes' readiness gates a rolling update: the old
replica is stopped (and releases the Lease) only once the new one is ready. Kopf's own ``/healthz`` stays
the liveness probe.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

__all__ = ["serve_readiness"]


async def serve_readiness(port: int, ready: Callable[[], bool], host: str = "0.0.0.0") -> web.AppRunner | None:
    """Serve ``/readyz`` on ``host:port`` (None and nothing served when ``port`` is 0)."""
    if not port:
        return None

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.Response(
            status=200 if ok else 503,
            text=json.dumps({"ready": ok}),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
