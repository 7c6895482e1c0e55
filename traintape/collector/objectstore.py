"""The publisher's S3 client: boto3, with short timeouts and no retries of its own (the
publisher retries with backoff and says so once, traintape.collector.publish).

Credentials are boto3's: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
AWS_PROFILE and ~/.aws/{credentials,config}, an instance role. The endpoint of an S3-compatible
server comes from AWS_ENDPOINT_URL (traintape.schemas.objectstore.endpoint_url). Nothing here
writes or logs a credential: errors are reported by their class and botocore's message, which
names the operation and the bucket, never a key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from traintape.errors import ConfigError, StoreError
from traintape.schemas.objectstore import Bucket, endpoint_url

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
"""A request waits at most about this long on a server that stopped answering."""


def tables_config(url: str | None, options: Mapping[str, Any]) -> dict[str, Any] | None:
    """`serve --tables URL` (or the YAML's `tables`, `tables_grace`) checked at the start, as
    the materializer process's publisher takes it; None: no publishing."""
    if url is None:
        return None
    Bucket.parse(url)
    try:
        import boto3  # noqa: F401
    except ImportError:
        msg = "--tables s3://... needs boto3: pip install 'traintape[s3]'"
        raise ConfigError(msg) from None
    grace = options.get("tables_grace")
    if grace is not None and grace < 0:
        msg = f"tables_grace must be >= 0, got {grace:g}"
        raise ConfigError(msg)
    return {"tables": url, "tables_grace": grace}


class S3Client:
    """put, get, list and delete objects of one bucket."""

    def __init__(self, bucket: Bucket, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client if client is not None else _boto3_client()

    def upload(self, path: Path, key: str) -> None:
        """Puts a local file whole: an object appears complete or not at all (a single PUT,
        or a multipart upload that exists only once completed)."""
        with open(path, "rb") as f:  # opened first: a file gone meanwhile raises here
            self._client.upload_fileobj(f, self.bucket.bucket, key)

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes | None:
        """The object's bytes, None if there is none."""
        try:
            response = self._client.get_object(Bucket=self.bucket.bucket, Key=key)
        except self._client.exceptions.NoSuchKey:
            return None
        return bytes(response["Body"].read())

    def keys(self, prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                yield str(item["Key"])

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys at most
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            response = self._client.delete_objects(
                Bucket=self.bucket.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                example = f"{first.get('Key')}: {first.get('Code')}"
                msg = f"{len(errors)} objects not deleted, e.g. {example}"
                raise StoreError(msg)


def _boto3_client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url(), config=config)
