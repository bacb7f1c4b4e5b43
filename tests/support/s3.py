"""Object storage for the tests: moto's S3 server on 127.0.0.1 (a free port, its own process
group, stopped by pid — :func:`tests.support.procs.moto_server`) and helpers to make buckets and
fresh ``s3://`` roots in it.

moto keeps everything in memory and honours conditional writes (``If-None-Match: *``,
``If-Match``), so the commit log's compare-and-swap runs here as on a real store.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from atomscale_lab.vault.store.objects import S3Config, S3Root

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"  # moto accepts any credentials; nothing real


class S3Env:
    """A running moto S3 server: its endpoint, a client, buckets, fresh roots."""

    def __init__(self, url: str):
        import boto3

        self.url = url
        self.config = S3Config(
            endpoint_url=url,
            region="us-east-1",
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
        )
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        self._buckets: set[str] = set()

    def env(self) -> dict[str, str]:
        """The standard AWS variables pointing at this server (for child processes)."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def bucket(self, name: str = "lab-data", region: str = "us-east-1") -> str:
        """Create bucket ``name`` in ``region`` (once)."""
        if name not in self._buckets:
            kw = {}
            if region != "us-east-1":
                kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self.client.create_bucket(Bucket=name, **kw)
            self._buckets.add(name)
        return name

    def root(self, bucket: str = "lab-data", prefix: str | None = None) -> S3Root:
        """A fresh, empty root ``s3://bucket/<prefix>`` (a random prefix by default)."""
        self.bucket(bucket)
        return S3Root(bucket, prefix or f"t-{uuid.uuid4().hex[:12]}", self.config)

    def keys(self, root: S3Root, under: str = "") -> list[str]:
        """Every object key below ``root/under`` (relative to ``root``)."""
        prefix = root.key(under) if under else root.prefix + "/"
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=root.bucket, Prefix=prefix
        ):
            out += [o["Key"][len(root.prefix) + 1 :] for o in page.get("Contents", ())]
        return out

    def get(self, root: S3Root, rel: str) -> bytes:
        """The bytes of object ``root/rel``."""
        return self.client.get_object(Bucket=root.bucket, Key=root.key(rel))["Body"].read()

    def put(self, root: S3Root, rel: str, body: bytes) -> None:
        """Overwrite object ``root/rel`` unconditionally (as an attacker with bucket access)."""
        self.client.put_object(Bucket=root.bucket, Key=root.key(rel), Body=body)

    def delete(self, root: S3Root, rel: str) -> None:
        """Delete object ``root/rel``."""
        self.client.delete_object(Bucket=root.bucket, Key=root.key(rel))


@contextmanager
def s3_server(tmp: Path):
    """moto's S3 server; yields an :class:`S3Env`."""
    from tests.support.procs import moto_server

    with moto_server(tmp) as url:
        yield S3Env(url)


def child_env(s3: S3Env) -> dict[str, str]:
    """The test process's environment plus the AWS variables of ``s3``."""
    return {**os.environ, **s3.env()}


def use_s3_roots(s3: S3Env, monkeypatch) -> None:
    """Point this test's environment (and its child processes) at fresh ``s3://`` data and
    context roots on ``s3``."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ATOMSCALE_DATA_ROOT", s3.root().url)
    monkeypatch.setenv("ATOMSCALE_CONTEXT_ROOT", s3.root().url)


@pytest.fixture(name="state_backend")
def state_backend_per_deployment(db_backend, request, monkeypatch):
    """``state_backend`` for a test module to import: each test once on SQLite files and local
    roots, then on a PostgreSQL schema with the data and context roots on object storage."""
    if db_backend:
        use_s3_roots(request.getfixturevalue("s3"), monkeypatch)
    return db_backend
