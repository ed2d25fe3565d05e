"""Concurrent requests share one downstream call.

KafkaSource delivers one event per HTTP request, and each request needs a Feast lookup and
a predictor call whose fixed cost (a Redis round trip, a gRPC call through two KServe
servers) dwarfs the per-row work. A ``Coalescer`` puts the parts of concurrent requests
into one call: while a call is in flight, new parts wait; when it returns, everything that
waited (up to ``max_items``) goes out together. A lone request goes out at once, so batching
adds no latency at low load and grows with the load, where it pays.

Each part learns its own slice of the result, or the call's exception: a failed call fails
exactly the requests that were in it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

P = TypeVar("P")  # one request's part: rows, entity ids...
B = TypeVar("B")  # the result of one call over several parts
R = TypeVar("R")  # one part's share of it


class Coalescer(Generic[P, B, R]):
    def __init__(
        self,
        call: Callable[[list[P]], Awaitable[B]],
        split: Callable[[B, int, int], R],
        size: Callable[[P], int],
        max_items: int,
    ) -> None:
        self._call = call
        self._split = split  # (result, start, stop) -> the part's share
        self._size = size
        self.max_items = max_items
        self._waiting: deque[tuple[P, asyncio.Future[R]]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self.calls = 0
        self.parts = 0

    async def submit(self, part: P) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((part, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    def _next_batch(self) -> list[tuple[P, asyncio.Future[R]]]:
        batch: list[tuple[P, asyncio.Future[R]]] = []
        items = 0
        while self._waiting:
            part, future = self._waiting[0]
            n = self._size(part)
            if batch and items + n > self.max_items:
                break
            self._waiting.popleft()
            if future.done():  # its request was cancelled while waiting
                continue
            batch.append((part, future))
            items += n
        return batch

    async def _drain(self) -> None:
        while self._waiting:
            batch = self._next_batch()
            if not batch:
                continue
            self.calls += 1
            self.parts += len(batch)
            try:
                result = await self._call([part for part, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for part, future in batch:
                stop = start + self._size(part)
                if not future.done():
                    try:
                        future.set_result(self._split(result, start, stop))
                    except Exception as exc:
                        future.set_exception(exc)
                start = stop
