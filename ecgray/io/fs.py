"""Filesystems: one way to reach local files and S3 objects.

``open_fs(uri)`` returns an fsspec filesystem and the path to hand to it;
``pyarrow_fs(uri)`` returns a :class:`pyarrow.fs.FileSystem` for Parquet
writes, and ``fs_path(uri)`` the path to hand to that filesystem.

S3 policy (both filesystems):

* the endpoint is ``AWS_ENDPOINT_URL_S3`` if set, else ``AWS_ENDPOINT_URL``,
  else AWS itself; credentials and region come from the usual ``AWS_*``
  environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``);
* listings are never cached (``use_listings_cache=False``): a listing
  always reflects the bucket now. The s3fs instance itself is reused
  (creating one costs ~0.15 s) but only while the endpoint, region,
  credentials and process id are the same (fsspec's own instance cache is
  skipped, ``skip_instance_cache=True``, because it does not see
  credentials that come from the environment).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import threading
from urllib.parse import urlsplit

import fsspec

S3_SCHEMES = ("s3://", "s3a://")


def is_s3(uri: str) -> bool:
    """True for ``s3://`` (or ``s3a://``) URIs."""
    return str(uri).lower().startswith(S3_SCHEMES)


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment, or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str | None:
    """The region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (None if unset)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


_S3_CACHE: dict = {}
_S3_LOCK = threading.Lock()


def _s3_key() -> tuple:
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or ""
    token = os.environ.get("AWS_SESSION_TOKEN") or ""
    return (s3_endpoint(), s3_region(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"),
            hashlib.sha256(f"{secret}\0{token}".encode()).hexdigest(), os.getpid())


def _s3_filesystem():
    import s3fs

    key = _s3_key()
    with _S3_LOCK:
        fs = _S3_CACHE.get(key)
        if fs is None:
            client_kwargs: dict = {}
            if key[0]:
                client_kwargs["endpoint_url"] = key[0]
            if key[1]:
                client_kwargs["region_name"] = key[1]
            fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False, skip_instance_cache=True)
            if len(_S3_CACHE) > 8:
                _S3_CACHE.clear()
            _S3_CACHE[key] = fs
        return fs


def fs_path(uri: str) -> str:
    """The path part of ``uri`` as both fsspec and pyarrow filesystems expect it.

    ``s3://bucket/key`` -> ``bucket/key``; a local path is made absolute.
    A ``#fragment`` (HDF5 row) is not stripped here.
    """
    uri = str(uri)
    if is_s3(uri):
        return uri.split("://", 1)[1].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return os.path.abspath(os.path.expanduser(uri))


def open_fs(uri: str):
    """Return ``(filesystem, path)`` for a local path or an ``s3://`` URI.

    The filesystem is an fsspec ``AbstractFileSystem``; ``path`` is what to
    pass to its methods (``bucket/key`` for S3, an absolute path locally).
    """
    uri = str(uri)
    if is_s3(uri):
        return _s3_filesystem(), fs_path(uri)
    return fsspec.filesystem("file"), fs_path(uri)


def pyarrow_fs(uri: str):
    """Return a :class:`pyarrow.fs.FileSystem` for ``uri`` (use :func:`fs_path` for the path).

    For S3: :class:`pyarrow.fs.S3FileSystem` with ``endpoint_override`` and
    ``scheme`` taken from the endpoint URL (``http://127.0.0.1:9000`` ->
    ``127.0.0.1:9000``, ``http``), region from the environment (default
    ``us-east-1``), credentials from the environment.
    Locally: :class:`pyarrow.fs.LocalFileSystem`.
    """
    from pyarrow import fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem()
    kwargs: dict = {"region": s3_region() or "us-east-1"}
    endpoint = s3_endpoint()
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        kwargs["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
        kwargs["scheme"] = parts.scheme or "https"
    cred = _credentials()
    if cred:
        kwargs.update(access_key=cred["key"], secret_key=cred["secret"])
        if "token" in cred:
            kwargs["session_token"] = cred["token"]
    return pafs.S3FileSystem(**kwargs)


def _credentials() -> dict[str, str]:
    """The AWS credentials of the environment: ``{"key", "secret"[, "token"]}`` (empty when unset)."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (key and secret):
        return {}
    out = {"key": key, "secret": secret}
    if os.environ.get("AWS_SESSION_TOKEN"):
        out["token"] = os.environ["AWS_SESSION_TOKEN"]
    return out


def storage_options(uri: str) -> dict | None:
    """Polars / object_store ``storage_options`` for ``uri`` (None for a local path): endpoint (and
    ``aws_allow_http`` for an ``http://`` one), region (default ``us-east-1``) and the credentials of
    the environment, as :func:`open_fs` and :func:`pyarrow_fs` use them."""
    if not is_s3(uri):
        return None
    opts: dict = {"aws_region": s3_region() or "us-east-1"}
    endpoint = s3_endpoint()
    if endpoint:
        opts["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            opts["aws_allow_http"] = "true"
    cred = _credentials()
    if cred:
        opts.update(aws_access_key_id=cred["key"], aws_secret_access_key=cred["secret"])
        if "token" in cred:
            opts["aws_session_token"] = cred["token"]
    return opts


def join(uri: str, *names: str) -> str:
    """Join path parts keeping the URI scheme (``s3://b/p`` + ``x`` -> ``s3://b/p/x``)."""
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *names)
    return os.path.join(uri, *names)


def to_uri(uri_like: str, path: str) -> str:
    """Rebuild a URI from a filesystem path, with the scheme of ``uri_like``."""
    if is_s3(uri_like):
        return "s3://" + path.lstrip("/")
    return path
