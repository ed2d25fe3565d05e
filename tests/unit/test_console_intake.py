"""The console's intake of fraud-scores: a record that is not a decision is dead-lettered
with the reason (flushed before the batch can be committed) and the batch goes on."""

from __future__ import annotations

from typing import Any

import orjson

from fraud_console.intake import Intake
from fraudcore.kafka import Record
from fraudcore.settings import Settings
from tests.unit.test_events import VALID_DECISION


class Recorded:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str]] = []
        self.flushed_after = -1

    def send(self, record: Any, reason: str) -> None:
        self.sent.append((record.value, reason))

    def flush(self) -> None:
        self.flushed_after = len(self.sent)


class Desk:
    def __init__(self) -> None:
        self.opened: list[str] = []

    def knows(self, _case_id: str) -> bool:
        return False

    def open(self, decision: dict[str, Any], _transaction: dict[str, Any]) -> bool:
        self.opened.append(decision["transaction_id"])
        return True


class Finder:
    def find(self, decision: dict[str, Any]) -> dict[str, Any]:
        return {"transaction_id": decision["transaction_id"]}


def test_poison_is_dead_lettered_and_the_batch_goes_on() -> None:
    review = {**VALID_DECISION, "decision": "review", "transaction_id": "tx-review"}
    values = [b"not json", orjson.dumps({**VALID_DECISION, "score": "high"}), orjson.dumps(review), b"[]"]
    records = [Record("fraud-scores", 0, i, None, v, 0) for i, v in enumerate(values)]
    dead, desk = Recorded(), Desk()
    intake = Intake(Settings(_env_file=None), desk, Finder(), "console", dead_letters=dead)  # type: ignore[arg-type]
    intake.handle(records)
    assert desk.opened == ["tx-review"]
    assert [value for value, _ in dead.sent] == [values[0], values[1], values[3]]
    reasons = [reason for _, reason in dead.sent]
    assert reasons[0].startswith("payload: ")
    assert reasons[1].startswith("score: ")
    assert dead.flushed_after == 3
