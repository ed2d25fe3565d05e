"""``python -m fraud_transformer --model_name fraud --predictor_host HOST:PORT --predictor_protocol v2``

Scores transactions (V1, V2, CloudEvents) with online features and the predictor, and
publishes each decision to ``fraud-scores``. See predictors/README.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from fraud_transformer.model import FraudTransformer
from fraud_transformer.online import OnlineFeatures, feature_store, refresh_registry_every
from fraud_transformer.publish import DecisionPublisher, serving_producer
from fraudcore.model_server import model_server_for, parse_args
from fraudcore.settings import get_settings

REGISTRY_REFRESH_S = 60.0


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    # KServe's default predictor timeout (600 s) would hold a request for ten minutes.
    args = parse_args(
        argv,
        "Fraud scoring transformer (KServe)",
        predictor_request_timeout_seconds=5,
        model_name=settings.serving.model_name,
    )
    if not args.predictor_host:
        raise SystemExit("--predictor_host is required (KServe adds it on a cluster)")
    serving = settings.serving
    store = feature_store(settings)
    features = OnlineFeatures(store, serving.feature_timeout_ms / 1000, serving.coalesce_max)
    features.warm_up()
    stop = threading.Event()
    refresh_registry_every(store, REGISTRY_REFRESH_S, stop)
    publisher = DecisionPublisher(
        serving_producer(settings), settings.topics.scores.name, serving.publish_timeout_s
    )
    publisher.warm_up()
    model = FraudTransformer(args.model_name, features, publisher, serving, settings.max_event_bytes)
    model.load()
    server = model_server_for(args)
    server.start([model])
    stop.set()


if __name__ == "__main__":
    main()
