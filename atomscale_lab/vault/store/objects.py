"""Storage roots on S3-compatible object storage (``s3://bucket/prefix``).

Data files are written with one PUT through ``pyarrow.fs.S3FileSystem`` (an object appears whole
or not at all) and read through it with ranged reads. The commit log is one object per commit,
``_log/<seq:020d>.json``, created with a conditional ``PUT If-None-Match: *`` through boto3
(pyarrow has no conditional put): of two writers of one sequence number exactly one succeeds,
the other gets 412, reloads the log and retries with the next number. The signed checkpoint
``_log/checkpoint.json`` is replaced with ``If-Match`` (compare-and-swap) so it never goes back.

Settings (explicit > environment > the ``[s3]`` table of ``atomscale.toml``): ``endpoint_url``
(``AWS_ENDPOINT_URL``), ``region`` (``AWS_REGION``), ``access_key_id`` (``AWS_ACCESS_KEY_ID``),
``secret_access_key`` (``AWS_SECRET_ACCESS_KEY``), ``session_token`` (``AWS_SESSION_TOKEN``),
``gc_grace`` seconds (``ATOMSCALE_S3_GC_GRACE``, default 3600). Without keys both libraries use
their default credential chains (instance roles, ``~/.aws``). Secrets are never logged, printed or
part of a ``repr``.
"""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from atomscale_lab.errors import ConfigError
from atomscale_lab.vault.store.files import _FP_MIN_TAIL, _TMP, fingerprint_stream, parquet_bytes

_LOG = "_log"
_LOG_KEY_RE = re.compile(r"^([0-9]{20})\.json$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GET_POOL_MIN = 4
DEFAULT_GC_GRACE = 3600.0
"""Seconds an unlisted object must be old before gc removes it: another writer may have
uploaded data files whose commit is still on its way."""


@dataclass(frozen=True)
class S3Config:
    """How to reach the object store. Secrets are excluded from ``repr``."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    gc_grace: float = DEFAULT_GC_GRACE

    @classmethod
    def load(cls, filecfg: dict | None = None, **overrides) -> S3Config:
        """Settings from arguments, the standard AWS variables and an ``[s3]`` table."""
        table = (filecfg or {}).get("s3") or {}
        if not isinstance(table, dict):
            raise ConfigError("the [s3] setting of atomscale.toml must be a table")
        envs = {
            "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
            "access_key_id": ("AWS_ACCESS_KEY_ID",),
            "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
            "session_token": ("AWS_SESSION_TOKEN",),
            "gc_grace": ("ATOMSCALE_S3_GC_GRACE",),
        }
        unknown = sorted(set(table) - set(envs))
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]!r} in the [s3] table of atomscale.toml; "
                f"known: {', '.join(envs)}"
            )
        vals = {}
        for name, names in envs.items():
            v = overrides.get(name)
            if v is None:
                v = next((os.environ[e] for e in names if os.environ.get(e)), None)
            if v is None:
                v = table.get(name)
            vals[name] = v
        raw = vals.pop("gc_grace")
        try:
            grace = DEFAULT_GC_GRACE if raw is None else float(raw)
        except (TypeError, ValueError):
            raise ConfigError("the S3 gc grace period must be a number of seconds") from None
        if grace < 0:
            raise ConfigError("the S3 gc grace period must not be negative")
        strs = {k: (str(v) if v is not None else None) for k, v in vals.items()}
        return cls(**strs, gc_grace=grace)

    def endpoint_name(self) -> str:
        """The endpoint as it names the store (no credentials)."""
        return self.endpoint_url or "aws"


class S3Root:
    """A root ``s3://bucket/prefix`` and the settings to reach it. Not a path: ``Path(root)``
    would silently turn ``s3://`` into ``s3:/``, so code that needs a path must ask for one."""

    __slots__ = ("bucket", "prefix", "config")

    def __init__(self, bucket: str, prefix: str, config: S3Config):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.config = config

    @classmethod
    def parse(cls, url: str, config: S3Config | None = None) -> S3Root:
        """``s3://bucket[/prefix]``; refuses a bad bucket name or ``.``/``..`` in the prefix."""
        rest = str(url)[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_RE.match(bucket):
            raise ConfigError(f"{url!r} does not name a valid S3 bucket (s3://bucket/prefix)")
        parts = [p for p in prefix.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ConfigError(f"{url!r}: '.' and '..' are not allowed in an S3 prefix")
        return cls(bucket, "/".join(parts), config if config is not None else S3Config.load())

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"S3Root({self.url!r}, endpoint={self.config.endpoint_name()!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, S3Root) and self._ident() == other._ident()

    def __hash__(self) -> int:
        return hash(self._ident())

    def _ident(self) -> tuple:
        return (self.config.endpoint_name(), self.bucket, self.prefix)

    def child(self, *parts: str) -> S3Root:
        """The root ``self/parts...``."""
        extra = [p.strip("/") for p in parts if p.strip("/")]
        return S3Root(self.bucket, "/".join([self.prefix, *extra]).strip("/"), self.config)

    def key(self, rel: str = "") -> str:
        """The object key of ``rel`` under this root."""
        if not rel:
            return self.prefix
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def overlaps(self, other: S3Root) -> bool:
        """True when one root is the other or lies inside it (same endpoint and bucket)."""
        if (self.config.endpoint_name(), self.bucket) != (
            other.config.endpoint_name(),
            other.bucket,
        ):
            return False
        a, b = self.prefix, other.prefix
        return a == b or not a or not b or a.startswith(b + "/") or b.startswith(a + "/")


_CLIENTS: dict[S3Config, tuple] = {}
_CLIENTS_LOCK = threading.Lock()
_REGIONS_SEEN: dict[tuple, str] = {}


def _clients(config: S3Config):
    """``(boto3 client, pyarrow S3FileSystem)`` for a configuration, made once per process."""
    with _CLIENTS_LOCK:
        hit = _CLIENTS.get(config)
        if hit is not None:
            return hit
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError("s3:// roots need boto3: pip install 'atomscale-lab[s3]'") from None
        kw = {}
        fs_kw = {}
        if config.endpoint_url:
            parts = urlsplit(config.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    f"the S3 endpoint {config.endpoint_url!r} must be an http(s):// URL"
                )
            kw["endpoint_url"] = config.endpoint_url
            fs_kw.update(endpoint_override=parts.netloc, scheme=parts.scheme)
        # unset: each library's own default (AWS_DEFAULT_REGION, ~/.aws/config, ...)
        region = config.region or None
        client = boto3.session.Session().client(
            "s3",
            region_name=region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            aws_session_token=config.session_token,
            config=Config(
                s3={"addressing_style": "path" if config.endpoint_url else "auto"},
                retries={"max_attempts": 4, "mode": "standard"},
                max_pool_connections=32,
            ),
            **kw,
        )
        fs = pafs.S3FileSystem(
            access_key=config.access_key_id,
            secret_key=config.secret_access_key,
            session_token=config.session_token,
            region=region,
            **fs_kw,
        )
        _CLIENTS[config] = (client, fs)
        return client, fs


def _code(err) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


def _status(err) -> int:
    return int(getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def bucket_region(root: S3Root) -> str:
    """The cloud region the bucket declares (``GetBucketLocation``), cached per process."""
    from botocore.exceptions import BotoCoreError, ClientError

    ident = (root.config.endpoint_name(), root.bucket)
    if ident in _REGIONS_SEEN:
        return _REGIONS_SEEN[ident]
    client, _ = _clients(root.config)
    try:
        loc = client.get_bucket_location(Bucket=root.bucket).get("LocationConstraint")
    except ClientError as e:
        raise ConfigError(
            f"cannot read the region of bucket {root.bucket!r} at "
            f"{root.config.endpoint_name()}: {_code(e) or _status(e)}"
        ) from None
    except BotoCoreError as e:
        raise ConfigError(
            f"cannot reach the object store {root.config.endpoint_name()}: {type(e).__name__}"
        ) from None
    # No constraint means us-east-1; "EU" is the old name of eu-west-1.
    region = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(loc, loc)
    _REGIONS_SEEN[ident] = region
    return region


def check_residency(root: S3Root, region: str) -> None:
    """Refuse a root whose bucket lies outside the deployment's declared ``region``
    (``ConfigError``, naming both)."""
    from atomscale_lab.vault.settings import residency_of

    cloud = bucket_region(root)
    mapped = residency_of(cloud)
    if mapped != region:
        raise ConfigError(
            f"the bucket of {root.url} is in {cloud!r}"
            + (f" (region {mapped!r})" if mapped else " (no known region)")
            + f", but this deployment declares region {region!r} (ATOMSCALE_REGION): "
            "its data would be stored outside its region; use a bucket in that region"
        )


_CAS_CHECKED: set[tuple] = set()


def check_conditional_writes(root: S3Root) -> None:
    """Refuse a store that ignores ``If-None-Match: *`` (two writers could then both win one
    sequence number and a commit would be lost): put a probe object twice, once per process and
    bucket."""
    import uuid

    ident = (root.config.endpoint_name(), root.bucket)
    if ident in _CAS_CHECKED:
        return
    m = S3Medium(root)
    probe = f".atomscale-probe/{uuid.uuid4().hex}"
    try:
        first = m.put(probe, b"1")
        second = m.put(probe, b"2")
    finally:
        m.delete(probe)
    if first is None or second is not None:
        raise ConfigError(
            f"the object store at {root.config.endpoint_name()} ignores conditional writes "
            f"(If-None-Match) on bucket {root.bucket!r}: commits could be lost; use a store "
            "that supports them (AWS S3, MinIO, SeaweedFS, ...)"
        )
    _CAS_CHECKED.add(ident)


def check_root(root: S3Root, region: str) -> None:
    """Everything a root must hold before use: residency, then conditional writes."""
    check_residency(root, region)
    check_conditional_writes(root)


class _TailFile:
    """A seekable view of an object of which the last bytes are in memory; reads before them
    are ranged GETs (the 4-byte head of a file longer than the tail)."""

    def __init__(self, tail: bytes, size: int, medium: S3Medium, rel: str):
        self.tail, self.size, self.start = tail, size, size - len(tail)
        self.medium, self.rel, self.pos = medium, rel, 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        lo, hi = self.pos, min(self.pos + n, self.size)
        self.pos = hi
        if lo >= self.start:
            return self.tail[lo - self.start : hi - self.start]
        r = self.medium.client.get_object(
            Bucket=self.medium.root.bucket,
            Key=self.medium.root.key(self.rel),
            Range=f"bytes={lo}-{hi - 1}",
        )
        return r["Body"].read()


class S3Medium:
    """A table folder (or any folder) on object storage; see the module docstring."""

    objects = True

    def __init__(self, root: S3Root):
        self.root = root
        self.client, self.fs = _clients(root.config)

    def __str__(self) -> str:
        return self.root.url

    def identity(self) -> str:
        """A stable name of the folder (for the process-wide rollback guard)."""
        return f"{self.root.config.endpoint_name()}|{self.root.url}"

    def fs_path(self, rel: str) -> str:
        """The path of ``rel`` for :attr:`fs` (pyarrow: ``bucket/key``)."""
        return f"{self.root.bucket}/{self.root.key(rel)}"

    # -- data files ---------------------------------------------------------------------------

    def stat(self, rel: str) -> tuple | None:
        """``(size, mtime_ns)`` of an object (changes when it is replaced); None if missing."""
        info = self.fs.get_file_info(self.fs_path(rel))
        if info.type != pafs.FileType.File:
            return None
        return (info.size, info.mtime_ns)

    def fingerprint(self, rel: str) -> tuple[int, str]:
        """``(size, fp)`` of a data object: one ranged GET of its tail (which also tells the
        size), a second only for a footer longer than the tail or for the head."""
        from botocore.exceptions import ClientError

        try:
            r = self.client.get_object(
                Bucket=self.root.bucket, Key=self.root.key(rel), Range=f"bytes=-{_FP_MIN_TAIL}"
            )
        except ClientError as e:
            if _status(e) == 416:  # an empty object has no last bytes
                return fingerprint_stream(pa.BufferReader(b""), 0)
            if _status(e) == 404 or _code(e) == "NoSuchKey":
                raise FileNotFoundError(self.fs_path(rel)) from None
            raise
        tail = r["Body"].read()
        size = int(str(r.get("ContentRange", "")).rpartition("/")[2] or len(tail))
        return fingerprint_stream(_TailFile(tail, size, self, rel), size)

    def write_file(self, rel: str, table: pa.Table, props) -> tuple[int, str]:
        """Encrypt ``table`` in memory, fingerprint it, upload it with one PUT."""
        buf = parquet_bytes(table, props)
        size, fp = fingerprint_stream(pa.BufferReader(buf), buf.size)
        with self.fs.open_output_stream(self.fs_path(rel), metadata={}) as out:
            out.write(buf)
        return size, fp

    def delete(self, rel: str) -> None:
        """Delete an object (a missing one is fine)."""
        self.client.delete_object(Bucket=self.root.bucket, Key=self.root.key(rel))

    def _list(self, rel_prefix: str = "", start_after: str | None = None):
        base = self.root.key("")
        prefix = f"{base}/{rel_prefix}" if base else rel_prefix
        if base and not rel_prefix:
            prefix = base + "/"
        kw = {"Bucket": self.root.bucket, "Prefix": prefix}
        if start_after:
            kw["StartAfter"] = start_after
        cut = len(base) + 1 if base else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(**kw):
            for obj in page.get("Contents", ()):
                yield obj["Key"][cut:], obj

    def list_data(self) -> list[tuple[str, float]]:
        """``(rel, mtime)`` of every object outside ``_log/`` and ``_tmp/``: the top level with
        a delimiter, then each folder but those (a long log is never paged through)."""
        base = self.root.key("")
        top = f"{base}/" if base else ""
        out, folders = [], []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.root.bucket, Prefix=top, Delimiter="/"
        )
        for page in pages:
            for obj in page.get("Contents", ()):
                out.append((obj["Key"][len(top) :], obj["LastModified"].timestamp()))
            for cp in page.get("CommonPrefixes", ()):
                name = cp["Prefix"][len(top) :]
                if name.rstrip("/") not in (_LOG, _TMP):
                    folders.append(name)

        def one(folder):
            return [(rel, obj["LastModified"].timestamp()) for rel, obj in self._list(folder)]

        with ThreadPoolExecutor(max_workers=8) as pool:
            for found in pool.map(one, folders):
                out.extend(found)
        return out

    def clear_tmp(self, older_than: float | None = None) -> int:
        """Nothing to clear: uploads are whole objects, never staged under ``_tmp/``."""
        return 0

    def read_bytes(self, rel: str) -> bytes:
        """The raw bytes of an object (diagnostics and tests)."""
        got = self.get(rel)
        if got is None:
            raise FileNotFoundError(self.fs_path(rel))
        return got[0]

    def delete_all(self) -> int:
        """Delete every object under this folder (shredding an org). Returns the count."""
        keys = [obj["Key"] for _, obj in self._list()]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.root.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )
        return len(keys)

    # -- small objects: log, checkpoint, markers ---------------------------------------------

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """``(body, etag)`` of an object, None if missing."""
        from botocore.exceptions import ClientError

        try:
            r = self.client.get_object(Bucket=self.root.bucket, Key=self.root.key(rel))
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404") or _status(e) == 404:
                return None
            raise
        return r["Body"].read(), r["ETag"]

    def put(self, rel: str, body: bytes, *, if_match: str | None = None) -> str | None:
        """Create ``rel`` only if absent (``If-None-Match: *``) or, with ``if_match``, replace it
        only if unchanged. Returns the new ETag, or None when the condition failed (412; 409 is
        a concurrent conditional write of the same key)."""
        from botocore.exceptions import ClientError

        cond = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        try:
            r = self.client.put_object(
                Bucket=self.root.bucket, Key=self.root.key(rel), Body=body, **cond
            )
        except ClientError as e:
            if _status(e) in (409, 412) or _code(e) in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return None
            raise
        return r.get("ETag", "")

    def log_key(self, seq: int) -> str:
        """The relative key of commit ``seq``."""
        return f"{_LOG}/{seq:020d}.json"

    def list_log(self, after: int = 0) -> list[tuple[int, str]]:
        """``(seq, etag)`` of the commit objects after ``after``, in order; other names under
        ``_log/`` (the checkpoint, planted junk) are not commits and are skipped."""
        start = self.root.key(self.log_key(after)) if after > 0 else None
        out = []
        for rel, obj in self._list(_LOG + "/", start):
            m = _LOG_KEY_RE.match(rel[len(_LOG) + 1 :])
            if m:
                out.append((int(m.group(1)), obj["ETag"]))
        return out

    def get_log(self, seqs: list[int]) -> list[tuple[bytes, str]]:
        """The bodies (and ETags) of commit objects, in the order asked (fetched in parallel)."""

        def one(seq):
            got = self.get(self.log_key(seq))
            return got if got is not None else (b"", "")

        if len(seqs) < _GET_POOL_MIN:
            return [one(s) for s in seqs]
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, seqs))
