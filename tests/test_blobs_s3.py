"""The S3-compatible blob store (boto3) against moto's S3 server, started on loopback.

moto's server speaks the S3 REST protocol (PutObject, HeadObject, ranged GetObject, DeleteObject,
SigV4 presigned URLs), so the store runs through botocore exactly as it would against AWS, MinIO
or Ceph. What it does not cover: a real store's consistency and latency, multipart upload
limits of other vendors, bucket policies, a CDN in front of presigned URLs, and whether a URL
past its expiry is refused (moto does not enforce presigned expiry in every version).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")
httpx = pytest.importorskip("httpx")

from test_registry_fixtures import make_env  # noqa: E402

from walle_registry.blobs import S3BlobStore, open_store  # noqa: E402
from walle_registry.errors import Invalid, NotFound, TooLarge  # noqa: E402

BUCKET = "walle-blobs"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_url(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}/t{time.monotonic_ns()}?endpoint={s3_endpoint}"


def test_put_get_ranges_delete(s3_url: str, tmp_path: Path) -> None:
    store = open_store(s3_url, tmp_path / "unused", tmp_path / "spool")
    assert isinstance(store, S3BlobStore)
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    info = store.put([data[:1000], data[1000:]], expected_sha256=sha)
    assert (info.sha256, info.size) == (sha, len(data))
    assert store.exists(sha) and store.size(sha) == len(data)
    assert b"".join(store.open_range(sha)) == data
    assert b"".join(store.open_range(sha, 10, 19)) == data[10:20]
    assert b"".join(store.open_range(sha, len(data) - 5)) == data[-5:]
    assert store.put([data]) == info  # same content: same name, stored once
    assert list((tmp_path / "spool").iterdir()) == []  # temp files are removed
    store.delete(sha)
    assert not store.exists(sha)
    with pytest.raises(NotFound):
        store.size(sha)
    with pytest.raises(NotFound):
        store.open_range(sha)


def test_rejects_wrong_digest_and_oversize(s3_url: str, tmp_path: Path) -> None:
    store = open_store(s3_url, tmp_path, tmp_path / "spool")
    wrong = "0" * 64
    with pytest.raises(Invalid, match="digest mismatch"):
        store.put([b"payload"], expected_sha256=wrong)
    assert not store.exists(wrong)
    assert not store.exists(hashlib.sha256(b"payload").hexdigest())  # nothing stored under any name
    with pytest.raises(TooLarge):
        store.put([b"x" * 100], max_bytes=10)


def test_presigned_get_needs_no_credentials_and_supports_range(s3_url: str, tmp_path: Path) -> None:
    store = S3BlobStore.from_url(s3_url + "&presign=60", tmp_path)
    data = os.urandom(50_000)
    sha = store.put([data]).sha256
    url = store.presign(sha)
    assert "Signature=" in url or "X-Amz-Signature=" in url
    got = httpx.get(url)  # no AWS credentials: the signature in the URL is the authorisation
    assert got.status_code == 200 and got.content == data
    assert "immutable" in got.headers.get("cache-control", "")
    part = httpx.get(url, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == data[:100]
    tampered = url.replace(sha, hashlib.sha256(b"other").hexdigest())
    assert httpx.get(tampered).status_code in (403, 404)


def test_bad_store_urls_are_named(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="not an s3://"):
        S3BlobStore.from_url("http://bucket", tmp_path)
    with pytest.raises(Invalid, match="unknown options"):
        S3BlobStore.from_url("s3://bucket?endpont=x", tmp_path)
    with pytest.raises(Invalid, match="presign"):
        S3BlobStore.from_url("s3://bucket?presign=soon", tmp_path)


@pytest.mark.parametrize("presign", [0, 120])
def test_registry_on_s3_serves_or_redirects_authorised_pulls(s3_url: str, tmp_path: Path, presign: int) -> None:
    url = s3_url + (f"&presign={presign}" if presign else "")
    with make_env(tmp_path, None, blob_store=url) as env:
        rel = env.publish("s3task", "1.0.0", model=os.urandom(100_000))
        dev = env.device("s3-dev")
        env.deploy(task="s3task", version="1.0.0")
        model = max(rel["files"], key=lambda f: f["size"])
        path = f"/v1/blobs/{model['sha256']}"
        assert env.http.get(path).status_code == 401  # authorisation stays with the registry
        resp = env.http.get(path, headers=dev.headers, follow_redirects=False)
        if presign:
            assert resp.status_code == 307
            got = httpx.get(resp.headers["location"])
            assert hashlib.sha256(got.content).hexdigest() == model["sha256"]
        else:  # streamed from the store through the registry (ranged GetObject)
            assert resp.status_code == 200
            assert hashlib.sha256(resp.content).hexdigest() == model["sha256"]
            part = env.http.get(path, headers={**dev.headers, "Range": "bytes=5-14"})
            assert part.status_code == 206 and part.content == resp.content[5:15]
