"""Helpers for the serving tests: a tiny ONNX model, model uploads, seeded features and the
predictor/transformer started as real subprocesses on free ports."""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from fraud_app.supervisor import Component
from fraudcore.features import CARD_STATE, MODEL_FEATURES, TERMINAL_FEATURES, US_PER_S
from fraudcore.metrics import sample_sum, scrape
from fraudcore.settings import Settings
from fraudcore.storage import ensure_buckets, s3_client
from tests.helpers import env_for, isolated

ROOT = Path(__file__).resolve().parent.parent
N_FEATURES = len(MODEL_FEATURES)


# --------------------------------------------------------------------------- model
def make_model(version: str, seed: int = 0, baselines: Sequence[float] | None = None) -> bytes:
    """A logistic model as an ONNX graph with the exporter's contract: input ``input``
    [N, n_features] float32, outputs ``probabilities`` [N, 2] and ``label`` [N], and the
    metadata_props the pipeline writes. Weights are scaled per feature so realistic feature
    values give scores spread over (0, 1)."""
    rng = np.random.default_rng(seed)
    scale = np.array([_typical(name) for name in MODEL_FEATURES])
    weights = (rng.normal(size=N_FEATURES) / scale / 2).astype(np.float32).reshape(-1, 1)
    bias = np.array([rng.normal() * 0.3 - 0.5], dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "fraud-test",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, N_FEATURES])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
        initializer=[
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = {
        "feature_names": json.dumps(MODEL_FEATURES),
        "n_features": str(N_FEATURES),
        "input_name": "input",
        "output_name": "probabilities",
        "positive_class_index": "1",
        "model_version": version,
    }
    if baselines is not None:
        props["feature_baselines"] = json.dumps([float(b) for b in baselines])
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _typical(name: str) -> float:
    if name.startswith("seconds"):
        return 86_400.0
    if "amount" in name and "over" not in name:
        return 100.0
    if "count" in name:
        return 10.0
    return 1.0


def onnx_scores(model: bytes, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"input": x})[0][:, 1], dtype=np.float32)


def upload_model(settings: Settings, prefix: str, version: str, model: bytes, champion: bool = True) -> str:
    """Put the model at s3://models/<prefix>/<version>/ (and champion/); return the version URI."""
    ensure_buckets(settings)
    client = s3_client(settings)
    bucket = settings.s3.models_bucket
    metadata = json.dumps({"version": version, "model_file": "model.onnx"}).encode()
    for folder in [version, "champion"] if champion else [version]:
        client.put_object(bucket, f"{prefix}/{folder}/model.onnx", io.BytesIO(model), len(model))
        client.put_object(bucket, f"{prefix}/{folder}/metadata.json", io.BytesIO(metadata), len(metadata))
    return f"s3://{bucket}/{prefix}/{version}"


# --------------------------------------------------------------------------- features
def seed_card(
    settings: Settings, card_id: str, last_tx: datetime, values: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Write a card's online state; return the served values (card_last_tx_time in seconds)."""
    from fraud_features.online import OnlineWriter
    from fraud_features.store import feature_store

    state = {name: float(i + 1) for i, name in enumerate(CARD_STATE) if name != "card_last_tx_time"}
    state.update(values or {})
    last_s = float(int(last_tx.timestamp()))
    arrays = {name: np.array([v]) for name, v in state.items()}
    arrays["card_last_tx_time"] = np.array([last_s])
    writer = OnlineWriter(feature_store(settings))
    writer.write_cards([card_id], np.array([int(last_s * US_PER_S)]), arrays)
    return {**state, "card_last_tx_time": last_s}


def seed_terminal(settings: Settings, terminal_id: str, day: datetime, values: Mapping[str, float]) -> None:
    from fraud_features.online import OnlineWriter
    from fraud_features.store import feature_store

    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    writer = OnlineWriter(feature_store(settings))
    writer.write_terminals(
        [terminal_id],
        np.array([int(start.timestamp()) * US_PER_S]),
        {name: np.array([float(values[name])]) for name in TERMINAL_FEATURES},
    )


def expected_row(
    txn: Mapping[str, Any], card: Mapping[str, float] | None, terminal: Mapping[str, float] | None
):
    """The model row the transformer should build, computed here from the seeded values."""
    from fraudcore.events import parse_timestamp
    from fraudcore.features import CARD_FEATURES, model_matrix, request_features

    ts = parse_timestamp(str(txn["timestamp"]))
    t_us = np.array([int(ts.timestamp()) * US_PER_S + ts.microsecond], dtype=np.int64)
    card_values: dict[str, Any] = {n: np.array([(card or {}).get(n, 0.0)]) for n in CARD_FEATURES}
    card_values["card_last_tx_time"] = np.array([(card or {}).get("card_last_tx_time", np.nan)])
    request = request_features(np.array([float(txn["amount"])]), t_us, card_values)
    terminal_values = {n: np.array([(terminal or {}).get(n, 0.0)]) for n in TERMINAL_FEATURES}
    return model_matrix({**card_values, **terminal_values, **request})


# --------------------------------------------------------------------------- servers
def serving_settings(stack: Settings, unique: str, folder: Path, project: str) -> Settings:
    """A test's own topics (``isolated``) and its own Feast project, registry and offline
    store under ``folder``."""
    base = isolated(stack, unique)
    features = base.features.model_copy(
        update={
            "project": project,
            "registry": str(folder / "registry.db"),
            "offline_root": str(folder / "offline"),
        }
    )
    return base.model_copy(update={"features": features})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serving_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = env_for(settings)
    env.update(
        {
            "FRAUD_FEATURES__PROJECT": settings.features.project,
            "FRAUD_FEATURES__REGISTRY": settings.features.registry,
            "FRAUD_FEATURES__OFFLINE_ROOT": settings.features.offline_root,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Server(Component):
    """A predictor or transformer process on free ports, started at once (the platform's own
    supervisor component); ``url`` answers once ``wait_ready`` returns."""

    def __init__(self, module: str, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        command = [
            sys.executable,
            "-m",
            module,
            *args,
            "--http_port",
            str(self.http_port),
            "--grpc_port",
            str(self.grpc_port),
            "--enable_latency_logging",
            "false",
        ]
        super().__init__(module, command, f"{self.url}/v2/health/ready", dict(env), log)
        self.start()

    def wait_ready(self, timeout_s: float = 60) -> Server:  # type: ignore[override]
        super().wait_ready(timeout_s)
        return self

    def metric(self, sample: str, **labels: str) -> float:
        """The sum of the samples named ``sample`` with these labels on /metrics (0 if none)."""
        return sample_sum(scrape(self.http_port), sample, labels)


def predictor(settings: Settings, model_dir: str, log: Path, args: Sequence[str] = (), **env: str) -> Server:
    return Server(
        "fraud_predictor",
        ["--model_name", "fraud", "--model_dir", model_dir, *args],
        serving_env(settings, **env),
        log,
    )


def transformer(
    settings: Settings, predictor_url: str, log: Path, args: Sequence[str] = (), **env: str
) -> Server:
    host = predictor_url.removeprefix("http://")
    return Server(
        "fraud_transformer",
        ["--model_name", "fraud", "--predictor_host", host, "--predictor_protocol", "v2", *args],
        serving_env(settings, **env),
        log,
    )


def v2_infer_body(x: npt.NDArray[np.float32], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    if parameters:
        body["parameters"] = parameters
    return body


# --------------------------------------------------------------------------- fakes for unit tests
class FakeMessage:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """confluent_kafka.Producer's contract: ``produce`` queues, ``poll`` (called from the
    publisher's own thread) runs the delivery callbacks of what the broker has answered."""

    def __init__(self, fail: bool = False, never: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail
        self.never = never
        self._pending: list[tuple[float, Any, int]] = []
        self._lock = threading.Lock()

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        with self._lock:
            self.sent.append((topic, key, value))
            if not self.never:
                self._pending.append((time.monotonic() + 0.01, on_delivery, len(self.sent) - 1))

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.002))
        with self._lock:
            due = [p for p in self._pending if p[0] <= time.monotonic()]
            self._pending = [p for p in self._pending if p[0] > time.monotonic()]
        for _, callback, offset in due:
            callback("broker said no" if self.fail else None, FakeMessage(0, offset))
        return len(due)

    def flush(self, timeout: float) -> int:
        return 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        """Metadata of one topic with one partition, as the broker would describe it."""
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})
