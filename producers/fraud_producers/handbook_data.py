"""The Fraud Detection Handbook's own data generator, draw for draw.

The Handbook (Le Borgne et al., *Reproducible Machine Learning for Credit Card Fraud
Detection*, chapter 3.2) publishes its model figures on one simulated data set. ``Simulator``
follows its model but draws differently (vectorised streams, a weekend factor, channels), so
its data are another draw of a similar simulation. This module makes the Handbook's draws
themselves, in the Handbook's order, with numpy's legacy ``RandomState`` and Python's
``random`` as the Handbook calls them:

* customer profiles from ``RandomState(0)``: per customer, in id order, x and y ~ U(0, 100),
  mean amount ~ U(5, 100) (std = mean / 2), mean transactions per day ~ U(0, 4);
* terminal profiles from ``RandomState(1)``: per terminal, x and y ~ U(0, 100);
* a customer's terminals: those at a Euclidean distance below ``radius`` (5);
* transactions per customer, from ``RandomState(id)`` and ``random.Random(id)``: each day a
  Poisson count; each transaction's second of the day ``int(normal(43200, 20000))``, kept if
  strictly inside the day; its amount normal(mean, std), redrawn U(0, 2 mean) if negative,
  rounded to cents; its terminal a uniform choice among the customer's (no terminal: no
  transactions);
* scenario 1: amounts above 220 are fraud; scenario 2: each day ``d`` but the last, 2
  terminals drawn as pandas' ``sample(n=2, random_state=d)`` does, every transaction at them
  on days ``d``..``d + 27`` is fraud; scenario 3: each such day 3 customers drawn the same
  way, and ``random.sample`` with ``random.seed(d)`` picks a third (rounded down) of their
  transactions on days ``d``..``d + 13``, whose amounts are multiplied by 5 and which are
  fraud. A later scenario's code overwrites an earlier one's.

With ``seed=0`` and the Handbook's sizes (5,000 customers, 10,000 terminals, 183 days from
2018-04-01) this is the Handbook's data set: 1,754,155 transactions, 14,681 of them fraud.
Another ``seed`` moves every seed the Handbook uses to one of its own (profiles ``2 seed`` and
``2 seed + 1``, customer ``i`` ``seed * n_customers + i``, day ``d`` ``seed * days + d``): a
different draw of the same generator.

The frame has the Handbook's columns (``TRANSACTION_ID``, ``TX_DATETIME`` naive,
``CUSTOMER_ID``, ``TERMINAL_ID``, ``TX_AMOUNT``, ``TX_TIME_SECONDS``, ``TX_TIME_DAYS``,
``TX_FRAUD``, ``TX_FRAUD_SCENARIO``); ``replay.ColumnMapping.handbook()`` reads it, as it reads
the Handbook's published files. It is made one draw at a time, as the Handbook makes it: about
40 s for the full size.
"""

from __future__ import annotations

import random

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["HANDBOOK_COLUMNS", "handbook_transactions"]

DAY_S = 86_400
OUTLIER_AMOUNT = 220.0
COMPROMISED_TERMINALS_PER_DAY, COMPROMISED_TERMINAL_DAYS = 2, 28
COMPROMISED_CUSTOMERS_PER_DAY, COMPROMISED_CUSTOMER_DAYS = 3, 14
HANDBOOK_COLUMNS = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)


def _profiles(n: int, seed: int, customers: bool) -> npt.NDArray[np.float64]:
    """Rows of (x, y, mean amount, transactions per day) for customers, (x, y) for terminals,
    drawn one profile after the other as the Handbook does."""
    rng = np.random.RandomState(seed)
    width = 4 if customers else 2
    out = np.empty((n, width))
    for i in range(n):
        out[i, 0] = rng.uniform(0, 100)
        out[i, 1] = rng.uniform(0, 100)
        if customers:
            out[i, 2] = rng.uniform(5, 100)
            out[i, 3] = rng.uniform(0, 4)
    return out


def _customer_rows(
    profile: npt.NDArray[np.float64], terminals: list[int], days: int, seed: int
) -> list[tuple[int, int, int, float]]:
    """One customer's transactions: (second since the start, day, terminal, amount)."""
    if not terminals:
        return []  # the Handbook keeps none; its draws are the customer's own streams, used by no one else
    rng = np.random.RandomState(seed)
    choose = random.Random(seed).choice
    mean, per_day = float(profile[2]), float(profile[3])
    std = mean / 2
    rows = []
    for day in range(days):
        for _ in range(rng.poisson(per_day)):
            second = int(rng.normal(DAY_S / 2, 20_000))
            if 0 < second < DAY_S:
                amount = rng.normal(mean, std)
                if amount < 0:
                    amount = rng.uniform(0, mean * 2)
                rows.append((second + day * DAY_S, day, choose(terminals), float(np.round(amount, 2))))
    return rows


def _pandas_sample(n: int, k: int, seed: int) -> npt.NDArray[np.int64]:
    """The positions ``Series.sample(n=k, random_state=seed)`` picks among ``n`` rows."""
    return np.random.RandomState(seed).choice(n, size=k, replace=False).astype(np.int64)


def handbook_transactions(
    n_customers: int = 5_000,
    n_terminals: int = 10_000,
    days: int = 183,
    start: str = "2018-04-01",
    radius: float = 5.0,
    seed: int = 0,
) -> pd.DataFrame:
    """The Handbook's generator's labelled transactions (module docstring), sorted by time."""
    if min(n_customers, n_terminals, days) < 1 or seed < 0:
        raise ValueError("n_customers, n_terminals and days must be >= 1 and seed >= 0")
    customers = _profiles(n_customers, 2 * seed, customers=True)
    terminal_xy = _profiles(n_terminals, 2 * seed + 1, customers=False)
    rows: list[tuple[int, int, int, int, float]] = []
    for customer in range(n_customers):
        distance = np.sqrt(np.sum(np.square(customers[customer, :2] - terminal_xy), axis=1))
        near = np.flatnonzero(distance < radius).tolist()
        drawn = _customer_rows(customers[customer], near, days, seed * n_customers + customer)
        rows.extend((second, day, customer, terminal, amount) for second, day, terminal, amount in drawn)
    frame = pd.DataFrame(
        rows, columns=["TX_TIME_SECONDS", "TX_TIME_DAYS", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT"]
    )
    frame["TX_DATETIME"] = pd.to_datetime(frame["TX_TIME_SECONDS"], unit="s", origin=pd.Timestamp(start))
    # The Handbook's sort (pandas' default, not stable): ties in time keep its order, which
    # scenario 3's draw depends on.
    frame = frame.sort_values("TX_DATETIME").reset_index(drop=True)
    _add_frauds(frame, n_customers, n_terminals, seed * days)
    frame.insert(0, "TRANSACTION_ID", np.arange(len(frame), dtype=np.int64))
    return frame[list(HANDBOOK_COLUMNS)]


def _add_frauds(frame: pd.DataFrame, n_customers: int, n_terminals: int, day_seed: int) -> None:
    """The three scenarios, in place, in the Handbook's order (module docstring)."""
    amount = frame["TX_AMOUNT"].to_numpy(np.float64).copy()
    fraud = np.zeros(len(frame), np.int64)
    scenario = np.zeros(len(frame), np.int64)
    outlier = amount > OUTLIER_AMOUNT
    fraud[outlier], scenario[outlier] = 1, 1
    day = frame["TX_TIME_DAYS"].to_numpy(np.int64)
    terminal = frame["TERMINAL_ID"].to_numpy(np.int64)
    customer = frame["CUSTOMER_ID"].to_numpy(np.int64)
    last_day = int(day.max()) if len(day) else 0
    k = min(COMPROMISED_TERMINALS_PER_DAY, n_terminals)
    for d in range(last_day):
        hit = np.isin(terminal, _pandas_sample(n_terminals, k, day_seed + d))
        rows = hit & (day >= d) & (day < d + COMPROMISED_TERMINAL_DAYS)
        fraud[rows], scenario[rows] = 1, 2
    k = min(COMPROMISED_CUSTOMERS_PER_DAY, n_customers)
    for d in range(last_day):
        hit = np.isin(customer, _pandas_sample(n_customers, k, day_seed + d))
        candidates = np.flatnonzero(hit & (day >= d) & (day < d + COMPROMISED_CUSTOMER_DAYS))
        # The Handbook seeds Python's generator with the day, then samples: the same draws.
        draw = random.Random(day_seed + d).sample(candidates.tolist(), k=len(candidates) // 3)
        picked = np.asarray(draw, dtype=np.int64)
        amount[picked] *= 5
        fraud[picked], scenario[picked] = 1, 3
    frame["TX_AMOUNT"] = amount
    frame["TX_FRAUD"] = fraud
    frame["TX_FRAUD_SCENARIO"] = scenario
