"""The pipeline's command line: arguments reach the pipeline, compile writes a package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fraud_pipelines import bench, cli, local, params

runner = CliRunner()


def test_train_passes_the_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_run_local(arguments: dict[str, Any], **kwargs: Any) -> None:
        seen.update(arguments=arguments, **kwargs)

    monkeypatch.setattr(local, "run_local", fake_run_local)
    result = runner.invoke(
        cli.app,
        [
            "train",
            "--source",
            "simulator",
            "--days",
            "90",
            "--handbook-scenarios",
            "--no-upload",
            "--output-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    args = seen["arguments"]
    assert args["source"] == "simulator"
    options = json.loads(args["source_options"])
    assert options["days"] == 90
    assert options["card_testing_per_day"] == 0
    assert options["takeover_per_day"] == 0
    assert args["upload"] is False
    assert args["delay_days"] == 7
    assert args["protocol"] == params.DEFAULTS.protocol == "window"
    assert seen["pipeline_root"] == str(tmp_path)


def test_train_takes_the_handbook_protocol_and_refuses_others(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(local, "run_local", lambda arguments, **_: seen.update(arguments))
    base = ["train", "--source", "simulator", "--no-upload", "--output-dir", str(tmp_path)]
    result = runner.invoke(cli.app, [*base, "--protocol", "handbook"])
    assert result.exit_code == 0, result.output
    assert seen["protocol"] == "handbook"
    result = runner.invoke(cli.app, [*base, "--protocol", "monthly"])
    assert result.exit_code != 0
    assert "unknown evaluation protocol" in result.output


def test_bench_runs_the_seeds_with_the_handbook_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run_benchmark(**kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {"seeds": list(kwargs["seeds"])}

    monkeypatch.setattr(bench, "run_benchmark", fake_run_benchmark)
    result = runner.invoke(cli.app, ["bench", "--no-upload"])
    assert result.exit_code == 0, result.output
    assert (seen["seeds"], seen["protocol"], seen["upload"], seen["generator"]) == (
        (0, 1, 2),
        "handbook",
        False,
        "handbook",
    )
    assert json.loads(result.stdout) == {"seeds": [0, 1, 2]}
    result = runner.invoke(
        cli.app, ["bench", "--seeds", "4,5", "--protocol", "window", "--generator", "platform"]
    )
    assert result.exit_code == 0, result.output
    assert (seen["seeds"], seen["protocol"], seen["generator"]) == ((4, 5), "window", "platform")
    assert runner.invoke(cli.app, ["bench", "--seeds", "4,4"]).exit_code != 0
    refused = runner.invoke(cli.app, ["bench", "--generator", "kaggle"])
    assert refused.exit_code != 0
    assert "--generator" in refused.output


def test_archive_source_keeps_its_options() -> None:
    args = params.pipeline_arguments(source="archive", source_path="prefix", train_start="2026-03-01")
    assert args == {
        "source": "archive",
        "source_path": "prefix",
        "source_options": "{}",
        "train_start": "2026-03-01",
    }


def test_compile_command(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    result = runner.invoke(cli.app, ["compile", "--output", str(out), "--image", "registry.example/p:1"])
    assert result.exit_code == 0, result.output
    spec = next(yaml.safe_load_all(out.read_text()))
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        "registry.example/p:1"
    }


def test_benchmark_arguments_follow_the_handbook_protocol() -> None:
    args = bench.benchmark_arguments()
    sim = json.loads(args["source_options"])
    assert (sim["n_customers"], sim["n_terminals"], sim["days"], sim["start"]) == (
        5_000,
        10_000,
        183,
        "2018-04-01",
    )
    assert sim["generator"] == "handbook"  # the Handbook's own generator, seed 0 its data set
    platform = json.loads(bench.benchmark_arguments(generator="platform")["source_options"])
    assert (platform["generator"], platform["card_testing_per_day"], platform["takeover_per_day"]) == (
        "platform",
        0,
        0,
    )
    with pytest.raises(ValueError, match="generator"):
        bench.benchmark_arguments(generator="other")
    assert (args["train_start"], args["train_days"], args["delay_days"], args["test_days"]) == (
        "2018-07-25",
        7,
        7,
        7,
    )
    assert args["model_name"] != "fraud"  # never moves the real champion
    assert args["protocol"] == "handbook"
    seeded = bench.benchmark_arguments(seed=3, protocol="window")
    assert (json.loads(seeded["source_options"])["seed"], seeded["seed"], seeded["protocol"]) == (
        3,
        3,
        "window",
    )
