"""The training data: point-in-time features over a history of transactions and labels,
split by time as a fraud team does it.

Sources (all give the same two frames, ``transactions`` and fraud ``labels``):

* ``archive``: the raw-event archive on MinIO (``transactions/dt=.../hour=.../*.parquet`` and
  ``labels/dt=.../hour=.../*.parquet`` in the raw bucket, under an optional prefix);
* ``file``: a user's labelled CSV/Parquet file read with ``fraud_producers.replay.load_replay``
  (local path or ``s3://bucket/key``), labels reported ``label_delay_days`` after each fraud;
* ``simulator``: ``fraud_producers.simulator`` (local runs, tests, the benchmark).

The split (``plan_windows``): ``[history_start, train_start)`` is earlier history the training
step uses for time-ordered validation, ``[train_start, train_end)`` the training window, then a
gap of ``delay_days`` (the label delay: the fraud team trains on the day the test starts, so
it cannot know labels reported after it), then ``[test_start, test_end)`` the test window. All
days are whole UTC days. The first ``burn_in_days`` of the data are never used as examples, so
every window feature has a full history behind it.

Labels: a transaction is fraud when its latest verdict says so, a chargeback being final
(``fraudcore.events.next_verdict``: an analyst's later "legitimate" never overturns one). A
training example is fraud when its verdicts reported before the *cutoff* (= ``test_start`` =
``train_end + delay``) make it one; labels not yet reported count as legitimate, as they
would in reality. The train frame keeps ``label_reported_at``, when that verdict became
known (NaT otherwise), so validation folds can cut their own labels at their own cutoffs.
Test examples carry the ground truth: every verdict on the test transactions, whenever
reported.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraud_pipelines.defaults import check_generator
from fraud_pipelines.params import DEFAULTS
from fraud_pipelines.protocols import KNOWN_COMPROMISED, handbook_known_compromised
from fraudcore.events import Verdict, label_is_fraud, next_verdict
from fraudcore.features import (
    CARD_HISTORY_S,
    LABEL_DELAY_DAYS,
    MODEL_FEATURES,
    TERMINAL_WINDOWS_DAYS,
    label_verdicts,
    model_matrix,
    offline_features,
)
from fraudcore.settings import Settings

DAY = pd.Timedelta(days=1)


def feature_lookback_days(delay_days: int) -> int:
    """How many days before a transaction its features read. A card is served the state after
    its previous transaction, over a 30-day window ending there: 60 days for a card used in
    the 30 days before (an idler card's state reaches further back, as it does online). A
    terminal's windows end ``delay_days`` before the transaction's day and span up to 30 days."""
    card_days = CARD_HISTORY_S // 86_400
    return max(2 * card_days, max(TERMINAL_WINDOWS_DAYS.values()) + delay_days)


SOURCES = ("archive", "file", "simulator")
METADATA_KEY = b"fraud_pipelines"
ID_COLUMNS = ["transaction_id", "card_id", "terminal_id", "timestamp"]

Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


# --------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Windows:
    """Whole-day UTC boundaries (start inclusive, end exclusive) of the time split."""

    data_start: pd.Timestamp
    history_start: pd.Timestamp
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    delay_days: int

    @property
    def cutoff(self) -> pd.Timestamp:
        """When the model is trained: labels reported before this are known."""
        return self.test_start

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: (v.strftime("%Y-%m-%d") if isinstance(v, pd.Timestamp) else v) for k, v in asdict(self).items()
        }
        out["cutoff"] = self.cutoff.strftime("%Y-%m-%d")
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Windows:
        days = {
            k: _day(values[k])
            for k in ("data_start", "history_start", "train_start", "train_end", "test_start", "test_end")
        }
        return cls(**days, delay_days=int(values["delay_days"]))


def _day(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.floor("D")


def plan_windows(
    data_start: Any,
    data_end: Any,
    *,
    train_start: str = "",
    train_days: int = DEFAULTS.train_days,
    delay_days: int = LABEL_DELAY_DAYS,
    test_days: int = DEFAULTS.test_days,
    history_days: int = DEFAULTS.history_days,
    burn_in_days: int = DEFAULTS.burn_in_days,
    auto_end: Any = None,
) -> Windows:
    """The time split for data covering the days ``[data_start, data_end)``.

    ``train_start`` (YYYY-MM-DD) fixes the windows; empty places the test window as late as
    the data allows: ending at ``auto_end`` (default ``data_end``; the archive passes the day
    before which every label is in). Raises ``ValueError`` when the windows do not fit.
    """
    if min(train_days, test_days) < 1 or min(delay_days, history_days, burn_in_days) < 0:
        raise ValueError("train_days and test_days must be >= 1; the other lengths >= 0")
    first, end = _day(data_start), _day(data_end)
    warm = first + burn_in_days * DAY
    if train_start:
        start = _day(train_start)
        test_start = start + (train_days + delay_days) * DAY
        test_end = test_start + test_days * DAY
        if test_end > end:
            raise ValueError(
                f"the test window {test_start:%Y-%m-%d}..{test_end - DAY:%Y-%m-%d} ends after the data "
                f"(last day {end - DAY:%Y-%m-%d})"
            )
    else:
        test_end = min(end, _day(auto_end)) if auto_end is not None else end
        test_start = test_end - test_days * DAY
        start = test_start - (train_days + delay_days) * DAY
    if start < warm:
        raise ValueError(
            f"the training window starts {start:%Y-%m-%d}, inside the {burn_in_days}-day burn-in "
            f"(data from {first:%Y-%m-%d}; first usable day {warm:%Y-%m-%d}): "
            "use more data, a later train_start or a shorter burn-in"
        )
    history_start = max(start - history_days * DAY, warm)
    return Windows(first, history_start, start, start + train_days * DAY, test_start, test_end, delay_days)


# --------------------------------------------------------------------------- sources
@dataclass
class RawData:
    """Transactions (id, card, terminal, amount, timestamp, ...) and fraud labels
    (transaction_id, reported_at, scenario)."""

    transactions: pd.DataFrame
    labels: pd.DataFrame
    source: str
    first_day: pd.Timestamp | None = None  # the data's first day (default: the first transaction's)
    complete_end: pd.Timestamp | None = None  # auto-planned windows end here (exclusive day)


HANDBOOK_GENERATOR_OPTIONS = ("seed", "n_customers", "n_terminals", "radius")


def simulate(options: dict[str, Any], delay_days: int = LABEL_DELAY_DAYS) -> RawData:
    """Generate data with a simulator. ``options``: ``generator`` (``platform``, the default:
    ``fraud_producers.simulator``; ``handbook``: the Fraud Detection Handbook's own generator,
    ``fraud_producers.handbook_data``), ``start`` (YYYY-MM-DD, default 2018-04-01), ``days``
    (default 183), ``label_delay_days`` (default ``delay_days``) and the generator's own
    options (``SimulatorConfig`` fields; ``HANDBOOK_GENERATOR_OPTIONS``)."""
    from fraud_producers.encoding import labels
    from fraud_producers.sim_config import SimulatorConfig
    from fraud_producers.simulator import Simulator

    opts = dict(options)
    generator = check_generator(opts.pop("generator", "platform"))
    start = _day(opts.pop("start", "2018-04-01")).to_pydatetime()
    days = int(opts.pop("days", 183))
    label_delay = int(opts.pop("label_delay_days", delay_days))
    if generator == "handbook":
        transactions = _handbook_generator(opts, start, days)
    else:
        transactions = Simulator(SimulatorConfig(**opts)).generate(start, days).transactions
    frame = labels(transactions, delay=timedelta(days=label_delay))
    return RawData(transactions, frame, "simulator", _day(start), _day(start) + days * DAY)


def _handbook_generator(options: dict[str, Any], start: datetime, days: int) -> pd.DataFrame:
    """The Handbook generator's transactions, read as the Handbook's published files are."""
    from fraud_producers.handbook_data import handbook_transactions
    from fraud_producers.replay import ColumnMapping, replay_frame

    unknown = sorted(set(options) - set(HANDBOOK_GENERATOR_OPTIONS))
    if unknown:
        raise ValueError(
            f"source options {unknown} do not apply to generator 'handbook' "
            f"(it takes {', '.join(HANDBOOK_GENERATOR_OPTIONS)}, start, days, label_delay_days)"
        )
    raw = handbook_transactions(days=days, start=f"{start:%Y-%m-%d}", **options)
    return replay_frame(
        raw, ColumnMapping.handbook(), Path(f"handbook-generator-seed-{options.get('seed', 0)}")
    )


def load_file(
    path: str, options: dict[str, Any], settings: Settings | None = None, delay_days: int = LABEL_DELAY_DAYS
) -> RawData:
    """A user's labelled file via ``load_replay``. ``options["mapping"]``: ``ColumnMapping``
    fields, or the string ``"handbook"``; ``options["label_delay_days"]``: when each label is
    taken as reported (default ``delay_days``). ``s3://bucket/key`` paths are downloaded first."""
    from fraud_producers.encoding import labels
    from fraud_producers.replay import ColumnMapping, load_replay

    mapping_opt = options.get("mapping", {})
    mapping = ColumnMapping.handbook() if mapping_opt == "handbook" else ColumnMapping(**mapping_opt)
    label_delay = int(options.get("label_delay_days", delay_days))
    if mapping.is_fraud is None and mapping.scenario is None:
        raise ValueError(f"{path}: the mapping names no is_fraud/scenario column, so the file has no labels")
    if path.startswith("s3://"):
        if settings is None:
            raise ValueError("an s3:// path needs settings")
        from fraudcore.storage import s3_client

        bucket, _, key = path[len("s3://") :].partition("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(key).name
            s3_client(settings).fget_object(bucket, key, str(local))
            frame = load_replay(local, mapping)
    else:
        frame = load_replay(path, mapping)
    return RawData(frame, labels(frame, delay=timedelta(days=label_delay)), "file")


def _partition_days(settings: Settings, prefix: str, kind: str) -> list[pd.Timestamp]:
    from fraudcore.storage import s3_client

    client = s3_client(settings)
    days = []
    for obj in client.list_objects(settings.s3.raw_bucket, prefix=f"{prefix}{kind}/", recursive=False):
        name = obj.object_name.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("dt="):
            days.append(_day(name[3:]))
    return sorted(days)


def _read_partitions(settings: Settings, prefix: str, kind: str, days: list[pd.Timestamp]) -> pd.DataFrame:
    from fraudcore.storage import s3_client

    client = s3_client(settings)
    bucket = settings.s3.raw_bucket
    names = [
        obj.object_name
        for day in days
        for obj in client.list_objects(bucket, prefix=f"{prefix}{kind}/dt={day:%Y-%m-%d}/", recursive=True)
        if obj.object_name.endswith(".parquet")
    ]

    def read(name: str) -> pa.Table:
        response = client.get_object(bucket, name)
        try:
            return pq.read_table(io.BytesIO(response.read()))
        finally:
            response.close()
            response.release_conn()

    with ThreadPoolExecutor(max_workers=8) as pool:
        tables = list(pool.map(read, names))
    if not tables:
        return pd.DataFrame()
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def load_archive(
    settings: Settings,
    prefix: str = "",
    since: pd.Timestamp | None = None,
    delay_days: int = LABEL_DELAY_DAYS,
) -> RawData:
    """Archived transactions (from ``since``'s day on) and every label reported since then.

    Duplicates (a block rewritten in a crash window) are dropped on ``transaction_id``. The
    newest day is taken as incomplete, and its last ``delay_days`` as lacking labels.
    """
    prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    days = _partition_days(settings, prefix, "transactions")
    if not days:
        raise ValueError(
            f"no archived transactions under s3://{settings.s3.raw_bucket}/{prefix}transactions/"
        )
    wanted = [d for d in days if since is None or d >= _day(since)]
    tx = _read_partitions(settings, prefix, "transactions", wanted)
    if tx.empty:
        raise ValueError(f"no archived transactions under {prefix}transactions/ since {since}")
    label_days = [d for d in _partition_days(settings, prefix, "labels") if not wanted or d >= wanted[0]]
    lab = _read_partitions(settings, prefix, "labels", label_days)
    if lab.empty:
        lab = pd.DataFrame(
            {
                "transaction_id": pd.Series([], dtype=object),
                "reported_at": pd.Series([], dtype="datetime64[ns, UTC]"),
                "scenario": pd.Series([], dtype=np.int8),
            }
        )
    order = [c for c in ("kafka_partition", "kafka_offset") if c in tx.columns]
    if order:
        tx = tx.sort_values(order, kind="stable")
    tx = tx.drop_duplicates("transaction_id", keep="first")
    tx = tx.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return RawData(tx, lab, "archive", days[0], days[-1] - delay_days * DAY)


# --------------------------------------------------------------------------- datasets
def _label_table(labels: pd.DataFrame | None, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per transaction judged fraud by its labels reported before ``as_of`` (all of
    them without it), by the label rule (``fraudcore.events.next_verdict``): ``reported_at``,
    when it became known as fraud (the verdict that last made it one), and ``scenario`` (the
    highest code among its fraud verdicts: a chargeback's beats an analyst's 0, unknown).
    Transactions whose verdict is "legitimate" are left out, as are unlabelled ones."""
    verdicts: dict[str, Verdict] = {}
    known_since: dict[str, pd.Timestamp] = {}
    scenario: dict[str, int] = {}
    if labels is not None and len(labels):
        frame = labels.assign(reported_at=pd.to_datetime(labels["reported_at"], utc=True))
        if as_of is not None:
            frame = frame.loc[frame["reported_at"] < as_of]
        frame = frame.sort_values("reported_at", kind="stable")
        codes = frame["scenario"].tolist() if "scenario" in frame else [1] * len(frame)
        rows = zip(frame["transaction_id"].tolist(), frame["reported_at"].tolist(), codes, strict=True)
        for (tx, reported_at, code), fields in zip(rows, label_verdicts(frame), strict=True):
            if fields is None:  # breaks the contract: no verdict
                continue
            before = verdicts.get(tx)
            verdicts[tx] = after = next_verdict(before, fields)
            if after.is_fraud and not (before is not None and before.is_fraud):
                known_since[tx] = reported_at
            if label_is_fraud(fields):
                scenario[tx] = max(scenario.get(tx, 0), int(code))
    frauds = pd.Index(
        [tx for tx, verdict in verdicts.items() if verdict.is_fraud], dtype=object, name="transaction_id"
    )
    return pd.DataFrame(
        {
            "reported_at": pd.Series([known_since[tx] for tx in frauds], frauds, "datetime64[ns, UTC]"),
            "scenario": pd.Series([scenario[tx] for tx in frauds], frauds, np.int8),
        }
    )


@dataclass
class Datasets:
    train: pd.DataFrame
    test: pd.DataFrame
    windows: Windows
    info: dict[str, Any]


def build_datasets(raw: RawData, windows: Windows, log: Log = _quiet) -> Datasets:
    """Point-in-time features (``fraudcore.features.offline_features``) and labels for the
    history+training window and the test window."""
    tx = raw.transactions.drop_duplicates("transaction_id", keep="first")
    ts = pd.to_datetime(tx["timestamp"], utc=True)
    lookback = feature_lookback_days(windows.delay_days) * DAY
    keep = ((ts >= windows.history_start - lookback) & (ts < windows.test_end)).to_numpy()
    tx = tx.loc[keep].sort_values("timestamp", kind="stable").reset_index(drop=True)
    log(f"features for {len(tx):,} transactions (history, windows and their look-back)")
    features = offline_features(tx, raw.labels, delay_days=windows.delay_days)
    ids = features["transaction_id"].to_numpy()
    known = _label_table(raw.labels)  # the ground truth: one row per fraud, whenever reported
    reported = known["reported_at"].reindex(ids).to_numpy()
    scenario = known["scenario"].reindex(ids).fillna(0).to_numpy(np.int8)
    reported_by_cutoff = _label_table(raw.labels, as_of=windows.cutoff)["reported_at"].reindex(ids).to_numpy()
    when = pd.to_datetime(features["timestamp"], utc=True)

    train_rows = ((when >= windows.history_start) & (when < windows.train_end)).to_numpy()
    train = features.loc[train_rows].reset_index(drop=True)
    rep = pd.DatetimeIndex(pd.to_datetime(reported_by_cutoff[train_rows], utc=True))
    known_at_cutoff = np.asarray(rep < windows.cutoff, dtype=bool)
    train["label_reported_at"] = rep.where(known_at_cutoff)
    train["is_fraud"] = known_at_cutoff.astype(np.int8)

    test_rows = ((when >= windows.test_start) & (when < windows.test_end)).to_numpy()
    test = features.loc[test_rows].reset_index(drop=True)
    test["is_fraud"] = pd.notna(reported[test_rows]).astype(np.int8)
    test["scenario"] = scenario[test_rows]
    # The Handbook's protocol leaves out the cards known compromised: marked from the same
    # ground truth as the test labels, so the evaluation can score either test set.
    known_compromised = handbook_known_compromised(
        features["card_id"].to_numpy(),
        when,
        pd.notna(reported),
        train_start=windows.train_start,
        test_start=windows.test_start,
        test_end=windows.test_end,
        delay_days=windows.delay_days,
    )
    test[KNOWN_COMPROMISED] = known_compromised[test_rows]
    in_window = (pd.to_datetime(train["timestamp"], utc=True) >= windows.train_start).to_numpy()
    info = {
        "source": raw.source,
        "transactions": len(raw.transactions),
        "labels": len(raw.labels),
        "train_rows": int(in_window.sum()),
        "train_frauds": int(train["is_fraud"].to_numpy()[in_window].sum()),
        "history_rows": int((~in_window).sum()),
        "test_rows": len(test),
        "test_frauds": int(test["is_fraud"].sum()),
        "features": list(MODEL_FEATURES),
        "windows": windows.to_dict(),
    }
    if len(test) == 0 or info["train_rows"] == 0:
        raise ValueError(f"empty training or test window: {info}")
    return Datasets(train, test, windows, info)


def feature_matrix(frame: pd.DataFrame) -> npt.NDArray[np.float32]:
    """``fraudcore.features.model_matrix`` of a frame's MODEL_FEATURES columns."""
    return model_matrix({name: frame[name].to_numpy() for name in MODEL_FEATURES})


def write_parquet(frame: pd.DataFrame, path: str | Path, info: dict[str, Any]) -> None:
    """Parquet with ``info`` (windows, counts) in the file's key-value metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(info).encode()
    pq.write_table(table.replace_schema_metadata(metadata), str(path))


def read_parquet(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    table = pq.read_table(str(path))
    raw = (table.schema.metadata or {}).get(METADATA_KEY, b"{}")
    return table.to_pandas(), json.loads(raw)


def load_source(
    source: str,
    source_path: str,
    options: dict[str, Any],
    settings_factory: Callable[[], Settings],
    delay_days: int,
    since: pd.Timestamp | None = None,
) -> RawData:
    if source == "simulator":
        return simulate(options, delay_days)
    if source == "file":
        if not source_path:
            raise ValueError("source 'file' needs source_path")
        return load_file(
            source_path, options, settings_factory() if source_path.startswith("s3://") else None, delay_days
        )
    if source == "archive":
        return load_archive(settings_factory(), source_path, since, delay_days)
    raise ValueError(f"unknown source {source!r}; one of {SOURCES}")


def data_bounds(raw: RawData) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    """First day, end of the data (exclusive day) and where auto-planned windows end."""
    ts = pd.to_datetime(raw.transactions["timestamp"], utc=True)
    if len(ts) == 0:
        raise ValueError(f"the {raw.source} source has no transactions")
    first = raw.first_day if raw.first_day is not None else ts.min().floor("D")
    end = ts.max().floor("D") + DAY
    auto_end = min(end, raw.complete_end) if raw.complete_end is not None else end
    return first, end, auto_end
