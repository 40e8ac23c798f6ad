"""The store-call gateway: foreground calls hold back write-back, every outcome tells reachability."""

from __future__ import annotations

import time

import pytest
import trio

from cowfs.errors import StoreError
from cowfs.gateway import StoreCalls
from cowfs.reachability import Reachability


def test_only_a_foreground_call_counts_as_waiting_and_its_end_is_told() -> None:
    async def main() -> None:
        calls = StoreCalls(trio.CapacityLimiter(2))
        served: list[int] = []
        calls.when_served(lambda: served.append(calls.waiting))
        seen: list[int] = []
        await calls.call(lambda: seen.append(calls.waiting), background=True)
        assert served == [], "a background call is nobody's wait"
        await calls.call(lambda: seen.append(calls.waiting), background=False)
        assert seen == [0, 1] and served == [0]

    trio.run(main)


def test_a_call_the_store_does_not_answer_degrades_the_mount_and_an_answer_ends_it() -> None:
    async def main() -> None:
        reachability = Reachability(lambda: None)
        calls = StoreCalls(trio.CapacityLimiter(2), reachability, timeout=0.2)
        with pytest.raises(StoreError):
            await calls.call(time.sleep, 2, background=True)
        assert not reachability.reachable
        await calls.call(int, background=True)
        assert reachability.reachable

    trio.run(main)


def test_an_unbounded_call_waits_as_long_as_it_takes() -> None:
    async def main() -> None:
        calls = StoreCalls(trio.CapacityLimiter(2), timeout=0.1)
        await calls.call(time.sleep, 0.3, background=True, bounded=False)

    trio.run(main)
