"""The operator's own container: non-root, read-only root filesystem, no capability, no privilege escalation,
in every documented values profile of the chart (rendered with the real Helm engine, tests/chart helpers);
the image's USER is non-root too, so the container is non-root even where a values file drops the
pod securityContext."""

from __future__ import annotations

import re

import pytest
from chart_support import PROFILES, ROOT, find, render


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_operator_runs_non_root_with_a_read_only_filesystem(profile):
    deployment = find(render(PROFILES[profile]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 1) != 0
    assert not any(pod.get(f) for f in ("hostNetwork", "hostPID", "hostIPC"))
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security.get("privileged", False) is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security.get("runAsUser", 1) != 0
    # the only writable paths are emptyDirs (kopf and Python need a /tmp); nothing from the host
    for volume in pod.get("volumes") or []:
        assert set(volume) == {"name", "emptyDir"}, volume


def test_the_image_user_is_not_root():
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    for user in users:
        assert user.split(":")[0] not in ("0", "root"), user
