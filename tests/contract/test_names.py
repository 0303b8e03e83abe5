"""etj_contract.names: one definition of every shared name, importable from both places with one value."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import etj_contract
from etj_contract import names
from etj_operator import contract as operator_contract


def _public_constants(module: object) -> set[str]:
    return {n for n in vars(module) if n.isupper() and not n.startswith("_")}


def test_every_name_is_declared_in_all_and_nothing_else_is() -> None:
    assert set(names.__all__) == _public_constants(names)
    assert len(names.__all__) == len(set(names.__all__))


def test_the_operator_module_re_exports_every_name_with_the_same_value() -> None:
    assert sorted(operator_contract.__all__) == sorted(names.__all__)
    assert _public_constants(operator_contract) == set(names.__all__)
    for name in names.__all__:
        assert getattr(operator_contract, name) is getattr(names, name), name


def test_the_package_re_exports_its_modules() -> None:
    for module in (etj_contract.names, etj_contract.status, etj_contract.plans):
        for name in module.__all__:
            assert getattr(etj_contract, name) is getattr(module, name), name
    assert len(etj_contract.__all__) == len(set(etj_contract.__all__))


def test_the_workload_uses_the_contract_package_itself() -> None:
    from etj_workload import config, control

    assert config.contract is etj_contract
    assert control.contract is etj_contract


def test_the_api_names_are_the_crds(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert spec["group"] == names.GROUP
    assert [v["name"] for v in spec["versions"]] == [names.VERSION]
    assert f"{names.GROUP}/{names.VERSION}" == names.API_VERSION
    assert spec["names"]["kind"] == names.KIND
    assert spec["names"]["plural"] == names.PLURAL
    assert spec["names"]["singular"] == names.SINGULAR
    assert names.SHORT_NAME in spec["names"]["shortNames"]
    assert crd["metadata"]["name"] == f"{names.PLURAL}.{names.GROUP}"


def test_the_status_keys_are_properties_of_the_crds_status(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    assert names.CONTROL in status and names.WORKLOAD in status
    control = status[names.CONTROL].get("properties")
    if control is not None:  # a schema that lists the keys lists ours
        keys = {v for n, v in vars(names).items() if n.startswith("CONTROL_")}
        assert keys <= control.keys()


def test_importing_the_contract_loads_no_other_package() -> None:
    """In a fresh interpreter: etj_contract needs nothing beyond the standard library."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import etj_contract\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = {m.split(".")[0] for m in json.loads(result.stdout)}
    assert "etj_contract" in loaded
    assert loaded - {"etj_contract"} <= set(sys.stdlib_module_names), loaded
