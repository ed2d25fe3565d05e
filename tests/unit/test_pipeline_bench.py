"""The model benchmark's JSON: per-seed results and their summary (no pipeline run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fraud_pipelines import bench
from fraud_pipelines.local import LocalRun


def _seed(seed: int, handbook: tuple[float, float, float], seconds: float, candidate: str) -> dict[str, Any]:
    """A per-seed result as ``seed_result`` shapes it."""
    auc, ap, cp = handbook
    return {
        "seed": seed,
        "model": {"candidate": candidate, "params": {"max_depth": seed}, "version": f"v{seed}", "uri": None},
        "handbook_auc_roc": auc,
        "handbook_average_precision": ap,
        "handbook_card_precision_at_100": cp,
        "window_auc_roc": auc + 0.03,
        "window_average_precision": ap + 0.06,
        "window_card_precision_at_100": cp + 0.1,
        # The chosen protocol's (here the Handbook's) figures under the original keys.
        "auc_roc": auc,
        "average_precision": ap,
        "card_precision_at_100": cp,
        "card_precision_at_100_all_cards": cp + 0.05,
        "precision_at_threshold": 0.8,
        "recall_at_threshold": 0.6,
        "threshold": 0.4 + seed / 100,
        "brier_score": 0.003,
        "pipeline_seconds": seconds,
        "step_seconds": {"dataset": seconds / 2, "train": seconds / 2},
        "transactions": 1_750_000 + seed,
        "train_transactions": 67_000,
        "test_transactions": 67_000 + seed,
        "data_window": {"test": {"start": "2018-08-08", "end": "2018-08-15"}},
        "beats_handbook": {
            "auc_roc": auc > 0.869,
            "average_precision": ap > 0.687,
            "card_precision_at_100": cp > 0.303,
        },
    }


def test_summary_gives_means_spreads_and_the_slowest_seed() -> None:
    per_seed = [
        _seed(1, (0.87, 0.70, 0.30), 300.0, "random_forest"),
        _seed(2, (0.89, 0.72, 0.32), 420.5, "hist_gb"),
        _seed(3, (0.88, 0.74, 0.31), 350.0, "hist_gb"),
    ]
    out = bench.summarize(per_seed, "handbook")
    assert out["protocol"] == "handbook"
    assert out["seeds"] == [1, 2, 3]
    assert out["handbook_auc_roc"] == pytest.approx(0.88)
    assert out["handbook_average_precision"] == pytest.approx(0.72)
    assert out["handbook_card_precision_at_100"] == pytest.approx(0.31)
    # Sample standard deviation over the seeds, and the range.
    assert out["handbook_auc_roc_std"] == pytest.approx(0.01)
    assert out["handbook_average_precision_std"] == pytest.approx(0.02)
    assert (out["handbook_card_precision_at_100_min"], out["handbook_card_precision_at_100_max"]) == (
        0.30,
        0.32,
    )
    assert out["window_average_precision"] == pytest.approx(0.78)
    # The original keys hold the chosen protocol's means.
    assert out["auc_roc"] == pytest.approx(0.88)
    assert out["card_precision_at_100_all_cards"] == pytest.approx(0.36)
    assert out["threshold"] == pytest.approx(0.42)
    # The slowest seed's time, and its steps.
    assert out["pipeline_seconds"] == 420.5
    assert out["slowest_seed"] == 2
    assert out["step_seconds"] == {"dataset": 210.25, "train": 210.25}
    assert out["within_time_budget"] is True
    assert out["per_seed"] == per_seed
    assert [r["model"]["candidate"] for r in out["per_seed"]] == ["random_forest", "hist_gb", "hist_gb"]
    # Against the Handbook's best: on the means, and on every seed.
    assert out["beats_handbook"] == {
        "auc_roc": True,
        "average_precision": True,
        "card_precision_at_100": True,
    }
    assert out["beats_handbook_every_seed"] == {
        "auc_roc": True,
        "average_precision": True,
        "card_precision_at_100": False,
    }


def test_summary_of_one_seed_has_no_spread_and_checks_the_budget() -> None:
    out = bench.summarize([_seed(7, (0.85, 0.66, 0.28), 650.0, "logreg")], "handbook")
    assert out["handbook_auc_roc_std"] == 0.0
    assert out["within_time_budget"] is False
    assert out["beats_handbook"] == {
        "auc_roc": False,
        "average_precision": False,
        "card_precision_at_100": False,
    }
    with pytest.raises(ValueError, match="no seed"):
        bench.summarize([], "handbook")


def test_seed_result_reads_both_protocols_from_the_run_summary() -> None:
    metrics = {
        "auc_roc": 0.85,
        "average_precision": 0.66,
        "card_precision_at_100": 0.283,
        "card_precision_at_100_all_cards": 0.3,
        "precision_at_threshold": 0.7,
        "recall_at_threshold": 0.5,
        "threshold": 0.41,
        "brier_score": 0.0031,
        "handbook_auc_roc": 0.85,
        "handbook_average_precision": 0.66,
        "handbook_card_precision_at_100": 0.283,
        "handbook_test_transactions": 58_264.0,
        "handbook_test_frauds": 385.0,
        "handbook_card_precision_at_100_ceiling": 0.41234,
        "window_auc_roc": 0.885,
        "window_average_precision": 0.731,
        "window_card_precision_at_100": 0.42,
        "window_test_transactions": 67_080.0,
        "window_test_frauds": 568.0,
    }
    summary = {
        "metrics": metrics,
        "candidate": "random_forest",
        "params": {"max_depth": 20},
        "version": "v1",
        "model_uri": "s3://models/fraud-bench/v1",
        "dataset": {"transactions": 1_754_155, "train_rows": 66_000, "test_rows": 67_080},
        "data_window": {},
    }
    run = LocalRun(summary, Path("r.html"), Path("r.log"), 412.34, {"train": 200.0})
    out = bench.seed_result(2, run)
    assert out["seed"] == 2
    assert out["model"] == {
        "candidate": "random_forest",
        "params": {"max_depth": 20},
        "version": "v1",
        "uri": "s3://models/fraud-bench/v1",
    }
    assert (out["handbook_auc_roc"], out["window_auc_roc"]) == (0.85, 0.885)
    assert (out["handbook_test_transactions"], out["window_test_frauds"]) == (58_264, 568)
    # The ceiling is reported where the evaluation computed it (an older summary lacks it).
    assert out["handbook_card_precision_at_100_ceiling"] == 0.4123
    assert "window_card_precision_at_100_ceiling" not in out
    assert out["pipeline_seconds"] == 412.3
    assert out["beats_handbook"] == {
        "auc_roc": False,
        "average_precision": False,
        "card_precision_at_100": False,
    }
    # What summarize reads from each seed is there.
    summary = bench.summarize([out], "handbook")
    assert summary["handbook_card_precision_at_100"] == 0.283
    assert summary["handbook_card_precision_at_100_ceiling"] == 0.4123
    assert "window_card_precision_at_100_ceiling" not in summary


def test_seeds_are_parsed_and_checked() -> None:
    assert bench.parse_seeds("1,2,3") == (1, 2, 3)
    assert bench.parse_seeds("7") == (7,)
    for bad in ("", "1,1", "a"):
        with pytest.raises(ValueError, match="distinct integers"):
            bench.parse_seeds(bad)


def _prequential(pipeline: list[float], reference: list[float]) -> dict[str, Any]:
    """A seed's prequential figures, ``pipeline``/``reference`` per fold (the same value for every
    ranking figure, to keep it short); the first fold is the pipeline's own test week."""
    figures = ("auc_roc", "average_precision", "card_precision_at_100")
    folds: list[dict[str, Any]] = [
        {"train_start": start, "pipeline": dict.fromkeys(figures, p), "reference": dict.fromkeys(figures, r)}
        for start, p, r in zip(
            ["2018-07-25", "2018-08-01", "2018-08-08", "2018-08-15"],
            pipeline,
            reference,
            strict=True,
        )
    ]
    mean = {
        name: dict.fromkeys(figures, sum(f[name]["auc_roc"] for f in folds) / len(folds))
        for name in ("pipeline", "reference")
    }
    return {"folds": folds, **mean, "seconds": 80.0}


def test_summary_compares_with_the_reference_on_the_same_rows() -> None:
    one = _seed(1, (0.30, 0.30, 0.30), 100.0, "random_forest")
    two = _seed(2, (0.32, 0.32, 0.32), 110.0, "random_forest")
    # Seed 1: its test week beats the reference's (0.30 > 0.29), its folds lose on average.
    one["prequential"] = _prequential([0.30, 0.31, 0.29, 0.30], [0.29, 0.33, 0.31, 0.30])
    # Seed 2: it loses its test week (0.32 < 0.34) and wins the folds.
    two["prequential"] = _prequential([0.32, 0.34, 0.33, 0.31], [0.34, 0.30, 0.30, 0.30])
    out = bench.summarize([one, two], "handbook")
    assert out["test_folds"] == [f["train_start"] for f in one["prequential"]["folds"]]
    assert out["handbook_prequential_card_precision_at_100"] == pytest.approx((0.30 + 0.325) / 2, abs=1e-4)
    assert out["reference_handbook_prequential_card_precision_at_100"] == pytest.approx(
        (0.3075 + 0.31) / 2, abs=1e-4
    )
    assert out["reference_handbook_card_precision_at_100"] == pytest.approx(0.315)
    # Paired differences: test week +0.01 and -0.02 (not beaten); folds -0.0075 and +0.015.
    assert out["beats_reference"]["test_week"]["card_precision_at_100"] is False
    assert out["beats_reference"]["prequential"]["card_precision_at_100"] is True
    assert out["beats_reference_every_seed"]["prequential"]["card_precision_at_100"] is False
    assert out["beats_handbook_prequential"]["card_precision_at_100"] is True  # 0.3125 > 0.303
    assert out["per_seed"][0]["prequential"] == one["prequential"]


def test_summary_without_prequential_folds_has_no_comparison() -> None:
    out = bench.summarize([_seed(1, (0.87, 0.70, 0.30), 300.0, "random_forest")], "handbook")
    assert "beats_reference" not in out
    assert "handbook_prequential_auc_roc" not in out
