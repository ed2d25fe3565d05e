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

from fraud_predictor.events import SHADOW_CHANGED, ChampionWatcher
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
            "--shadow_dir",
            default=None,
            help="the shadow slot's folder, served as <model_name>-shadow when it holds a model "
            "(and once a shadow-changed event names one); default: `shadow` beside a --model_dir "
            "that ends in `champion`; empty: no shadow slot",
        )
        parser.add_argument(
            "--watch_model_events",
            default=True,
            type=lambda v: bool(strtobool(v)),
            help="swap in new champions announced on the model-events topic",
        )

    return add


log = logging.getLogger(__name__)


def default_shadow_dir(model_dir: str) -> str:
    """``…/shadow`` beside a ``…/champion`` model folder (the publisher's layout), else none."""
    head, _, last = model_dir.rstrip("/").rpartition("/")
    return f"{head}/shadow" if last == "champion" and head else ""


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
    models = [predictor]
    watchers = []
    if args.watch_model_events:
        watchers.append(ChampionWatcher(settings, predictor))
    shadow_dir = default_shadow_dir(args.model_dir) if args.shadow_dir is None else args.shadow_dir
    if shadow_dir:
        shadow = FraudPredictor(f"{args.model_name}-shadow", shadow_dir, settings)
        try:
            shadow.load()
        except Exception as exc:  # an empty slot: served once a shadow-changed event fills it
            log.info("no shadow model in %s yet (%s)", shadow_dir, type(exc).__name__)
        models.append(shadow)
        if args.watch_model_events:
            watchers.append(
                ChampionWatcher(settings, shadow, event_type=SHADOW_CHANGED, model_name=args.model_name)
            )
    for watcher in watchers:
        watcher.start()

    def properties(model_name: str) -> dict[str, object]:
        found = next((m for m in models if m.name == model_name and m.ready), None)
        if found is None:
            raise ModelNotFound(model_name)
        return found.properties()

    # Model metadata beyond V2's tensor descriptions: version, feature order, baselines.
    app.add_api_route("/v2/models/{model_name}/properties", properties, methods=["GET"])
    server = model_server_for(args, settings)
    for model in models:
        if not model.ready:  # KServe registers ready models only: an empty slot answers 503 until filled
            server.register_model(model)
    server.start(list(models))
    for watcher in watchers:
        watcher.stop()


if __name__ == "__main__":
    main()
