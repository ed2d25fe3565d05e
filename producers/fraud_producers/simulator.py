"""The batch simulator (``Simulator.generate``): a generative model of card payments with injected
fraud, vectorised with numpy, with its population and fraud scenarios.

The legitimate part follows the transaction simulator of the *Reproducible Machine Learning
for Credit Card Fraud Detection* handbook (Le Borgne et al.), with its defaults, so model
quality stays comparable with the handbook's published results:

* customers and terminals are placed uniformly on a ``map_size`` x ``map_size`` map; a
  customer uses the terminals strictly within ``radius`` of its home, uniformly;
* each customer has a spending profile: mean amount ~ U(5, 100), std = mean / 2, mean
  transactions per day ~ U(0, 4); the number of transactions of a day is Poisson;
* the time of day is normal around midday (mean 12 h, std 20,000 s); draws that fall
  outside the day are dropped, as the handbook does (about 3 % of them), so nothing piles up
  at midnight; amounts are normal(mean, std), a negative draw is redrawn uniformly in
  [0, 2 mean], amounts are rounded to cents and never below 0.01 (the contract wants > 0).

Added here: a weekend factor (the Saturday/Sunday rate relative to weekdays, normalised so
the weekly volume is unchanged), a channel per terminal (pos, ecom, atm), and two more fraud
scenarios. The scenarios and their label codes (``Scenario``):

1. amount outlier: every transaction whose amount, as drawn from the profile, is above
   ``outlier_threshold`` (220) is fraud;
2. compromised terminal: every day ``compromised_terminals_per_day`` (2) terminals drawn at
   random are compromised for that day and the next ``compromised_terminal_days`` - 1 days
   (28 days in all); every transaction at them in the window is fraud;
3. compromised card: every day ``compromised_cards_per_day`` (3) customers drawn at random;
   of their transactions in the next ``compromised_card_days`` (14) days, a fraction
   ``compromised_card_fraction`` (one third, rounded down per compromise) has its amount
   multiplied by ``compromised_card_amount_factor`` (5) and is fraud;
4. card testing: ``card_testing_per_day`` bursts a day (Poisson); a burst is 5-15 small
   payments (0.5-3.0) within a few minutes at 1-3 e-commerce terminals, then one large
   payment at one of them; all injected, all fraud;
5. account takeover: ``takeover_per_day`` takeovers a day (Poisson); for 1-2 days the card
   pays at 1-3 terminals of a region at least ``takeover_min_distance`` from its home, with
   amounts 3-8 times its mean amount; all injected, all fraud.

Scenarios 1-3 apply to the customers' own (organic) transactions; when several match, the
lowest code wins (the assignment order 1, 2, 3). Scenarios 4 and 5 add transactions of
their own, which carry their code. Legitimate transactions have code 0.

Everything is drawn from ``numpy.random.Generator`` streams derived from ``config.seed``:
the same seed and config give the same output, call after call. The configuration is in
``sim_config``, the live stream in ``live_stream``, events and labels in ``encoding``.

Usage::

    sim = Simulator(SimulatorConfig(seed=7))
    batch = sim.generate(datetime(2018, 4, 1, tzinfo=UTC), days=183)
    payloads = encoding.to_event_bytes(batch.transactions)     # transaction events, no labels
    chargebacks = encoding.labels(batch, delay=timedelta(days=7))
    label_payloads = encoding.label_events(chargebacks)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fraud_producers.encoding import CHANNELS
from fraud_producers.sim_config import DAY_S, SimulatorConfig

__all__ = [
    "Scenario",
    "SimulatedBatch",
    "Simulator",
]

# Besides __all__, live_stream uses Rows, Incidents, as_utc, MICROS_PER_S and the array aliases.

#: Microseconds in a second (event times are kept in whole microseconds).
MICROS_PER_S = 1_000_000

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Scenario(IntEnum):
    """Label codes; 1-5 are the contract's fraud-label ``scenario`` values."""

    LEGIT = 0
    AMOUNT_OUTLIER = 1
    COMPROMISED_TERMINAL = 2
    COMPROMISED_CARD = 3
    CARD_TESTING = 4
    ACCOUNT_TAKEOVER = 5


@dataclass(frozen=True)
class Population:
    """Customers, terminals and which terminals each customer uses (CSR layout)."""

    customer_xy: FloatArray  # (C, 2)
    mean_amount: FloatArray
    std_amount: FloatArray
    tx_per_day: FloatArray
    terminal_xy: FloatArray  # (T, 2)
    terminal_channel: IntArray  # index into CHANNELS
    offsets: IntArray  # customer c uses neighbours[offsets[c]:offsets[c] + n_neighbours[c]]
    n_neighbours: IntArray
    neighbours: IntArray
    card_ids: npt.NDArray[np.object_]
    terminal_ids: npt.NDArray[np.object_]
    channel_names: npt.NDArray[np.object_] = field(default_factory=lambda: np.array(CHANNELS, dtype=object))

    @property
    def n_customers(self) -> int:
        return len(self.mean_amount)

    @property
    def n_terminals(self) -> int:
        return len(self.terminal_channel)


@dataclass
class Rows:
    """Transactions under construction: seconds from the start, indices, amounts, codes."""

    t_s: FloatArray
    customer: IntArray
    terminal: IntArray
    amount: FloatArray
    scenario: npt.NDArray[np.int8]

    @classmethod
    def empty(cls) -> Rows:
        return cls(
            np.empty(0),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0),
            np.empty(0, np.int8),
        )

    @classmethod
    def concat(cls, parts: list[Rows]) -> Rows:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.t_s for p in parts]),
            np.concatenate([p.customer for p in parts]),
            np.concatenate([p.terminal for p in parts]),
            np.concatenate([p.amount for p in parts]),
            np.concatenate([p.scenario for p in parts]),
        )

    def take(self, index: IntArray | BoolArray) -> Rows:
        return Rows(
            self.t_s[index],
            self.customer[index],
            self.terminal[index],
            self.amount[index],
            self.scenario[index],
        )

    def __len__(self) -> int:
        return len(self.t_s)


@dataclass
class Incidents:
    """Per-incident records (scenarios 2-5), times in seconds from the start."""

    compromised_terminals: list[tuple[int, float, float]] = field(default_factory=list)
    compromised_cards: list[tuple[int, float, float]] = field(default_factory=list)
    card_testing: list[tuple[int, float, float, int]] = field(default_factory=list)
    takeovers: list[tuple[int, float, float, float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class SimulatedBatch:
    """The output of ``Simulator.generate``.

    ``transactions`` is sorted by timestamp, columns ``TRANSACTION_COLUMNS`` (the event
    fields; ``timestamp`` is ``datetime64[ns, UTC]``) plus the ground truth ``is_fraud``
    (int8) and ``scenario`` (int8, ``Scenario``). The incident tables say what was injected:
    ``compromised_terminals`` (terminal_id, start, end), ``compromised_cards`` (card_id,
    start, end), ``card_testing`` (card_id, start, end, n_small) and ``takeovers`` (card_id,
    start, end, center_x, center_y); ``customers`` and ``terminals`` are the population.
    """

    transactions: pd.DataFrame
    customers: pd.DataFrame
    terminals: pd.DataFrame
    compromised_terminals: pd.DataFrame
    compromised_cards: pd.DataFrame
    card_testing: pd.DataFrame
    takeovers: pd.DataFrame
    start: datetime
    days: int
    config: SimulatorConfig

    @property
    def fraud_rate(self) -> float:
        return float(self.transactions["is_fraud"].mean()) if len(self.transactions) else 0.0

    def scenario_counts(self) -> dict[int, int]:
        """Number of transactions per scenario code, 0 (legit) to 5."""
        counts = np.bincount(self.transactions["scenario"].to_numpy(np.int64), minlength=len(Scenario))
        return {int(code): int(n) for code, n in enumerate(counts)}


def as_utc(ts: datetime) -> datetime:
    """A naive datetime is taken as UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _ids(prefix: str, n: int) -> npt.NDArray[np.object_]:
    width = max(5, len(str(max(n - 1, 0))))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def _neighbours(
    customer_xy: FloatArray, terminal_xy: FloatArray, radius: float
) -> tuple[IntArray, IntArray, IntArray]:
    """For every customer, the terminals strictly within ``radius`` (CSR: offsets, counts, flat)."""
    n_customers = len(customer_xy)
    chunk = max(1, 4_000_000 // max(1, len(terminal_xy)))
    r2 = radius * radius
    parts: list[IntArray] = []
    counts = np.zeros(n_customers, np.int64)
    for lo in range(0, n_customers, chunk):
        hi = min(n_customers, lo + chunk)
        dx = customer_xy[lo:hi, 0:1] - terminal_xy[None, :, 0]
        dy = customer_xy[lo:hi, 1:2] - terminal_xy[None, :, 1]
        rows, cols = np.nonzero(dx * dx + dy * dy < r2)
        parts.append(cols.astype(np.int64))
        counts[lo:hi] = np.bincount(rows, minlength=hi - lo)
    flat = np.concatenate(parts) if parts else np.empty(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return offsets, counts, flat


def _day_windows_mask(
    entity: IntArray,
    day: IntArray,
    n_days: int,
    ev_entity: IntArray,
    ev_first_day: IntArray,
    ev_days: int,
) -> tuple[BoolArray, IntArray, IntArray, IntArray]:
    """Rows whose entity has an incident covering their day.

    Returns the mask, the row order sorting rows by (entity, day), and for every incident
    the half-open range of positions in that order covering its window.
    """
    stride = n_days + 1
    key = entity * stride + day
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    lo = np.searchsorted(sorted_key, ev_entity * stride + ev_first_day, side="left")
    hi = np.searchsorted(
        sorted_key, ev_entity * stride + np.minimum(ev_first_day + ev_days, n_days), side="left"
    )
    cover = np.zeros(len(key) + 1, np.int64)
    np.add.at(cover, lo, 1)
    np.add.at(cover, hi, -1)
    in_window = np.empty(len(key), bool)
    in_window[order] = np.cumsum(cover[:-1]) > 0
    return in_window, order.astype(np.int64), lo.astype(np.int64), hi.astype(np.int64)


class Simulator:
    """Generates a population once, then batches (``generate``); ``live_stream.iter_live`` streams it."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.population = self._build_population()

    # ------------------------------------------------------------------ population
    def _build_population(self) -> Population:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 0])
        c, t = cfg.n_customers, cfg.n_terminals
        customer_xy = rng.uniform(0, cfg.map_size, (c, 2))
        mean_amount = rng.uniform(*cfg.mean_amount, c)
        tx_per_day = rng.uniform(*cfg.tx_per_day, c)
        terminal_xy = rng.uniform(0, cfg.map_size, (t, 2))
        weights = np.array([cfg.channel_weights.get(ch, 0.0) for ch in CHANNELS])
        terminal_channel = rng.choice(len(CHANNELS), t, p=weights / weights.sum()).astype(np.int64)
        offsets, counts, flat = _neighbours(customer_xy, terminal_xy, cfg.radius)
        return Population(
            customer_xy=customer_xy,
            mean_amount=mean_amount,
            std_amount=mean_amount * cfg.std_ratio,
            tx_per_day=tx_per_day,
            terminal_xy=terminal_xy,
            terminal_channel=terminal_channel,
            offsets=offsets,
            n_neighbours=counts,
            neighbours=flat,
            card_ids=_ids("C", c),
            terminal_ids=_ids("T", t),
        )

    @property
    def customers(self) -> pd.DataFrame:
        p = self.population
        return pd.DataFrame(
            {
                "card_id": p.card_ids,
                "x": p.customer_xy[:, 0],
                "y": p.customer_xy[:, 1],
                "mean_amount": p.mean_amount,
                "std_amount": p.std_amount,
                "tx_per_day": p.tx_per_day,
                "n_terminals": p.n_neighbours,
            }
        )

    @property
    def terminals(self) -> pd.DataFrame:
        p = self.population
        return pd.DataFrame(
            {
                "terminal_id": p.terminal_ids,
                "x": p.terminal_xy[:, 0],
                "y": p.terminal_xy[:, 1],
                "channel": p.channel_names[p.terminal_channel],
            }
        )

    # ------------------------------------------------------------------ shared draws
    def _amounts(self, rng: np.random.Generator, customer: IntArray) -> FloatArray:
        p = self.population
        mean = p.mean_amount[customer]
        amount = rng.normal(mean, p.std_amount[customer])
        negative = amount < 0
        amount[negative] = rng.uniform(0, 2 * mean[negative])
        return np.maximum(np.round(amount, 2), 0.01)

    def _terminals_for(self, rng: np.random.Generator, customer: IntArray) -> IntArray:
        """A terminal near each customer, uniformly (customers must have at least one)."""
        p = self.population
        pick = (rng.random(len(customer)) * p.n_neighbours[customer]).astype(np.int64)
        return p.neighbours[p.offsets[customer] + pick]

    def _ecom_terminals(self) -> IntArray:
        ecom = np.flatnonzero(self.population.terminal_channel == CHANNELS.index("ecom")).astype(np.int64)
        return ecom if len(ecom) else np.arange(self.population.n_terminals, dtype=np.int64)

    def _card_testing(
        self,
        rng: np.random.Generator,
        day_start_s: FloatArray,
        day_len_s: float,
        scale: float,
        out: Incidents,
    ) -> Rows:
        """Scenario 4: one burst per entry of ``day_start_s``; durations scaled by ``scale``."""
        cfg, p = self.config, self.population
        ecom = self._ecom_terminals()
        parts: list[Rows] = []
        for day_start in day_start_s:
            card = int(rng.integers(p.n_customers))
            t0 = day_start + rng.uniform(0, day_len_s)
            n_small = int(rng.integers(cfg.card_testing_small_count[0], cfg.card_testing_small_count[1] + 1))
            n_terms = int(rng.integers(cfg.card_testing_terminals[0], cfg.card_testing_terminals[1] + 1))
            terms = rng.choice(ecom, min(n_terms, len(ecom)), replace=False).astype(np.int64)
            span = rng.uniform(*cfg.card_testing_span_s) * scale
            t_small = t0 + np.sort(rng.uniform(0, span, n_small))
            t_large = t_small[-1] + rng.uniform(*cfg.card_testing_cashout_delay_s) * scale
            amounts = np.concatenate(
                [
                    np.maximum(np.round(rng.uniform(*cfg.card_testing_small_amount, n_small), 2), 0.01),
                    [round(float(rng.uniform(*cfg.card_testing_large_amount)), 2)],
                ]
            )
            n = n_small + 1
            parts.append(
                Rows(
                    np.append(t_small, t_large),
                    np.full(n, card, np.int64),
                    terms[rng.integers(0, len(terms), n)],
                    amounts,
                    np.full(n, Scenario.CARD_TESTING, np.int8),
                )
            )
            out.card_testing.append((card, float(t0), float(t_large), n_small))
        return Rows.concat(parts)

    def _takeovers(
        self, rng: np.random.Generator, day_start_s: FloatArray, day_len_s: float, out: Incidents
    ) -> Rows:
        """Scenario 5: one takeover per entry of ``day_start_s``; a 'day' lasts ``day_len_s``."""
        cfg, p = self.config, self.population
        parts: list[Rows] = []
        for day_start in day_start_s:
            card = int(rng.integers(p.n_customers))
            home = p.customer_xy[card]
            t0 = day_start + rng.uniform(0, day_len_s)
            duration_days = rng.uniform(*cfg.takeover_days)
            center = self._far_point(rng, home)
            dist = np.hypot(*(p.terminal_xy - center).T)
            region = np.flatnonzero(dist < cfg.radius)
            if len(region) == 0:
                region = np.argsort(dist, kind="stable")[: min(3, len(dist))]
            n_terms = int(rng.integers(cfg.takeover_terminals[0], cfg.takeover_terminals[1] + 1))
            terms = rng.choice(region, min(n_terms, len(region)), replace=False).astype(np.int64)
            n = 1 + int(rng.poisson(cfg.takeover_tx_per_day * duration_days))
            times = t0 + np.sort(rng.uniform(0, duration_days * day_len_s, n))
            factor = rng.uniform(*cfg.takeover_amount_factor, n)
            amounts = np.maximum(np.round(p.mean_amount[card] * factor, 2), 0.01)
            parts.append(
                Rows(
                    times,
                    np.full(n, card, np.int64),
                    terms[rng.integers(0, len(terms), n)],
                    amounts,
                    np.full(n, Scenario.ACCOUNT_TAKEOVER, np.int8),
                )
            )
            out.takeovers.append(
                (card, float(t0), float(t0 + duration_days * day_len_s), float(center[0]), float(center[1]))
            )
        return Rows.concat(parts)

    def _far_point(self, rng: np.random.Generator, home: FloatArray) -> FloatArray:
        """A point of the map at least ``takeover_min_distance`` from ``home`` (else the farthest corner)."""
        size, min_d = self.config.map_size, self.config.takeover_min_distance
        candidates = rng.uniform(0, size, (64, 2))
        far = candidates[np.hypot(*(candidates - home).T) >= min_d]
        if len(far):
            return np.asarray(far[0], dtype=np.float64)
        corners = np.array([[0, 0], [0, size], [size, 0], [size, size]], dtype=np.float64)
        return np.asarray(corners[np.argmax(np.hypot(*(corners - home).T))], dtype=np.float64)

    # ------------------------------------------------------------------ batch
    def generate(self, start: datetime, days: int) -> SimulatedBatch:
        """Simulate ``days`` days from ``start`` (naive = UTC; day k is [start + k d, start + (k+1) d),
        so pass a midnight for the rhythm to peak at noon). Sorted by timestamp."""
        if days < 1:
            raise ValueError("days must be >= 1")
        start = as_utc(start)
        rng = np.random.default_rng([self.config.seed, 1])
        incidents = Incidents()
        organic, day = self._organic(rng, start, days)
        self._inject_organic_fraud(rng, organic, day, days, incidents)
        injected = self._injected(rng, days, incidents)
        rows, t_us = self._in_time_order(Rows.concat([organic, injected]), days)
        return self._batch(rows, t_us, start, days, incidents)

    def _organic(self, rng: np.random.Generator, start: datetime, days: int) -> tuple[Rows, IntArray]:
        """The customers' own transactions, all legitimate, and the day of each: a Poisson count
        per customer-day, times of day around midday (draws outside the day dropped)."""
        cfg, p = self.config, self.population
        counts = rng.poisson(p.tx_per_day[:, None] * self._day_factors(start, days)[None, :])
        counts[p.n_neighbours == 0] = 0
        cell = np.repeat(np.arange(p.n_customers * days, dtype=np.int64), counts.ravel())
        time_of_day = rng.normal(cfg.time_of_day_mean_s, cfg.time_of_day_std_s, len(cell))
        inside = (time_of_day >= 0) & (time_of_day < DAY_S)
        cell, time_of_day = cell[inside], time_of_day[inside]
        customer, day = cell // days, cell % days
        terminal = self._terminals_for(rng, customer)
        amount = self._amounts(rng, customer)
        rows = Rows(day * DAY_S + time_of_day, customer, terminal, amount, np.zeros(len(cell), np.int8))
        return rows, day

    def _day_factors(self, start: datetime, days: int) -> FloatArray:
        """Each day's rate relative to the profile's: weekends weighted, the weekly volume kept."""
        weekend_factor = self.config.weekend_factor
        weekday = (start.weekday() + np.arange(days)) % 7
        weekday_rate = 7 / (5 + 2 * weekend_factor)
        return np.where(weekday >= 5, weekend_factor * weekday_rate, weekday_rate)

    def _inject_organic_fraud(
        self, rng: np.random.Generator, organic: Rows, day: IntArray, days: int, incidents: Incidents
    ) -> None:
        """Scenarios 1-3 on the organic rows, in place; records the compromises in ``incidents``."""
        outlier = self._outliers(organic.amount)
        at_terminal = self._compromised_terminals(rng, organic.terminal, day, days, incidents)
        stolen = self._compromised_cards(rng, organic.customer, day, days, incidents)
        self._label_organic(organic, outlier, at_terminal, stolen)

    def _outliers(self, amount: FloatArray) -> BoolArray:
        """Scenario 1: amounts above ``outlier_threshold`` (as drawn, before any inflation)."""
        threshold = self.config.outlier_threshold
        return amount > threshold if threshold is not None else np.zeros(len(amount), bool)

    def _compromised_terminals(
        self, rng: np.random.Generator, terminal: IntArray, day: IntArray, days: int, incidents: Incidents
    ) -> BoolArray:
        """Scenario 2: the rows at a terminal within its compromise window."""
        cfg, p = self.config, self.population
        ev, ev_day = self._daily_draws(rng, days, p.n_terminals, cfg.compromised_terminals_per_day)
        in_window, _, _, _ = _day_windows_mask(terminal, day, days, ev, ev_day, cfg.compromised_terminal_days)
        incidents.compromised_terminals = self._windows(ev, ev_day, cfg.compromised_terminal_days, days)
        return in_window

    def _compromised_cards(
        self, rng: np.random.Generator, customer: IntArray, day: IntArray, days: int, incidents: Incidents
    ) -> BoolArray:
        """Scenario 3: per compromise, a random ``compromised_card_fraction`` of the card's rows
        within the window (rounded down)."""
        cfg, p = self.config, self.population
        ev, ev_day = self._daily_draws(rng, days, p.n_customers, cfg.compromised_cards_per_day)
        _, order, lo, hi = _day_windows_mask(customer, day, days, ev, ev_day, cfg.compromised_card_days)
        stolen = np.zeros(len(customer), bool)
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            k = int((b - a) * cfg.compromised_card_fraction)
            if k:
                stolen[order[a + rng.choice(b - a, k, replace=False)]] = True
        incidents.compromised_cards = self._windows(ev, ev_day, cfg.compromised_card_days, days)
        return stolen

    @staticmethod
    def _windows(
        entity: IntArray, first_day: IntArray, window_days: int, days: int
    ) -> list[tuple[int, float, float]]:
        """Incident records (entity, start s, end s) of compromises, cut at the end of the batch."""
        return [
            (int(e), float(d * DAY_S), float(min(d + window_days, days) * DAY_S))
            for e, d in zip(entity.tolist(), first_day.tolist(), strict=True)
        ]

    def _label_organic(
        self, rows: Rows, outlier: BoolArray, at_terminal: BoolArray, stolen: BoolArray
    ) -> None:
        """Inflate the stolen cards' amounts, then set the codes so the lowest wins (3, then 2, then 1)."""
        rows.amount[stolen] = np.round(rows.amount[stolen] * self.config.compromised_card_amount_factor, 2)
        rows.scenario[stolen] = Scenario.COMPROMISED_CARD
        rows.scenario[at_terminal] = Scenario.COMPROMISED_TERMINAL
        rows.scenario[outlier] = Scenario.AMOUNT_OUTLIER

    def _injected(self, rng: np.random.Generator, days: int, incidents: Incidents) -> Rows:
        """Scenarios 4 and 5: card-testing bursts and takeovers, a Poisson number a day each."""
        cfg = self.config
        day_starts = np.arange(days, dtype=np.float64) * DAY_S
        bursts = self._card_testing(
            rng, np.repeat(day_starts, rng.poisson(cfg.card_testing_per_day, days)), DAY_S, 1.0, incidents
        )
        takeovers = self._takeovers(
            rng, np.repeat(day_starts, rng.poisson(cfg.takeover_per_day, days)), DAY_S, incidents
        )
        return Rows.concat([bursts, takeovers])

    @staticmethod
    def _in_time_order(rows: Rows, days: int) -> tuple[Rows, IntArray]:
        """The rows within the batch, sorted by their time in whole microseconds (returned too)."""
        rows = rows.take(rows.t_s < days * DAY_S)
        t_us = np.rint(rows.t_s * MICROS_PER_S).astype(np.int64)
        order = np.argsort(t_us, kind="stable")
        return rows.take(order), t_us[order]

    def _batch(
        self, rows: Rows, t_us: IntArray, start: datetime, days: int, incidents: Incidents
    ) -> SimulatedBatch:
        prefix = f"{self.config.seed}-{start:%Y%m%dT%H%M%S}-"
        return SimulatedBatch(
            transactions=self._frame(rows, t_us, start, [prefix + str(i) for i in range(len(rows))]),
            customers=self.customers,
            terminals=self.terminals,
            **self._incident_frames(incidents, start),
            start=start,
            days=days,
            config=self.config,
        )

    @staticmethod
    def _daily_draws(rng: np.random.Generator, days: int, n: int, per_day: int) -> tuple[IntArray, IntArray]:
        k = min(per_day, n)
        if k == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        drawn = np.concatenate([rng.choice(n, k, replace=False) for _ in range(days)]).astype(np.int64)
        return drawn, np.repeat(np.arange(days, dtype=np.int64), k)

    def _frame(self, rows: Rows, t_us: IntArray, start: datetime, ids: list[str]) -> pd.DataFrame:
        p = self.population
        base_us = int(pd.Timestamp(start).value // 1000)
        timestamps = pd.to_datetime((base_us + t_us) * 1000, unit="ns", utc=True)
        return pd.DataFrame(
            {
                "transaction_id": np.array(ids, dtype=object),
                "card_id": p.card_ids[rows.customer],
                "terminal_id": p.terminal_ids[rows.terminal],
                "amount": rows.amount,
                "currency": np.full(len(rows), self.config.currency, dtype=object),
                "timestamp": timestamps,
                "channel": p.channel_names[p.terminal_channel[rows.terminal]],
                "is_fraud": (rows.scenario > 0).astype(np.int8),
                "scenario": rows.scenario,
            }
        )

    def _incident_frames(self, inc: Incidents, start: datetime) -> dict[str, pd.DataFrame]:
        p = self.population
        base = pd.Timestamp(start)

        def when(seconds: list[float]) -> pd.DatetimeIndex:
            return base + pd.to_timedelta(
                np.rint(np.asarray(seconds, np.float64) * MICROS_PER_S).astype(np.int64), unit="us"
            )

        def table(
            records: list[Any], ids: npt.NDArray[np.object_], id_name: str, extra: list[str]
        ) -> pd.DataFrame:
            cols: list[Sequence[Any]] = (
                list(zip(*records, strict=True)) if records else [[] for _ in range(3 + len(extra))]
            )
            data: dict[str, Any] = {
                id_name: ids[np.asarray(cols[0], np.int64)],
                "start": when(list(cols[1])),
                "end": when(list(cols[2])),
            }
            for i, name in enumerate(extra):
                data[name] = np.asarray(cols[3 + i])
            return pd.DataFrame(data)

        return {
            "compromised_terminals": table(inc.compromised_terminals, p.terminal_ids, "terminal_id", []),
            "compromised_cards": table(inc.compromised_cards, p.card_ids, "card_id", []),
            "card_testing": table(inc.card_testing, p.card_ids, "card_id", ["n_small"]),
            "takeovers": table(inc.takeovers, p.card_ids, "card_id", ["center_x", "center_y"]),
        }

    # ------------------------------------------------------------------ rates
    def expected_daily_transactions(self) -> float:
        """Mean number of organic transactions a day (customers with a terminal, within-day times)."""
        cfg, p = self.config, self.population
        z = 1 / (cfg.time_of_day_std_s * math.sqrt(2))
        inside = 0.5 * (math.erf((DAY_S - cfg.time_of_day_mean_s) * z) + math.erf(cfg.time_of_day_mean_s * z))
        return float(p.tx_per_day[p.n_neighbours > 0].sum()) * inside
