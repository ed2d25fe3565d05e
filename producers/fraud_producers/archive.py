"""The raw-event archive: every accepted transaction and every label, as Parquet on MinIO.

Layout: ``s3://<raw bucket>/<kind>/dt=YYYY-MM-DD/hour=HH/p<partition>-b<block>.parquet``,
partitioned by event time (labels by the time they became known). Readable by pandas,
pyarrow, DuckDB and Feast's file offline store.

No loss, no duplicates, across crashes. Each partition's offsets are cut into fixed blocks
of ``block_size`` offsets, and an object's name is a function of its partition and block
only. A flush (by size or time) rewrites the current block's objects that got new records
(one per event hour) with everything the block holds for them so far, and only then commits
the offset after it. After a restart or a
rebalance the archiver seeks back to the start of the block that holds the committed
offset, so the rewritten objects are supersets of what was there: a crash between the
write and the commit just rewrites the same objects.

A record that cannot be archived (not JSON, a field of the wrong type, no event time, over
the size limit) goes to the dead-letter topic with the reason, confirmed before the offset
past it is committed. Records re-read below the committed offset to rebuild a block are
not dead-lettered again; a crash between a dead letter and its commit sends it again
(at-least-once, like everything else here).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import confluent_kafka
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import TopicPartition
from minio import Minio
from prometheus_client import Counter, Histogram

from fraudcore.kafka import DeadLetters, OwnedPartitions, Record, commit_now
from fraudcore.service import Commit, Records, consume_loop
from fraudcore.settings import Settings
from fraudcore.storage import describe, s3_client, store_unavailable, until_store_answers

log = logging.getLogger(__name__)

COMPONENT = "archiver"

RECORDS_WRITTEN = Counter("archiver_records_written", "Records made durable in the archive", ["kind"])
OBJECTS_WRITTEN = Counter(
    "archiver_objects_written", "Parquet objects written (including rewrites)", ["kind"]
)
FLUSH_SECONDS = Histogram("archiver_flush_seconds", "Time to write one block's objects")

TRANSACTION_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("terminal_id", pa.string()),
        ("amount", pa.float64()),
        ("currency", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("channel", pa.string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
    ]
)
LABEL_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("terminal_id", pa.string()),
        ("transaction_timestamp", pa.timestamp("us", tz="UTC")),
        ("reported_at", pa.timestamp("us", tz="UTC")),
        ("scenario", pa.int8()),
        # The verdict's fields (null on a chargeback that omits them): without them an
        # analyst's "legitimate" would read back as a fraud.
        ("source", pa.string()),
        ("is_fraud", pa.bool_()),
        ("analyst", pa.string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ArchiveKind:
    name: str  # the object prefix
    schema: pa.Schema
    time_column: str  # the event time that decides dt/hour


TRANSACTIONS = ArchiveKind("transactions", TRANSACTION_SCHEMA, "timestamp")
LABELS = ArchiveKind("labels", LABEL_SCHEMA, "reported_at")


@dataclass
class Block:
    start: int  # first offset of the block (a multiple of block_size)
    records: list[Record] = field(default_factory=list)
    durable: int = 0  # how many of `records` are already in the archive
    opened: float = field(default_factory=time.monotonic)
    table: pa.Table | None = None  # the durable records, converted once
    # The offset after the last record taken, dead-lettered ones included (they are not
    # in `records`): where the partition resumes once this block is durable.
    next_offset: int = 0
    settled: int = 0  # next_offset when the block was last made durable

    def add(self, record: Record) -> None:
        self.records.append(record)
        self.next_offset = record.offset + 1

    @property
    def pending(self) -> bool:
        return self.next_offset > self.settled


def to_table(kind: ArchiveKind, records: list[Record]) -> pa.Table:
    events = [orjson.loads(r.value) for r in records]
    columns: dict[str, Any] = {}
    for name in kind.schema.names:
        if name == "kafka_partition":
            columns[name] = [r.partition for r in records]
        elif name == "kafka_offset":
            columns[name] = [r.offset for r in records]
        else:
            columns[name] = [e.get(name) for e in events]
    arrays = []
    for f in kind.schema:
        if pa.types.is_timestamp(f.type):
            arrays.append(pc.cast(pa.array(columns[f.name], pa.string()), f.type))
        else:
            arrays.append(pa.array(columns[f.name], f.type))
    return pa.Table.from_arrays(arrays, schema=kind.schema)


def record_problem(kind: ArchiveKind, record: Record) -> str | None:
    """Why ``record`` cannot be archived as a ``kind`` (``<field>: <problem>``), or None."""
    if not record.value:
        return "payload: empty"
    try:
        event = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return "payload: not valid UTF-8 JSON"
    if not isinstance(event, dict):
        return "payload: must be a JSON object"
    if event.get(kind.time_column) is None:
        return f"{kind.time_column}: is required"
    for column in kind.schema:
        if column.name in ("kafka_partition", "kafka_offset"):
            continue
        try:
            if pa.types.is_timestamp(column.type):
                pc.cast(pa.array([event.get(column.name)], pa.string()), column.type)
            else:
                pa.array([event.get(column.name)], column.type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            return f"{column.name}: {str(exc).splitlines()[0][:200]}"
    return None


def _hour_keys(kind: ArchiveKind, table: pa.Table) -> pa.Array:
    ts = table[kind.time_column]
    return pc.binary_join_element_wise(pc.strftime(ts, format="%Y-%m-%d"), pc.strftime(ts, format="%H"), "/")


def object_names(
    kind: ArchiveKind,
    table: pa.Table,
    partition: int,
    block: int,
    prefix: str = "",
    only: pa.Table | None = None,
) -> dict[str, pa.Table]:
    """Split a block's rows by event date and hour; name each piece after partition and block.

    With ``only`` (some of the rows), just the pieces those rows fall into."""
    keys = _hour_keys(kind, table)
    wanted = pc.unique(_hour_keys(kind, only) if only is not None else keys)
    pieces: dict[str, pa.Table] = {}
    for key in wanted.to_pylist():
        d, h = key.split("/")
        name = f"{prefix}{kind.name}/dt={d}/hour={h}/p{partition:03d}-b{block:012d}.parquet"
        pieces[name] = table.filter(pc.equal(keys, key))
    return pieces


class Archiver:
    def __init__(
        self,
        settings: Settings,
        *,
        group: str = "archiver",
        block_size: int = 20_000,
        flush_interval_s: float = 10.0,
        prefix: str = "",
        client: Minio | None = None,
    ) -> None:
        self.settings = settings
        self.group = group
        self.block_size = block_size
        self.flush_interval_s = flush_interval_s
        self.s3 = client or s3_client(settings)
        self.bucket = settings.s3.raw_bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix else ""
        self.kinds = {settings.topics.transactions.name: TRANSACTIONS, settings.topics.labels.name: LABELS}
        self.blocks: dict[TopicPartition, Block] = {}
        self.owned = OwnedPartitions(self._resume_at, self._release, self._forget)
        self.consumer: confluent_kafka.Consumer | None = None
        self.stop: threading.Event | None = None  # the run's: ends a wait for the object store
        self.written = 0
        self.dead_letters = DeadLetters(settings, COMPONENT)
        self.settled_below: dict[TopicPartition, int] = {}

    # --- rebalance (librdkafka runs these between batches, on the loop's thread) -----------
    def _resume_at(self, tp: TopicPartition, committed: int | None) -> int | None:
        """The start of the block holding the committed offset (its objects are rewritten whole)."""
        # Records below the committed offset are read again only to rebuild their block:
        # the bad ones among them were dead-lettered before that commit, not again now.
        self.settled_below[tp] = committed or 0
        return None if committed is None else (committed // self.block_size) * self.block_size

    def _quarantine(self, tp: TopicPartition, record: Record, reason: str) -> None:
        if record.offset >= self.settled_below.get(tp, 0):
            self.dead_letters.send(record, reason)

    def _release(self, revoked: list[TopicPartition]) -> Commit:
        """Before partitions move: write out what their blocks hold (OwnedPartitions commits
        what this returns)."""
        return self._flush([tp for tp in revoked if tp in self.blocks], force=True)

    def _forget(self, revoked: list[TopicPartition]) -> None:
        # Unflushed records are simply dropped: they were never committed, so whoever owns
        # the partition next reads them again from the start of their block.
        for tp in revoked:
            self.blocks.pop(tp, None)
            self.settled_below.pop(tp, None)

    # --- batches -----------------------------------------------------------------------
    def handle(self, records: Records) -> Commit:
        offsets: Commit = {}
        for tp, recs in self.owned.take(records).items():
            for r in recs:
                block_start = (r.offset // self.block_size) * self.block_size
                current = self.blocks.get(tp)
                if current is None or current.start != block_start:
                    if current is not None:
                        offsets.update(self._flush([tp], force=True))
                    self.blocks[tp] = Block(block_start)
                size = len(r.value or b"")
                if size > self.settings.max_event_bytes:  # never a valid event: not converted
                    reason = f"payload: {size} bytes exceeds the limit of {self.settings.max_event_bytes}"
                    self._quarantine(tp, r, reason)
                    self.blocks[tp].next_offset = r.offset + 1
                else:
                    self.blocks[tp].add(r)
        offsets.update(self._flush(list(self.blocks), force=False))
        return offsets

    def flush_due(self) -> Commit:
        return self._flush(list(self.blocks), force=False)

    def _flush(self, tps: list[TopicPartition], *, force: bool) -> Commit:
        offsets: Commit = {}
        now = time.monotonic()
        for tp in tps:
            block = self.blocks[tp]
            if not block.pending:
                continue
            full = block.next_offset >= block.start + self.block_size
            if not (force or full or now - block.opened >= self.flush_interval_s):
                continue
            self._write(tp, block)
            offsets[tp] = block.next_offset
            block.opened = now
        if offsets:
            self.dead_letters.flush()  # durable before the offsets past them are committed
        return offsets

    def _write(self, tp: TopicPartition, block: Block) -> None:
        kind = self.kinds[tp.topic]
        with FLUSH_SECONDS.time():
            # Only the pieces (event hours) that got new records are rewritten: the others
            # already hold exactly their rows. A history backfill leaves blocks spanning
            # weeks of event time, and live records then touch one hour of them.
            new = self._convert(tp, kind, block)
            table = new if block.table is None else pa.concat_tables([block.table, new])
            pieces = object_names(
                kind, table, tp.partition, block.start // self.block_size, self.prefix, only=new
            )
            for name, piece in pieces.items():
                buf = io.BytesIO()
                pq.write_table(piece, buf, compression="zstd")
                data = buf.getvalue()
                # While the object store is away the archiver waits here: its offsets move
                # only once a block is stored, and the names are the block's, so a retry (or
                # the next owner, after a stop) rewrites the same object.
                until_store_answers(partial(self._put, name, data), component="archiver", stop=self.stop)
                OBJECTS_WRITTEN.labels(kind.name).inc()
        added = len(block.records) - block.durable
        RECORDS_WRITTEN.labels(kind.name).inc(added)
        self.written += added
        block.durable = len(block.records)
        block.settled = block.next_offset
        block.table = table

    def _convert(self, tp: TopicPartition, kind: ArchiveKind, block: Block) -> pa.Table:
        """The block's new records as a table. A record that cannot be archived (not JSON, a
        field of the wrong type, no event time) is dead-lettered with the reason and left
        out; the dead letters are durable before the block's offset is committed."""
        fresh = block.records[block.durable :]
        try:
            table = to_table(kind, fresh)
            if table[kind.time_column].null_count == 0:
                return table
        except Exception:  # one record spoils the batch: found one by one below
            pass
        kept = []
        for record in fresh:
            problem = record_problem(kind, record)
            if problem is None:
                kept.append(record)
            else:
                self._quarantine(tp, record, problem)
        block.records[block.durable :] = kept
        self.dead_letters.flush()
        return to_table(kind, kept)

    def _put(self, name: str, data: bytes) -> None:
        self.s3.put_object(
            self.bucket, name, io.BytesIO(data), len(data), content_type="application/vnd.apache.parquet"
        )

    def run(self, stop: threading.Event, *, idle_exit_s: float | None = None) -> int:
        self.stop = stop
        # Latency does not matter here (blocks flush every few seconds): fetch in bigger
        # batches, so the per-batch work is spread over many records at low rates too.
        self.consumer = self.owned.consumer(
            self.settings,
            self.group,
            list(self.kinds),
            **{"fetch.min.bytes": 256 * 1024, "fetch.wait.max.ms": 500},
        )
        try:
            return consume_loop(
                self.consumer,
                self.group,
                self.handle,
                stop=stop,
                max_records=5000,
                idle_exit_s=idle_exit_s,
                on_idle=self.flush_due,
            )
        finally:
            try:
                commit_now(self.consumer, self._flush(list(self.blocks), force=True))
            except Exception as exc:
                if not store_unavailable(exc):
                    raise
                # Stopped while the object store was away: nothing past the last stored
                # block is committed, so the next owner reads those records again.
                log.warning(
                    "archiver: stopped with blocks not stored (%s); they will be read again", describe(exc)
                )
            self.consumer.close()
            self.dead_letters.close()
