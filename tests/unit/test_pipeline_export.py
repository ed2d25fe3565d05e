"""ONNX export: the model's interface, its metadata and the parity gate."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from fraud_pipelines import onnx_export, steps
from fraud_pipelines.data import write_parquet
from fraud_pipelines.onnx_export import ParityError, check_parity, convert, metadata_of, onnx_scores
from fraud_pipelines.training import make_estimator, param_grid
from fraudcore.features import MODEL_FEATURES


def _frame(n: int = 3_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: rng.gamma(2.0, 10.0, n) for name in MODEL_FEATURES})
    frame["is_night"] = rng.integers(0, 2, n).astype(float)
    risk = frame["amount"] / 20 + frame["terminal_risk_7d"] / 10 + rng.normal(0, 1, n)
    frame["is_fraud"] = (risk > np.quantile(risk, 0.9)).astype(np.int8)
    frame["transaction_id"] = [f"t{i}" for i in range(n)]
    frame["card_id"] = [f"c{i % 200}" for i in range(n)]
    frame["timestamp"] = pd.Timestamp("2024-03-01", tz="UTC") + pd.to_timedelta(np.arange(n) * 60, unit="s")
    return frame


def _bundle(candidate: str, frame: pd.DataFrame) -> dict[str, Any]:
    x = frame[MODEL_FEATURES].to_numpy(np.float32)
    estimator = make_estimator(candidate, param_grid(candidate, "quick")[0]).fit(
        x, frame["is_fraud"].to_numpy()
    )
    return {
        "estimator": estimator,
        "features": list(MODEL_FEATURES),
        "candidate": candidate,
        "params": param_grid(candidate, "quick")[0],
        "threshold": 0.5,
        "trained_at": "2024-03-08T00:00:00+00:00",
        "sklearn_version": "test",
    }


@pytest.fixture
def artifacts(tmp_path: Path) -> tuple[Path, Path]:
    frame = _frame()
    model_path, test_path = tmp_path / "model.joblib", tmp_path / "test.parquet"
    joblib.dump(_bundle("logreg", frame), model_path)
    write_parquet(frame, test_path, {"windows": {"test_start": "2024-03-01", "test_end": "2024-03-04"}})
    return model_path, test_path


@pytest.mark.parametrize("candidate", ["logreg", "random_forest", "hist_gb"])
def test_every_candidate_converts_within_tolerance(candidate: str) -> None:
    frame = _frame(1_500)
    bundle = _bundle(candidate, frame)
    x = frame[MODEL_FEATURES].to_numpy(np.float32)
    model = convert(bundle["estimator"], {"model_version": "v-test"})
    worst = check_parity(bundle["estimator"].predict_proba(x)[:, 1], onnx_scores(model, x))
    assert worst <= onnx_export.PARITY_TOLERANCE
    assert [i.name for i in model.graph.input] == ["input"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == len(MODEL_FEATURES)
    assert not dims[0].dim_value  # the batch dimension is free
    props = metadata_of(model)
    assert json.loads(props["feature_names"]) == MODEL_FEATURES
    assert props["model_version"] == "v-test"


def test_export_step_writes_a_gated_model(artifacts: tuple[Path, Path], tmp_path: Path) -> None:
    model_path, test_path = artifacts
    out = tmp_path / "model.onnx"
    result = steps.export_step(
        str(model_path), str(test_path), str(out), model_name="fraud", version="v1", log=lambda _m: None
    )
    assert result["version"] == "v1"
    assert result["max_difference"] <= 1e-5
    props = metadata_of(out.read_bytes())
    assert props["model_version"] == "v1"
    assert json.loads(props["feature_names"]) == MODEL_FEATURES
    assert json.loads(props["data_window"])["test"] == {"start": "2024-03-01", "end": "2024-03-04"}


def _broken_convert(
    estimator: Any, metadata: dict[str, str] | None = None, features: list[str] | None = None
) -> onnx.ModelProto:
    """A faulty exporter: it converts the model with its coefficients off by 1 %."""
    assert isinstance(estimator, Pipeline)
    broken = copy.deepcopy(estimator)
    broken.steps[-1][1].coef_ = broken.steps[-1][1].coef_ * 1.01
    return convert(broken, metadata, features)


def test_broken_export_fails_the_parity_gate(
    artifacts: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_path, test_path = artifacts
    monkeypatch.setattr(onnx_export, "convert", _broken_convert)
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match="parity gate failed") as failure:
        steps.export_step(str(model_path), str(test_path), str(out), version="v1", log=lambda _m: None)
    assert failure.value.mismatches > 0
    assert failure.value.max_difference > 1e-5
    assert not out.exists()  # nothing is handed on to publishing


def test_check_parity_bounds() -> None:
    assert check_parity([0.1, 0.2], [0.1 + 5e-6, 0.2]) == pytest.approx(5e-6)
    with pytest.raises(ParityError):
        check_parity([0.1, 0.2], [0.1, 0.2 + 2e-5])
    with pytest.raises(ParityError):
        check_parity([0.1, 0.2], [0.1, float("nan")])
    with pytest.raises(ParityError, match="shape"):
        check_parity([0.1, 0.2], [0.1])
