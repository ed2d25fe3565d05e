"""The pipeline's typed kfp v2 components: lightweight Python components on the project's
image (``FRAUD_PIPELINE_IMAGE``, default ``ghcr.io/fraud-platform/pipeline:0.1.0``, built
from the lock by target ``pipeline`` of ``docker/Dockerfile``).

Parameters have no defaults here: the pipeline passes every argument, and its signature
takes the defaults from ``fraud_pipelines.defaults`` (a component's source is shipped to
its container on its own, so it cannot refer to that module's names).

Each component imports the project from its environment (nothing is installed at run time:
``packages_to_install`` is empty and kfp itself comes from the image) and delegates to
``fraud_pipelines.steps``, so the logic is testable without kfp. Artifacts: Parquet
Datasets, a joblib Model, an ONNX Model, Metrics, ClassificationMetrics and an HTML report.

No ``from __future__ import annotations`` here: kfp reads the annotations as objects.
"""

import os

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

DEFAULT_IMAGE = "ghcr.io/fraud-platform/pipeline:0.1.0"
IMAGE_ENV = "FRAUD_PIPELINE_IMAGE"


def pipeline_image() -> str:
    """The components' image: ``FRAUD_PIPELINE_IMAGE`` or the default."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


component = dsl.component(base_image=pipeline_image(), install_kfp_package=False, packages_to_install=[])


@component
def dataset(
    train: Output[Dataset],
    test: Output[Dataset],
    source: str,
    source_path: str,
    source_options: str,
    train_start: str,
    train_days: int,
    delay_days: int,
    test_days: int,
    history_days: int,
    burn_in_days: int,
):
    """Point-in-time training (history + training window) and test sets, split by time."""
    from fraud_pipelines.steps import dataset_step

    info = dataset_step(
        train.path,
        test.path,
        source=source,
        source_path=source_path,
        source_options=source_options,
        train_start=train_start,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
        history_days=history_days,
        burn_in_days=burn_in_days,
    )
    counts = {k: info[k] for k in ("source", "transactions", "labels", "test_rows", "test_frauds")}
    train.metadata.update(
        {**counts, "rows": info["train_rows"] + info["history_rows"], "windows": info["windows"]}
    )
    test.metadata.update({**counts, "rows": info["test_rows"], "windows": info["windows"]})


@component
def train(
    train_set: Input[Dataset],
    model: Output[Model],
    validation: Output[Metrics],
    candidates: str,
    folds: int,
    search: str,
    seed: int,
):
    """Prequential model selection by average precision; the best model as joblib."""
    import json

    from fraud_pipelines.steps import train_step

    result = train_step(
        train_set.path, model.path, candidates=candidates, folds=folds, search=search, seed=seed
    )
    for name, value in result["metrics"].items():
        validation.log_metric(name, value)
    model.metadata.update(
        {
            "framework": "scikit-learn",
            "format": "joblib",
            "candidate": result["candidate"],
            "params": json.dumps(result["params"]),
            "threshold": result["threshold"],
            "trained_at": result["trained_at"],
        }
    )


@component
def evaluate(
    model: Input[Model],
    test: Input[Dataset],
    predictions: Output[Dataset],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    threshold: float,
    k: int,
    protocol: str,
):
    """Test metrics (AUC-ROC, AP, card precision@k, precision/recall at the threshold,
    calibration) on the rows ``protocol`` scores (window: all; handbook: the Fraud Detection
    Handbook's test set), and both protocols' ranking figures by name; ``threshold`` < 0
    takes the one chosen in validation."""
    from fraud_pipelines.steps import evaluate_step, finite

    result = evaluate_step(
        model.path, test.path, predictions.path, evaluation.path, threshold=threshold, k=k, protocol=protocol
    )
    for name, value in finite(result["metrics"]).items():
        metrics.log_metric(name, value)
    classification.log_confusion_matrix(["legit", "fraud"], result["confusion"])
    roc = result["roc"]
    if roc["fpr"]:
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])


@component
def export(
    model: Input[Model],
    test: Input[Dataset],
    onnx_model: Output[Model],
    model_name: str,
    version: str,
    code_revision: str,
) -> str:
    """ONNX export (skl2onnx) with the parity gate; returns the model version."""
    from fraud_pipelines.steps import export_step

    result = export_step(
        model.path, test.path, onnx_model.path, model_name=model_name, version=version, revision=code_revision
    )
    onnx_model.metadata.update(
        {"framework": "onnx", "version": result["version"], "parity_max_difference": result["max_difference"]}
    )
    return result["version"]


@component
def publish(
    onnx_model: Input[Model],
    test: Input[Dataset],
    evaluation: Input[Artifact],
    version: str,
    model_name: str,
    min_improvement: float,
    shadow: bool,
    upload: bool,
) -> str:
    """Upload to the models bucket, champion/challenger on the same test window, Triton
    repository and a model-events record when the champion moves; returns a JSON summary."""
    import json

    from fraud_pipelines.steps import publish_step

    summary = publish_step(
        onnx_model.path,
        test.path,
        evaluation.path,
        model_name=model_name,
        min_improvement=min_improvement,
        shadow=shadow,
        upload=upload,
    )
    if summary["version"] != version:
        raise RuntimeError(f"the ONNX model is version {summary['version']}, the export step said {version}")
    return json.dumps(summary, default=str)


@component
def report(
    model: Input[Model],
    test: Input[Dataset],
    predictions: Input[Dataset],
    evaluation: Input[Artifact],
    html_report: Output[HTML],
    k: int,
):
    """The HTML report with embedded figures."""
    from fraud_pipelines.steps import report_step

    report_step(model.path, test.path, predictions.path, evaluation.path, html_report.path, k=k)
