"""etj_contract.backoff: the one retry policy, and both sides retrying with it (no copy of the formula anywhere).

The policy's arithmetic (ceilings, jitter, cap, Retry-After floor) is tested in tests/unit/test_backoff.py; the
harness's channel following it on a fake clock in tests/workload/test_control.py.
"""

from __future__ import annotations

import dataclasses

import pytest

import etj_contract
from etj_contract import backoff
from etj_contract.backoff import Backoff
from etj_operator import backoff as operator_backoff
from etj_operator import podwatch, supervisor
from etj_workload import control


def test_the_package_exports_the_policy() -> None:
    assert backoff.__all__ == ["Backoff", "retry_after_seconds"]
    assert etj_contract.Backoff is Backoff and "Backoff" in etj_contract.__all__ and "backoff" in etj_contract.__all__


def test_both_api_clients_read_retry_after_with_the_contracts_parser() -> None:
    from etj_operator import errors
    from etj_workload import kubeclient

    assert kubeclient.retry_after_seconds is backoff.retry_after_seconds
    for value, seconds in (("3", 3.0), ("0", 0.0), ("-1", None), ("soon", None), ("", None), (None, None)):
        assert errors.parse_retry_after(value) == seconds == backoff.retry_after_seconds(value)


def test_the_operator_and_the_harness_use_the_contracts_class() -> None:
    assert operator_backoff.Backoff is Backoff
    for policy in (supervisor.TRANSIENT_BACKOFF, supervisor.PERMANENT_BACKOFF, podwatch.BACKOFF):
        assert type(policy) is Backoff
    assert not hasattr(control, "retry_delay_seconds")  # no second copy of the formula
    channel = control.ControlChannel(_NoApi(), rng=lambda: 0.25)
    try:
        # the harness's defaults are the operator's transient policy: 0.5 s doubling to 30 s, half jitter
        assert channel.backoff == supervisor.TRANSIENT_BACKOFF == Backoff(0.5, 30.0, jitter=0.5)
        assert channel.backoff.rng() == 0.25  # the injected rng draws the jitter
    finally:
        channel.close(timeout_seconds=1)


class _NoApi:
    def read_control(self) -> None:
        return None

    def patch_workload(self, workload: object) -> None:
        return None


def test_the_rng_is_not_part_of_a_policys_identity_and_a_policy_is_immutable() -> None:
    assert Backoff(1.0, 8.0, rng=lambda: 0.0) == Backoff(1.0, 8.0, rng=lambda: 0.9)
    assert Backoff(1.0, 8.0) != Backoff(1.0, 8.0, jitter=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Backoff(1.0, 8.0).cap_seconds = 1.0  # type: ignore[misc]


def test_the_retry_after_floor_applies_after_the_jitter_and_is_itself_capped() -> None:
    # full jitter with u close to 1 makes the backoff's delay tiny: the server's Retry-After is the delay
    nearly_one = 1.0 - 2**-20
    backoff_ = Backoff(1.0, 10.0, rng=lambda: nearly_one)
    assert backoff_.delay_seconds(0) == pytest.approx(2**-20)
    assert backoff_.delay_seconds(0, retry_after_seconds=2.5) == 2.5
    assert backoff_.delay_seconds(3, retry_after_seconds=11.0) == 10.0  # the cap bounds the server's ask too
    assert backoff_.delay_seconds(3, retry_after_seconds=-1.0) == pytest.approx(8.0 * 2**-20)
