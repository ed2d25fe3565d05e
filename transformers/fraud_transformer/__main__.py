"""``python -m fraud_transformer --model_name fraud --predictor_host HOST:PORT --predictor_protocol v2``

Scores transactions (V1, V2, CloudEvents) with online features and the predictor, and
publishes each decision to ``fraud-scores``. See predictors/README.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fraud_transformer.model import FraudTransformer
from fraudcore.model_server import model_server_for, parse_args
from fraudcore.settings import get_settings


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
    model = FraudTransformer(args.model_name, settings)
    model.load()
    server = model_server_for(args, settings)
    server.start([model])


if __name__ == "__main__":
    main()
