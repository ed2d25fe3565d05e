"""The simulator's live stream (``iter_live``): the simulated population's future, one simulated
day at a time, continuing its history.

Live traffic is the model of ``Simulator.generate`` run forward in *simulated time*: the same
cards transact as often as in the history (a few times a day), at the same times of day, with
the same fraud scenarios, and compromises that began in the history go on. A producer sends
the stream at whatever rate it is asked for, so the rate sets how fast the simulated clock
runs (``speed_up``), never how a card behaves: 1,000 cards at 500 transactions/s live a
simulated day in about 4 s, and every feature (10-minute counts, 30-day means, terminal risk
with its 7-day label delay) sees what it saw in training. Event times are simulated times;
the platform measures latency from when an event was produced (its Kafka record timestamp).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from fraud_producers.sim_config import DAY_S
from fraud_producers.simulator import MICROS_PER_S, Incidents, Rows, SimulatedBatch, Simulator, as_utc

__all__ = ["iter_live", "live_start", "speed_up"]


def iter_live(
    sim: Simulator, start: datetime, *, history: SimulatedBatch | None = None
) -> Iterator[pd.DataFrame]:
    """An endless stream of ``sim``'s transactions from ``start`` (naive = UTC; pass a midnight
    for the daily rhythm to peak at noon): one frame per simulated day, sorted by time, in the
    columns of ``Simulator.generate``.

    Each day follows ``Simulator.generate``'s model: a Poisson count per card, times around
    midday, the weekend factor, new compromised terminals and cards, card-testing bursts and
    takeovers (whose later payments fall on later days). One difference: a compromised card's
    fraudulent share is drawn per payment (probability ``compromised_card_fraction``) rather
    than as an exact share of the window, which the stream cannot see whole.

    With ``history`` (the batch that ends at ``start``), the compromises still running at its
    end carry on. Deterministic for a given seed, ``start`` and history.
    """
    return _LiveStream(sim, as_utc(start), history).days()


def speed_up(sim: Simulator, rate_per_s: float) -> float:
    """Simulated seconds per wall-clock second when the stream is sent at ``rate_per_s``."""
    return rate_per_s * DAY_S / max(sim.expected_daily_transactions(), 1e-9)


def live_start(sim: Simulator, rate_per_s: float, live_s: float, now: datetime) -> datetime:
    """The midnight to start a live stream at so that ``live_s`` seconds of it at ``rate_per_s``
    stay in the past (the quality gate refuses events from the future): the history ends here."""
    days = math.ceil(live_s * speed_up(sim, rate_per_s) / DAY_S) + 1
    midnight = as_utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=days)


class _LiveStream:
    """State of ``iter_live``: the running compromises and the injected payments still to come."""

    def __init__(self, sim: Simulator, start: datetime, history: SimulatedBatch | None) -> None:
        self.sim, self.start = sim, start
        cfg = sim.config
        start_us = int(pd.Timestamp(start).value // 1000)
        self.rng = np.random.default_rng([cfg.seed, 2, start_us])
        self.prefix = f"{cfg.seed}-L{start:%Y%m%dT%H%M%S}-"
        self.count = 0
        # Running compromises: entity index, end day (exclusive), in days from ``start``.
        self.terminals = np.empty((0, 2), np.int64)
        self.cards = np.empty((0, 2), np.int64)
        if history is not None:
            self.terminals = self._carried(
                history.compromised_terminals, "terminal_id", cfg.compromised_terminal_days
            )
            self.cards = self._carried(history.compromised_cards, "card_id", cfg.compromised_card_days)
        self.pending = Rows.empty()

    def _carried(self, incidents: pd.DataFrame, id_column: str, window_days: int) -> np.ndarray:
        """The history's compromises that outlast it (the batch cuts their end at its own)."""
        ids = self.sim.population.terminal_ids if id_column == "terminal_id" else self.sim.population.card_ids
        index = {name: i for i, name in enumerate(ids)}
        first = (pd.DatetimeIndex(incidents["start"]) - pd.Timestamp(self.start)) // pd.Timedelta(days=1)
        end = np.asarray(first, np.int64) + window_days
        entity = np.array([index[name] for name in incidents[id_column]], np.int64)
        keep = end > 0
        return np.column_stack([entity[keep], end[keep]]).astype(np.int64)

    def days(self) -> Iterator[pd.DataFrame]:
        d = 0
        while True:
            yield self._day(d)
            d += 1

    def _day(self, d: int) -> pd.DataFrame:
        sim, cfg, rng = self.sim, self.sim.config, self.rng
        self._compromise(d)
        day_start = self.start + timedelta(days=d)
        organic, _ = sim._organic(rng, day_start, 1)
        organic.t_s += d * DAY_S
        at_terminal = np.isin(organic.terminal, self.terminals[:, 0])
        on_card = np.isin(organic.customer, self.cards[:, 0])
        stolen = on_card & (rng.random(len(organic)) < cfg.compromised_card_fraction)
        sim._label_organic(organic, sim._outliers(organic.amount), at_terminal, stolen)
        starts = np.array([d * DAY_S], np.float64)
        injected = Rows.concat(
            [
                self.pending,
                sim._card_testing(
                    rng, np.repeat(starts, rng.poisson(cfg.card_testing_per_day)), DAY_S, 1.0, Incidents()
                ),
                sim._takeovers(rng, np.repeat(starts, rng.poisson(cfg.takeover_per_day)), DAY_S, Incidents()),
            ]
        )
        today = injected.t_s < (d + 1) * DAY_S
        self.pending = injected.take(~today)
        rows = Rows.concat([organic, injected.take(today)])
        t_us = np.rint(rows.t_s * MICROS_PER_S).astype(np.int64)
        order = np.argsort(t_us, kind="stable")
        rows, t_us = rows.take(order), t_us[order]
        ids = [self.prefix + str(i) for i in range(self.count, self.count + len(rows))]
        self.count += len(rows)
        return sim._frame(rows, t_us, self.start, ids)

    def _compromise(self, d: int) -> None:
        """Day ``d``'s new compromised terminals and cards; those that ended are dropped."""
        sim, cfg, rng = self.sim, self.sim.config, self.rng
        p = sim.population
        terms, _ = Simulator._daily_draws(rng, 1, p.n_terminals, cfg.compromised_terminals_per_day)
        cards, _ = Simulator._daily_draws(rng, 1, p.n_customers, cfg.compromised_cards_per_day)
        new_t = np.column_stack([terms, np.full(len(terms), d + cfg.compromised_terminal_days)])
        new_c = np.column_stack([cards, np.full(len(cards), d + cfg.compromised_card_days)])
        self.terminals = np.concatenate([self.terminals[self.terminals[:, 1] > d], new_t.astype(np.int64)])
        self.cards = np.concatenate([self.cards[self.cards[:, 1] > d], new_c.astype(np.int64)])
