"""The predictor without a server: model loading, V1/V2 inference, swaps, events, storage config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput

from fraud_predictor.events import SHADOW_CHANGED, parse_event
from fraud_predictor.model import FraudPredictor, ModelLoadError, OnnxModel
from fraud_predictor.storage import ModelFiles, ModelFilesError, S3Config, read_local
from fraudcore.features import MODEL_FEATURES
from fraudcore.protocol import MODEL_INFO_PARAMETER, ModelInfo
from fraudcore.settings import Settings
from tests.serving_helpers import N_FEATURES, make_model, onnx_scores

BASELINES = [float(i) for i in range(N_FEATURES)]


@pytest.fixture(scope="module")
def model_v1() -> bytes:
    return make_model("v1", seed=1, baselines=BASELINES)


def _predictor(model: bytes, version_hint: str = "") -> FraudPredictor:
    predictor = FraudPredictor("fraud", "unused")
    predictor.install(OnnxModel.from_files(ModelFiles("memory", model), version_hint))
    predictor.ready = True
    return predictor


def _request(x: np.ndarray, **parameters: object) -> InferRequest:
    tensor = InferInput(name="input", shape=list(x.shape), datatype="FP32", data=x.ravel().tolist())
    return InferRequest(
        model_name="fraud", infer_inputs=[tensor], request_id="r", parameters=parameters or None
    )


def test_metadata_props_describe_the_model(model_v1: bytes) -> None:
    model = OnnxModel.from_files(ModelFiles("memory", model_v1))
    assert model.version == "v1"
    assert model.info.feature_names == tuple(MODEL_FEATURES)
    assert model.info.baselines == tuple(BASELINES)
    assert (model.info.input_name, model.info.output_name, model.info.positive_index) == (
        "input",
        "probabilities",
        1,
    )


def test_version_falls_back_to_metadata_json_then_hint_then_hash() -> None:
    import onnx

    proto = onnx.load_from_string(make_model("drop-me"))
    del proto.metadata_props[:]
    bare = proto.SerializeToString()
    document = json.dumps({"version": "from-json"}).encode()
    assert OnnxModel.from_files(ModelFiles("m", bare, document), "hint").version == "from-json"
    assert OnnxModel.from_files(ModelFiles("m", bare), "hint").version == "hint"
    assert OnnxModel.from_files(ModelFiles("m", bare)).version.startswith("sha256-")
    assert OnnxModel.from_files(ModelFiles("m", bare)).info.baselines == (0.0,) * N_FEATURES


def test_v2_predict_equals_onnxruntime_for_any_batch_size(model_v1: bytes) -> None:
    predictor = _predictor(model_v1)
    for rows in (1, 7, 300):
        x = np.random.default_rng(rows).normal(size=(rows, N_FEATURES)).astype(np.float32)
        response = predictor.predict(_request(x))
        assert isinstance(response, InferResponse)
        assert response.model_version == "v1"
        assert response.parameters == {"model_version": "v1"}
        probabilities = next(o for o in response.outputs if o.name == "probabilities").as_numpy()
        np.testing.assert_allclose(probabilities[:, 1], onnx_scores(model_v1, x), atol=1e-7)


def test_v2_model_info_on_request_and_requested_outputs(model_v1: bytes) -> None:
    predictor = _predictor(model_v1)
    x = np.zeros((2, N_FEATURES), dtype=np.float32)
    request = _request(x, **{MODEL_INFO_PARAMETER: True})
    request.request_outputs = [RequestedOutput("probabilities")]
    response = predictor.predict(request)
    assert isinstance(response, InferResponse)
    assert [o.name for o in response.outputs] == ["probabilities"]
    info = ModelInfo.from_parameters(None, response.parameters)
    assert info.version == "v1"
    assert info.baselines == tuple(BASELINES)
    assert info.feature_names == tuple(MODEL_FEATURES)
    rest, _ = response.to_rest()
    assert isinstance(rest, dict)
    assert orjson.loads(orjson.dumps(rest))["model_version"] == "v1"


def test_model_info_defaults_without_parameters() -> None:
    info = ModelInfo.from_parameters("1", None)  # e.g. Triton
    assert info.version == "1"
    assert info.baselines == (0.0,) * N_FEATURES
    assert ModelInfo.from_parameters(None, {"feature_baselines": "not json"}).version == "unknown"


def test_v1_predict(model_v1: bytes) -> None:
    x = np.random.default_rng(0).normal(size=(3, N_FEATURES)).astype(np.float32)
    response = _predictor(model_v1).predict({"instances": x.tolist()})
    assert isinstance(response, dict)
    np.testing.assert_allclose(response["predictions"], onnx_scores(model_v1, x), atol=1e-7)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"instances": [[1.0, 2.0]]}, "expected shape"),
        ({"instances": [["a"] * N_FEATURES]}, "must be a matrix of numbers"),
        ({}, "instances: is required"),
    ],
)
def test_bad_v1_input(model_v1: bytes, payload: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _predictor(model_v1).predict(payload)


def test_bad_v2_input(model_v1: bytes) -> None:
    predictor = _predictor(model_v1)
    wrong = InferInput(name="input", shape=[2, N_FEATURES], datatype="FP32", data=[1.0, 2.0])
    with pytest.raises(InvalidInput, match="input:"):
        predictor.predict(InferRequest(model_name="fraud", infer_inputs=[wrong]))
    request = _request(np.zeros((1, N_FEATURES), dtype=np.float32))
    request.request_outputs = [RequestedOutput("nope")]
    with pytest.raises(InvalidInput, match="outputs:"):
        predictor.predict(request)


@pytest.mark.filterwarnings("ignore:Removal of labels")  # importing Feast sets prometheus' multiprocess dir
def test_install_swaps_atomically_and_update_keeps_serving_on_failure(model_v1: bytes) -> None:
    predictor = _predictor(model_v1)
    before = predictor.current
    with pytest.raises(ModelLoadError, match="could not load fraud version v2 from s3-nowhere/missing"):
        predictor.update("s3-nowhere/missing", "v2")  # v1 stays
    assert predictor.current is before
    assert predictor.update("unused", "v1") is False  # already served
    old = predictor.install(OnnxModel.from_files(ModelFiles("memory", make_model("v2", seed=2))))
    assert old is before
    assert predictor.current.version == "v2"


def test_local_model_folder(tmp_path: Path, model_v1: bytes) -> None:
    (tmp_path / "model.onnx").write_bytes(model_v1)
    (tmp_path / "metadata.json").write_text('{"version": "v1"}')
    files = read_local(tmp_path)
    assert files.onnx == model_v1
    assert files.metadata == b'{"version": "v1"}'
    assert read_local(tmp_path / "model.onnx").onnx == model_v1
    with pytest.raises(ModelFilesError):
        read_local(tmp_path / "missing")


def test_champion_events_for_this_model_only() -> None:
    event = {"type": "champion-changed", "model": "fraud", "version": "v9", "uri": "s3://models/fraud/v9/"}
    assert parse_event(b"fraud", json.dumps(event).encode(), "fraud") == ("s3://models/fraud/v9", "v9")
    assert parse_event(b"other", json.dumps(dict(event, model="other")).encode(), "fraud") is None
    assert parse_event(b"fraud", json.dumps(dict(event, type="trained")).encode(), "fraud") is None
    # The shadow slot follows shadow-changed of the champion's model; the champion ignores it.
    shadow = dict(event, type=SHADOW_CHANGED)
    assert parse_event(b"fraud", json.dumps(shadow).encode(), "fraud", SHADOW_CHANGED) == (
        "s3://models/fraud/v9",
        "v9",
    )
    assert parse_event(b"fraud", json.dumps(shadow).encode(), "fraud") is None


@pytest.mark.parametrize(
    ("value", "key", "field"),
    [
        (b"\x00garbage", b"fraud", "payload"),
        (b"", b"fraud", "payload"),
        (b"[1, 2]", b"fraud", "payload"),
        (b'{"model": "fraud", "uri": "s3://m/v1"}', b"fraud", "type"),
        (b'{"type": 7, "uri": "s3://m/v1"}', b"fraud", "type"),
        (b'{"type": "champion-changed", "model": "fraud"}', b"fraud", "uri"),
        (b'{"type": "shadow-changed", "model": "fraud", "uri": 3}', b"fraud", "uri"),
        (b'{"type": "champion-changed", "uri": "s3://m/v1"}', None, "model"),
        (
            b'{"type": "champion-changed", "model": "fraud", "uri": "s3://m/v1", "version": []}',
            b"fraud",
            "version",
        ),
    ],
)
def test_a_model_event_no_reader_could_use_is_refused_naming_the_field(
    value: bytes, key: bytes | None, field: str
) -> None:
    """Refused whichever slot reads it, so the predictor dead-letters it (ChampionWatcher)."""
    for event_type in ("champion-changed", SHADOW_CHANGED):
        with pytest.raises(ValueError, match=f"^{field}: "):
            parse_event(key, value, "fraud", event_type)


def test_an_empty_shadow_slot_is_not_ready_until_a_model_is_installed(model_v1: bytes) -> None:
    slot = FraudPredictor("fraud-shadow", "unused")
    slot.start()  # what KServe calls on every model it serves
    assert slot.ready is False
    slot.install(OnnxModel.from_files(ModelFiles("memory", model_v1), "v1"))
    assert slot.ready is True


def test_s3_config_follows_kserve_variables() -> None:
    settings = Settings()
    aws = S3Config.from_env(
        {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://minio:9000"},
        settings,
    )
    assert (aws.endpoint, aws.secure, aws.access_key, aws.secret_key) == ("minio:9000", False, "a", "s")
    legacy = S3Config.from_env({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0", "AWS_ACCESS_KEY_ID": "a"})
    assert (legacy.endpoint, legacy.secure) == ("minio:9000", False)
    assert S3Config.from_env({"AWS_ACCESS_KEY_ID": "a"}).endpoint == "s3.amazonaws.com"
    anonymous = S3Config.from_env({"awsAnonymousCredential": "true", "AWS_ACCESS_KEY_ID": "a"})
    assert anonymous.access_key is None
    local = S3Config.from_env({}, settings)  # no AWS variables: the platform's settings
    assert (local.endpoint, local.access_key) == (settings.s3.endpoint, settings.s3.access_key or None)
