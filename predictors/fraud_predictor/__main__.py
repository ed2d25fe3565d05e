"""``python -m fraud_predictor --model_name fraud --model_dir s3://models/fraud/champion``

Serves the ONNX model over V2 REST (``--http_port``) and gRPC (``--grpc_port``) and swaps in
new champions announced on ``model-events``. See predictors/README.md.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from kserve.errors import ModelNotFound
from kserve.model_server import app
from kserve.utils.utils import strtobool

from fraud_predictor.events import ChampionWatcher
from fraud_predictor.model import FraudPredictor
from fraudcore.model_server import model_server_for, parse_args
from fraudcore.settings import Settings, get_settings


def _extra(settings: Settings) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model_dir",
            default=settings.serving.model_uri,
            help="s3://bucket/prefix (read with KServe's S3 environment variables) or a local folder "
            "(/mnt/models); default FRAUD_SERVING__MODEL_URI",
        )
        parser.add_argument(
            "--watch_model_events",
            default=True,
            type=lambda v: bool(strtobool(v)),
            help="swap in new champions announced on the model-events topic",
        )

    return add


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    args = parse_args(
        argv,
        "Fraud model predictor (ONNX Runtime, KServe V2)",
        _extra(settings),
        model_name=settings.serving.model_name,
    )
    predictor = FraudPredictor(args.model_name, args.model_dir, settings)
    predictor.load()
    watcher = ChampionWatcher(settings, predictor) if args.watch_model_events else None
    if watcher is not None:
        watcher.start()

    def properties(model_name: str) -> dict[str, object]:
        if model_name != predictor.name:
            raise ModelNotFound(model_name)
        return predictor.properties()

    # Model metadata beyond V2's tensor descriptions: version, feature order, baselines.
    app.add_api_route("/v2/models/{model_name}/properties", properties, methods=["GET"])
    server = model_server_for(args)
    server.start([predictor])
    if watcher is not None:
        watcher.stop()


if __name__ == "__main__":
    main()
