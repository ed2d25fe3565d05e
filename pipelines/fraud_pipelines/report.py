"""The run's HTML report: metrics, the validation table and figures (PNG, embedded base64):
PR and ROC curves, card precision@k per day, feature importances (permutation importance on
a test sample), the confusion matrix at the threshold and a reliability diagram."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure
from sklearn.inspection import permutation_importance
from sklearn.metrics import precision_recall_curve, roc_curve

from fraud_pipelines.data import feature_matrix
from fraud_pipelines.protocols import protocol_rows
from fraudcore.features import MODEL_FEATURES

Log = Callable[[str], None]
PROTOCOL_TITLES = {
    "window": "window protocol: every test transaction",
    "handbook": "Handbook protocol: cards already known compromised left out",
}


def _quiet(_message: str) -> None:
    return None


def png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _figure(width: float = 5.5, height: float = 4.0) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(width, height))
    return fig, ax


def curves(y: npt.NDArray[Any], s: npt.NDArray[Any], ap: float, auc: float) -> tuple[str, str]:
    precision, recall, _ = precision_recall_curve(y, s)
    fig, ax = _figure()
    ax.plot(recall, precision, lw=1.5)
    ax.axhline(y.mean(), color="grey", ls="--", lw=1, label=f"fraud rate {y.mean():.4f}")
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title=f"Precision-recall (AP {ap:.3f})",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower left")
    pr = png(fig)
    fpr, tpr, _ = roc_curve(y, s)
    fig, ax = _figure()
    ax.plot(fpr, tpr, lw=1.5)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC (AUC {auc:.3f})",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    return pr, png(fig)


def card_precision_chart(per_day: dict[str, float], per_day_all: dict[str, float], k: int) -> str:
    days = sorted(per_day)
    fig, ax = _figure(7, 3.8)
    index = np.arange(len(days))
    ax.bar(index - 0.2, [per_day_all.get(d, np.nan) for d in days], 0.4, label="all cards")
    ax.bar(index + 0.2, [per_day[d] for d in days], 0.4, label="cards detected earlier removed (Handbook)")
    ax.set_xticks(index, days, rotation=45, ha="right")
    ax.set(ylabel=f"card precision@{k}", ylim=(0, 1), title=f"Card precision@{k} per day")
    ax.legend(loc="upper right", fontsize=8)
    return png(fig)


def confusion_chart(confusion: list[list[int]], threshold: float) -> str:
    matrix = np.asarray(confusion)
    fig, ax = _figure(4.2, 3.6)
    ax.imshow(np.log1p(matrix), cmap="Blues")
    dark = np.log1p(matrix) > np.log1p(matrix).max() / 2
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            f"{value:,}",
            ha="center",
            va="center",
            color="white" if dark[i, j] else "black",
            fontsize=11,
        )
    ax.set_xticks([0, 1], ["legit", "fraud"])
    ax.set_yticks([0, 1], ["legit", "fraud"])
    ax.set(xlabel="predicted", ylabel="actual", title=f"Confusion matrix at {threshold:.3f}")
    return png(fig)


def calibration_chart(bins: list[dict[str, float]]) -> str:
    used = [b for b in bins if b["count"]]
    fig, ax = _figure(4.5, 4.0)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.plot([b["mean_predicted"] for b in used], [b["observed_rate"] for b in used], marker="o")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed fraud rate",
        title="Reliability",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    return png(fig)


def importances(estimator: Any, test: pd.DataFrame, sample: int = 10_000, seed: int = 0) -> pd.Series:
    """Permutation importance (drop in average precision) on a test sample holding every
    fraud and legitimate rows up to ``sample`` in all."""
    y = test["is_fraud"].to_numpy(np.int64)
    rng = np.random.default_rng(seed)
    fraud = np.flatnonzero(y == 1)
    legit = np.flatnonzero(y == 0)
    take = rng.choice(legit, size=min(len(legit), max(0, sample - len(fraud))), replace=False)
    rows = np.sort(np.concatenate([fraud, take]))
    x = feature_matrix(test.iloc[rows])
    result = permutation_importance(
        estimator, x, y[rows], scoring="average_precision", n_repeats=3, random_state=seed, n_jobs=1
    )
    return pd.Series(result.importances_mean, index=MODEL_FEATURES).sort_values()


def importance_chart(values: pd.Series) -> str:
    fig, ax = _figure(6, 0.28 * len(values) + 1)
    ax.barh(values.index, values.to_numpy())
    ax.set(xlabel="drop in average precision when shuffled", title="Permutation importance (test sample)")
    return png(fig)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


def build_report(
    *,
    evaluation: dict[str, Any],
    scores: npt.NDArray[Any],
    test: pd.DataFrame,
    estimator: Any,
    model_info: dict[str, Any],
    dataset_info: dict[str, Any],
    k: int = 100,
    log: Log = _quiet,
) -> str:
    """The report as one self-contained HTML page; the curves and importances use the test
    rows the evaluation's protocol scored."""
    metrics = evaluation["metrics"]
    protocol = evaluation.get("protocol", "window")
    scored = protocol_rows(test, protocol)
    test = test.loc[scored].reset_index(drop=True)
    y = test["is_fraud"].to_numpy(np.int64)
    s = np.asarray(scores, dtype=np.float64)[scored]
    figures: list[tuple[str, str]] = []
    if 0 < y.sum() < len(y):
        pr, roc = curves(y, s, metrics["average_precision"], metrics["auc_roc"])
        figures += [("Precision-recall curve", pr), ("ROC curve", roc)]
    figures.append(
        (
            "Card precision per day",
            card_precision_chart(
                evaluation["card_precision_per_day"], evaluation["card_precision_per_day_all_cards"], k
            ),
        )
    )
    figures.append(("Confusion matrix", confusion_chart(evaluation["confusion"], metrics["threshold"])))
    figures.append(("Calibration", calibration_chart(evaluation["calibration"])))
    if y.sum():
        log("permutation importance on a test sample")
        figures.append(("Feature importance", importance_chart(importances(estimator, test))))
    windows = dataset_info.get("windows", {})
    metric_rows = [{"metric": k_, "value": v} for k_, v in metrics.items()]
    window_rows = [
        {"window": w, "from": windows.get(a, ""), "to (exclusive)": windows.get(b, "")}
        for w, a, b in (
            ("history (validation)", "history_start", "train_start"),
            ("training", "train_start", "train_end"),
            ("label delay", "train_end", "test_start"),
            ("test", "test_start", "test_end"),
        )
    ]
    validation = model_info.get("validation", [])
    images = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, data in figures
    )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}"
        "figure{display:inline-block;margin:0.5em;vertical-align:top}figcaption{text-align:center;font-size:12px}"
    )
    counts = {
        k_: dataset_info.get(k_)
        for k_ in (
            "source",
            "transactions",
            "train_rows",
            "train_frauds",
            "history_rows",
            "test_rows",
            "test_frauds",
        )
    }
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Fraud model report</title><style>{style}</style></head><body>"
        f"<h1>Fraud model: {html.escape(str(model_info.get('candidate')))}</h1>"
        f"<p>Parameters: {html.escape(_fmt(model_info.get('params', {})))}; trained {html.escape(str(model_info.get('trained_at')))}; "
        f"threshold {metrics['threshold']:.4f}.</p>"
        f"<h2>Data</h2>{_table([counts], list(counts))}{_table(window_rows, ['window', 'from', 'to (exclusive)'])}"
        f"<h2>Test metrics ({html.escape(PROTOCOL_TITLES.get(protocol, protocol))})</h2>{_table(metric_rows, ['metric', 'value'])}"
        f"<h2>Prequential validation</h2>{_table(validation, ['candidate', 'params', 'mean_ap', 'mean_auc', 'fold_ap', 'seconds'])}"
        f"<h2>Figures</h2>{images}</body></html>"
    )
