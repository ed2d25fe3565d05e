"""Archive object naming: one piece per event hour, and only the pieces new rows touch."""

from __future__ import annotations

import orjson
import pyarrow as pa

from fraud_producers.archive import LABELS, TRANSACTIONS, object_names, to_table
from fraudcore.events import label_is_fraud
from fraudcore.features import label_verdicts
from fraudcore.kafka import Record


def records(stamps: list[str], first_offset: int = 0) -> list[Record]:
    out = []
    for i, ts in enumerate(stamps):
        event = {
            "schema_version": 1,
            "transaction_id": f"t{first_offset + i}",
            "card_id": "C1",
            "terminal_id": "T1",
            "amount": 1.5,
            "currency": "EUR",
            "timestamp": ts,
        }
        out.append(Record("transactions", 2, first_offset + i, b"C1", orjson.dumps(event), 0))
    return out


def test_pieces_by_event_hour_and_only_those_new_rows_touch() -> None:
    old = to_table(
        TRANSACTIONS, records(["2026-11-01T10:05:00Z", "2026-11-01T10:59:00Z", "2026-11-02T03:00:00Z"])
    )
    new = to_table(TRANSACTIONS, records(["2026-11-01T10:30:00Z"], first_offset=3))

    table = pa.concat_tables([old, new])
    every = object_names(TRANSACTIONS, table, 2, 7)
    assert sorted(every) == [
        "transactions/dt=2026-11-01/hour=10/p002-b000000000007.parquet",
        "transactions/dt=2026-11-02/hour=03/p002-b000000000007.parquet",
    ]
    touched = object_names(TRANSACTIONS, table, 2, 7, only=new)
    assert list(touched) == ["transactions/dt=2026-11-01/hour=10/p002-b000000000007.parquet"]
    # the rewritten piece holds all the block's rows for that hour, old and new
    assert touched[next(iter(touched))]["transaction_id"].to_pylist() == ["t0", "t1", "t3"]


def test_archived_labels_keep_their_verdicts() -> None:
    """An analyst's "legitimate" must not read back as a fraud: the verdict's fields are
    archived, and a chargeback that omits them reads back as one."""
    base = {
        "schema_version": 1,
        "card_id": "C1",
        "terminal_id": "T1",
        "transaction_timestamp": "2026-11-01T10:05:00Z",
        "reported_at": "2026-11-02T09:00:00Z",
        "scenario": 0,
    }
    events = [
        {**base, "transaction_id": "t1", "scenario": 2},
        {**base, "transaction_id": "t2", "source": "analyst", "is_fraud": False, "analyst": "ana"},
        {**base, "transaction_id": "t3", "source": "analyst", "is_fraud": True, "analyst": "bo"},
    ]
    recs = [Record("fraud-labels", 0, i, b"C1", orjson.dumps(e), 0) for i, e in enumerate(events)]
    frame = to_table(LABELS, recs).to_pandas()
    assert label_verdicts(frame) == [
        {},
        {"source": "analyst", "is_fraud": False},
        {"source": "analyst", "is_fraud": True},
    ]
    assert frame["analyst"].tolist()[1:] == ["ana", "bo"]
    says_fraud = [label_is_fraud(v) for v in label_verdicts(frame) if v is not None]
    assert says_fraud == [True, False, True]
