"""Raw transactions out of every request shape the transformer accepts, then validated.

* V1: ``{"instances": [txn, ...]}`` (a bare transaction object is one instance);
* V2: an ``inputs`` tensor of datatype BYTES whose elements are JSON transactions
  (the tensor named ``transactions``, else the only BYTES tensor);
* CloudEvents as Knative's KafkaSource sends them. Binary mode (``ce-*`` headers): KServe
  hands over the body, the Kafka record value. Structured mode
  (``application/cloudevents+json``): KServe unwraps ``data`` only when the event has a
  ``time``; otherwise the envelope arrives here and ``data`` / ``data_base64`` is taken.

Every problem is an ``InvalidInput`` (HTTP 400) that names the field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from fraudcore.events import EventKind, format_timestamp, parse_timestamp, validate, validate_object

V1 = "v1"
V2 = "v2"
CLOUDEVENT = "cloudevent"
TRANSACTIONS_TENSOR = "transactions"
MAX_REPORTED = 5


@dataclass
class Batch:
    protocol: str  # V1, V2 or CLOUDEVENT
    raws: list[Any]  # each a dict, str or bytes: one raw transaction
    where: str  # how to name item i in messages: "instances", "transactions" or ""
    request_id: str | None = None
    ingested_at: str | None = None  # the CloudEvent's time: when the record reached Kafka
    events: list[dict[str, Any]] = field(default_factory=list)  # filled by validate_batch


def is_binary_cloudevent(headers: Mapping[str, str] | None) -> bool:
    return bool(headers) and "ce-specversion" in (headers or {})


def _structured(body: Mapping[str, Any]) -> bool:
    return "specversion" in body and ("data" in body or "data_base64" in body)


def _envelope_data(body: Mapping[str, Any]) -> Any:
    if "data" in body:
        return body["data"]
    encoded = body.get("data_base64")
    if not isinstance(encoded, str):
        raise InvalidInput("data_base64: must be a base64 string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("data_base64: not valid base64") from None


def extract(payload: Any, headers: Mapping[str, str] | None) -> Batch:
    """The raw transactions of one request (not yet validated)."""
    if isinstance(payload, InferRequest):
        return Batch(V2, _tensor_items(payload), TRANSACTIONS_TENSOR, payload.id)
    content_type = (headers or {}).get("content-type", "").split(";")[0].strip().lower()
    if is_binary_cloudevent(headers):
        return Batch(
            CLOUDEVENT, [payload], "", (headers or {}).get("ce-id"), _time((headers or {}).get("ce-time"))
        )
    if isinstance(payload, dict) and _structured(payload):
        return Batch(
            CLOUDEVENT,
            [_envelope_data(payload)],
            "",
            str(payload.get("id", "")) or None,
            _time(payload.get("time")),
        )
    if content_type == "application/cloudevents+json":  # KServe already unwrapped `data`
        return Batch(CLOUDEVENT, [payload], "")
    if isinstance(payload, dict) and "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise InvalidInput("instances: must be an array of transactions")
        if not instances:
            raise InvalidInput("instances: must not be empty")
        return Batch(V1, list(instances), "instances")
    if isinstance(payload, dict | str | bytes):
        return Batch(V1, [payload], "")
    got = {list: "array", type(None): "null", bool: "boolean", int: "number", float: "number"}.get(
        type(payload), type(payload).__name__
    )
    raise InvalidInput(f'payload: expected {{"instances": [...]}} or a transaction object, got {got}')


def _time(value: Any) -> str | None:
    """A CloudEvent ``time`` (RFC 3339) in the contract's form; None if absent or unreadable
    (it only measures latency: a bad one never fails the request)."""
    if not isinstance(value, str):
        return None
    try:
        return format_timestamp(parse_timestamp(value))
    except ValueError:
        return None


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list | tuple):
        return [item for part in data for item in _flatten(part)]
    if hasattr(data, "tolist"):  # numpy arrays (binary BYTES tensors)
        return _flatten(data.tolist())
    return [data]


def _tensor_items(request: InferRequest) -> list[Any]:
    inputs = list(request.inputs or [])
    tensor = next((t for t in inputs if t.name == TRANSACTIONS_TENSOR), None)
    if tensor is None:
        candidates = [t for t in inputs if t.datatype == "BYTES"]
        if len(candidates) != 1:
            raise InvalidInput(
                f"inputs: expected one BYTES tensor of JSON transactions (named {TRANSACTIONS_TENSOR!r})"
            )
        tensor = candidates[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(
            f"{tensor.name}: datatype must be BYTES (JSON transactions), got {tensor.datatype}"
        )
    try:
        data = tensor.as_numpy() if tensor._raw_data is not None else tensor.data
    except Exception:
        raise InvalidInput(f"{tensor.name}: cannot decode the tensor's elements") from None
    items = _flatten(data)
    if not items:
        raise InvalidInput(f"{tensor.name}: must not be empty")
    return items


def validate_batch(batch: Batch, max_batch: int, max_event_bytes: int) -> list[dict[str, Any]]:
    """The decoded transactions; InvalidInput naming each bad item's fields otherwise."""
    if len(batch.raws) > max_batch:
        name = batch.where or "payload"
        raise InvalidInput(
            f"{name}: {len(batch.raws)} transactions exceed the limit of {max_batch} per request"
        )
    events: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, raw in enumerate(batch.raws):
        if isinstance(raw, dict | str | bytes):
            result = validate(EventKind.TRANSACTION, raw, max_event_bytes)
            event, reason = result.event, result.reason
        else:  # a number, array or null where a transaction object belongs
            event, reason = None, "; ".join(str(p) for p in validate_object(EventKind.TRANSACTION, raw))
        if event is not None:
            events.append(event)
        else:
            prefix = f"{batch.where}[{i}]: " if batch.where else ""
            problems.append(prefix + reason)
    if problems:
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise InvalidInput("; ".join(problems[:MAX_REPORTED]) + more)
    batch.events = events
    return events
