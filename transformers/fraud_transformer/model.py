"""The KServe transformer: transactions in, decisions out.

``preprocess`` turns any accepted request into validated transactions and their model rows
(online features from Feast plus request-time features); ``predict`` calls the predictor
(KServe forwards over V2 REST or gRPC) with the rows and their occluded copies in one batch;
concurrent requests share the Feast lookup and the predictor call (``coalesce``);
``postprocess`` decides, publishes every decision event and waits for the broker's ack,
then answers: V1 / CloudEvents ``{"predictions": [decision, ...]}``, V2 a response with a
BYTES output ``decisions`` (JSON) and an FP32 output ``score``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from kserve import Model
from kserve.constants.constants import PredictorProtocol
from kserve.errors import InferenceError, InvalidInput
from kserve.inference_client import InferenceGRPCClient
from kserve.protocol.infer_type import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    to_http_parameters,
)

from fraud_transformer.coalesce import Coalescer
from fraud_transformer.inputs import V2, Batch, extract, validate_batch
from fraud_transformer.metrics import DECISIONS, E2E_LATENCY, ERRORS
from fraud_transformer.online import Features, OnlineFeatures, feature_store, refresh_every
from fraud_transformer.publish import DecisionPublisher, serving_producer
from fraud_transformer.scoring import (
    check_features,
    contributions,
    decide,
    decision_event,
    event_time_us,
    model_rows,
    occluded,
    top_reasons,
)
from fraud_transformer.shadow import ShadowScorer
from fraudcore.protocol import MODEL_INFO_PARAMETER, UNKNOWN_VERSION, VERSION_PARAMETER, ModelInfo
from fraudcore.settings import Settings

log = logging.getLogger(__name__)
REGISTRY_REFRESH_S = 60.0  # how often the Feast registry is re-read (new feature views)


class ScoringRequest(InferRequest):
    """What preprocess hands to predict: the rows, and the request's context for postprocess."""

    def __init__(
        self, model_name: str, batch: Batch, features: Features, rows: npt.NDArray[np.float64]
    ) -> None:
        super().__init__(model_name=model_name, infer_inputs=[], request_id=batch.request_id)
        self.batch = batch
        self.features = features
        self.rows = rows  # the model's inputs as served, float64 (the decisions carry them)
        self.x = rows.astype(np.float32)


@dataclass
class Scores:
    """The predictor's answer for some rows: score and per-feature contributions per row."""

    scores: npt.NDArray[np.float32]
    contributions: npt.NDArray[np.float64]
    info: ModelInfo

    def take(self, start: int, stop: int) -> Scores:
        return Scores(self.scores[start:stop], self.contributions[start:stop], self.info)


@dataclass
class Scored:
    request: ScoringRequest
    scores: npt.NDArray[np.float32]
    contributions: npt.NDArray[np.float64]
    info: ModelInfo


# gRPC's reconnect backoff grows to 2 minutes while the predictor is away, so a predictor
# back after 30 s could stay unreached for a minute more, past the event source's retries
# (which then dead-letter). Capped at 1 s, a restarted predictor is found within a second.
PREDICTOR_CHANNEL_ARGS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


class FraudTransformer(Model):
    """The scoring transformer: one ``kserve.Model``. ``load`` connects the Feast online store
    and the decisions' producer (both may be given instead, as tests do); ``preprocess``
    validates and enriches, ``predict`` scores on the predictor, ``postprocess`` decides and
    publishes."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        features: OnlineFeatures | None = None,
        publisher: DecisionPublisher | None = None,
    ) -> None:
        super().__init__(name)
        serving = settings.serving
        if serving.review_threshold > serving.decline_threshold:
            raise ValueError(
                f"review_threshold {serving.review_threshold} exceeds decline_threshold {serving.decline_threshold}"
            )
        self.settings = settings
        self.serving = serving
        self.max_event_bytes = settings.max_event_bytes
        self._features = features
        self._publisher = publisher
        self._stop_refresh = threading.Event()
        self.shadow: ShadowScorer | None = None  # set by load
        self._info: ModelInfo | None = None  # the predictor's model, learnt from its responses
        self._predictor_channel: InferenceGRPCClient | None = None
        # Rows of concurrent requests share one predictor call (see fraud_transformer.coalesce).
        self._scoring: Coalescer[npt.NDArray[np.float32], Scores, Scores] = Coalescer(
            self._score_together, Scores.take, len, serving.coalesce_max
        )

    def load(self) -> bool:
        """Connect before the server listens, so the first request pays for nothing: the Feast
        online store (feature views resolved, registry refreshed in the background) and the
        decisions' producer (connected to the broker)."""
        if self._features is None:
            store = feature_store(self.settings)
            self._features = OnlineFeatures(
                store, self.serving.feature_timeout_ms / 1000, self.serving.coalesce_max
            )
            refresh_every(self._features.refresh, REGISTRY_REFRESH_S, self._stop_refresh)
        self._features.warm_up()
        if self._publisher is None:
            self._publisher = DecisionPublisher(
                serving_producer(self.settings),
                self.settings.topics.scores.name,
                self.serving.publish_timeout_s,
            )
        self._publisher.warm_up()
        self.shadow = ShadowScorer(
            self._call,
            self._publisher.publish,
            self.serving.shadow_model_name,
            self.settings.topics.shadow_scores.name,
            (self.serving.review_threshold, self.serving.decline_threshold),
        )
        self.ready = True
        return self.ready

    @property
    def features(self) -> OnlineFeatures:
        if self._features is None:
            raise RuntimeError("the transformer is not loaded")
        return self._features

    @property
    def publisher(self) -> DecisionPublisher:
        if self._publisher is None:
            raise RuntimeError("the transformer is not loaded")
        return self._publisher

    def stop(self) -> None:
        self._stop_refresh.set()
        if self._publisher is not None:
            self._publisher.close()
        super().stop()

    # ------------------------------------------------------------------ preprocess
    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> ScoringRequest:
        try:
            batch = extract(payload, headers)
            events = validate_batch(batch, self.serving.max_batch, self.max_event_bytes)
        except InvalidInput:
            ERRORS.labels("invalid_input").inc()
            raise
        features = await self.features.lookup(
            [e["card_id"] for e in events], [e["terminal_id"] for e in events]
        )
        t_us = [event_time_us(e["timestamp"]) for e in events]
        rows = model_rows([float(e["amount"]) for e in events], t_us, features.values)
        request = ScoringRequest(self.name, batch, features, rows)
        bad = ~np.isfinite(request.x).all(axis=1)
        if bad.any():
            ERRORS.labels("invalid_input").inc()
            i = int(np.flatnonzero(bad)[0])
            where = f"{batch.where}[{i}]: " if batch.where else ""
            raise InvalidInput(
                f"{where}amount: {events[i]['amount']!r} is outside the range the model can score"
            )
        return request

    # ------------------------------------------------------------------ predict
    async def _call(
        self, x: npt.NDArray[np.float32], info: ModelInfo | None, *, model_name: str | None = None
    ) -> tuple[npt.NDArray[np.float32], ModelInfo]:
        """Score ``x`` on the predictor (the champion, or ``model_name``); the model's info
        comes back with the scores."""
        kind = "predictor" if model_name is None else "shadow"
        # Over gRPC the array travels as raw bytes (raw_input_contents: no per-element
        # conversion on either side). Over REST as a JSON list: binary data with KServe's JSON
        # content type is a 400 at the predictor, and its numpy-to-JSON goes element by element.
        tensor = InferInput(
            name=info.input_name if info else "input",
            shape=list(x.shape),
            datatype="FP32",
            data=x if self._over_grpc() else x.ravel().tolist(),
        )
        outputs = [RequestedOutput(info.output_name)] if info else None
        call = InferRequest(
            model_name=model_name or self.name,
            infer_inputs=[tensor],
            request_id=str(uuid.uuid4()),
            parameters=None if info else {MODEL_INFO_PARAMETER: True},
            request_outputs=outputs,
        )
        try:
            response = await self._send(call, kind)
        except InferenceError:
            if info is not None:
                raise
            # A strict V2 server may refuse the unknown parameter: ask without it (the
            # model's info then falls back to the platform's feature order, zero baselines).
            call.parameters = None
            response = await self._send(call, kind)
        params = response.parameters
        params = to_http_parameters(params) if params is not None and not isinstance(params, dict) else params
        version = str((params or {}).get(VERSION_PARAMETER) or response.model_version or UNKNOWN_VERSION)
        got = info
        if got is None or version != got.version:
            got = ModelInfo.from_parameters(version, params)
        output = next((o for o in response.outputs if o.name == got.output_name), None)
        if output is None:
            ERRORS.labels(kind).inc()
            raise InferenceError(f"the predictor returned no {got.output_name!r} output")
        probabilities = np.asarray(output.as_numpy(), dtype=np.float32).reshape(len(x), -1)
        return probabilities[:, got.positive_index], got

    @property
    def _grpc_client(self) -> InferenceGRPCClient:
        """KServe's gRPC client to the predictor, on a channel that finds a restarted predictor
        within a second (``PREDICTOR_CHANNEL_ARGS``)."""
        config = self.predictor_config
        if config is None:
            raise RuntimeError("no predictor configured")
        if self._predictor_channel is None:
            self._predictor_channel = InferenceGRPCClient(
                url=config.predictor_host,
                use_ssl=config.use_ssl,
                timeout=config.timeout,
                retries=config.retries,
                channel_args=list(PREDICTOR_CHANNEL_ARGS),
            )
        return self._predictor_channel

    def _over_grpc(self) -> bool:
        config = self.predictor_config  # KServe's, known once the server is configured
        return config is not None and config.protocol == PredictorProtocol.GRPC_V2.value

    async def _send(self, call: InferRequest, kind: str = "predictor") -> InferResponse:
        try:
            # No request's headers are forwarded: the call carries several requests' rows.
            if call.model_name != self.name and not self._over_grpc():
                # KServe's REST client always names the transformer's own model; gRPC sends
                # the request's. Another model (the shadow slot) goes by its own URL.
                response = await self._http_client.infer(
                    self.predictor_config.predictor_base_url,
                    model_name=call.model_name,
                    data=call,
                    headers={"Content-Type": "application/json"},
                )
            else:
                response = await super().predict(call)
        except Exception as exc:  # the request was validated: whatever fails here is ours
            ERRORS.labels(kind).inc()
            if kind == "predictor":  # an empty shadow slot is no news (see fraud_transformer.shadow)
                log.exception("predictor call failed")
            raise InferenceError(f"predictor call failed: {type(exc).__name__}") from exc
        if not isinstance(response, InferResponse):
            ERRORS.labels(kind).inc()
            raise InferenceError("the predictor's answer is not a V2 inference response")
        return response

    async def predict(self, payload: ScoringRequest, headers: dict[str, str] | None = None) -> Scored:
        mine = await self._scoring.submit(payload.x)
        return Scored(payload, mine.scores, mine.contributions, mine.info)

    async def _score_together(self, xs: list[npt.NDArray[np.float32]]) -> Scores:
        """One predictor call for the rows of every waiting request, with their occluded
        copies (for the reason codes) in the same batch."""
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        n, f = x.shape
        for _attempt in range(3):
            info = self._info
            if info is None:
                # First call, or the model changed: learn its version, features and
                # baselines with the plain rows, then score the occluded rows.
                scores, info = await self._call(x, None)
                self._check(info)
                occluded_scores, again = await self._call(occluded(x, info.baselines), info)
                if again.version != info.version:
                    continue
                self._info = info
            else:
                both, got = await self._call(np.concatenate([x, occluded(x, info.baselines)]), info)
                if got.version != info.version:  # swapped since we last looked: refresh
                    self._info = None
                    continue
                scores, occluded_scores = both[:n], both[n:]
            return Scores(scores, contributions(scores, occluded_scores, f), info)
        ERRORS.labels("predictor").inc()
        raise InferenceError("the predictor's model kept changing during the request")

    def _check(self, info: ModelInfo) -> None:
        try:
            check_features(info.feature_names)
        except ValueError as exc:
            ERRORS.labels("model_features").inc()
            raise InferenceError(str(exc)) from None

    # ------------------------------------------------------------------ postprocess
    async def postprocess(
        self,
        result: Scored,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        request = result.request
        events = request.batch.events
        scored_at = datetime.now(UTC)
        fallback = request.features.fallback
        decisions = []
        for i, txn in enumerate(events):
            score = float(result.scores[i])
            if not np.isfinite(score):
                ERRORS.labels("invalid_input").inc()
                raise InvalidInput(f"amount: {txn['amount']!r} is outside the range the model can score")
            decision = decide(score, self.serving.review_threshold, self.serving.decline_threshold)
            reasons = top_reasons(
                result.contributions[i], result.info.feature_names, self.serving.reason_codes
            )
            decisions.append(
                decision_event(
                    txn,
                    score,
                    decision,
                    result.info.version,
                    reasons,
                    bool(fallback[i]),
                    scored_at,
                    request.batch.ingested_at,
                    request.rows[i].tolist(),
                )
            )
        try:
            await self.publisher.publish([(d["transaction_id"].encode(), orjson.dumps(d)) for d in decisions])
        except Exception as exc:
            ERRORS.labels("publish").inc()
            log.exception("publishing decisions failed")
            raise InferenceError(f"decisions could not be published: {type(exc).__name__}") from exc
        if self.shadow is not None:  # after the champion's decisions are durable; the caller never waits
            self.shadow.submit(events, request.rows, fallback, request.batch.ingested_at)
        now = time.time()
        ingested = request.batch.ingested_at
        since_us = event_time_us(ingested) if ingested else None
        for d, txn in zip(decisions, events, strict=True):
            DECISIONS.labels(d["decision"]).inc()
            start_us = since_us if since_us is not None else event_time_us(txn["timestamp"])
            E2E_LATENCY.observe(max(0.0, now - start_us / 1e6))
        if request.batch.protocol == V2:
            return self._v2_response(request, decisions, result)
        return {"predictions": decisions}

    def _v2_response(
        self, request: ScoringRequest, decisions: list[dict[str, Any]], result: Scored
    ) -> InferResponse:
        texts = InferOutput(name="decisions", shape=[len(decisions)], datatype="BYTES")
        texts.set_data_from_numpy(
            np.array([orjson.dumps(d).decode() for d in decisions], dtype=np.object_), binary_data=False
        )
        scores = InferOutput(name="score", shape=[len(decisions)], datatype="FP32")
        scores.set_data_from_numpy(np.asarray(result.scores, dtype=np.float32), binary_data=False)
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=result.info.version,
            infer_outputs=[texts, scores],
        )
