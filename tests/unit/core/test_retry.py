"""Retry policies: the delay after each failed attempt, and refusal of invalid policies."""

import math
from collections.abc import Callable

import pytest

from aiki import Retry

DRAWS = 2_000


def test_never_allows_no_retry() -> None:
    policy = Retry.never()
    assert policy.max_attempts == 1
    assert policy.delay_after(1) is None


def test_fixed_waits_the_same_delay_after_every_attempt_but_the_last() -> None:
    policy = Retry.fixed(max_attempts=4, delay_ms=1_000)
    assert [policy.delay_after(n) for n in range(1, 5)] == [1_000, 1_000, 1_000, None]


def test_fixed_with_one_attempt_never_retries() -> None:
    assert Retry.fixed(max_attempts=1, delay_ms=1_000).delay_after(1) is None


def test_fixed_with_zero_delay_retries_at_once() -> None:
    assert Retry.fixed(max_attempts=2, delay_ms=0).delay_after(1) == 0


def test_exponential_multiplies_the_delay_by_the_factor_each_attempt() -> None:
    policy = Retry.exponential(max_attempts=5, base_delay_ms=200)
    assert [policy.delay_after(n) for n in range(1, 6)] == [200, 400, 800, 1_600, None]


def test_exponential_uses_a_custom_factor() -> None:
    policy = Retry.exponential(max_attempts=4, base_delay_ms=100, factor=3)
    assert [policy.delay_after(n) for n in range(1, 5)] == [100, 300, 900, None]


def test_exponential_with_factor_one_is_constant() -> None:
    policy = Retry.exponential(max_attempts=3, base_delay_ms=50, factor=1)
    assert [policy.delay_after(n) for n in range(1, 4)] == [50, 50, None]


def test_exponential_is_capped_by_max_delay() -> None:
    policy = Retry.exponential(max_attempts=6, base_delay_ms=100, max_delay_ms=500)
    assert [policy.delay_after(n) for n in range(1, 7)] == [100, 200, 400, 500, 500, None]


def test_max_delay_caps_even_after_very_many_attempts() -> None:
    # factor ** attempt overflows a float long before the attempt count is unreasonable for a
    # policy that retries "for a day, at most once a minute".
    policy = Retry.exponential(max_attempts=5_000, base_delay_ms=100, max_delay_ms=60_000)
    assert policy.delay_after(1_100) == 60_000


def test_jittered_delays_lie_between_zero_and_the_exponential_delay() -> None:
    policy = Retry.jittered(max_attempts=4, base_delay_ms=100)
    for attempt, ceiling in [(1, 100), (2, 200), (3, 400)]:
        draws = [policy.delay_after(attempt) for _ in range(DRAWS)]
        assert all(d is not None and 0 <= d <= ceiling for d in draws), attempt


def test_jittered_delays_are_spread_out() -> None:
    policy = Retry.jittered(max_attempts=2, base_delay_ms=10_000)
    draws = {policy.delay_after(1) for _ in range(DRAWS)}
    assert len(draws) > DRAWS // 2
    assert min(d for d in draws if d is not None) < 2_500
    assert max(d for d in draws if d is not None) > 7_500


def test_jittered_respects_max_delay() -> None:
    policy = Retry.jittered(max_attempts=10, base_delay_ms=100, max_delay_ms=300)
    draws = [policy.delay_after(8) for _ in range(DRAWS)]
    assert all(d is not None and 0 <= d <= 300 for d in draws)


def test_jittered_gives_up_after_the_last_attempt() -> None:
    assert Retry.jittered(max_attempts=3, base_delay_ms=100).delay_after(3) is None


def test_policies_are_equal_by_value() -> None:
    assert Retry.fixed(max_attempts=3, delay_ms=10) == Retry.fixed(max_attempts=3, delay_ms=10)
    assert Retry.fixed(max_attempts=3, delay_ms=10) != Retry.exponential(3, 10)


@pytest.mark.parametrize("max_attempts", [0, -1])
@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda n: Retry.fixed(max_attempts=n, delay_ms=10), id="fixed"),
        pytest.param(lambda n: Retry.exponential(max_attempts=n, base_delay_ms=10), id="exp"),
        pytest.param(lambda n: Retry.jittered(max_attempts=n, base_delay_ms=10), id="jitter"),
    ],
)
def test_max_attempts_below_one_is_refused(
    build: Callable[[int], Retry], max_attempts: int
) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        build(max_attempts)


@pytest.mark.parametrize("max_attempts", [2.0, "3", True, None])
def test_max_attempts_must_be_an_int(max_attempts: object) -> None:
    with pytest.raises(TypeError, match="max_attempts"):
        Retry.fixed(max_attempts=max_attempts, delay_ms=10)  # type: ignore[arg-type]


def test_negative_fixed_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        Retry.fixed(max_attempts=3, delay_ms=-1)


def test_negative_base_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="base_delay_ms"):
        Retry.exponential(max_attempts=3, base_delay_ms=-1)


def test_negative_max_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="max_delay_ms"):
        Retry.jittered(max_attempts=3, base_delay_ms=10, max_delay_ms=-5)


@pytest.mark.parametrize("delay", ["10", True])
def test_delay_must_be_a_number(delay: object) -> None:
    with pytest.raises(TypeError, match="delay_ms"):
        Retry.fixed(max_attempts=3, delay_ms=delay)  # type: ignore[arg-type]


def test_none_as_a_required_delay_is_refused_naming_the_field() -> None:
    with pytest.raises(TypeError, match="delay_ms"):
        Retry.fixed(max_attempts=3, delay_ms=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", [math.inf, math.nan])
def test_non_finite_delay_is_refused_naming_the_field(delay: float) -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        Retry.fixed(max_attempts=3, delay_ms=delay)  # type: ignore[arg-type]


@pytest.mark.parametrize("factor", [0.5, 0, -2])
def test_factor_below_one_is_refused(factor: float) -> None:
    with pytest.raises(ValueError, match="factor"):
        Retry.exponential(max_attempts=3, base_delay_ms=10, factor=factor)


def test_factor_below_one_is_refused_for_jittered_too() -> None:
    with pytest.raises(ValueError, match="factor"):
        Retry.jittered(max_attempts=3, base_delay_ms=10, factor=0.9)


def test_nan_factor_is_refused() -> None:
    with pytest.raises(ValueError, match="factor"):
        Retry.exponential(max_attempts=3, base_delay_ms=10, factor=math.nan)


def test_non_number_factor_is_refused_naming_the_field() -> None:
    with pytest.raises(TypeError, match="factor"):
        Retry.exponential(max_attempts=3, base_delay_ms=10, factor="2")  # type: ignore[arg-type]
