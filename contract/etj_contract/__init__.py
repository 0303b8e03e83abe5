"""The one contract between the operator (``etj_operator``) and the training harness (``etj_workload``).

Both sides depend on this package; it depends on neither, and imports the standard library only (checked by
``tests/unit/test_import_contract.py``). Its modules:

* :mod:`etj_contract.names`: the API group and kind, labels, annotations, env var names, status keys, metric
  names (``etj_operator.contract`` re-exports them for the operator's modules).
* :mod:`etj_contract.backoff`: the retry policy both sides use (:class:`Backoff`: exponential, jittered, capped,
  the server's Retry-After as a floor).
* :mod:`etj_contract.status`: the closed vocabularies of the status, :class:`Phase` and :class:`ConditionType`.
* :mod:`etj_contract.plans`: what the operator hands the harness through env, as typed records with
  ``to_env``/``from_env``: the power policy (:class:`PowerPolicy`, ``ETJ_POWER_POLICY``) and the compression
  plan (:class:`CompressionPlan`, ``ETJ_COMPRESSION_PLAN``), with the defaults, bounds and enumerations both
  sides apply (the CRD's: :data:`AUTO_DEFAULTS`, :data:`POWER_BOUNDS`, :data:`COMPRESSION_BOUNDS`, ...).
* :mod:`etj_contract.report`: the status sections the two sides hand each other, as typed records with
  ``from_status``/``to_status``: the workload's report (:class:`WorkloadReport`) and the operator's control
  section (:class:`ControlSection`).
* :mod:`etj_contract.sections`: the operator's own bookkeeping sections, typed the same way: energy
  (:class:`EnergySection`), policy (:class:`PolicySection`) and placement (:class:`PlacementSection`).

* :mod:`etj_contract.agent`: the node agent's names (its metrics, their labels, the kubelet's socket), shared
  by the agent and the operator that verifies it; imported as a module (``etj_contract.agent.LABEL_POD``),
  because its label names would read as Kubernetes labels among the others.

Every public name of the other modules is importable from the package itself (``etj_contract.ENV_RANK``).
"""

from __future__ import annotations

from etj_contract import agent, backoff, names, plans, report, sections, status
from etj_contract.backoff import *  # noqa: F403
from etj_contract.names import *  # noqa: F403
from etj_contract.plans import *  # noqa: F403
from etj_contract.report import *  # noqa: F403
from etj_contract.sections import *  # noqa: F403
from etj_contract.status import *  # noqa: F403

__all__ = ["agent", "backoff", "names", "plans", "report", "sections", "status"]
__all__ += backoff.__all__
__all__ += names.__all__
__all__ += plans.__all__
__all__ += report.__all__
__all__ += sections.__all__
__all__ += status.__all__
