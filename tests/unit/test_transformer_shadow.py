"""The shadow scorer's handling of an empty slot (``fraud_transformer.shadow``)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from fraud_transformer.shadow import ShadowScorer


def test_an_empty_slot_is_asked_by_one_call_and_then_left_alone() -> None:
    calls = 0

    async def empty_slot(*_args: Any, **_kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise RuntimeError("Model with name fraud-shadow is not ready.")

    async def publish(*_args: Any) -> None:
        raise AssertionError("nothing to publish")

    async def burst() -> None:
        shadow = ShadowScorer(empty_slot, publish, "fraud-shadow", "fraud-scores-shadow", (0.5, 0.9))
        rows, fallback = np.zeros((1, 3)), np.zeros(1, dtype=bool)
        for _ in range(50):  # requests arriving while the first look is in flight
            shadow.submit([{"transaction_id": "t"}], rows, fallback, None)
        await asyncio.gather(*shadow.tasks)
        assert shadow.empty_until > 0
        shadow.submit([{"transaction_id": "t"}], rows, fallback, None)  # within RETRY_S
        assert not shadow.tasks

    asyncio.run(burst())
    assert calls == 1
