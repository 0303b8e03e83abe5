"""The retry policy of the operator's loops: :class:`etj_contract.backoff.Backoff`, re-exported.

The policy lives in the contract package because the harness's control channel retries with it too
(docs/architecture.md, "Errors and retries"). Used here by the per-job loops (:mod:`etj_operator.supervisor`)
and the pod informer (:mod:`etj_operator.podwatch`).
"""

from __future__ import annotations

from etj_contract.backoff import Backoff

__all__ = ["Backoff"]
