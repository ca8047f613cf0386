"""Reusable S3 test fixtures: a local moto server and buckets filled from local files.

Use in a test module::

    from tests.s3util import moto_server, s3_env, s3_bucket_with  # noqa: F401  (fixtures)

    def test_x(s3_bucket_with):
        root = s3_bucket_with({"data/A0001.hea": path_hea, "data/A0001.mat": path_mat})
        # root == "s3://<unique bucket>"; AWS_* env points at the moto server

* ``moto_server`` (session): a :class:`moto.server.ThreadedMotoServer` on
  127.0.0.1 with a free port; yields its endpoint URL.
* ``s3_env`` (function): sets ``AWS_ENDPOINT_URL``, fake credentials,
  ``us-east-1``, no proxies for 127.0.0.1, no EC2 metadata lookups and no
  user AWS config files (monkeypatch, undone after the test), so that all
  traffic goes to 127.0.0.1 only. Yields the endpoint URL.
* ``s3_bucket_with`` (function): a factory ``make(files, bucket=None) -> "s3://bucket"``;
  ``files`` maps keys to local paths (str/Path) or bytes; each call creates
  a new bucket (unique name) unless ``bucket`` names an existing one.
* :func:`upload_dir` / :func:`s3_client`: plain helpers.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable, Mapping

import pytest

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
UNSET = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "HTTP_PROXY", "HTTPS_PROXY",
         "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


def start_moto():
    """Start a threaded moto server on 127.0.0.1 (free port); return ``(server, endpoint_url)``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@pytest.fixture(scope="session")
def moto_server():
    """Session-wide moto S3 server; yields the endpoint URL (``http://127.0.0.1:PORT``)."""
    server, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    """Point the AWS environment at the moto server for one test; yields the endpoint URL."""
    for k in UNSET:
        monkeypatch.delenv(k, raising=False)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    yield moto_server


def s3_client(endpoint: str):
    """A boto3 S3 client for ``endpoint`` (fake credentials, us-east-1)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def upload(client, bucket: str, files: Mapping[str, str | Path | bytes]) -> None:
    """Upload ``{key: local path or bytes}`` to ``bucket``."""
    for key, src in files.items():
        body = src if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
        client.put_object(Bucket=bucket, Key=key.lstrip("/"), Body=bytes(body))


def upload_dir(client, bucket: str, prefix: str, folder: str | Path, names: Iterable[str] | None = None) -> list[str]:
    """Upload files of ``folder`` (all, or those in ``names``) under ``prefix``; return the keys."""
    folder = Path(folder)
    paths = [folder / n for n in names] if names is not None else sorted(p for p in folder.iterdir() if p.is_file())
    keys = []
    for p in paths:
        key = f"{prefix.strip('/')}/{p.name}" if prefix.strip("/") else p.name
        client.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())
        keys.append(key)
    return keys


@pytest.fixture
def s3_bucket_with(s3_env):
    """Factory: ``make(files, bucket=None) -> "s3://bucket"`` (new unique bucket unless given)."""
    client = s3_client(s3_env)

    def make(files: Mapping[str, str | Path | bytes] | None = None, bucket: str | None = None) -> str:
        if bucket is None:
            bucket = f"test-{uuid.uuid4().hex[:16]}"
            client.create_bucket(Bucket=bucket)
        upload(client, bucket, files or {})
        return f"s3://{bucket}"

    make.client = client
    make.endpoint = s3_env
    return make
