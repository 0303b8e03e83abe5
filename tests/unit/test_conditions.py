from etj_operator import conditions as cond

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def test_transition_time_kept_when_status_does_not_flip():
    cs = cond.set_condition([], cond.RUNNING, True, "A", "first", T0)
    cs = cond.set_condition(cs, cond.RUNNING, True, "B", "second", T1)
    (running,) = cs
    assert running["lastTransitionTime"] == T0
    assert running["reason"] == "B" and running["message"] == "second"


def test_transition_time_changes_on_flip():
    cs = cond.set_condition([], cond.RUNNING, True, "A", "", T0)
    cs = cond.set_condition(cs, cond.RUNNING, False, "A", "", T1)
    assert cs[0]["lastTransitionTime"] == T1


def test_running_and_restarting_are_exclusive():
    cs = cond.set_condition([], cond.RUNNING, True, "A", "", T0)
    cs = cond.set_condition(cs, cond.RESTARTING, True, "B", "", T1)
    assert cond.is_true(cs, cond.RESTARTING) and not cond.is_true(cs, cond.RUNNING)
    cs = cond.set_condition(cs, cond.RUNNING, True, "C", "", T1)
    assert cond.is_true(cs, cond.RUNNING) and not cond.is_true(cs, cond.RESTARTING)


def test_final_conditions_freeze_the_rest():
    cs = cond.set_condition([], cond.RUNNING, True, "A", "", T0)
    cs = cond.set_condition(cs, cond.FAILED, True, "Boom", "", T1)
    assert not cond.is_true(cs, cond.RUNNING)
    frozen = cond.set_condition(cs, cond.RUNNING, True, "Again", "", T1)
    assert frozen == cs
    assert cond.is_final(cs)


def test_invalid_may_still_change_on_a_final_job():
    cs = cond.set_condition([], cond.FAILED, True, "InvalidSpec", "", T0)
    cs = cond.set_condition(cs, cond.INVALID, False, "SpecFixed", "", T1)
    assert cond.find(cs, cond.INVALID) is not None


def test_observed_generation_recorded():
    cs = cond.set_condition([], cond.CREATED, True, "A", "", T0, generation=4)
    assert cs[0]["observedGeneration"] == 4


def test_input_is_not_mutated():
    original = cond.set_condition([], cond.RUNNING, True, "A", "", T0)
    snapshot = [dict(c) for c in original]
    cond.set_condition(original, cond.RUNNING, False, "B", "", T1)
    assert original == snapshot
