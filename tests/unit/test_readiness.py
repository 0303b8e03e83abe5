"""The readiness endpoint (etj_operator.readiness): 503 until the replica can take over, then 200."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from etj_operator.readiness import serve_readiness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.asyncio
async def test_readyz_answers_503_until_ready_then_200_and_port_0_serves_nothing():
    assert await serve_readiness(0, lambda: True) is None
    state = {"ready": False}
    port = free_port()
    runner = await serve_readiness(port, lambda: state["ready"], host="127.0.0.1")
    assert runner is not None
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as answer:
                assert answer.status == 503 and (await answer.json()) == {"ready": False}
            state["ready"] = True
            async with session.get(f"http://127.0.0.1:{port}/readyz") as answer:
                assert answer.status == 200 and (await answer.json()) == {"ready": True}
            async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
                assert answer.status == 404  # only /readyz
    finally:
        await runner.cleanup()
