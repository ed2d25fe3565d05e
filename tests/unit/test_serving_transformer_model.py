"""``FraudTransformer`` in one process, through KServe's own model life cycle: ``load``, then
``preprocess`` → ``predict`` → ``postprocess``, against the real ONNX predictor model. Only the
I/O at its edges is replaced: the online store answers from a dict, the predictor call goes to
an in-process ``FraudPredictor`` instead of over HTTP, and the decisions' producer is the
confluent-kafka fake that acknowledges every record."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import orjson
import pytest
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from fraud_predictor.model import FraudPredictor, OnnxModel
from fraud_predictor.storage import ModelFiles
from fraud_transformer.model import FraudTransformer
from fraud_transformer.online import Features
from fraud_transformer.publish import DecisionPublisher
from fraudcore.features import CARD_STATE, MODEL_FEATURES, TERMINAL_FEATURES
from fraudcore.settings import Settings
from tests.serving_helpers import FakeProducer, make_model, onnx_scores


class _DictFeatures:
    """The online store's contract (``warm_up``, ``lookup``): known cards get fixed values."""

    def __init__(self, known_cards: set[str]) -> None:
        self.known_cards = known_cards
        self.warmed = False

    def warm_up(self) -> None:
        self.warmed = True

    async def lookup(self, card_ids: list[str], terminal_ids: list[str]) -> Features:
        n = len(card_ids)
        values = {
            name: np.full(n, 1.0 + i, dtype=np.float64)
            for i, name in enumerate([*CARD_STATE, *TERMINAL_FEATURES])
        }
        known = np.array([c in self.known_cards for c in card_ids])
        return Features(values, known, np.ones(n, dtype=bool))


class _InProcess(FraudTransformer):
    """Sends the predictor call to a predictor object instead of over the network (and the
    shadow slot's calls to ``shadow``, when there is one; else they fail as an empty slot does)."""

    def __init__(self, predictor: FraudPredictor, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.predictor = predictor
        self.shadow_predictor: FraudPredictor | None = None

    async def _send(self, call: InferRequest, kind: str = "predictor") -> InferResponse:
        target = {self.predictor.name: self.predictor}
        if self.shadow_predictor is not None:
            target[self.shadow_predictor.name] = self.shadow_predictor
        if call.model_name not in target:
            raise InferenceError(f"model {call.model_name} is not ready")
        response = target[call.model_name].predict(call)  # synchronous: KServe calls it in a thread
        assert isinstance(response, InferResponse)
        return response


def _transaction(i: int, card: str = "C1", amount: float = 42.5) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "transaction_id": f"tx-{i}",
        "card_id": card,
        "terminal_id": "T1",
        "amount": amount,
        "currency": "EUR",
        "timestamp": datetime(2026, 3, 1, 12, 0, i, tzinfo=UTC).isoformat(),
    }


@pytest.fixture
def loaded() -> tuple[_InProcess, FakeProducer, bytes]:
    model = make_model("v-unit")
    predictor = FraudPredictor("fraud", "unused")
    predictor.install(OnnxModel.from_files(ModelFiles("memory", model), "v-unit"))
    predictor.ready = True
    producer = FakeProducer()
    features = _DictFeatures({"C1"})
    transformer = _InProcess(
        predictor,
        "fraud",
        Settings(),
        features=cast(Any, features),
        publisher=DecisionPublisher(cast(Any, producer), "fraud-scores", timeout_s=2),
    )
    assert transformer.load()
    assert transformer.ready
    assert features.warmed
    return transformer, producer, model


async def _score(transformer: FraudTransformer, payload: Any) -> Any:
    request = await transformer.preprocess(payload, {})
    scored = await transformer.predict(request, {})
    return await transformer.postprocess(scored, {})


def test_scores_decides_and_publishes_every_transaction(
    loaded: tuple[_InProcess, FakeProducer, bytes],
) -> None:
    transformer, producer, model = loaded
    events = [_transaction(0), _transaction(1, card="C-unknown", amount=900.0)]
    answer = asyncio.run(_score(transformer, {"instances": events}))
    decisions = answer["predictions"]
    assert [d["transaction_id"] for d in decisions] == ["tx-0", "tx-1"]
    assert {d["model_version"] for d in decisions} == {"v-unit"}
    assert [d["features_fallback"] for d in decisions] == [False, True]  # C-unknown is not in the store
    # The score is the model's own on the rows the transformer built.
    request = asyncio.run(transformer.preprocess({"instances": events}, {}))
    assert request.x.shape == (2, len(MODEL_FEATURES))
    np.testing.assert_allclose([d["score"] for d in decisions], onnx_scores(model, request.x), atol=1e-6)
    for d in decisions:
        expected = (
            "decline"
            if d["score"] >= transformer.serving.decline_threshold
            else ("review" if d["score"] >= transformer.serving.review_threshold else "approve")
        )
        assert d["decision"] == expected
    # Every decision went to the scores topic, keyed by its transaction, before the answer.
    assert [(topic, key) for topic, key, _ in producer.sent] == [
        ("fraud-scores", b"tx-0"),
        ("fraud-scores", b"tx-1"),
    ]
    assert [orjson.loads(value) for _, _, value in producer.sent] == decisions


def test_an_invalid_transaction_is_refused_before_anything_is_scored(
    loaded: tuple[_InProcess, FakeProducer, bytes],
) -> None:
    transformer, producer, _ = loaded
    bad = _transaction(0)
    del bad["card_id"]
    with pytest.raises(InvalidInput, match="card_id"):
        asyncio.run(_score(transformer, {"instances": [bad]}))
    assert producer.sent == []


def test_the_transformer_is_not_usable_before_load() -> None:
    transformer = FraudTransformer("fraud", Settings())
    with pytest.raises(RuntimeError, match="not loaded"):
        _ = transformer.features


def test_a_shadow_challenger_scores_the_same_rows_on_its_own_topic_after_the_answer(
    loaded: tuple[_InProcess, FakeProducer, bytes],
) -> None:
    transformer, producer, _ = loaded
    shadow = FraudPredictor("fraud-shadow", "unused")
    challenger = make_model("v-shadow", seed=1)
    shadow.install(OnnxModel.from_files(ModelFiles("memory", challenger), "v-shadow"))
    transformer.shadow_predictor = shadow
    events = [_transaction(0), _transaction(1, card="C-unknown", amount=900.0)]

    async def score_and_wait() -> Any:
        answer = await _score(transformer, {"instances": events})
        assert transformer.shadow is not None
        await asyncio.gather(*transformer.shadow.tasks)
        await asyncio.sleep(0.05)  # the fake broker's acks
        return answer

    answer = asyncio.run(score_and_wait())
    assert {d["model_version"] for d in answer["predictions"]} == {"v-unit"}  # the caller sees the champion
    shadowed = [orjson.loads(v) for topic, _, v in producer.sent if topic == "fraud-scores-shadow"]
    assert [d["transaction_id"] for d in shadowed] == ["tx-0", "tx-1"]
    assert {d["model_version"] for d in shadowed} == {"v-shadow"}
    request = asyncio.run(transformer.preprocess({"instances": events}, {}))  # the same rows, its own scores
    np.testing.assert_allclose([d["score"] for d in shadowed], onnx_scores(challenger, request.x), atol=1e-6)
    assert all(d["features"] == c["features"] for d, c in zip(shadowed, answer["predictions"], strict=True))


def test_an_empty_shadow_slot_is_looked_at_again_later_and_never_fails_the_request(
    loaded: tuple[_InProcess, FakeProducer, bytes],
) -> None:
    transformer, producer, _ = loaded

    async def twice() -> None:
        for i in range(2):
            await _score(transformer, {"instances": [_transaction(i)]})
            assert transformer.shadow is not None
            await asyncio.gather(*transformer.shadow.tasks)

    asyncio.run(twice())
    assert transformer.shadow is not None
    assert transformer.shadow.empty_until > 0  # the second request did not even ask
    assert [topic for topic, _, _ in producer.sent] == ["fraud-scores", "fraud-scores"]


def test_the_predictor_channel_reconnects_within_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC's default reconnect backoff grows to 2 minutes while the predictor is away: a
    restarted predictor would stay unreached past the event source's retries."""
    from kserve.model import PredictorConfig

    from fraud_transformer import model as transformer_model

    built: list[dict[str, Any]] = []

    def client(**kwargs: Any) -> dict[str, Any]:
        built.append(kwargs)
        return kwargs

    monkeypatch.setattr(transformer_model, "InferenceGRPCClient", client)
    config = PredictorConfig(
        "127.0.0.1:8081", predictor_protocol="grpc-v2", predictor_request_timeout_seconds=5
    )
    monkeypatch.setattr(FraudTransformer, "predictor_config", property(lambda self: config))
    transformer = FraudTransformer("fraud", Settings())
    assert transformer._grpc_client is transformer._grpc_client  # one channel, reused
    assert len(built) == 1
    assert built[0]["url"] == "127.0.0.1:8081"
    options = dict(built[0]["channel_args"])
    assert options["grpc.max_reconnect_backoff_ms"] <= 1_000
