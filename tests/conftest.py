"""Fixtures shared by the whole suite."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest

from cowfs.store import ObjectStore
from cowfs.store.local import LocalStore
from cowfs.store.s3 import S3Store
from mounting import Mount, in_ci, require_fuse

MiB = 1024 * 1024
#: Small enough that tests putting a few MiB exercise multipart uploads (S3's minimum part is 5 MiB).
TEST_MULTIPART_THRESHOLD = 5 * MiB

#: Fake credentials, and no user AWS configuration leaking into the tests.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNSET_AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the moto server, and a client to look at it directly."""

    endpoint: str
    name: str
    client: Any


def _set_fake_aws_env(mp: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_AWS_ENV.items():
        mp.setenv(name, value)
    for name in UNSET_AWS_ENV:
        mp.delenv(name, raising=False)


@pytest.fixture
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake AWS credentials for tests that build S3 clients without the moto server."""
    _set_fake_aws_env(monkeypatch)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """An S3 server on 127.0.0.1 for the whole session; yields its endpoint URL.

    The fake credentials go into os.environ so that subprocesses (a mounted
    daemon, the CLI) inherit them.
    """
    unavailable = pytest.fail if in_ci() else pytest.skip
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"moto server not installed: {exc}")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # start() waits forever if the server thread dies before listening.
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(timeout=30)
    if starter.is_alive():
        unavailable("moto server did not start within 30 s")
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        _set_fake_aws_env(mp)
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def moto_client(moto_server: str) -> Any:
    """A boto3 S3 client for the moto server (clients are thread-safe, and slow to create)."""
    return boto3.session.Session().client("s3", endpoint_url=moto_server, region_name="us-east-1")


@pytest.fixture
def s3_bucket(moto_server: str, moto_client: Any) -> S3Bucket:
    """A new, empty, uniquely named bucket."""
    name = f"cowfs-test-{uuid.uuid4().hex[:16]}"
    moto_client.create_bucket(Bucket=name)
    return S3Bucket(endpoint=moto_server, name=name, client=moto_client)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A fresh, empty store of each kind; the contract tests run against both."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return S3Store(
        bucket.name,
        endpoint_url=bucket.endpoint,
        region="us-east-1",
        path_style=True,
        multipart_threshold=TEST_MULTIPART_THRESHOLD,
        part_size=TEST_MULTIPART_THRESHOLD,
    )


# -- real FUSE mounts -----------------------------------------------------------



@pytest.fixture
def mount_factory(s3_bucket, tmp_path):
    """Start real cowfs mounts of the test bucket; every one is unmounted at the end."""
    require_fuse()
    mounts: list[Mount] = []

    def make(name: str = "mnt", extra: list[str] | tuple[str, ...] = (), cache: Path | None = None) -> Mount:
        mount = Mount(
            f"s3://{s3_bucket.name}",
            tmp_path / name,
            cache or tmp_path / f"{name}-cache",
            ["--endpoint-url", s3_bucket.endpoint, "--path-style", "--write-back-delay", "0.2", *extra],
        )
        mounts.append(mount)
        return mount.start()

    yield make
    for mount in reversed(mounts):
        mount.cleanup()


@pytest.fixture
def mnt(mount_factory) -> Mount:
    return mount_factory()


@pytest.fixture
def ws(mnt) -> Path:
    """A TENANT/WORKSPACE folder inside the mount, where files may live."""
    path = mnt.path / "t1" / "ws1"
    path.mkdir(parents=True)
    return path
