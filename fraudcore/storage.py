"""S3 helpers: one client factory and bucket set-up for every component.

Credentials: a static key pair when the settings carry one (MinIO, locally and on kind);
otherwise the environment's identity through AWS's default chain: the ``AWS_*`` key
variables, then IRSA's web identity token (``AWS_WEB_IDENTITY_TOKEN_FILE`` +
``AWS_ROLE_ARN``), EKS Pod Identity or ECS container credentials, then the instance
metadata service. An empty key never means "anonymous": under IRSA that is a 403.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import urllib3
from minio import Minio
from minio.credentials import ChainedProvider, EnvAWSProvider, IamAwsProvider, Provider, StaticProvider
from minio.error import S3Error, ServerError
from prometheus_client import Counter

from fraudcore.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

OBJECT_STORE_RETRIES = Counter(
    "object_store_retries",
    "Object-store writes that failed because the store was unreachable or overloaded, and wait to be retried",
    ["component"],
)
# S3 error codes that mean "try again later", not "this request is wrong".
UNAVAILABLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})


def s3_credentials(access_key: str | None, secret_key: str | None) -> Provider:
    """A static pair when one is given, else the default credential chain (see above)."""
    if access_key:
        return StaticProvider(access_key, secret_key or "")
    return ChainedProvider([EnvAWSProvider(), IamAwsProvider()])


def s3_client(settings: Settings, *, fail_fast: bool = False) -> Minio:
    """The platform's S3 client. ``fail_fast``: one quick attempt per request (a 3 s connect
    timeout, no retries of its own), for callers on a live loop that keep their own retry
    schedule; the default client retries a request for several seconds before it fails."""
    s3 = settings.s3
    http_client = None
    if fail_fast:
        http_client = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3.0, read=30.0), retries=urllib3.Retry(total=0), maxsize=4
        )
    return Minio(
        s3.endpoint,
        credentials=s3_credentials(s3.access_key, s3.secret_key.get_secret_value()),
        secure=s3.secure,
        region=s3.region,
        http_client=http_client,
    )


def store_unavailable(exc: BaseException) -> bool:
    """Whether a request failed because the object store could not be reached or was
    overloaded (refused or reset connections, timeouts, 5xx): a wait, unlike a 4xx. An
    error raised from such a failure (``raise ... from``) is one too."""
    if isinstance(exc, S3Error):
        return exc.code in UNAVAILABLE_CODES
    if isinstance(exc, urllib3.exceptions.HTTPError | ServerError | ConnectionError | TimeoutError):
        return True
    return exc.__cause__ is not None and store_unavailable(exc.__cause__)


def until_store_answers(
    write: Callable[[], T],
    *,
    component: str,
    stop: threading.Event | None = None,
    first_delay_s: float = 0.5,
    max_delay_s: float = 10.0,
) -> T:
    """Run ``write`` (a write, or a read the caller cannot go on without) until it succeeds,
    waiting while the object store is unavailable (the delay doubles up to ``max_delay_s``;
    each retry is logged and counted). Any other error, or ``stop`` set while waiting, is
    raised: a writer has not stored what it wrote and must not commit past it."""
    delay = first_delay_s
    while True:
        try:
            return write()
        except Exception as exc:
            if not store_unavailable(exc) or (stop is not None and stop.is_set()):
                raise
            OBJECT_STORE_RETRIES.labels(component).inc()
            log.warning(
                "%s: object store unavailable (%s); retrying in %.1f s", component, describe(exc), delay
            )
            if stop is not None:
                if stop.wait(delay):
                    raise
            else:
                time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


def store_problem(settings: Settings) -> str | None:
    """Why the platform's object store cannot be used right now (None: it answers), from one
    quick request: for commands that need it to say so plainly before they start."""
    try:
        s3_client(settings, fail_fast=True).bucket_exists(settings.s3.models_bucket)
    except Exception as exc:
        if store_unavailable(exc):
            return f"the object store at {settings.s3.endpoint} does not answer ({describe(exc)})"
        return f"the object store at {settings.s3.endpoint} refused the request ({describe(exc)})"
    return None


def describe(exc: BaseException) -> str:
    """One line for a log: urllib3's retry errors carry the whole retry history."""
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}".splitlines()[0][:300]


def aws_env(settings: Settings) -> dict[str, str]:
    """The AWS SDKs' variables for the platform's object store. The endpoint is S3's own
    (the global AWS_ENDPOINT_URL would also send STS, IRSA's token exchange, to the object
    store); a key pair only when the settings hold one: an empty AWS_ACCESS_KEY_ID would
    hide the pod's own credentials (a Secret's keys, IRSA) from the default chain."""
    s3 = settings.s3
    env = {"AWS_ENDPOINT_URL_S3": s3.endpoint_url, "AWS_DEFAULT_REGION": s3.region}
    if s3.access_key:
        env["AWS_ACCESS_KEY_ID"] = s3.access_key
        env["AWS_SECRET_ACCESS_KEY"] = s3.secret_key.get_secret_value()
    return env


def ensure_buckets(settings: Settings) -> list[str]:
    client = s3_client(settings)
    created = []
    for bucket in settings.s3.buckets():
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            created.append(bucket)
    return created


def storage_options(settings: Settings) -> dict[str, object]:
    """fsspec/s3fs options for pandas and pyarrow readers of ``s3://`` paths.

    Without a static key s3fs (botocore) finds credentials itself, IRSA included.
    """
    s3 = settings.s3
    options: dict[str, object] = {
        "client_kwargs": {"endpoint_url": s3.endpoint_url, "region_name": s3.region},
    }
    if s3.access_key:
        options["key"] = s3.access_key
        options["secret"] = s3.secret_key.get_secret_value()
    return options


class ConcurrentWriteError(RuntimeError):
    """A conditional write lost: the object changed, or appeared, since it was read."""


def read_versioned(client: Minio, bucket: str, key: str) -> tuple[bytes, str] | None:
    """An object's bytes and ETag, or None when it does not exist."""
    try:
        response = client.get_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            return None
        raise
    try:
        return bytes(response.read()), str(response.headers.get("etag", "")).strip('"')
    finally:
        response.close()
        response.release_conn()


def put_if_unchanged(
    client: Minio,
    bucket: str,
    key: str,
    data: bytes,
    etag: str | None,
    content_type: str = "application/json",
) -> str:
    """Write ``key`` only if it still has ``etag`` (``If-Match``), or, with ``etag`` None, only
    if it does not exist (``If-None-Match: *``); S3 and MinIO check the condition atomically.
    Returns the new ETag; raises ConcurrentWriteError when another writer came first."""
    condition = {"If-None-Match": "*"} if etag is None else {"If-Match": f'"{etag}"'}
    try:
        # minio-py's public put_object would turn these headers into user metadata.
        result = client._put_object(bucket, key, data, headers={"Content-Type": content_type, **condition})
    except S3Error as exc:
        if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise ConcurrentWriteError(f"s3://{bucket}/{key} changed since it was read") from exc
        raise
    return str(result.etag)
