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

import contextlib

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


@contextlib.contextmanager
def moto_and_local_ray(bucket: str):
    """A moto server, the AWS env pointing at it (for this process and the workers of a local Ray with 2 CPUs
    started here) and an empty ``bucket``; yields the boto3 client. Buckets are per module: moto keeps its
    state across the servers of one process."""
    import ray
    import ray.data

    server, endpoint = start_moto()
    mp = pytest.MonkeyPatch()
    aws = {**ENV, "AWS_ENDPOINT_URL": endpoint}
    for k in UNSET:
        mp.delenv(k, raising=False)
    for k, v in aws.items():
        mp.setenv(k, v)
    try:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=bucket)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": aws})
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield client
    finally:
        ray.shutdown()
        mp.undo()
        server.stop()


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


# --------------------------------------------------------------------------- fault injection in front of moto
ERROR_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "SlowDown"}
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "content-length"}


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 endpoint (moto) that answers chosen GET/HEAD requests
    with S3 errors, the way S3 itself would (XML ``<Error><Code>...``), so the clients' real error
    handling and retries (botocore, s3fs) are what is tested.

    ``fail(key, status, times=None, echo=False)``: requests for ``bucket/key`` get ``status`` (403
    AccessDenied, 404 NoSuchKey, 500, 503 SlowDown) ``times`` times (None: always), then go through; with
    ``echo`` the error message quotes the request's access key id and session token (as some S3 error
    bodies do, e.g. ``SignatureDoesNotMatch``). ``injected[(key, status)]`` counts the errors sent;
    ``access_keys`` holds the access key ids seen in ``Authorization`` headers. Point
    ``AWS_ENDPOINT_URL`` at ``proxy.endpoint``.
    """

    def __init__(self, upstream: str):
        import collections
        import threading
        from urllib.parse import urlsplit

        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.rules: dict[str, list] = {}
        self.injected = collections.Counter()
        self.access_keys: set[str] = set()
        self.lock = threading.Lock()
        self.server = None
        self.endpoint = None

    def fail(self, key: str, status: int, times: int | None = None, echo: bool = False) -> None:
        with self.lock:
            self.rules[key.lstrip("/")] = [status, times, echo]

    def _take(self, key: str) -> tuple[int, bool] | None:
        with self.lock:
            rule = self.rules.get(key)
            if rule is None or rule[1] == 0:
                return None
            if rule[1] is not None:
                rule[1] -= 1
            self.injected[(key, rule[0])] += 1
            return rule[0], rule[2]

    def start(self) -> "FaultProxy":
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import unquote, urlsplit

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _error(self, status: int, key: str, echo: bool) -> None:
                from xml.sax.saxutils import escape

                code = ERROR_CODES.get(status, "InternalError")
                msg = f"injected {code} by the test proxy"
                if echo:
                    msg += (f" for access key {self._access_key()} with token "
                            f"{self.headers.get('X-Amz-Security-Token')}")
                body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(msg)}'
                        f'</Message><Key>{escape(key)}</Key><RequestId>test</RequestId></Error>').encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _access_key(self) -> str | None:
                auth = self.headers.get("Authorization") or ""
                return auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else None

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                key = unquote(urlsplit(self.path).path).lstrip("/")
                if self._access_key():
                    with proxy.lock:
                        proxy.access_keys.add(self._access_key())
                rule = proxy._take(key) if self.command in ("GET", "HEAD") else None
                if rule is not None:
                    self._error(rule[0], key, rule[1])
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    if body is not None:
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP:
                            self.send_header(k, v)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
