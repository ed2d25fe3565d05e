"""Every dashboard panel and every alert rule asks for metrics that exist: the platform's
code defines them (prometheus_client), or KServe's model server does."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import kserve
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    "fraudcore",
    "producers",
    "feature_store",
    "pipelines",
    "predictors",
    "transformers",
    "monitoring",
    "console",
    "app",
]
DEFINITION = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][\w:]*)\"")
SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum")
# Metrics of other exporters the manifests deploy, and where they come from.
EXTERNAL = {
    "kafka_consumergroup_lag": "Strimzi's Kafka Exporter (kafkaExporter in kustomize/base/kafka/kafka.yaml)",
    "kafka_topic_partition_current_offset": "Strimzi's Kafka Exporter (kafkaExporter, topicRegex)",
    "redis_memory_used_bytes": "redis_exporter, the Redis pod's sidecar (kustomize/base/redis/redis.yaml)",
    "redis_memory_max_bytes": "redis_exporter, the Redis pod's sidecar (kustomize/base/redis/redis.yaml)",
}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "le",
    "inf",
    "nan",
}


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@functools.cache
def defined_metrics() -> frozenset[str]:
    folders = [ROOT / s for s in SOURCES] + [Path(kserve.__file__).parent]
    found = {
        _base(m)
        for folder in folders
        for path in folder.rglob("*.py")
        for m in DEFINITION.findall(path.read_text())
    }
    return frozenset(found | set(EXTERNAL))


def asked_for(expr: str) -> tuple[set[str], list[str]]:
    """The metric names a PromQL expression selects, and its ``__name__`` regexes."""
    regexes = re.findall(r'__name__=~"([^"]+)"', expr)
    text = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    text = re.sub(r'"[^"]*"', " ", text)  # string arguments (label_replace's labels and values)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = {
        m.group(1)
        for m in re.finditer(r"([a-zA-Z_:][\w:]*)\s*(\()?", text)
        if not m.group(2) and m.group(1).lower() not in PROMQL_WORDS and not m.group(1)[0].isdigit()
    }
    return names, regexes


def _queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "observability" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            out += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel.get("targets", [])]
    for group in yaml.safe_load((ROOT / "observability" / "alerts.yml").read_text())["groups"]:
        out += [(f"alert {rule['alert']}", rule["expr"]) for rule in group["rules"]]
    return out


@pytest.mark.parametrize(("where", "expr"), _queries(), ids=[w for w, _ in _queries()])
def test_every_query_names_a_metric_the_code_defines(where: str, expr: str) -> None:
    defined = defined_metrics()
    names, regexes = asked_for(expr)
    assert names or regexes, f"{where}: no metric in {expr!r}"
    unknown = sorted(n for n in names if _base(n) not in defined)
    assert not unknown, f"{where}: {unknown} are defined nowhere"
    for regex in regexes:
        assert any(re.fullmatch(regex, d + "_total") or re.fullmatch(regex, d) for d in defined), (
            f"{where}: {regex!r} matches no metric"
        )


def test_the_external_exporters_are_deployed() -> None:
    kafka = (ROOT / "kustomize" / "base" / "kafka" / "kafka.yaml").read_text()
    assert "kafkaExporter:" in kafka, EXTERNAL["kafka_consumergroup_lag"]


def test_the_checker_catches_a_misspelled_metric() -> None:
    names, _ = asked_for("sum by (model_version) (rate(fraud_live_precison[5m])) > 0.5")
    assert names == {"fraud_live_precison"}
    names, _ = asked_for('label_replace(sum(rate(fraud_live_precison[5m])), "component", "x-y", "", "")')
    assert names == {"fraud_live_precison"}
    assert "fraud_live_precison" not in defined_metrics()
    assert "fraud_live_precision" in defined_metrics()
