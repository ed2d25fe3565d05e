"""Which test transactions an evaluation protocol scores.

* ``window``: every transaction of the test window.
* ``handbook``: the Fraud Detection Handbook's test set (its ``get_train_test_set``): a test
  day leaves out the transactions of cards the fraud team already knows to be compromised.
  Known on test day ``d``: every card with a fraud in the training window, and every card
  with a fraud on a later day before ``d - delay_days`` (the Handbook adds one delay day per
  test day: on the first test day nothing after the training window is known yet, on the
  second the first delay day's frauds are, and so on).

Only numpy and pandas here: the dataset step marks the test rows, the evaluation and the
report select them, and neither should pay for the other's imports.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

PROTOCOLS = ("window", "handbook")
#: The ranking figures each protocol reports by name (``handbook_auc_roc``, ...).
RANKING = ("auc_roc", "average_precision", "card_precision_at_100")
#: Test-set column: the card was known compromised before this transaction's day, so the
#: Handbook's protocol leaves the transaction out.
KNOWN_COMPROMISED = "card_known_compromised"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; one of {PROTOCOLS}")
    return protocol


def handbook_known_compromised(
    cards: npt.ArrayLike,
    timestamps: npt.ArrayLike,
    is_fraud: npt.ArrayLike,
    *,
    train_start: pd.Timestamp,
    test_start: pd.Timestamp,
    test_end: pd.Timestamp,
    delay_days: int,
) -> npt.NDArray[np.bool_]:
    """For each transaction: True when it lies in the test window ``[test_start, test_end)``
    and its card had a fraud (ground truth) on a UTC day in ``[train_start, day - delay_days)``,
    ``day`` being the transaction's own UTC day. ``cards``, ``timestamps`` and ``is_fraud``
    must cover the training window, the delay days and the test window."""
    when = pd.DatetimeIndex(pd.to_datetime(np.asarray(timestamps), utc=True))
    day = when.floor("D")
    card = pd.Series(np.asarray(cards))
    fraud = np.asarray(is_fraud).astype(np.int64) > 0
    counted = fraud & np.asarray((when >= train_start) & (when < test_end), dtype=bool)
    first_fraud_day = pd.Series(day[counted]).groupby(card[counted].to_numpy()).min()
    card_first_fraud = pd.DatetimeIndex(card.map(first_fraud_day))  # NaT: no fraud counted
    known_before = day - pd.Timedelta(days=delay_days)
    in_test = np.asarray((when >= test_start) & (when < test_end), dtype=bool)
    known = np.asarray(card_first_fraud < known_before, dtype=bool)  # NaT compares False
    return in_test & known


def protocol_rows(test: pd.DataFrame, protocol: str) -> npt.NDArray[np.bool_]:
    """The test rows a protocol scores."""
    if check_protocol(protocol) == "window":
        return np.ones(len(test), dtype=bool)
    if KNOWN_COMPROMISED not in test.columns:
        raise ValueError(
            f"the handbook protocol needs the test set's {KNOWN_COMPROMISED!r} column, which the "
            "dataset step writes: build the data set again"
        )
    return ~test[KNOWN_COMPROMISED].to_numpy(bool)
