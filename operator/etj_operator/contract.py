"""Names shared by the operator and the training harness: a re-export of :mod:`etj_contract.names`.

The definitions live in the contract package (``contract/etj_contract``), which both ``etj_operator`` and
``etj_workload`` depend on and which depends on neither. This module keeps the operator's
``from etj_operator import contract as c`` imports working; new code may import ``etj_contract`` directly.
"""

from __future__ import annotations

from etj_contract import names
from etj_contract.names import *  # noqa: F403

__all__: list[str] = []
__all__ += names.__all__
