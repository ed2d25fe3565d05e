"""The fraud model on onnxruntime, served by KServe over the V2 (Open Inference) protocol.

``OnnxModel`` is one loaded model version (session + the properties its exporter wrote into
``metadata_props``). ``FraudPredictor`` is the KServe model: it holds exactly one
``OnnxModel`` reference. A new version is loaded and warmed up beside the current one, then
the reference is replaced in one assignment: a request reads the reference once, so it runs
entirely on the old or entirely on the new version and none fails during a swap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters
from kserve.utils.numpy_codec import from_np_dtype

from fraud_predictor.metrics import MODEL_INFO, MODEL_LOAD_FAILURES, MODEL_SWAPS
from fraud_predictor.storage import ModelFiles, read_model_files
from fraudcore.protocol import MODEL_INFO_PARAMETER, VERSION_PARAMETER, ModelInfo
from fraudcore.settings import Settings
from fraudcore.storage import until_store_answers

log = logging.getLogger(__name__)


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Small models and small batches: one thread each avoids waking a pool per request.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class ModelLoadError(Exception):
    """A model version that could not be loaded (missing, unreadable, not a valid model)."""


@dataclass(frozen=True)
class OnnxModel:
    session: ort.InferenceSession
    info: ModelInfo
    n_features: int
    outputs: tuple[str, ...]
    source: str

    @property
    def version(self) -> str:
        return self.info.version

    @classmethod
    def from_files(cls, files: ModelFiles, version_hint: str = "") -> OnnxModel:
        session = _session(files.onnx)
        props = dict(session.get_modelmeta().custom_metadata_map)
        document: dict[str, Any] = {}
        if files.metadata:
            try:
                loaded = json.loads(files.metadata)
                document = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                log.warning("%s: metadata.json is not JSON; ignored", files.source)
        inputs = session.get_inputs()
        input_name = props.get("input_name") or inputs[0].name
        if input_name not in {i.name for i in inputs}:
            raise ValueError(f"{files.source}: metadata names input {input_name!r}, the model has {inputs}")
        width = next(i.shape for i in inputs if i.name == input_name)[-1]
        names = json.loads(props["feature_names"]) if props.get("feature_names") else []
        n_features = int(props.get("n_features") or (width if isinstance(width, int) else len(names)))
        if names and len(names) != n_features:
            raise ValueError(f"{files.source}: {len(names)} feature names for {n_features} features")
        baselines = json.loads(props["feature_baselines"]) if props.get("feature_baselines") else []
        if len(baselines) != n_features:
            baselines = [0.0] * n_features
        outputs = tuple(o.name for o in session.get_outputs())
        output_name = props.get("output_name") or (
            "probabilities" if "probabilities" in outputs else outputs[0]
        )
        version = (
            props.get("model_version")
            or str(document.get("version") or "")
            or version_hint
            or "sha256-" + hashlib.sha256(files.onnx).hexdigest()[:12]
        )
        info = ModelInfo(
            version=version,
            input_name=input_name,
            output_name=output_name,
            positive_index=int(props.get("positive_class_index", 1)),
            feature_names=tuple(names),
            baselines=tuple(float(b) for b in baselines),
        )
        return cls(session, info, n_features, outputs, files.source)

    def run(self, x: npt.NDArray[np.float32], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or list(self.outputs)
        if len(x) == 0:
            empty = {self.info.output_name: np.zeros((0, 2), np.float32)}
            return {n: empty.get(n, np.zeros(0, np.int64)) for n in names}
        values = self.session.run(names, {self.info.input_name: x})
        return dict(zip(names, values, strict=True))

    def scores(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        probabilities = self.run(x, [self.info.output_name])[self.info.output_name]
        return np.asarray(probabilities[:, self.info.positive_index], dtype=np.float32)

    def warm_up(self) -> None:
        self.run(np.zeros((2, self.n_features), dtype=np.float32))


def load_model(uri: str, settings: Settings | None = None, version_hint: str = "") -> OnnxModel:
    """Read, build and warm up one model version (nothing is swapped here)."""
    model = OnnxModel.from_files(read_model_files(uri, settings), version_hint)
    model.warm_up()
    return model


class FraudPredictor(Model):
    def __init__(self, name: str, model_dir: str, settings: Settings | None = None) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.settings = settings
        self._model: OnnxModel | None = None
        self._swap_lock = threading.Lock()  # one loader at a time; readers never take it

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> bool:
        self.install(load_model(self.model_dir, self.settings))
        self.ready = True
        return self.ready

    def start(self) -> None:
        # KServe's default marks every model ready on start; an empty slot is not.
        self.ready = self._model is not None

    @property
    def current(self) -> OnnxModel:
        model = self._model
        if model is None:
            raise RuntimeError("no model loaded")
        return model

    def install(self, model: OnnxModel) -> OnnxModel | None:
        """Make ``model`` the one served (already loaded and warmed up); return the old one."""
        with self._swap_lock:
            old, self._model = self._model, model
        if old is not None:
            if old.version != model.version:
                MODEL_INFO.remove(self.name, old.version)
            MODEL_SWAPS.labels(self.name).inc()
        MODEL_INFO.labels(self.name, model.version).set(1)
        self.ready = True
        log.info("serving %s version %s from %s", self.name, model.version, model.source)
        return old

    def update(self, uri: str, version: str = "", stop: threading.Event | None = None) -> bool:
        """Load the version at ``uri`` beside the current one, then swap. While the object
        store does not answer, the load waits and retries (the current version keeps serving
        meanwhile) until it answers or ``stop`` is set. False if that version is already
        served or ``stop`` was set first; raises ModelLoadError if it cannot be loaded (the current version keeps
        serving)."""
        if version and self._model is not None and version == self._model.version:
            log.info("%s version %s is already served", self.name, version)
            return False
        try:
            model = until_store_answers(
                partial(load_model, uri, self.settings, version),
                component=f"predictor-{self.name}",
                stop=stop,
                first_delay_s=1.0,
                max_delay_s=30.0,
            )
        except Exception as exc:  # a missing or broken model: the current one keeps serving
            if stop is not None and stop.is_set():
                log.info("stopping: gave up loading %s version %s", self.name, version or "?")
                return False  # the store was away when the process stopped: not the event's fault
            MODEL_LOAD_FAILURES.labels(self.name).inc()
            problem = f"could not load {self.name} version {version or '?'} from {uri}: {exc}"
            log.warning("%s; still serving the current version", problem)
            raise ModelLoadError(problem) from exc
        self.install(model)
        return True

    # ------------------------------------------------------------------ metadata
    def get_input_types(self) -> list[dict[str, Any]]:
        model = self.current
        return [{"name": model.info.input_name, "datatype": "FP32", "shape": [-1, model.n_features]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        model = self.current
        types = []
        for out in model.session.get_outputs():
            dtype = "FP32" if "float" in out.type else "INT64" if "int64" in out.type else "BYTES"
            shape = [d if isinstance(d, int) else -1 for d in out.shape]
            types.append({"name": out.name, "datatype": dtype, "shape": shape})
        return types

    def properties(self) -> dict[str, Any]:
        """Model metadata beyond V2's tensors: version, feature order, baselines."""
        model = self.current
        return {
            "name": self.name,
            "version": model.version,
            "source": model.source,
            "inputs": self.get_input_types(),
            "outputs": self.get_output_types(),
            "feature_names": list(model.info.feature_names),
            "feature_baselines": list(model.info.baselines),
            "positive_class_index": model.info.positive_index,
        }

    # ------------------------------------------------------------------ inference
    def predict(
        self, payload: InferRequest | dict[str, Any], headers: dict[str, str] | None = None
    ) -> InferResponse | dict[str, Any]:
        model = self.current  # read once: a concurrent swap never mixes versions in a request
        if isinstance(payload, dict):
            x = _matrix(payload.get("instances"), model.n_features, "instances")
            return {"predictions": model.scores(x).tolist(), "model_version": model.version}
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected a V2 inference request")
        tensor = _input(payload, model.info.input_name)
        try:
            data = tensor.as_numpy()
        except Exception as exc:  # overflow, short raw bytes...: all about the request's tensor
            raise InvalidInput(f"{tensor.name}: {type(exc).__name__}: {exc}") from None
        x = _matrix(data, model.n_features, tensor.name)
        wanted = [o.name for o in payload.request_outputs or []] or list(model.outputs)
        unknown = sorted(set(wanted) - set(model.outputs))
        if unknown:
            raise InvalidInput(f"outputs: {unknown} not among the model's outputs {list(model.outputs)}")
        results = model.run(x, wanted)
        outputs = []
        for name in wanted:
            array = np.ascontiguousarray(results[name])
            shape, datatype = list(array.shape), from_np_dtype(array.dtype)
            if payload.use_binary_outputs:
                # Raw bytes now: KServe's gRPC encoder tests an array's truth value otherwise.
                output = InferOutput(name=name, shape=shape, datatype=datatype)
                output.set_data_from_numpy(array, binary_data=True)
            else:  # an array: KServe encodes it once, as JSON
                output = InferOutput(name=name, shape=shape, datatype=datatype, data=array)
            outputs.append(output)
        # The version also as a parameter: KServe's REST client drops `model_version`.
        parameters: dict[str, Any] = {VERSION_PARAMETER: model.version}
        if to_http_parameters(payload.parameters or {}).get(MODEL_INFO_PARAMETER) is True:
            parameters.update(model.info.to_parameters())
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=model.version,
            infer_outputs=outputs,
            parameters=parameters,
            use_binary_outputs=payload.use_binary_outputs,
        )


def _input(request: InferRequest, name: str) -> Any:
    if not request.inputs:
        raise InvalidInput("inputs: at least one input tensor is required")
    for tensor in request.inputs:
        if tensor.name == name:
            return tensor
    if len(request.inputs) == 1:
        return request.inputs[0]
    raise InvalidInput(f"inputs: no input named {name!r}")


def _matrix(data: Any, n_features: int, where: str) -> npt.NDArray[np.float32]:
    if data is None:
        raise InvalidInput(f"{where}: is required")
    try:
        x = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{where}: must be a matrix of numbers") from None
    if x.ndim != 2 or x.shape[1] != n_features:
        raise InvalidInput(f"{where}: expected shape [N, {n_features}], got {list(x.shape)}")
    return np.ascontiguousarray(x)
