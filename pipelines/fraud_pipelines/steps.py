"""The pipeline's steps as plain functions over file paths.

The kfp components (``components.py``) are thin wrappers around these, so each step can be
run and tested without kfp. Every step logs progress lines starting with ``[fraud]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from fraud_pipelines import data as data_mod
from fraud_pipelines.defaults import PARITY_TOLERANCE
from fraud_pipelines.params import DEFAULTS
from fraudcore.drift import feature_reference
from fraudcore.features import MODEL_FEATURES
from fraudcore.settings import Settings, get_settings

# Each step imports the heavy libraries it needs itself: a step is a fresh process, and
# importing scikit-learn, onnxruntime and matplotlib for every step costs seconds.

PROGRESS_PREFIX = "[fraud] "
Log = Callable[[str], None]


def log(message: str) -> None:
    print(f"{PROGRESS_PREFIX}{message}", flush=True)


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries (what kfp's ``Metrics.log_metric`` takes)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(float(v))}


def data_window(windows: dict[str, Any]) -> dict[str, Any]:
    return {
        "history": {"start": windows.get("history_start"), "end": windows.get("train_start")},
        "train": {"start": windows.get("train_start"), "end": windows.get("train_end")},
        "delay_days": windows.get("delay_days"),
        "cutoff": windows.get("cutoff"),
        "test": {"start": windows.get("test_start"), "end": windows.get("test_end")},
        "data_start": windows.get("data_start"),
        "end_exclusive": True,
    }


# --------------------------------------------------------------------------- 1. dataset
def dataset_step(
    train_path: str,
    test_path: str,
    *,
    source: str = DEFAULTS.source,
    source_path: str = DEFAULTS.source_path,
    source_options: str = DEFAULTS.source_options,
    train_start: str = DEFAULTS.train_start,
    train_days: int = DEFAULTS.train_days,
    delay_days: int = DEFAULTS.delay_days,
    test_days: int = DEFAULTS.test_days,
    history_days: int = DEFAULTS.history_days,
    burn_in_days: int = DEFAULTS.burn_in_days,
    settings_factory: Callable[[], Settings] = get_settings,
    log: Log = log,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    options = json.loads(source_options or "{}")
    since = None
    if source == "archive" and train_start:
        lookback = history_days + data_mod.feature_lookback_days(delay_days)
        since = data_mod._day(train_start) - lookback * data_mod.DAY
    log(f"loading {source} data {source_path}".rstrip())
    raw = data_mod.load_source(source, source_path, options, settings_factory, delay_days, since)
    log(f"{len(raw.transactions):,} transactions, {len(raw.labels):,} fraud labels")
    first, end, auto_end = data_mod.data_bounds(raw)
    windows = data_mod.plan_windows(
        first,
        end,
        train_start=train_start,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
        history_days=history_days,
        burn_in_days=burn_in_days,
        auto_end=auto_end,
    )
    w = windows.to_dict()
    log(
        f"history {w['history_start']}, train {w['train_start']}..{w['train_end']}, test {w['test_start']}..{w['test_end']} (end exclusive)"
    )
    sets = data_mod.build_datasets(raw, windows, log)
    info = {**sets.info, "seconds": round(time.perf_counter() - t0, 2)}
    data_mod.write_parquet(sets.train, train_path, info)
    data_mod.write_parquet(sets.test, test_path, info)
    log(
        f"train {info['train_rows']:,} rows ({info['train_frauds']} known frauds) + {info['history_rows']:,} history rows; test {info['test_rows']:,} rows ({info['test_frauds']} frauds)"
    )
    return info


# --------------------------------------------------------------------------- 2. train
def train_step(
    train_path: str,
    model_path: str,
    *,
    candidates: str = DEFAULTS.candidates,
    folds: int = DEFAULTS.folds,
    search: str = DEFAULTS.search,
    seed: int = DEFAULTS.seed,
    log: Log = log,
) -> dict[str, Any]:
    from fraud_pipelines.training import train

    frame, info = data_mod.read_parquet(train_path)
    windows = data_mod.Windows.from_dict(info["windows"])
    names = [c.strip() for c in candidates.split(",") if c.strip()]
    result = train(frame, windows, candidates=names, n_folds=folds, search=search, seed=seed, log=log)
    bundle = result.bundle()
    bundle["windows"] = info["windows"]
    # The training window's distribution of every input: live drift is measured against it.
    in_window = (pd.to_datetime(frame["timestamp"], utc=True) >= windows.train_start).to_numpy()
    bundle["feature_distribution"] = feature_reference(
        {n: frame[n].to_numpy()[in_window] for n in MODEL_FEATURES}
    )
    joblib.dump(bundle, model_path)
    metrics: dict[str, float] = {}
    for i, row in enumerate(result.validation_table()):
        metrics[f"val_ap_{i}_{row['candidate']}"] = row["mean_ap"]
    best = max(result.scores, key=lambda s: s.mean_ap if math.isfinite(s.mean_ap) else -1.0)
    metrics.update(
        {
            "val_ap_best": best.mean_ap,
            "val_auc_best": best.mean_auc,
            "folds": float(len(result.folds)),
            "threshold": result.threshold,
            "train_seconds": result.seconds,
        }
    )
    return {
        "candidate": result.candidate,
        "params": result.params,
        "threshold": result.threshold,
        "trained_at": result.trained_at,
        "validation": result.validation_table(),
        "metrics": finite(metrics),
    }


# --------------------------------------------------------------------------- 3. evaluate
def scores_of(bundle: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(
        bundle["estimator"].predict_proba(data_mod.feature_matrix(frame))[:, 1], dtype=np.float64
    )


def evaluate_step(
    model_path: str,
    test_path: str,
    predictions_path: str,
    evaluation_path: str,
    *,
    threshold: float = DEFAULTS.threshold,
    k: int = DEFAULTS.k,
    protocol: str = DEFAULTS.protocol,
    log: Log = log,
) -> dict[str, Any]:
    from fraud_pipelines.evaluation import evaluate, roc_points
    from fraud_pipelines.protocols import protocol_rows

    bundle = joblib.load(model_path)
    test, info = data_mod.read_parquet(test_path)
    scores = scores_of(bundle, test)
    chosen = float(bundle["threshold"]) if threshold < 0 else float(threshold)
    result = evaluate(test, scores, chosen, k, protocol).to_dict()
    result["threshold_source"] = "validation (best F1)" if threshold < 0 else "parameter"
    scored = protocol_rows(test, protocol)
    result["roc"] = roc_points(test["is_fraud"].to_numpy()[scored], scores[scored])
    predictions = pd.DataFrame(
        {
            "transaction_id": test["transaction_id"].to_numpy(),
            "card_id": test["card_id"].to_numpy(),
            "timestamp": test["timestamp"].to_numpy(),
            "is_fraud": test["is_fraud"].to_numpy(),
            "score": scores,
        }
    )
    data_mod.write_parquet(predictions, predictions_path, info)
    Path(evaluation_path).write_text(json.dumps(result, indent=2))
    m = result["metrics"]
    log(
        f"test ({protocol} protocol, {m['test_transactions']:,.0f} transactions) AUC {m['auc_roc']:.4f}, AP {m['average_precision']:.4f}, CP@{k} {m[f'card_precision_at_{k}']:.4f}, threshold {chosen:.4f}"
    )
    return result


# --------------------------------------------------------------------------- 4. export
def new_version(model_path: str) -> str:
    digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()[:8]
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{digest}"


def export_step(
    model_path: str,
    test_path: str,
    onnx_path: str,
    *,
    model_name: str = DEFAULTS.model_name,
    version: str = DEFAULTS.version,
    revision: str = DEFAULTS.code_revision,
    tolerance: float = PARITY_TOLERANCE,
    log: Log = log,
) -> dict[str, Any]:
    from fraud_pipelines.onnx_export import check_parity, convert, onnx_scores
    from fraud_pipelines.publish import code_revision

    bundle = joblib.load(model_path)
    if list(bundle["features"]) != list(MODEL_FEATURES):
        raise ValueError(
            "the model was trained on another feature list than fraudcore.features.MODEL_FEATURES"
        )
    version = version or new_version(model_path)
    test, info = data_mod.read_parquet(test_path)
    props = {
        "model_name": model_name,
        "model_version": version,
        "candidate": bundle["candidate"],
        "params": json.dumps(bundle["params"]),
        "threshold": repr(float(bundle["threshold"])),
        "trained_at": bundle["trained_at"],
        "data_window": json.dumps(data_window(info.get("windows", {}))),
        "code_revision": code_revision(revision),
        "sklearn_version": bundle["sklearn_version"],
    }
    x = data_mod.feature_matrix(test)
    # Typical values: a server explains a score by moving each feature to its baseline.
    props["feature_baselines"] = json.dumps([round(float(v), 6) for v in np.median(x, axis=0)])
    if bundle.get("feature_distribution"):
        props["feature_distribution"] = json.dumps(bundle["feature_distribution"])
    model = convert(bundle["estimator"], props)
    onnx_bytes = model.SerializeToString()
    worst = check_parity(scores_of(bundle, test), onnx_scores(onnx_bytes, x), tolerance)
    Path(onnx_path).write_bytes(onnx_bytes)
    log(
        f"ONNX {len(onnx_bytes) / 1e6:.1f} MB, version {version}; parity on {len(x):,} test rows: max difference {worst:.2e} (gate {tolerance:g})"
    )
    return {"version": version, "max_difference": worst, "bytes": len(onnx_bytes), "rows_checked": len(x)}


# --------------------------------------------------------------------------- 5. publish
SUMMARY_FIELDS = ("metrics", "dataset", "data_window", "candidate", "params", "threshold")


_DATASET_FIELDS = (
    "source",
    "transactions",
    "labels",
    "train_rows",
    "train_frauds",
    "history_rows",
    "test_rows",
    "test_frauds",
)


def model_metadata(
    onnx_bytes: bytes, evaluation: dict[str, Any], dataset_info: dict[str, Any], model_name: str
) -> dict[str, Any]:
    """The model's ``metadata.json``: what it is, what it expects, how it did and on what data."""
    from fraud_pipelines.onnx_export import metadata_of

    props = metadata_of(onnx_bytes)
    return {
        "model_name": model_name,
        "version": props["model_version"],
        "format": "onnx",
        "input": {
            "name": props.get("input_name", "input"),
            "dtype": "float32",
            "shape": [None, len(MODEL_FEATURES)],
        },
        "output": {
            "name": props.get("output_name", "probabilities"),
            "dtype": "float32",
            "shape": [None, 2],
            "fraud_column": 1,
        },
        "features": json.loads(props["feature_names"]),
        "threshold": evaluation["metrics"]["threshold"],
        "candidate": props.get("candidate"),
        "params": json.loads(props.get("params", "{}")),
        "metrics": finite(evaluation["metrics"]),
        "card_precision_per_day": evaluation.get("card_precision_per_day"),
        "calibration": evaluation.get("calibration"),
        "score_distribution": evaluation.get("score_distribution"),
        "feature_distribution": json.loads(props.get("feature_distribution") or "{}"),
        "data_window": json.loads(props.get("data_window", "{}")),
        "dataset": {k: dataset_info.get(k) for k in _DATASET_FIELDS},
        "code_revision": props.get("code_revision", "unknown"),
        "trained_at": props.get("trained_at"),
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sklearn_version": props.get("sklearn_version"),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
    }


def publish_step(
    onnx_path: str,
    test_path: str,
    evaluation_path: str,
    *,
    model_name: str = DEFAULTS.model_name,
    min_improvement: float = DEFAULTS.min_improvement,
    shadow: bool = DEFAULTS.shadow,
    upload: bool = DEFAULTS.upload,
    settings_factory: Callable[[], Settings] = get_settings,
    log: Log = log,
) -> dict[str, Any]:
    from fraud_pipelines.publish import publish

    onnx_bytes = Path(onnx_path).read_bytes()
    test, info = data_mod.read_parquet(test_path)
    metadata = model_metadata(onnx_bytes, json.loads(Path(evaluation_path).read_text()), info, model_name)
    in_summary = {k: metadata[k] for k in SUMMARY_FIELDS}
    if not upload:
        log("upload disabled: nothing published")
        return {
            "model_name": model_name,
            "version": metadata["version"],
            "uri": None,
            "model_uri": None,
            "promoted": False,
            "decision": None,
            **in_summary,
        }
    summary = publish(
        settings_factory(),
        onnx_bytes,
        data_mod.feature_matrix(test),
        test["is_fraud"].to_numpy(np.int64),
        metadata,
        model_name=model_name,
        version=metadata["version"],
        min_improvement=min_improvement,
        shadow=shadow,
        log=log,
    )
    summary.update(in_summary)
    log(f"published {summary['uri']}")
    return summary


# --------------------------------------------------------------------------- 6. report
def report_step(
    model_path: str,
    test_path: str,
    predictions_path: str,
    evaluation_path: str,
    html_path: str,
    *,
    k: int = DEFAULTS.k,
    log: Log = log,
) -> None:
    from fraud_pipelines.report import build_report

    bundle = joblib.load(model_path)
    test, info = data_mod.read_parquet(test_path)
    predictions, _ = data_mod.read_parquet(predictions_path)
    evaluation = json.loads(Path(evaluation_path).read_text())
    page = build_report(
        evaluation=evaluation,
        scores=predictions["score"].to_numpy(),
        test=test,
        estimator=bundle["estimator"],
        model_info=bundle,
        dataset_info=info,
        k=k,
        log=log,
    )
    Path(html_path).write_text(page)
    log(f"report: {len(page) / 1e3:.0f} kB")
