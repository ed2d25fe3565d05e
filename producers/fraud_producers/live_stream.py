"""The simulator's endless live stream (``iter_live``): evenly paced frames of event time, with the
fraud scenarios evolving per simulated day."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pandas as pd

from fraud_producers.sim_config import DAY_S
from fraud_producers.simulator import MICROS_PER_S, FloatArray, Incidents, IntArray, Rows, Simulator, as_utc

__all__ = ["iter_live"]


def iter_live(
    sim: Simulator, rate_per_s: float, start: datetime, *, slice_s: float = 1.0, day_s: float | None = None
) -> Iterator[pd.DataFrame]:
    """An endless stream of ``sim``'s transactions for a live producer: one frame per ``slice_s``
    seconds of event time.

    Transaction ``i`` has the timestamp ``start + i / rate_per_s`` (naive ``start`` = UTC),
    so the frames are evenly spaced; frame ``k`` holds the transactions of
    ``[start + k slice_s, start + (k + 1) slice_s)`` (possibly none at low rates) in the
    columns of ``Simulator.generate``. A producer sends frame ``k`` when the clock reaches the
    end of its slice, with ``start = now``.

    Cards are drawn in proportion to their profile's rate (no daily rhythm: the rate is
    steady). The fraud scenarios evolve per *simulated day*, which lasts ``day_s`` seconds
    of event time; by default ``day_s`` is the population's daily volume divided by the
    rate, so the fraud mix matches ``Simulator.generate``. Scenario durations (28- and 14-day
    compromises, bursts, takeovers) scale with it. Injected transactions (scenarios 4, 5)
    take the slot of an organic one. Deterministic for a given seed and ``start``.
    """
    if rate_per_s <= 0 or slice_s <= 0:
        raise ValueError("rate_per_s and slice_s must be > 0")
    return _LiveStream(sim, rate_per_s, as_utc(start), slice_s, day_s).frames()


class _LiveStream:
    """State of ``iter_live``: active compromises and pending injected payments."""

    def __init__(
        self, sim: Simulator, rate: float, start: datetime, slice_s: float, day_s: float | None
    ) -> None:
        self.sim, self.rate, self.start, self.slice_s = sim, rate, start, slice_s
        p, cfg = sim.population, sim.config
        weights = np.where(p.n_neighbours > 0, p.tx_per_day, 0.0)
        if weights.sum() <= 0:
            raise ValueError("no customer transacts: none has a terminal within the radius")
        self.cdf = np.cumsum(weights) / weights.sum()
        self.day_s = day_s if day_s is not None else sim.expected_daily_transactions() / rate
        if self.day_s <= 0:
            raise ValueError("day_s must be > 0")
        self.scale = self.day_s / DAY_S
        start_us = int(pd.Timestamp(start).value // 1000)
        self.rng = np.random.default_rng([cfg.seed, 2, start_us])
        self.prefix = f"{cfg.seed}-L{start:%Y%m%dT%H%M%S}-"
        self.next_day = 0
        # Active compromises: entity, first day, end day (exclusive).
        self.terminal_ev = np.empty((0, 3), np.int64)
        self.card_ev = np.empty((0, 3), np.int64)
        self.pending = Rows.empty()
        self.incidents = Incidents()

    def _start_day(self, d: int) -> None:
        sim, cfg, rng = self.sim, self.sim.config, self.rng
        p = sim.population
        terms, _ = Simulator._daily_draws(rng, 1, p.n_terminals, cfg.compromised_terminals_per_day)
        cards, _ = Simulator._daily_draws(rng, 1, p.n_customers, cfg.compromised_cards_per_day)
        new_t = np.column_stack(
            [terms, np.full(len(terms), d), np.full(len(terms), d + cfg.compromised_terminal_days)]
        )
        new_c = np.column_stack(
            [cards, np.full(len(cards), d), np.full(len(cards), d + cfg.compromised_card_days)]
        )
        self.terminal_ev = np.concatenate(
            [self.terminal_ev[self.terminal_ev[:, 2] > d], new_t.astype(np.int64)]
        )
        self.card_ev = np.concatenate([self.card_ev[self.card_ev[:, 2] > d], new_c.astype(np.int64)])
        day_start = np.array([d * self.day_s])
        injected = Rows.concat(
            [
                self.pending,
                sim._card_testing(
                    rng,
                    np.repeat(day_start, rng.poisson(cfg.card_testing_per_day)),
                    self.day_s,
                    self.scale,
                    self.incidents,
                ),
                sim._takeovers(
                    rng, np.repeat(day_start, rng.poisson(cfg.takeover_per_day)), self.day_s, self.incidents
                ),
            ]
        )
        self.pending = injected.take(np.argsort(injected.t_s, kind="stable"))
        self.incidents = Incidents()  # the live stream keeps no history

    def _slice(self, k: int) -> pd.DataFrame:
        i0 = math.ceil(round(k * self.slice_s * self.rate, 9))
        i1 = math.ceil(round((k + 1) * self.slice_s * self.rate, 9))
        t_s = np.arange(i0, i1, dtype=np.int64) / self.rate
        slot_day = np.floor(t_s / self.day_s).astype(np.int64)
        self._start_days_until(int(slot_day[-1]) if len(t_s) else int((i0 / self.rate) // self.day_s))
        rows = self._organic(t_s, slot_day)
        self._place_pending(rows, i0, i1)
        t_us = np.rint(t_s * MICROS_PER_S).astype(np.int64)
        return self.sim._frame(rows, t_us, self.start, [self.prefix + str(i) for i in range(i0, i1)])

    def _start_days_until(self, last_day: int) -> None:
        while self.next_day <= last_day:
            self._start_day(self.next_day)
            self.next_day += 1

    def _organic(self, t_s: FloatArray, slot_day: IntArray) -> Rows:
        """One organic transaction per slot, with scenarios 1-3 applied."""
        sim, rng, n = self.sim, self.rng, len(t_s)
        customer = np.searchsorted(self.cdf, rng.random(n), side="right").astype(np.int64)
        customer = np.minimum(customer, len(self.cdf) - 1)
        terminal = sim._terminals_for(rng, customer)
        amount = sim._amounts(rng, customer)
        at_terminal = np.zeros(n, bool)
        for ent, first, end in self.terminal_ev.tolist():
            at_terminal |= (terminal == ent) & (slot_day >= first) & (slot_day < end)
        on_card = np.zeros(n, bool)
        for ent, first, end in self.card_ev.tolist():
            on_card |= (customer == ent) & (slot_day >= first) & (slot_day < end)
        stolen = on_card & (rng.random(n) < sim.config.compromised_card_fraction)
        rows = Rows(t_s, customer, terminal, amount, np.zeros(n, np.int8))
        sim._label_organic(rows, sim._outliers(amount), at_terminal, stolen)
        return rows

    def _place_pending(self, rows: Rows, i0: int, i1: int) -> None:
        """Due injected payments replace organic ones, in time order, one per slot."""
        due = int(np.searchsorted(self.pending.t_s, i1 / self.rate, side="left"))
        placed = 0
        next_free = i0
        for j in range(due):
            s = max(next_free, math.ceil(round(float(self.pending.t_s[j]) * self.rate, 9)))
            if s >= i1:
                break
            r = s - i0
            rows.customer[r] = self.pending.customer[j]
            rows.terminal[r] = self.pending.terminal[j]
            rows.amount[r] = self.pending.amount[j]
            rows.scenario[r] = self.pending.scenario[j]
            next_free = s + 1
            placed = j + 1
        self.pending = self.pending.take(np.arange(placed, len(self.pending)))

    def frames(self) -> Iterator[pd.DataFrame]:
        k = 0
        while True:
            yield self._slice(k)
            k += 1
