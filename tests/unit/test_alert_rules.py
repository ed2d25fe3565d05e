"""The alert rules evaluated by Prometheus's own rule tester (``promtool test rules``) on
synthetic series: the dead-letter alert counts the KafkaSource's dead letters (the
dead-letter topic's growth beyond what the components count) without counting the
components' twice, and each absent() alert fires for its own component only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_manifests import ALERTS

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

PER_MINUTE = 60  # a counter growing by 60 a minute: 1/s
# A metric each absent() alert watches, as the live component exports it.
COMPONENT_SERIES = {
    "FraudQualityGateDown": "quality_gate_accepted_total",
    "FraudArchiverDown": "archiver_flush_seconds_count",
    "FraudFeatureJobDown": "feature_job_batch_seconds_count",
    "FraudTransformerDown": 'fraud_decisions_total{decision="approve"}',
    "FraudPredictorDown": 'predictor_model_info{model="fraud",version="3"}',
    "FraudModelMonitorDown": "fraud_monitor_event_time_seconds",
    "FraudConsoleDown": 'console_cases{state="open"}',
}


def growing(per_s: float, minutes: int = 40) -> str:
    return f"0+{int(per_s * PER_MINUTE)}x{minutes}"


def run_promtool(tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Run ``tests`` against observability/alerts.yml with the annotations left out (their
    wording is not under test; promtool would compare it)."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests})
    )
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def dead_letter_case(series: list[tuple[str, float]], expected: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": growing(rate)} for s, rate in series],
        "alert_rule_test": [
            {
                "eval_time": "30m",
                "alertname": "FraudDeadLetterRateHigh",
                "exp_alerts": [{"exp_labels": {"severity": "warning", **labels}} for labels in expected],
            }
        ],
    }


DLQ = 'kafka_topic_partition_current_offset{topic="transactions-dlq",partition="%d"}'
GATE = 'dead_letter_messages_total{component="quality-gate",reason="invalid"}'
OTHER_TOPIC = 'kafka_topic_partition_current_offset{topic="transactions",partition="0"}'


def test_the_dead_letter_alert_counts_the_kafka_source_and_the_components_once(tmp_path: Path) -> None:
    source = {"component": "fraud-scoring", "reason": "delivery"}
    gate = {"component": "quality-gate", "reason": "invalid"}
    cases = [
        # Only the quality gate dead-letters: its counter and the topic grow alike.
        dead_letter_case([(GATE, 2), (DLQ % 0, 1), (DLQ % 1, 1), (OTHER_TOPIC, 500)], [gate]),
        # Only the KafkaSource (through its KafkaSink): counted by the topic alone.
        dead_letter_case([(DLQ % 0, 1.5), (DLQ % 2, 1.5)], [source]),
        # Both: the topic's 5/s is the gate's 2/s and the source's 3/s.
        dead_letter_case([(GATE, 2), (DLQ % 0, 2.5), (DLQ % 1, 2.5)], [gate, source]),
        # Below 1/s each: quiet.
        dead_letter_case([(GATE, 0.5), (DLQ % 0, 1.2)], []),
    ]
    proc = run_promtool(tmp_path, cases)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_each_absent_alert_fires_for_its_own_component_only(tmp_path: Path) -> None:
    cases = []
    for missing in COMPONENT_SERIES:
        present = [s for alert, s in COMPONENT_SERIES.items() if alert != missing]
        severity = yaml.safe_load(ALERTS.read_text())
        rule = next(r for g in severity["groups"] for r in g["rules"] if r["alert"] == missing)
        cases.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": growing(1)} for s in present],
                "alert_rule_test": [
                    {
                        "eval_time": "20m",
                        "alertname": alert,
                        "exp_alerts": [{"exp_labels": rule["labels"]}] if alert == missing else [],
                    }
                    for alert in COMPONENT_SERIES
                ],
            }
        )
    proc = run_promtool(tmp_path, cases)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_rule_tester_reports_a_wrong_expectation(tmp_path: Path) -> None:
    """The two tests above can fail: the source's dead letters expected where there are none."""
    proc = run_promtool(
        tmp_path, [dead_letter_case([(GATE, 2), (DLQ % 0, 2)], [{"component": "fraud-scoring"}])]
    )
    assert proc.returncode != 0
    assert "FraudDeadLetterRateHigh" in proc.stdout + proc.stderr
