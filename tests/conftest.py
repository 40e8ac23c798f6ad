"""Fixtures shared by the whole suite."""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.config import Config

from cowfs.store import ObjectStore
from cowfs.store.local import LocalStore
from cowfs.store.s3 import S3Store
from faultproxy import FaultProxy
from mounting import Mount, require_fuse, unavailable
from rgw import CephRgw, RgwUnavailable

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


#: The S3 servers the suite runs against: moto (a mock, quick to start) and
#: Ceph's RADOS Gateway (a real server). A test module marked
#: ``pytest.mark.servers`` runs its tests once per server; other tests use moto.
SERVERS = ("moto", "rgw")


@dataclass(frozen=True)
class S3Server:
    """An S3 endpoint on 127.0.0.1 and a boto3 client for it."""

    name: str
    endpoint: str
    client: Any


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on one of the S3 servers, and a client to look at it directly."""

    endpoint: str
    name: str
    client: Any
    server: str = "moto"


def _set_fake_aws_env(mp: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_AWS_ENV.items():
        mp.setenv(name, value)
    for name in UNSET_AWS_ENV:
        mp.delenv(name, raising=False)


@pytest.fixture
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake AWS credentials for tests that build S3 clients without an S3 server."""
    _set_fake_aws_env(monkeypatch)


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """The test credentials in os.environ for the whole session, so that
    subprocesses (a mounted daemon, the CLI) inherit them."""
    with pytest.MonkeyPatch.context() as mp:
        _set_fake_aws_env(mp)
        yield


@pytest.fixture(scope="session")
def moto_server(aws_env: None) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
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
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rgw_server(aws_env: None) -> Iterator[str]:
    """Ceph's RADOS Gateway on 127.0.0.1 for the whole session (started on first use); yields its endpoint."""
    try:
        rgw = CephRgw(FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"], FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"]).start()
    except RgwUnavailable as exc:
        unavailable(f"Ceph RGW unavailable: {exc}")
    try:
        yield rgw.endpoint
    finally:
        rgw.stop()


def _client(endpoint: str) -> Any:
    config = Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)


@pytest.fixture(scope="session")
def moto_client(moto_server: str) -> Any:
    """A boto3 S3 client for the moto server (clients are thread-safe, and slow to create)."""
    return _client(moto_server)


def server_named(request: pytest.FixtureRequest, name: str) -> S3Server:
    """The session's S3 server called ``name``, started on first use."""
    return S3Server(name, request.getfixturevalue(f"{name}_server"), request.getfixturevalue(f"{name}_client"))


@pytest.fixture(scope="session")
def rgw_client(rgw_server: str) -> Any:
    """A boto3 S3 client for Ceph RGW."""
    return _client(rgw_server)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``servers`` (with server names, or none for all) run once per S3 server."""
    marker = metafunc.definition.get_closest_marker("servers")
    if marker is not None and "s3_server" in metafunc.fixturenames:
        metafunc.parametrize("s3_server", marker.args or SERVERS, indirect=True, scope="session")


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """The S3 server of this test: moto unless the test is marked ``servers``."""
    return server_named(request, getattr(request, "param", "moto"))


def new_bucket(server: S3Server) -> S3Bucket:
    name = f"cowfs-test-{uuid.uuid4().hex[:16]}"
    server.client.create_bucket(Bucket=name)
    return S3Bucket(endpoint=server.endpoint, name=name, client=server.client, server=server.name)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> S3Bucket:
    """A new, empty, uniquely named bucket on the test's S3 server."""
    return new_bucket(s3_server)


def s3_store_of(bucket: S3Bucket, **options: Any) -> S3Store:
    """An S3Store on ``bucket`` as the tests configure it (small multipart parts)."""
    settings: dict[str, Any] = {"multipart_threshold": TEST_MULTIPART_THRESHOLD, "part_size": TEST_MULTIPART_THRESHOLD}
    settings.update(options)
    return S3Store(bucket.name, endpoint_url=bucket.endpoint, region="us-east-1", path_style=True, **settings)


@pytest.fixture(params=["local", *SERVERS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A fresh, empty store of each kind; the contract tests run against all of them."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return s3_store_of(new_bucket(server_named(request, request.param)))


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault-injecting TCP proxy in front of the test's S3 server."""
    proxy = FaultProxy(urllib.parse.urlparse(s3_server.endpoint).port)
    yield proxy
    proxy.stop()


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
