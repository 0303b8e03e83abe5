"""GET pods/NAME/log: the whole log, tailLines, and follow=true streaming until the pod finishes."""

from __future__ import annotations

import threading
import urllib.request

from etj_operator.sandbox.emulator import EmulatorServer


def get(server: EmulatorServer, query: str) -> str:
    token = server.kubeconfig()["users"][0]["user"]["token"]
    request = urllib.request.Request(f"{server.url}/api/v1/namespaces/default/pods/p/log?{query}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def test_log_tail_and_follow_until_the_pod_succeeds():
    log = ["one\n", "two\n"]
    read = threading.Event()
    with EmulatorServer() as server:
        def reader(namespace, name, container):
            read.set()
            return "".join(log)

        server.emulator.pod_log_reader = reader
        server.create("pods", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "trainer"}]}},
                      namespace="default")
        server.set_pod_phase("default", "p", "Running")
        assert get(server, "") == "one\ntwo\n"
        assert get(server, "tailLines=1") == "two\n"

        followed: list[str] = []
        follower = threading.Thread(target=lambda: followed.append(get(server, "follow=true")))
        read.clear()
        follower.start()
        assert read.wait(10)  # the stream has started
        log.append("three\n")
        server.set_pod_phase("default", "p", "Succeeded")
        follower.join(30)
        assert not follower.is_alive()
        assert followed == ["one\ntwo\nthree\n"]
