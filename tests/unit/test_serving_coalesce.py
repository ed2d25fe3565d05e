"""The coalescer: concurrent requests share downstream calls, each gets its own slice."""

from __future__ import annotations

import asyncio

import pytest

from fraud_transformer.coalesce import Coalescer


class Downstream:
    """A call that takes ``delay_s`` and answers each item doubled; fails on item 13."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.calls: list[list[list[int]]] = []

    async def __call__(self, parts: list[list[int]]) -> list[int]:
        self.calls.append(parts)
        await asyncio.sleep(self.delay_s)
        flat = [i for part in parts for i in part]
        if 13 in flat:
            raise RuntimeError("unlucky")
        return [2 * i for i in flat]


def coalescer(downstream: Downstream, max_items: int = 100) -> Coalescer[list[int], list[int], list[int]]:
    return Coalescer(downstream, lambda result, a, b: result[a:b], len, max_items)


def test_a_lone_request_goes_out_at_once_and_alone() -> None:
    downstream = Downstream()

    async def run() -> list[int]:
        return await coalescer(downstream).submit([1, 2, 3])

    assert asyncio.run(run()) == [2, 4, 6]
    assert downstream.calls == [[[1, 2, 3]]]


def test_requests_arriving_during_a_call_share_the_next_one() -> None:
    downstream = Downstream()

    async def run() -> list[list[int]]:
        shared = coalescer(downstream)
        first = asyncio.create_task(shared.submit([1]))
        await asyncio.sleep(0)  # the first call is now in flight
        rest = [asyncio.create_task(shared.submit([10 * i, 10 * i + 1])) for i in range(1, 6)]
        return await asyncio.gather(first, *rest)

    results = asyncio.run(run())
    assert results == [[2], [20, 22], [40, 42], [60, 62], [80, 82], [100, 102]]
    assert len(downstream.calls) == 2  # one for the first, one for the five that waited
    assert downstream.calls[1] == [[10, 11], [20, 21], [30, 31], [40, 41], [50, 51]]


def test_a_call_never_exceeds_max_items_unless_one_part_does() -> None:
    downstream = Downstream()

    async def run() -> list[list[int]]:
        shared = coalescer(downstream, max_items=4)
        first = asyncio.create_task(shared.submit([0]))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(shared.submit([i, i])) for i in range(1, 6)]
        big = asyncio.create_task(shared.submit(list(range(20, 27))))
        return await asyncio.gather(first, *rest, big)

    results = asyncio.run(run())
    assert results[1:6] == [[2 * i, 2 * i] for i in range(1, 6)]
    assert results[6] == [2 * i for i in range(20, 27)]
    sizes = [sum(len(p) for p in call) for call in downstream.calls]
    assert sizes == [1, 4, 4, 2, 7]  # the 7-item part goes alone


def test_a_failed_call_fails_exactly_the_requests_in_it() -> None:
    downstream = Downstream()

    async def run() -> list[object]:
        shared = coalescer(downstream, max_items=2)
        first = asyncio.create_task(shared.submit([1]))
        await asyncio.sleep(0)
        doomed = [asyncio.create_task(shared.submit([13])), asyncio.create_task(shared.submit([2]))]
        later = asyncio.create_task(shared.submit([3]))
        return await asyncio.gather(first, *doomed, later, return_exceptions=True)

    first, unlucky, neighbour, later = asyncio.run(run())
    assert first == [2]
    assert isinstance(unlucky, RuntimeError)
    assert isinstance(neighbour, RuntimeError)
    assert later == [6]


def test_a_cancelled_request_is_left_out_and_the_rest_still_answered() -> None:
    downstream = Downstream()

    async def run() -> tuple[list[int], list[int]]:
        shared = coalescer(downstream)
        first = asyncio.create_task(shared.submit([1]))
        await asyncio.sleep(0)
        gone = asyncio.create_task(shared.submit([5]))
        kept = asyncio.create_task(shared.submit([7]))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await first, await kept

    assert asyncio.run(run()) == ([2], [14])
    assert downstream.calls[1] == [[7]]
