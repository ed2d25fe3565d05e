"""A generative model of card payments with injected fraud, vectorised with numpy.

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
the same seed and config give the same output, call after call.

Usage::

    sim = Simulator(SimulatorConfig(seed=7))
    batch = sim.generate(datetime(2018, 4, 1, tzinfo=UTC), days=183)
    payloads = to_event_bytes(batch.transactions)     # transaction events, no labels
    chargebacks = labels(batch, delay=timedelta(days=7))
    label_payloads = label_events(chargebacks)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fraudcore.events import SCHEMA_VERSION, CurrencyCode, format_timestamp

__all__ = [
    "CHANNELS",
    "GROUND_TRUTH_COLUMNS",
    "LABEL_COLUMNS",
    "TRANSACTION_COLUMNS",
    "Scenario",
    "SimulatedBatch",
    "Simulator",
    "SimulatorConfig",
    "empty_transactions",
    "format_timestamps",
    "label_events",
    "labels",
    "to_event_bytes",
    "to_events",
]

DAY_S = 86_400
_US = 1_000_000

#: The event fields, in contract order. ``channel`` may hold None (then it is left out).
TRANSACTION_COLUMNS = (
    "transaction_id",
    "card_id",
    "terminal_id",
    "amount",
    "currency",
    "timestamp",
    "channel",
)
#: Ground truth the simulator (or a labelled replay file) knows; never part of the event.
GROUND_TRUTH_COLUMNS = ("is_fraud", "scenario")
#: Columns of the frame returned by ``labels``.
LABEL_COLUMNS = (
    "transaction_id",
    "card_id",
    "terminal_id",
    "transaction_timestamp",
    "reported_at",
    "scenario",
)
Channel = Literal["pos", "ecom", "atm"]
CHANNELS: tuple[Channel, ...] = ("pos", "ecom", "atm")
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def _default_channel_weights() -> dict[Channel, float]:
    return {"pos": 0.75, "ecom": 0.2, "atm": 0.05}


class Scenario(IntEnum):
    """Label codes; 1-5 are the contract's fraud-label ``scenario`` values."""

    LEGIT = 0
    AMOUNT_OUTLIER = 1
    COMPROMISED_TERMINAL = 2
    COMPROMISED_CARD = 3
    CARD_TESTING = 4
    ACCOUNT_TAKEOVER = 5


class SimulatorConfig(BaseModel):
    """Population, spending behaviour and fraud-scenario rates. Defaults: the handbook's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0)
    currency: CurrencyCode = "EUR"

    # Population (handbook: 5,000 customers, 10,000 terminals, radius 5 on a 100 x 100 map).
    n_customers: int = Field(5_000, ge=1)
    n_terminals: int = Field(10_000, ge=1)
    map_size: float = Field(100.0, gt=0)
    radius: float = Field(5.0, gt=0)
    mean_amount: tuple[float, float] = (5.0, 100.0)
    std_ratio: float = Field(0.5, ge=0, description="std of a customer's amounts / its mean amount")
    tx_per_day: tuple[float, float] = (0.0, 4.0)
    channel_weights: dict[Channel, float] = Field(
        default_factory=_default_channel_weights,
        description="share of terminals per channel",
    )

    # Daily and weekly rhythm.
    time_of_day_mean_s: float = Field(DAY_S / 2, ge=0, le=DAY_S)
    time_of_day_std_s: float = Field(20_000.0, gt=0)
    weekend_factor: float = Field(
        0.8, ge=0, description="Sat/Sun rate relative to weekdays; the weekly volume stays the same"
    )

    # 1. Amount outliers (None: off).
    outlier_threshold: float | None = Field(220.0, gt=0)
    # 2. Compromised terminals.
    compromised_terminals_per_day: int = Field(2, ge=0)
    compromised_terminal_days: int = Field(28, ge=1)
    # 3. Compromised cards.
    compromised_cards_per_day: int = Field(3, ge=0)
    compromised_card_days: int = Field(14, ge=1)
    compromised_card_fraction: float = Field(1 / 3, ge=0, le=1)
    compromised_card_amount_factor: float = Field(5.0, gt=0)
    # 4. Card testing bursts.
    card_testing_per_day: float = Field(1.0, ge=0)
    card_testing_small_count: tuple[int, int] = (5, 15)
    card_testing_small_amount: tuple[float, float] = (0.5, 3.0)
    card_testing_span_s: tuple[float, float] = (60.0, 300.0)
    card_testing_terminals: tuple[int, int] = (1, 3)
    card_testing_cashout_delay_s: tuple[float, float] = (30.0, 600.0)
    card_testing_large_amount: tuple[float, float] = (150.0, 600.0)
    # 5. Account takeover.
    takeover_per_day: float = Field(1.0, ge=0)
    takeover_days: tuple[float, float] = (1.0, 2.0)
    takeover_tx_per_day: float = Field(4.0, gt=0)
    takeover_min_distance: float = Field(50.0, ge=0)
    takeover_terminals: tuple[int, int] = (1, 3)
    takeover_amount_factor: tuple[float, float] = (3.0, 8.0)

    @field_validator("channel_weights")
    @classmethod
    def _weights(cls, value: dict[Channel, float]) -> dict[Channel, float]:
        if any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("channel weights must be >= 0 with a positive sum")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> SimulatorConfig:
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if info.annotation in (tuple[float, float], tuple[int, int]):
                lo, hi = value
                if not 0 <= lo <= hi:
                    raise ValueError(f"{name}: need 0 <= low <= high, got {value}")
        if self.card_testing_small_count[0] < 1 or self.card_testing_terminals[0] < 1:
            raise ValueError("card testing needs at least one small payment and one terminal")
        if self.takeover_terminals[0] < 1 or self.takeover_days[1] <= 0:
            raise ValueError("a takeover needs at least one terminal and a positive duration")
        return self


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
class _Rows:
    """Transactions under construction: seconds from the start, indices, amounts, codes."""

    t_s: FloatArray
    customer: IntArray
    terminal: IntArray
    amount: FloatArray
    scenario: npt.NDArray[np.int8]

    @classmethod
    def empty(cls) -> _Rows:
        return cls(
            np.empty(0),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0),
            np.empty(0, np.int8),
        )

    @classmethod
    def concat(cls, parts: list[_Rows]) -> _Rows:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.t_s for p in parts]),
            np.concatenate([p.customer for p in parts]),
            np.concatenate([p.terminal for p in parts]),
            np.concatenate([p.amount for p in parts]),
            np.concatenate([p.scenario for p in parts]),
        )

    def take(self, index: IntArray | BoolArray) -> _Rows:
        return _Rows(
            self.t_s[index],
            self.customer[index],
            self.terminal[index],
            self.amount[index],
            self.scenario[index],
        )

    def __len__(self) -> int:
        return len(self.t_s)


@dataclass
class _Incidents:
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


def _as_utc(ts: datetime) -> datetime:
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
    """Generates a population once, then batches (``generate``) or a live stream (``iter_live``)."""

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
        out: _Incidents,
    ) -> _Rows:
        """Scenario 4: one burst per entry of ``day_start_s``; durations scaled by ``scale``."""
        cfg, p = self.config, self.population
        ecom = self._ecom_terminals()
        parts: list[_Rows] = []
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
                _Rows(
                    np.append(t_small, t_large),
                    np.full(n, card, np.int64),
                    terms[rng.integers(0, len(terms), n)],
                    amounts,
                    np.full(n, Scenario.CARD_TESTING, np.int8),
                )
            )
            out.card_testing.append((card, float(t0), float(t_large), n_small))
        return _Rows.concat(parts)

    def _takeovers(
        self, rng: np.random.Generator, day_start_s: FloatArray, day_len_s: float, out: _Incidents
    ) -> _Rows:
        """Scenario 5: one takeover per entry of ``day_start_s``; a 'day' lasts ``day_len_s``."""
        cfg, p = self.config, self.population
        parts: list[_Rows] = []
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
                _Rows(
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
        return _Rows.concat(parts)

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
        cfg, p = self.config, self.population
        start = _as_utc(start)
        rng = np.random.default_rng([cfg.seed, 1])
        incidents = _Incidents()

        # Organic transactions: Poisson count per customer-day, time of day around midday.
        weekday = (start.weekday() + np.arange(days)) % 7
        weekday_rate = 7 / (5 + 2 * cfg.weekend_factor)
        day_factor = np.where(weekday >= 5, cfg.weekend_factor * weekday_rate, weekday_rate)
        counts = rng.poisson(p.tx_per_day[:, None] * day_factor[None, :])
        counts[p.n_neighbours == 0] = 0
        cell = np.repeat(np.arange(p.n_customers * days, dtype=np.int64), counts.ravel())
        time_of_day = rng.normal(cfg.time_of_day_mean_s, cfg.time_of_day_std_s, len(cell))
        inside = (time_of_day >= 0) & (time_of_day < DAY_S)
        cell, time_of_day = cell[inside], time_of_day[inside]
        customer, day = cell // days, cell % days
        terminal = self._terminals_for(rng, customer)
        amount = self._amounts(rng, customer)
        scenario = np.zeros(len(cell), np.int8)

        # 3 first for the amounts (inflation), then codes in order 1, 2, 3.
        outlier = (
            amount > cfg.outlier_threshold if cfg.outlier_threshold is not None else np.zeros(len(cell), bool)
        )
        term_ev, term_day = self._daily_draws(rng, days, p.n_terminals, cfg.compromised_terminals_per_day)
        at_compromised, _, _, _ = _day_windows_mask(
            terminal, day, days, term_ev, term_day, cfg.compromised_terminal_days
        )
        card_ev, card_day = self._daily_draws(rng, days, p.n_customers, cfg.compromised_cards_per_day)
        _, order, lo, hi = _day_windows_mask(
            customer, day, days, card_ev, card_day, cfg.compromised_card_days
        )
        stolen = np.zeros(len(cell), bool)
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            k = int((b - a) * cfg.compromised_card_fraction)
            if k:
                stolen[order[a + rng.choice(b - a, k, replace=False)]] = True
        amount[stolen] = np.round(amount[stolen] * cfg.compromised_card_amount_factor, 2)
        scenario[stolen] = Scenario.COMPROMISED_CARD
        scenario[at_compromised] = Scenario.COMPROMISED_TERMINAL
        scenario[outlier] = Scenario.AMOUNT_OUTLIER
        incidents.compromised_terminals = [
            (int(e), float(d * DAY_S), float(min(d + cfg.compromised_terminal_days, days) * DAY_S))
            for e, d in zip(term_ev.tolist(), term_day.tolist(), strict=True)
        ]
        incidents.compromised_cards = [
            (int(e), float(d * DAY_S), float(min(d + cfg.compromised_card_days, days) * DAY_S))
            for e, d in zip(card_ev.tolist(), card_day.tolist(), strict=True)
        ]
        organic = _Rows(day * DAY_S + time_of_day, customer, terminal, amount, scenario)

        # Injected scenarios 4 and 5.
        day_starts = np.arange(days, dtype=np.float64) * DAY_S
        bursts = self._card_testing(
            rng, np.repeat(day_starts, rng.poisson(cfg.card_testing_per_day, days)), DAY_S, 1.0, incidents
        )
        takeovers = self._takeovers(
            rng, np.repeat(day_starts, rng.poisson(cfg.takeover_per_day, days)), DAY_S, incidents
        )
        rows = _Rows.concat([organic, bursts, takeovers])
        rows = rows.take(rows.t_s < days * DAY_S)
        t_us = np.rint(rows.t_s * _US).astype(np.int64)
        order_t = np.argsort(t_us, kind="stable")
        rows, t_us = rows.take(order_t), t_us[order_t]
        prefix = f"{cfg.seed}-{start:%Y%m%dT%H%M%S}-"
        frame = self._frame(rows, t_us, start, [prefix + str(i) for i in range(len(rows))])
        return SimulatedBatch(
            transactions=frame,
            customers=self.customers,
            terminals=self.terminals,
            **self._incident_frames(incidents, start),
            start=start,
            days=days,
            config=cfg,
        )

    @staticmethod
    def _daily_draws(rng: np.random.Generator, days: int, n: int, per_day: int) -> tuple[IntArray, IntArray]:
        k = min(per_day, n)
        if k == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        drawn = np.concatenate([rng.choice(n, k, replace=False) for _ in range(days)]).astype(np.int64)
        return drawn, np.repeat(np.arange(days, dtype=np.int64), k)

    def _frame(self, rows: _Rows, t_us: IntArray, start: datetime, ids: list[str]) -> pd.DataFrame:
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

    def _incident_frames(self, inc: _Incidents, start: datetime) -> dict[str, pd.DataFrame]:
        p = self.population
        base = pd.Timestamp(start)

        def when(seconds: list[float]) -> pd.DatetimeIndex:
            return base + pd.to_timedelta(
                np.rint(np.asarray(seconds, np.float64) * _US).astype(np.int64), unit="us"
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

    # ------------------------------------------------------------------ live
    def iter_live(
        self, rate_per_s: float, start: datetime, *, slice_s: float = 1.0, day_s: float | None = None
    ) -> Iterator[pd.DataFrame]:
        """An endless stream for a live producer: one frame per ``slice_s`` seconds of event time.

        Transaction ``i`` has the timestamp ``start + i / rate_per_s`` (naive ``start`` = UTC),
        so the frames are evenly spaced; frame ``k`` holds the transactions of
        ``[start + k slice_s, start + (k + 1) slice_s)`` (possibly none at low rates) in the
        columns of ``generate``. A producer sends frame ``k`` when the clock reaches the end of
        its slice, with ``start = now``.

        Cards are drawn in proportion to their profile's rate (no daily rhythm: the rate is
        steady). The fraud scenarios evolve per *simulated day*, which lasts ``day_s`` seconds
        of event time; by default ``day_s`` is the population's daily volume divided by the
        rate, so the fraud mix matches ``generate``. Scenario durations (28- and 14-day
        compromises, bursts, takeovers) scale with it. Injected transactions (scenarios 4, 5)
        take the slot of an organic one. Deterministic for a given seed and ``start``.
        """
        if rate_per_s <= 0 or slice_s <= 0:
            raise ValueError("rate_per_s and slice_s must be > 0")
        return _LiveStream(self, rate_per_s, _as_utc(start), slice_s, day_s).frames()

    def expected_daily_transactions(self) -> float:
        """Mean number of organic transactions a day (customers with a terminal, within-day times)."""
        cfg, p = self.config, self.population
        z = 1 / (cfg.time_of_day_std_s * math.sqrt(2))
        inside = 0.5 * (math.erf((DAY_S - cfg.time_of_day_mean_s) * z) + math.erf(cfg.time_of_day_mean_s * z))
        return float(p.tx_per_day[p.n_neighbours > 0].sum()) * inside


class _LiveStream:
    """State of ``Simulator.iter_live``: active compromises and pending injected payments."""

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
        self.pending = _Rows.empty()
        self.incidents = _Incidents()

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
        injected = _Rows.concat(
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
        self.incidents = _Incidents()  # the live stream keeps no history

    def _slice(self, k: int) -> pd.DataFrame:
        sim, cfg, rng = self.sim, self.sim.config, self.rng
        i0 = math.ceil(round(k * self.slice_s * self.rate, 9))
        i1 = math.ceil(round((k + 1) * self.slice_s * self.rate, 9))
        n = i1 - i0
        slot = np.arange(i0, i1, dtype=np.int64)
        t_s = slot / self.rate
        slot_day = np.floor(t_s / self.day_s).astype(np.int64)
        last_day = int(slot_day[-1]) if n else int((i0 / self.rate) // self.day_s)
        while self.next_day <= last_day:
            self._start_day(self.next_day)
            self.next_day += 1

        customer = np.searchsorted(self.cdf, rng.random(n), side="right").astype(np.int64)
        customer = np.minimum(customer, len(self.cdf) - 1)
        terminal = sim._terminals_for(rng, customer)
        amount = sim._amounts(rng, customer)
        scenario = np.zeros(n, np.int8)
        at_terminal = np.zeros(n, bool)
        for ent, first, end in self.terminal_ev.tolist():
            at_terminal |= (terminal == ent) & (slot_day >= first) & (slot_day < end)
        on_card = np.zeros(n, bool)
        for ent, first, end in self.card_ev.tolist():
            on_card |= (customer == ent) & (slot_day >= first) & (slot_day < end)
        stolen = on_card & (rng.random(n) < cfg.compromised_card_fraction)
        outlier = amount > cfg.outlier_threshold if cfg.outlier_threshold is not None else np.zeros(n, bool)
        amount[stolen] = np.round(amount[stolen] * cfg.compromised_card_amount_factor, 2)
        scenario[stolen] = Scenario.COMPROMISED_CARD
        scenario[at_terminal] = Scenario.COMPROMISED_TERMINAL
        scenario[outlier] = Scenario.AMOUNT_OUTLIER

        # Due injected payments replace organic ones, in time order, one per slot.
        rows = _Rows(t_s, customer, terminal, amount, scenario)
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

        t_us = np.rint(t_s * _US).astype(np.int64)
        return sim._frame(rows, t_us, self.start, [self.prefix + str(i) for i in range(i0, i1)])

    def frames(self) -> Iterator[pd.DataFrame]:
        k = 0
        while True:
            yield self._slice(k)
            k += 1


# ---------------------------------------------------------------------- events and labels
def empty_transactions() -> pd.DataFrame:
    """A frame with no rows in the shape of ``generate``'s transactions."""
    return pd.DataFrame(
        {
            "transaction_id": pd.Series([], dtype=object),
            "card_id": pd.Series([], dtype=object),
            "terminal_id": pd.Series([], dtype=object),
            "amount": pd.Series([], dtype=np.float64),
            "currency": pd.Series([], dtype=object),
            "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
            "channel": pd.Series([], dtype=object),
            "is_fraud": pd.Series([], dtype=np.int8),
            "scenario": pd.Series([], dtype=np.int8),
        }
    )


def format_timestamps(values: pd.Series) -> list[str]:
    """Vectorised ``fraudcore.events.format_timestamp`` (UTC, microseconds, ``+00:00``)."""
    if len(values) == 0:
        return []
    series = pd.Series(values)
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not pd.api.types.is_datetime64_any_dtype(series.dtype):
        return [format_timestamp(pd.Timestamp(v).to_pydatetime()) for v in series]
    micro = series.to_numpy().astype("datetime64[us]")
    text = np.datetime_as_string(micro, unit="us")
    return [s + "+00:00" for s in text.tolist()]


def to_events(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Transaction events (contract v1) for the rows of ``frame``, in order; no ground truth.

    ``channel`` is left out where it is None/NaN. Works on ``generate``, ``iter_live`` and
    ``replay.load_replay`` frames.
    """
    if len(frame) == 0:
        return []
    ids = frame["transaction_id"].astype(str).tolist()
    cards = frame["card_id"].astype(str).tolist()
    terms = frame["terminal_id"].astype(str).tolist()
    amounts = frame["amount"].astype(np.float64).tolist()
    currencies = frame["currency"].tolist()
    stamps = format_timestamps(frame["timestamp"])
    base = [
        {
            "schema_version": SCHEMA_VERSION,
            "transaction_id": i,
            "card_id": c,
            "terminal_id": t,
            "amount": a,
            "currency": cur,
            "timestamp": ts,
        }
        for i, c, t, a, cur, ts in zip(ids, cards, terms, amounts, currencies, stamps, strict=True)
    ]
    if "channel" in frame.columns:
        channel = frame["channel"]
        present = channel.notna().to_numpy()
        for event, ch, ok in zip(base, channel.tolist(), present.tolist(), strict=True):
            if ok:
                event["channel"] = ch
    return base


def to_event_bytes(frame: pd.DataFrame, chunk_rows: int = 50_000) -> list[bytes]:
    """``to_events`` serialised as compact JSON (what goes on the wire).

    Works through ``chunk_rows`` rows at a time so the intermediate dicts stay few.
    """
    dumps = orjson.dumps
    out: list[bytes] = []
    for lo in range(0, len(frame), chunk_rows):
        out.extend(dumps(e) for e in to_events(frame.iloc[lo : lo + chunk_rows]))
    return out


def labels(
    batch: SimulatedBatch | pd.DataFrame,
    delay: timedelta = timedelta(days=7),
    *,
    jitter: timedelta = timedelta(0),
    seed: int = 0,
) -> pd.DataFrame:
    """Fraud labels (chargebacks) for the fraud rows, sorted by ``reported_at``.

    ``reported_at`` = transaction time + ``delay`` + U(0, ``jitter``) (drawn with ``seed``).
    Columns ``LABEL_COLUMNS``; the timestamps are ``datetime64[ns, UTC]``, ``scenario`` int8.
    """
    frame = batch.transactions if isinstance(batch, SimulatedBatch) else batch
    fraud = frame.loc[frame["is_fraud"].to_numpy() != 0]
    codes = fraud["scenario"].to_numpy(np.int64)
    if len(codes) and not ((codes >= 1) & (codes <= 5)).all():
        raise ValueError("every fraud row needs a scenario code in 1..5 (the label contract requires one)")
    extra = np.zeros(len(fraud), np.int64)
    jitter_us = int(jitter / timedelta(microseconds=1))
    if jitter_us > 0:
        extra = np.random.default_rng(seed).integers(0, jitter_us + 1, len(fraud))
    ts = pd.DatetimeIndex(fraud["timestamp"])
    if ts.tz is None:
        ts = ts.tz_localize("UTC")
    out = pd.DataFrame(
        {
            "transaction_id": fraud["transaction_id"].to_numpy(),
            "card_id": fraud["card_id"].to_numpy(),
            "terminal_id": fraud["terminal_id"].to_numpy(),
            "transaction_timestamp": ts,
            "reported_at": ts + pd.Timedelta(delay) + pd.to_timedelta(extra, unit="us"),
            "scenario": codes.astype(np.int8),
        }
    )
    return out.sort_values("reported_at", kind="stable").reset_index(drop=True)


def label_events(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Fraud-label events (contract v1) for the rows of a ``labels`` frame."""
    if len(frame) == 0:
        return []
    return [
        {
            "schema_version": SCHEMA_VERSION,
            "transaction_id": str(i),
            "card_id": str(c),
            "terminal_id": str(t),
            "transaction_timestamp": ts,
            "reported_at": rep,
            "scenario": int(s),
        }
        for i, c, t, ts, rep, s in zip(
            frame["transaction_id"].tolist(),
            frame["card_id"].tolist(),
            frame["terminal_id"].tolist(),
            format_timestamps(frame["transaction_timestamp"]),
            format_timestamps(frame["reported_at"]),
            frame["scenario"].tolist(),
            strict=True,
        )
    ]
