"""ONNX export with a parity gate.

The ONNX model takes one float32 input ``input`` of shape ``[N, len(MODEL_FEATURES)]`` (the
columns of ``fraudcore.features.model_matrix``, in order) and returns ``label`` (int64 [N])
and ``probabilities`` (float32 [N, 2]; column 1 is the fraud probability). The model's
``metadata_props`` carry the feature names and order (``feature_names``, a JSON list), the
model name and version, the decision threshold and the training time, so a server can check
it is fed the right columns.

The gate: every test-set probability from onnxruntime must match scikit-learn's within
``PARITY_TOLERANCE``, or the export fails.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.pipeline import Pipeline

from fraud_pipelines.defaults import PARITY_TOLERANCE
from fraudcore.features import MODEL_FEATURES

INPUT_NAME = "input"
PROBABILITIES = "probabilities"
LABEL = "label"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


class ParityError(RuntimeError):
    """The ONNX model's probabilities differ from scikit-learn's."""

    def __init__(self, message: str, max_difference: float, mismatches: int) -> None:
        super().__init__(message)
        self.max_difference = max_difference
        self.mismatches = mismatches


def convert(
    estimator: Any, metadata: dict[str, str] | None = None, features: list[str] | None = None
) -> onnx.ModelProto:
    """The fitted classifier (a Pipeline, a forest, gradient boosting...) as ONNX."""
    names = list(features or MODEL_FEATURES)
    classifier = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    model = to_onnx(
        estimator,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(names)]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    outputs = [o.name for o in model.graph.output]
    if PROBABILITIES not in outputs:
        raise RuntimeError(f"the converted model has outputs {outputs}, not {PROBABILITIES!r}")
    props = {
        "feature_names": json.dumps(names),
        "n_features": str(len(names)),
        "input_name": INPUT_NAME,
        "output_name": PROBABILITIES,
        "positive_class_index": "1",
    }
    props.update(metadata or {})
    set_metadata(model, props)
    model.producer_name = "fraud-platform"
    model.doc_string = "Fraud probability of a card transaction from the features of fraudcore.features."
    return model


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)


def metadata_of(model: onnx.ModelProto | bytes) -> dict[str, str]:
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else model
    return {p.key: p.value for p in proto.metadata_props}


def session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def onnx_scores(
    model: onnx.ModelProto | bytes | ort.InferenceSession, x: npt.NDArray[np.float32], batch: int = 200_000
) -> npt.NDArray[np.float64]:
    """Fraud probabilities from the ONNX model (column 1 of ``probabilities``)."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    parts = [
        sess.run([PROBABILITIES], {INPUT_NAME: x32[lo : lo + batch]})[0][:, 1]
        for lo in range(0, len(x32), batch)
    ]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def check_parity(
    expected: npt.ArrayLike, actual: npt.ArrayLike, tolerance: float = PARITY_TOLERANCE
) -> float:
    """The largest absolute difference; raises ``ParityError`` above ``tolerance`` (or on NaN)."""
    a = np.asarray(expected, dtype=np.float64)
    b = np.asarray(actual, dtype=np.float64)
    if a.shape != b.shape:
        raise ParityError(
            f"shape mismatch: scikit-learn {a.shape}, ONNX {b.shape}", float("inf"), max(len(a), len(b))
        )
    diff = np.abs(a - b)
    bad = ~(diff <= tolerance)  # NaN counts as a mismatch
    worst = (
        float(np.nanmax(diff))
        if len(diff) and not np.isnan(diff).all()
        else (float("inf") if len(diff) else 0.0)
    )
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ParityError(
            f"ONNX parity gate failed: {int(bad.sum())} of {len(a)} probabilities differ by more than "
            f"{tolerance:g} (max {worst:.3g}; row {first}: scikit-learn {a[first]:.8f}, ONNX {b[first]:.8f})",
            worst,
            int(bad.sum()),
        )
    return worst
