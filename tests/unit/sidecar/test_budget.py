"""A hook's time budget: no timer for hooks that never wait, the same cut-off for those that do."""

from __future__ import annotations

import asyncio

import pytest
from packgate_sidecar.budget import within


async def test_a_hook_that_does_not_wait_returns_without_arming_a_timer() -> None:
    async def cpu_only() -> str:
        return "verdict"

    loop = asyncio.get_running_loop()
    timers_before = len(loop._scheduled)  # type: ignore[attr-defined]
    assert await within(0.05, cpu_only()) == "verdict"
    assert len(loop._scheduled) == timers_before  # type: ignore[attr-defined]


async def test_a_hook_that_waits_past_its_budget_is_cut_off() -> None:
    seen: list[str] = []

    async def slow() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "late"

    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await within(0.02, slow())
    assert asyncio.get_running_loop().time() - started < 1
    assert seen == ["cancelled"]  # the hook itself was stopped, not left running


async def test_a_hook_that_waits_within_its_budget_returns_its_value() -> None:
    async def waits() -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return 7

    assert await within(1.0, waits()) == 7


async def test_errors_raised_before_or_after_a_wait_reach_the_caller() -> None:
    async def raises_at_once() -> None:
        raise ValueError("first step")

    async def raises_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("after a wait")

    with pytest.raises(ValueError, match="first step"):
        await within(1.0, raises_at_once())
    with pytest.raises(KeyError):
        await within(1.0, raises_later())


async def test_cancelling_the_caller_cancels_a_waiting_hook() -> None:
    seen: list[str] = []
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = asyncio.create_task(within(10.0, waits()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]
