"""Job manifests for tests (a plain module, imported by tests that need a job body)."""

from __future__ import annotations

import copy
from typing import Any


def job_manifest(name: str = "digits", namespace: str = "default", **spec_overrides: Any) -> dict[str, Any]:
    """A minimal valid EfficientTrainingJob; keyword arguments replace top-level spec fields."""
    spec: dict[str, Any] = {
        "replicas": 2,
        "nprocPerNode": 1,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "trainer",
                        "image": "example.org/etj-workload:latest",
                        "command": ["torchrun", "-m", "etj_workload", "train", "--model", "digits-mlp"],
                        "env": [{"name": "USER_VAR", "value": "kept"}],
                    }
                ]
            }
        },
    }
    spec.update(copy.deepcopy(spec_overrides))
    return {
        "apiVersion": "efficienttraining.dev/v1alpha1",
        "kind": "EfficientTrainingJob",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }
