"""Model files from a local folder, an ``s3://`` or a ``gs://`` URI, with KServe's storage conventions.

On a cluster KServe's storage initializer downloads ``storageUri`` into ``/mnt/models``
before the predictor starts, so ``--model_dir /mnt/models`` is a local folder. Locally (and
for hot swaps, whose ``champion-changed`` event names an ``s3://`` URI) the predictor reads
the object store itself, configured by the environment variables an InferenceService's S3
Secret provides:

* ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``; ``awsAnonymousCredential=true`` for none;
  no key at all: AWS's default credential chain (IRSA's web identity, EKS Pod Identity,
  instance metadata), never anonymous;
* ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http://minio:9000``), or ``S3_ENDPOINT``
  (``minio:9000``) with ``S3_USE_HTTPS`` (``0``/``1``, default ``1``); none: AWS S3;
* ``AWS_DEFAULT_REGION`` (default ``us-east-1``); ``S3_VERIFY_SSL`` (``0`` to skip checks).

When none of the key variables is set, the platform's own settings (``FRAUD_S3__*``, read from
``.env`` locally) fill in the endpoint and keys, so a developer needs no extra exports.

``gs://`` URIs are read with Google's client and Application Default Credentials (GKE's
Workload Identity; ``STORAGE_EMULATOR_HOST`` for an emulator).

KServe's ``Storage.download`` lives in the ``kserve-storage`` distribution, which is not a
dependency here (and needs boto3); this is the small subset the predictor needs, on the
``minio`` client the project already uses. Like KServe, a URI names either one object or a
prefix (a "folder"); the files are read into memory only, so a read-only root filesystem
is fine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from fraudcore.settings import Settings
from fraudcore.storage import s3_credentials

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
MAX_MODEL_BYTES = 512 * 1024 * 1024


class ModelFilesError(RuntimeError):
    """The model files cannot be found or read."""


@dataclass(frozen=True)
class ModelFiles:
    """What a model folder holds for this server: the ONNX bytes and the optional metadata."""

    source: str  # where the ONNX file came from (path or URI)
    onnx: bytes
    metadata: bytes | None = None


@dataclass(frozen=True)
class S3Config:
    endpoint: str  # host[:port]
    secure: bool
    access_key: str | None  # None: the default credential chain (or anonymous, below)
    secret_key: str | None
    region: str
    verify: bool = True
    anonymous: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, settings: Settings | None = None) -> S3Config:
        env = os.environ if env is None else env
        region = env.get("AWS_DEFAULT_REGION") or (settings.s3.region if settings else "") or "us-east-1"
        url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL", "")
        if url:
            parsed = urlparse(url if "://" in url else f"https://{url}")
            endpoint, secure = parsed.netloc, parsed.scheme == "https"
        elif env.get("S3_ENDPOINT"):
            raw = env["S3_ENDPOINT"]
            parsed = urlparse(raw if "://" in raw else f"//{raw}")
            endpoint = parsed.netloc
            secure = env.get("S3_USE_HTTPS", "1").lower() not in ("0", "false")
            if parsed.scheme:
                secure = parsed.scheme == "https"
        elif settings is not None and "AWS_ACCESS_KEY_ID" not in env:
            endpoint, secure = settings.s3.endpoint, settings.s3.secure
        else:
            endpoint, secure = "s3.amazonaws.com", True
        verify = env.get("S3_VERIFY_SSL", "1").lower() not in ("0", "false")
        if env.get("awsAnonymousCredential", "false").lower() == "true":
            return cls(endpoint, secure, None, None, region, verify, anonymous=True)
        access = env.get("AWS_ACCESS_KEY_ID")
        secret = env.get("AWS_SECRET_ACCESS_KEY")
        if access is None and settings is not None:
            access, secret = settings.s3.access_key, settings.s3.secret_key.get_secret_value()
        return cls(endpoint, secure, access or None, secret or None, region, verify)


def split_uri(uri: str, scheme: str = "s3") -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != scheme or not parsed.netloc:
        raise ModelFilesError(f"{uri!r} is not a {scheme}://bucket/prefix URI")
    return parsed.netloc, parsed.path.strip("/")


def in_own_store(uri: str, own_uri: str) -> str:
    """``uri`` read through the scheme of the server's own model URI.

    The publisher names versions ``s3://bucket/...`` (on GKE through Cloud Storage's S3
    interoperability API); a predictor configured with ``gs://`` reads the same bucket and
    key with Google's client and Workload Identity instead.
    """
    own_scheme, scheme = urlparse(own_uri).scheme, urlparse(uri).scheme
    if {own_scheme, scheme} == {"s3", "gs"}:
        return f"{own_scheme}://{uri.split('://', 1)[1]}"
    return uri


def _pick(names: list[str], where: str) -> str:
    """The model file among a folder's top-level files: model.onnx, else the only *.onnx."""
    if MODEL_FILE in names:
        return MODEL_FILE
    candidates = [n for n in names if n.endswith(".onnx")]
    if len(candidates) != 1:
        raise ModelFilesError(
            f"{where}: expected {MODEL_FILE} or exactly one .onnx file, found {sorted(names)}"
        )
    return candidates[0]


def read_local(path: str | Path) -> ModelFiles:
    root = Path(str(path).removeprefix("file://"))
    if root.is_file():
        meta = root.parent / METADATA_FILE
        return ModelFiles(str(root), root.read_bytes(), meta.read_bytes() if meta.is_file() else None)
    if not root.is_dir():
        raise ModelFilesError(f"{root}: no such file or folder")
    names = [p.name for p in root.iterdir() if p.is_file()]
    chosen = root / _pick(names, str(root))
    meta = root / METADATA_FILE
    return ModelFiles(str(chosen), chosen.read_bytes(), meta.read_bytes() if meta.is_file() else None)


def read_s3(uri: str, config: S3Config) -> ModelFiles:
    from minio import Minio
    from minio.error import S3Error

    bucket, key = split_uri(uri, "s3")
    client = Minio(
        config.endpoint,
        credentials=None if config.anonymous else s3_credentials(config.access_key, config.secret_key),
        secure=config.secure,
        region=config.region,
        cert_check=config.verify,
    )

    def get(object_name: str) -> bytes:
        response = client.get_object(bucket, object_name)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    try:
        if key.endswith(".onnx"):  # one object, as KServe allows
            folder = key.rsplit("/", 1)[0] if "/" in key else ""
            meta_key = f"{folder}/{METADATA_FILE}" if folder else METADATA_FILE
            return ModelFiles(uri, get(key), _maybe(lambda: get(meta_key)))
        prefix = f"{key}/" if key else ""
        sizes = {
            obj.object_name[len(prefix) :]: obj.size or 0
            for obj in client.list_objects(bucket, prefix=prefix, recursive=False)
            if obj.object_name and not obj.is_dir
        }
        chosen = _pick([n for n, size in sizes.items() if size > 0], uri)
        if sizes[chosen] > MAX_MODEL_BYTES:
            raise ModelFilesError(f"{uri}/{chosen}: {sizes[chosen]} bytes is more than this server loads")
        metadata = get(prefix + METADATA_FILE) if sizes.get(METADATA_FILE) else None
        return ModelFiles(f"s3://{bucket}/{prefix}{chosen}", get(prefix + chosen), metadata)
    except S3Error as exc:
        raise ModelFilesError(f"{uri}: {exc.code}: {exc.message}") from exc


def _maybe(read: Callable[[], bytes]) -> bytes | None:
    from minio.error import S3Error

    try:
        return read()
    except S3Error:
        return None


def read_gcs(uri: str) -> ModelFiles:
    """The model files at ``gs://bucket/prefix`` (or one ``.onnx`` object), as KServe reads them."""
    from google.api_core.exceptions import GoogleAPIError
    from google.cloud import storage

    bucket_name, key = split_uri(uri, "gs")
    try:
        client = storage.Client()
        bucket = client.bucket(bucket_name)
        if key.endswith(".onnx"):
            folder = key.rsplit("/", 1)[0] if "/" in key else ""
            meta = bucket.blob(f"{folder}/{METADATA_FILE}" if folder else METADATA_FILE)
            return ModelFiles(
                uri, bucket.blob(key).download_as_bytes(), meta.download_as_bytes() if meta.exists() else None
            )
        prefix = f"{key}/" if key else ""
        sizes = {
            blob.name[len(prefix) :]: blob.size or 0
            for blob in client.list_blobs(bucket_name, prefix=prefix, delimiter="/")
            if blob.name != prefix
        }
        chosen = _pick([n for n, size in sizes.items() if size > 0], uri)
        if sizes[chosen] > MAX_MODEL_BYTES:
            raise ModelFilesError(f"{uri}/{chosen}: {sizes[chosen]} bytes is more than this server loads")
        metadata = (
            bucket.blob(prefix + METADATA_FILE).download_as_bytes() if sizes.get(METADATA_FILE) else None
        )
        return ModelFiles(
            f"gs://{bucket_name}/{prefix}{chosen}", bucket.blob(prefix + chosen).download_as_bytes(), metadata
        )
    except GoogleAPIError as exc:
        raise ModelFilesError(f"{uri}: {exc}") from exc


def read_model_files(uri: str, settings: Settings | None = None) -> ModelFiles:
    """The model files at ``uri``: a local path (or ``file://``), ``s3://`` or ``gs://bucket/prefix``."""
    if uri.startswith("s3://"):
        return read_s3(uri, S3Config.from_env(settings=settings))
    if uri.startswith("gs://"):
        return read_gcs(uri)
    return read_local(uri)
