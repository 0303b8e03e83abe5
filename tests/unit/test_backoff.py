"""Backoff: exponential ceilings, jitter from an injected RNG, a cap, and Retry-After as a floor (no clock).

The policy is the contract's (``etj_contract.backoff``); the operator imports it from ``etj_operator.backoff``, as
here. tests/contract/test_backoff.py checks both sides retry with this one class.
"""

from __future__ import annotations

import itertools
import random

import pytest

from etj_operator.backoff import Backoff


def test_ceilings_double_up_to_the_cap():
    backoff = Backoff(base_seconds=1.0, cap_seconds=8.0, rng=lambda: 0.0)
    assert [backoff.delay_seconds(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert Backoff(1.0, 8.0, factor=3.0, rng=lambda: 0.0).delay_seconds(1) == 3.0
    assert backoff.ceiling_seconds(10**6) == 8.0  # no float overflow after a long outage
    assert backoff.ceiling_seconds(-1) == 1.0


def test_jitter_takes_its_share_of_each_delay_from_the_rng():
    assert Backoff(1.0, 8.0, jitter=1.0, rng=lambda: 0.75).delay_seconds(2) == 1.0  # full jitter: 4 * 0.25
    assert Backoff(1.0, 8.0, jitter=0.5, rng=lambda: 0.5).delay_seconds(2) == 3.0  # half jitter: 4 * 0.75
    assert Backoff(1.0, 8.0, jitter=0.0, rng=lambda: 0.9).delay_seconds(2) == 4.0
    draws = iter([0.1, 0.2])
    backoff = Backoff(1.0, 8.0, rng=lambda: next(draws))
    assert backoff.delay_seconds(0) == pytest.approx(0.9) and backoff.delay_seconds(0) == pytest.approx(0.8)


def test_half_jitter_delays_still_grow_until_the_cap():
    rng = random.Random(20).random
    backoff = Backoff(0.5, 30.0, jitter=0.5, rng=rng)
    for _ in range(200):
        delays = [backoff.delay_seconds(n) for n in range(6)]  # 0.5 ... 16: below the cap
        assert all(a < b for a, b in itertools.pairwise(delays)), delays
        assert all(0.5 * backoff.ceiling_seconds(n) < d <= backoff.ceiling_seconds(n) for n, d in enumerate(delays))


def test_retry_after_is_a_floor_up_to_the_cap():
    backoff = Backoff(1.0, 60.0, rng=lambda: 0.0)
    assert backoff.delay_seconds(0, retry_after_seconds=5) == 5.0  # the server asked for more
    assert backoff.delay_seconds(4, retry_after_seconds=5) == 16.0  # the backoff asks for more
    assert backoff.delay_seconds(0, retry_after_seconds=3600) == 60.0  # a wild Retry-After waits the cap
    assert backoff.delay_seconds(0, retry_after_seconds=0) == 1.0
    assert backoff.delay_seconds(0, retry_after_seconds=None) == 1.0


@pytest.mark.parametrize(
    "options",
    [dict(base_seconds=0, cap_seconds=1), dict(base_seconds=2, cap_seconds=1), dict(factor=0.5), dict(jitter=1.5)],
)
def test_a_policy_that_cannot_work_is_refused(options):
    arguments = dict(base_seconds=1.0, cap_seconds=2.0) | options
    with pytest.raises(ValueError):
        Backoff(**arguments)
