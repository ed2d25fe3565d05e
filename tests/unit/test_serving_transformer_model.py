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
from kserve.errors import InvalidInput
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
    """Sends the predictor call to a predictor object instead of over the network."""

    def __init__(self, predictor: FraudPredictor, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.predictor = predictor

    async def _send(self, call: InferRequest) -> InferResponse:
        response = self.predictor.predict(call)  # a synchronous model: KServe calls it in a thread
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
