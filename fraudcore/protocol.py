"""What the predictor says about its model beyond the tensors, in plain V2 terms.

Every V2 response carries ``model_version``, and the same value as the parameter
``model_version`` (KServe's REST client drops the field, not the parameters). A request with the parameter
``fraud_model_info: true`` also gets the model's properties as response parameters (strings
and numbers, so REST and gRPC carry them alike): the feature order and the per-feature
baselines the transformer uses for reason codes. A predictor that does not know the
parameter (KServe's Triton runtime) simply returns none; ``ModelInfo.from_parameters`` then
falls back to the platform's feature order and zero baselines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fraudcore.features import MODEL_FEATURES

MODEL_INFO_PARAMETER = "fraud_model_info"
VERSION_PARAMETER = "model_version"
DEFAULT_INPUT = "input"
DEFAULT_OUTPUT = "probabilities"
UNKNOWN_VERSION = "unknown"


@dataclass(frozen=True)
class ModelInfo:
    version: str
    input_name: str = DEFAULT_INPUT
    output_name: str = DEFAULT_OUTPUT
    positive_index: int = 1
    feature_names: tuple[str, ...] = tuple(MODEL_FEATURES)
    baselines: tuple[float, ...] = (0.0,) * len(MODEL_FEATURES)

    def to_parameters(self) -> dict[str, str | int]:
        return {
            VERSION_PARAMETER: self.version,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "positive_class_index": self.positive_index,
            "feature_names": json.dumps(list(self.feature_names)),
            "feature_baselines": json.dumps(list(self.baselines)),
        }

    @classmethod
    def from_parameters(cls, version: str | None, parameters: Mapping[str, Any] | None) -> ModelInfo:
        params = dict(parameters or {})
        names = _json_list(params.get("feature_names"))
        features = tuple(str(n) for n in names) if names else tuple(MODEL_FEATURES)
        baselines = _json_list(params.get("feature_baselines"))
        values = (
            tuple(float(v) for v in baselines) if len(baselines) == len(features) else (0.0,) * len(features)
        )
        return cls(
            version=str(params.get(VERSION_PARAMETER) or version or UNKNOWN_VERSION),
            input_name=str(params.get("input_name") or DEFAULT_INPUT),
            output_name=str(params.get("output_name") or DEFAULT_OUTPUT),
            positive_index=int(params.get("positive_class_index", 1)),
            feature_names=features,
            baselines=values,
        )


def _json_list(value: Any) -> Sequence[Any]:
    if isinstance(value, list):
        return value
    if not isinstance(value, str | bytes) or not value:
        return []
    try:
        decoded = json.loads(value)
    except ValueError:
        return []
    return decoded if isinstance(decoded, list) else []
