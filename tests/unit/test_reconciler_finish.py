"""A finished job shows no power draw and no cap in force."""

from datetime import UTC, datetime

from etj_operator import contract as c
from etj_operator.jobpass import settle
from etj_operator.lifecycle import Plan


def test_finished_job_clears_current_power_and_the_cap():
    status = {
        "phase": "Succeeded",
        "energy": {"joules": 10.0, "currentWatts": 700.0},
        "control": {c.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 250, c.CONTROL_CHECKPOINT_REQUESTED: 2},
    }
    plan = Plan(status=status)
    settle(plan, datetime.now(UTC), 1)
    energy = plan.status["energy"]
    # the account is kept; nothing runs, so its power is 0 W, in the status and in kubectl's display
    assert energy["joules"] == 10.0 and energy["currentWatts"] == 0.0 and energy["display"]["power"] == "0W"
    # the cap is gone (absent, as the contract's record writes an unset field), the request number stays
    assert plan.status["control"] == {c.CONTROL_CHECKPOINT_REQUESTED: 2}
