"""FakeClock: time that moves only when told, and sleepers woken in due order."""

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from aiki._core.clock import SystemClock, to_datetime
from aiki.testing import FakeClock


async def _sleeper(clock: FakeClock, duration_ms: int, name: str, woken: list[str]) -> None:
    await clock.sleep_ms(duration_ms)
    woken.append(name)


def test_starts_at_the_given_time() -> None:
    assert FakeClock(start_ms=5_000).now_ms() == 5_000


def test_default_start_is_2026_01_01_utc() -> None:
    assert to_datetime(FakeClock().now_ms()) == datetime(2026, 1, 1, tzinfo=UTC)


def test_time_does_not_move_by_itself() -> None:
    clock = FakeClock(start_ms=0)
    assert clock.now_ms() == clock.now_ms() == 0


async def test_advance_moves_now_forward() -> None:
    clock = FakeClock(start_ms=1_000)
    await clock.advance(250)
    await clock.advance(750)
    assert clock.now_ms() == 2_000


async def test_advance_by_zero_is_allowed() -> None:
    clock = FakeClock(start_ms=1_000)
    await clock.advance(0)
    assert clock.now_ms() == 1_000


async def test_advance_backwards_is_refused() -> None:
    clock = FakeClock(start_ms=1_000)
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(-1)
    assert clock.now_ms() == 1_000


async def test_sleeper_is_not_woken_before_its_time() -> None:
    clock = FakeClock(start_ms=0)
    woken: list[str] = []
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_sleeper(clock, 100, "a", woken))
        await asyncio.sleep(0)
        await clock.advance(99)
        assert woken == []
        await clock.advance(1)
        assert woken == ["a"]


async def test_sleeper_woken_by_a_large_advance_sees_the_new_time() -> None:
    clock = FakeClock(start_ms=0)
    seen: list[int] = []

    async def sleeper() -> None:
        await clock.sleep_ms(10)
        seen.append(clock.now_ms())

    async with asyncio.TaskGroup() as tg:
        tg.create_task(sleeper())
        await asyncio.sleep(0)
        await clock.advance(1_000)
    assert seen == [1_000]


async def test_sleep_of_zero_or_less_returns_without_advancing() -> None:
    clock = FakeClock(start_ms=0)
    await clock.sleep_ms(0)
    await clock.sleep_ms(-5)
    assert clock.now_ms() == 0


async def test_sleep_is_measured_from_when_it_started() -> None:
    clock = FakeClock(start_ms=0)
    woken: list[str] = []
    await clock.advance(500)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_sleeper(clock, 100, "late", woken))
        await asyncio.sleep(0)
        await clock.advance(99)
        assert woken == []
        await clock.advance(1)
        assert woken == ["late"]


async def test_many_sleepers_wake_in_due_order_in_one_advance() -> None:
    clock = FakeClock(start_ms=0)
    woken: list[str] = []
    durations = {"e": 500, "b": 200, "d": 400, "a": 100, "c": 300}
    async with asyncio.TaskGroup() as tg:
        for name, duration in durations.items():
            tg.create_task(_sleeper(clock, duration, name, woken))
        await asyncio.sleep(0)
        await clock.advance(1_000)
        assert woken == ["a", "b", "c", "d", "e"]


async def test_sleepers_due_at_the_same_time_wake_in_the_order_they_slept() -> None:
    clock = FakeClock(start_ms=0)
    woken: list[str] = []
    async with asyncio.TaskGroup() as tg:
        for name in ["first", "second", "third"]:
            tg.create_task(_sleeper(clock, 50, name, woken))
            await asyncio.sleep(0)
        await clock.advance(50)
        assert woken == ["first", "second", "third"]


async def test_advance_wakes_only_the_sleepers_that_are_due() -> None:
    clock = FakeClock(start_ms=0)
    woken: list[str] = []
    async with asyncio.TaskGroup() as tg:
        for name, duration in [("a", 100), ("b", 200), ("c", 300)]:
            tg.create_task(_sleeper(clock, duration, name, woken))
        await asyncio.sleep(0)
        await clock.advance(200)
        assert woken == ["a", "b"]
        await clock.advance(100)
        assert woken == ["a", "b", "c"]


async def test_a_cancelled_sleeper_does_not_break_advance() -> None:
    clock = FakeClock(start_ms=0)
    woken: list[str] = []
    cancelled = asyncio.create_task(_sleeper(clock, 100, "cancelled", woken))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_sleeper(clock, 100, "kept", woken))
        await asyncio.sleep(0)
        cancelled.cancel()
        await clock.advance(100)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert woken == ["kept"]


async def test_now_can_be_read_from_another_thread() -> None:
    clock = FakeClock(start_ms=7)
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(clock.now_ms()))
    thread.start()
    thread.join()
    assert seen == [7]


def test_system_clock_is_close_to_the_real_time() -> None:
    before = int(datetime.now(UTC).timestamp() * 1000)
    now = SystemClock().now_ms()
    after = int(datetime.now(UTC).timestamp() * 1000)
    assert before - 1 <= now <= after + 1


def test_to_datetime_is_aware_utc() -> None:
    assert to_datetime(1_500) == datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
