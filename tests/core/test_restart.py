from darkroom.core.restart import RestartPolicy


def _deaths(
    policy: RestartPolicy, count: int, ran_seconds: float, failed: bool = True
) -> list[float | None]:
    delays, now = [], 0.0
    for _ in range(count):
        policy.started(now)
        now += ran_seconds
        delays.append(policy.delay_after_exit(now, failed=failed))
    return delays


def test_quick_deaths_back_off_up_to_the_cap():
    policy = RestartPolicy(first=0.5, cap=4.0, stable_seconds=10)
    assert _deaths(policy, 6, ran_seconds=0.1) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_stable_run_restarts_at_once_again():
    """The delay used to grow with every death ever and never come down."""
    policy = RestartPolicy(first=0.5, cap=4.0, stable_seconds=10)
    _deaths(policy, 6, ran_seconds=0.1)
    assert _deaths(policy, 1, ran_seconds=11) == [0.5]


def test_gives_up_after_quick_deaths_in_a_row_only():
    policy = RestartPolicy(first=0.5, cap=4.0, stable_seconds=10, give_up_after=3)
    assert _deaths(policy, 3, ran_seconds=0.1) == [0.5, 1.0, None]
    lasting = RestartPolicy(first=0.5, cap=4.0, stable_seconds=10, give_up_after=3)
    assert None not in _deaths(lasting, 10, ran_seconds=11)


def test_without_a_limit_it_never_gives_up():
    assert None not in _deaths(RestartPolicy(), 50, ran_seconds=0.1)


def test_a_process_killed_from_outside_backs_off_but_is_not_given_up_on():
    policy = RestartPolicy(first=0.5, cap=4.0, stable_seconds=10, give_up_after=3)
    assert _deaths(policy, 6, ran_seconds=0.1, failed=False) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
