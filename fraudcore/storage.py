"""S3 (MinIO) helpers: one client factory and bucket set-up for every component."""

from __future__ import annotations

from minio import Minio

from fraudcore.settings import Settings


def s3_client(settings: Settings) -> Minio:
    s3 = settings.s3
    return Minio(
        s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key.get_secret_value(),
        secure=s3.secure,
        region=s3.region,
    )


def ensure_buckets(settings: Settings) -> list[str]:
    client = s3_client(settings)
    created = []
    for bucket in settings.s3.buckets():
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            created.append(bucket)
    return created


def storage_options(settings: Settings) -> dict[str, object]:
    """fsspec/s3fs options for pandas and pyarrow readers of ``s3://`` paths on MinIO."""
    s3 = settings.s3
    return {
        "key": s3.access_key,
        "secret": s3.secret_key.get_secret_value(),
        "client_kwargs": {"endpoint_url": s3.endpoint_url, "region_name": s3.region},
    }
