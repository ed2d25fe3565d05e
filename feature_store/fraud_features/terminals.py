"""Terminal state, shared by every replica and keyed by terminal in Redis: counters applied
exactly once per record, and the terminal values of a UTC hour computed from them once the
watermark makes them final.

The counters are per-hour transaction counts, packed one field per UTC day (``"<hour of the
day>:<count>"`` pairs, comma-separated, for the hours with transactions), and
per-(transaction hour, report hour) fraud counts. A Lua script applies a partition's
increments together with the partition's applied offset, so a replayed record is never
counted twice whichever replica replays it. A fraud counts once per transaction, at its first
fraud verdict (an analyst's and then the chargeback's are one fraud), as in the backfill
(``fraudcore.features``): a per-transaction marker set with the increment keeps the second one
out. Values of hour ``h`` only read counters of hours before ``h - D`` and labels reported
before ``h``, so every replica computes the same values for an hour once the watermark allows
it.

Counters of hours older than the retention (``features.counter_retention_days``, in event
time behind the latest hour computed) are dropped when a terminal's counters are next read.
An hour's values read counters up to ``D`` + 30 days back, and the watermark lets one partition
compute its hour while another is still up to ``D`` behind the latest hour, so the
retention must exceed 2``D`` + 30 days; what it keeps beyond that is slack for late
transactions. Without this a terminal's hashes would keep a field for every hour it was
ever active. (Packing a day's hours in one field keeps a hash per terminal at one field per
active day, in Redis's compact listpack encoding, however many of the day's hours are
active: a field per hour would turn a busy terminal's hash into a hashtable of up to 1,440
fields.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis
from confluent_kafka import TopicPartition

from fraud_features.events import Label, Transaction
from fraud_features.redis_keys import RedisKeys
from fraud_features.watermarks import Watermark
from fraudcore import features as F

# Applies counter increments for one partition exactly once: ARGV holds (offset, hash, field,
# once-set, once-member, the set's day, hour of the day) groups in offset order; those below the
# partition's applied offset were applied before. A non-empty once-set counts its increment only
# the first time the member joins it (the set is indexed by its day in KEYS[3], so old days' sets
# can be dropped). A non-empty hour increments that hour's count in the field's packed
# "<hour>:<count>,..." value; an empty one increments the field itself.
#
# KEYS[2] is the partition's state mark (see RedisKeys.state_mark) and ARGV[1] the value the job
# last wrote or read ("" for none yet): a different value means Redis lost the job's state
# since (emptied, or restarted from a snapshot older than its last write), and nothing is
# applied (-2). Every apply moves the mark on, so losing even the newest write shows.
APPLY_LUA = """
local mark = redis.call('GET', KEYS[2])
if ARGV[1] == '' then
  if mark then return {-2, mark} end
elseif mark ~= ARGV[1] then
  return {-2, mark or ''}
end
local function bump(packed, hour)
  local out, found = {}, false
  for h, c in string.gmatch(packed, '(%d+):(%d+)') do
    if h == hour then
      c = tostring(tonumber(c) + 1)
      found = true
    end
    out[#out + 1] = h .. ':' .. c
  end
  if not found then out[#out + 1] = hour .. ':1' end
  return table.concat(out, ',')
end
local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
local last = applied
for i = 2, #ARGV, 7 do
  local offset = tonumber(ARGV[i])
  if offset >= applied then
    local once = ARGV[i + 3]
    if once == '' or redis.call('SADD', once, ARGV[i + 4]) == 1 then
      if once ~= '' then
        redis.call('EXPIRE', once, 5184000)
        redis.call('ZADD', KEYS[3], 'NX', ARGV[i + 5], once)
      end
      local hour = ARGV[i + 6]
      if hour == '' then
        redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], 1)
      else
        local packed = redis.call('HGET', ARGV[i + 1], ARGV[i + 2]) or ''
        redis.call('HSET', ARGV[i + 1], ARGV[i + 2], bump(packed, hour))
      end
      redis.call('EXPIRE', ARGV[i + 1], 5184000)
    end
    if offset + 1 > last then last = offset + 1 end
  end
end
if last > applied then redis.call('SET', KEYS[1], last) end
return {last, redis.call('INCR', KEYS[2])}
"""

# Every counter hash of a batch's terminals in one reply (parsed in C by hiredis).
FETCH_LUA = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
"""

# Hours of computed values cached behind the stream's latest hour: this hour and the last are
# what live transactions read, one more for stragglers; a later one's values are computed again.
CACHE_HOURS = 3

# (record offset, counter hash, field, once-set or "", its member, the set's day, hour of the day
# in a packed field or "")
Increment = tuple[int, str, str, str, str, str, str]
TerminalHour = tuple[str, int]  # (terminal id, UTC hour)


@dataclass
class CountedEvents:
    """Counters as pseudo-events at hour starts (one per count): the shared feature function
    then applies the very same windows and "reported before the hour" rule as the backfill."""

    tx_terminal: F.I64  # terminal codes
    tx_t_us: F.I64
    fraud_terminal: F.I64
    fraud_t_us: F.I64
    fraud_reported_us: F.I64


class StateLostError(Exception):
    """Redis no longer holds (all of) the feature job's state for a partition."""


class TerminalCounters:
    def __init__(
        self, client: redis.Redis, keys: RedisKeys, delay_days: int, writer: Any, retention_days: int
    ) -> None:
        # An hour's values read counters up to delay + 30 days back, and an hour is computed while
        # another partition may still be up to the delay behind the latest hour computed.
        reach_days = delay_days + max(F.TERMINAL_WINDOWS_DAYS.values())
        self.window_reach = reach_days * F.HOURS_PER_DAY  # hours
        reach = delay_days + reach_days
        if retention_days <= reach:
            raise ValueError(
                f"features.counter_retention_days: {retention_days} is too short; it must exceed {reach} "
                f"days (twice label_delay_days {delay_days}, plus the 30-day terminal window)"
            )
        self.keys = keys
        self.delay = delay_days
        self.retention_hours = retention_days * F.HOURS_PER_DAY
        self.writer = writer
        self.redis = client
        self._markers_dropped_before = -(2**62)
        self._apply = client.register_script(APPLY_LUA)
        self._fetch = client.register_script(FETCH_LUA)
        self.cache: dict[TerminalHour, tuple[float, ...]] = {}  # values in TERMINAL_FEATURES order
        self.latest_hour = -(2**62)  # the latest UTC hour computed: the stream's "now"

    def forget_computed(self) -> None:
        """Drop the terminal values computed so far (their counters are being rebuilt)."""
        self.cache.clear()
        self.latest_hour = -(2**62)

    # --- counters ---------------------------------------------------------------------------
    def transaction_increment(self, tx: Transaction) -> Increment:
        day, hour = divmod(tx.hour, F.HOURS_PER_DAY)
        return tx.offset, self.keys.transaction_counts(tx.terminal_id), str(day), "", "", "", str(hour)

    def label_increment(self, label: Label) -> Increment | None:
        """A fraud verdict's increment; None for a "legitimate" one, which counts nothing."""
        if not label.is_fraud:
            return None
        day = label.t_us // F.DAY_US
        field = f"{label.t_us // F.HOUR_US}:{label.reported_us // F.HOUR_US}"
        once = self.keys.counted_frauds(day)
        return (
            label.offset,
            self.keys.fraud_counts(label.terminal_id),
            field,
            once,
            label.transaction_id,
            str(day),
            "",
        )

    def apply(self, tp: TopicPartition, increments: list[Increment], mark: int | None) -> int | None:
        """Apply a partition's increments (in offset order), skipping those applied before,
        provided the partition's state mark is still ``mark``; return the mark now held.
        Raises StateLostError (and applies nothing) if Redis lost the state since."""
        if not increments:
            return mark
        args = [arg for offset, *rest in increments for arg in (str(offset), *rest)]
        expected = "" if mark is None else str(mark)
        last, held = self._apply(
            keys=[self.keys.applied(tp), self.keys.state_mark(tp), self.keys.counted_days()],
            args=[expected, *args],
        )
        if int(last) == -2:
            raise StateLostError(tp)
        return int(held)

    # --- values -----------------------------------------------------------------------------
    def final(self, terminal_hour: TerminalHour, watermark: Watermark) -> bool:
        """Whether the hour's values are known or can be computed for good."""
        return terminal_hour in self.cache or watermark.allows(terminal_hour[1], self.delay)

    def values(self, terminal_hours: list[TerminalHour]) -> F.F64:
        """The computed values, one row per terminal hour, columns in TERMINAL_FEATURES order."""
        return np.array([self.cache[p] for p in terminal_hours], dtype=np.float64)

    def compute(self, terminal_hours: list[TerminalHour]) -> None:
        """Compute the values of the terminal hours not computed yet (and write the recent ones
        to the online store). Only for final hours: see `final`."""
        newest = max((h for _, h in terminal_hours), default=self.latest_hour)
        if newest > self.latest_hour:  # a new hour: drop past hours' values before computing any
            self._forget_before(newest - CACHE_HOURS + 1)
        missing = sorted({p for p in terminal_hours if p not in self.cache}, key=lambda p: p[1])
        if not missing:
            return
        terminals = sorted({m for m, _ in missing})
        # Counters that neither this call's oldest hour nor an hour within the retention reads.
        oldest = min(missing[0][1] - self.window_reach, max(self.latest_hour, newest) - self.retention_hours)
        events = self._counted_events(terminals, oldest)
        oldest_day = oldest // F.HOURS_PER_DAY  # the fraud markers' sets are per day
        if oldest_day > self._markers_dropped_before:
            self._drop_fraud_markers_before(oldest_day)
        index = {m: i for i, m in enumerate(terminals)}
        q_term = np.array([index[m] for m, _ in missing], dtype=np.int64)
        q_hour = np.array([h for _, h in missing], dtype=np.int64)
        values = F.terminal_features(
            q_term,
            q_hour,
            events.tx_terminal,
            events.tx_t_us,
            events.fraud_terminal,
            events.fraud_t_us,
            events.fraud_reported_us,
            self.delay,
        )
        for i, pair in enumerate(missing):
            self.cache[pair] = tuple(float(values[n][i]) for n in F.TERMINAL_FEATURES)
        self._write_recent(missing, q_hour, values)

    def _counted_events(self, terminals: list[str], oldest_hour: int) -> CountedEvents:
        """The terminals' counters (terminal codes: positions in ``terminals``); fields whose
        transaction hours are all before ``oldest_hour`` are dropped from Redis on the way."""
        keys = [k for m in terminals for k in (self.keys.transaction_counts(m), self.keys.fraud_counts(m))]
        replies = self._fetch(keys=keys, args=[])
        tx_rows: list[tuple[int, int, int]] = []  # (terminal code, hour, count)
        fr_rows: list[tuple[int, int, int, int]] = []  # (terminal code, tx hour, report hour, count)
        expired: dict[str, list[str]] = {}
        oldest_day = oldest_hour // F.HOURS_PER_DAY  # a day field is dropped once all its hours are
        for code in range(len(terminals)):
            flat = replies[2 * code]
            for j in range(0, len(flat), 2):
                day = int(flat[j])
                if day < oldest_day:
                    expired.setdefault(keys[2 * code], []).append(flat[j].decode())
                    continue
                for pair in flat[j + 1].split(b","):
                    hour, count = pair.split(b":")
                    tx_rows.append((code, day * F.HOURS_PER_DAY + int(hour), int(count)))
            flat = replies[2 * code + 1]
            for j in range(0, len(flat), 2):
                tx_hour, report_hour = flat[j].split(b":")
                if int(tx_hour) < oldest_hour:
                    expired.setdefault(keys[2 * code + 1], []).append(flat[j].decode())
                else:
                    fr_rows.append((code, int(tx_hour), int(report_hour), int(flat[j + 1])))
        if expired:
            pipe = self.redis.pipeline(transaction=False)
            for key, fields in expired.items():
                pipe.hdel(key, *fields)
            pipe.execute()
        tx = np.array(tx_rows, dtype=np.int64).reshape(-1, 3)
        fr = np.array(fr_rows, dtype=np.int64).reshape(-1, 4)
        return CountedEvents(
            np.repeat(tx[:, 0], tx[:, 2]),
            np.repeat(tx[:, 1], tx[:, 2]) * F.HOUR_US,
            np.repeat(fr[:, 0], fr[:, 3]),
            np.repeat(fr[:, 1], fr[:, 3]) * F.HOUR_US,
            np.repeat(fr[:, 2], fr[:, 3]) * F.HOUR_US,
        )

    def _drop_fraud_markers_before(self, day: int) -> None:
        """The once-only markers of transaction days before ``day``: their counters are gone."""
        index = self.keys.counted_days()
        old = cast(list[bytes], self.redis.zrangebyscore(index, "-inf", f"({day}"))
        if old:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(*old)
            pipe.zrem(index, *old)
            pipe.execute()
        self._markers_dropped_before = day

    def _write_recent(
        self, terminal_hours: list[TerminalHour], hours: F.I64, values: dict[str, F.F64]
    ) -> None:
        # Only values within the terminal view's TTL can be served. "Now" is the latest hour in
        # event time, not the wall clock's: event times may be late, replayed or simulated, and
        # the features follow them. (Feast's newer-wins rule keeps a late hour from replacing a
        # later one's values.)
        self.latest_hour = max(self.latest_hour, int(hours.max()))
        recent = hours > self.latest_hour - F.TERMINAL_VALUES_TTL_HOURS
        if recent.any():
            self.writer.write_terminals(
                [m for (m, _), keep in zip(terminal_hours, recent, strict=True) if keep],
                hours[recent] * F.HOUR_US,
                {name: column[recent] for name, column in values.items()},
            )

    def _forget_before(self, hour: int) -> None:
        self.cache = {k: v for k, v in self.cache.items() if k[1] >= hour}
