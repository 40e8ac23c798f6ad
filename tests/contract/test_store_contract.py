"""The ObjectStore contract: every test runs against the local store and each S3 server (moto, Ceph RGW)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

import pytest
from botocore.exceptions import ClientError, NoCredentialsError, ReadTimeoutError

from cowfs.errors import AccessDenied, ObjectNotFound, PreconditionFailed, Refused, StoreError, UsageError
from cowfs.ranges import add_span
from cowfs.store import ObjectStore, default_store_path, open_store
from cowfs.store.local import LocalStore
from cowfs.store.s3 import S3Store, _store_error

if TYPE_CHECKING:
    from conftest import S3Bucket

#: Every test runs on each S3 server (the ones on a bucket directly, and the
#: ``store`` fixture's S3 stores).
pytestmark = pytest.mark.servers

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 5 * MiB  # as the `store` fixture sets it for S3
LARGE = 2 * MULTIPART_THRESHOLD + MiB  # three parts on the test S3 store
META = {"mode": "33188", "mtime": "1700000000.25", "uid": "1000"}


def put_all(store: ObjectStore, keys: list[str], body: bytes = b"x") -> None:
    """Put many small objects at once, so that thousands of keys stay quick on moto."""
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: store.put(key, body, {}), keys))


def quoted_md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- put / head / get ----------------------------------------------------------


def test_put_head_get_round_trip(store: ObjectStore) -> None:
    before = time.time()
    etag = store.put("t/ws/notes.txt", b"hello world", META)
    info = store.head("t/ws/notes.txt")
    assert etag == quoted_md5(b"hello world")
    assert (info.key, info.size, info.etag, info.metadata) == ("t/ws/notes.txt", 11, etag, META)
    assert before - 5 <= info.last_modified <= time.time() + 5
    data, got = store.get("t/ws/notes.txt")
    assert data == b"hello world"
    assert got == info


def test_metadata_names_come_back_lower_case(store: ObjectStore) -> None:
    store.put("k", b"", {"Mode": "16877"})
    assert store.head("k").metadata == {"mode": "16877"}


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (10, 20, bytes(range(10, 20))),
        (90, None, bytes(range(90, 100))),
        (95, 500, bytes(range(95, 100))),
        (None, 5, bytes(range(5))),
        (100, None, b""),
        (150, 200, b""),
        (7, 7, b""),
    ],
)
def test_get_byte_range(store: ObjectStore, start: int | None, end: int | None, expected: bytes) -> None:
    etag = store.put("r", bytes(range(100)), META)
    data, info = store.get("r", start, end)
    assert data == expected
    assert (info.size, info.etag, info.metadata) == (100, etag, META)


def test_get_range_of_empty_object(store: ObjectStore) -> None:
    store.put("empty", b"", {})
    data, info = store.get("empty", 0, 10)
    assert (data, info.size) == (b"", 0)


@pytest.mark.parametrize("size", [0, 1000, LARGE], ids=["empty", "small", "large"])
def test_get_to_file(store: ObjectStore, tmp_path: Path, size: int) -> None:
    content = os.urandom(size)
    etag = store.put("blob", content, META)
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        info = store.get_to_file("blob", out)
        assert out.tell() == size
    assert sha256_of(out_path) == hashlib.sha256(content).hexdigest()
    assert (info.size, info.etag, info.metadata) == (size, etag, META)


def _spans_heard(out: BinaryIO, base: int, content: bytes) -> tuple[list[tuple[int, int]], Any]:
    """A progress callback checking that each reported piece is in ``out`` already, and what it heard."""
    spans: list[tuple[int, int]] = []
    lock = threading.Lock()

    def progress(info: Any, start: int, end: int) -> None:
        assert info.size == len(content)
        assert os.pread(out.fileno(), end - start, base + start) == content[start:end], "reported before written"
        with lock:
            spans[:] = add_span(spans, start, end)

    return spans, progress


@pytest.mark.parametrize("size", [0, 1000, LARGE], ids=["empty", "small", "large"])
def test_get_to_file_reports_each_piece_once_it_is_in_the_file(store: ObjectStore, tmp_path: Path, size: int) -> None:
    content = os.urandom(size)
    store.put("blob", content, {})
    with open(tmp_path / "out", "w+b") as out:
        out.write(b"head")
        spans, progress = _spans_heard(out, 4, content)
        store.get_to_file("blob", out, progress)
    assert spans == ([(0, size)] if size else [])


@pytest.mark.parametrize("size", [0, 1000, LARGE], ids=["empty", "small", "large"])
def test_stream_gives_the_object_piece_by_piece_in_order(store: ObjectStore, size: int) -> None:
    content = os.urandom(size)
    etag = store.put("blob", content, META)
    pieces: list[tuple[int, bytes]] = []
    info = store.stream("blob", lambda info, start, data: pieces.append((start, data)))
    assert b"".join(data for _, data in pieces) == content
    assert [start for start, _ in pieces] == [sum(len(data) for _, data in pieces[:i]) for i in range(len(pieces))]
    assert (info.size, info.etag) == (size, etag)


def test_a_stream_stops_when_its_reader_raises(store: ObjectStore) -> None:
    store.put("blob", os.urandom(LARGE), {})

    def enough(info: Any, start: int, data: bytes) -> None:
        raise StoreError("enough")

    with pytest.raises(StoreError, match="enough"):
        store.stream("blob", enough)
    assert store.get("blob", 0, 4)[1].size == LARGE, "the store answers the next request"


def test_get_range_into_writes_those_bytes_at_their_offsets_and_reports_them(
    store: ObjectStore, tmp_path: Path
) -> None:
    content = os.urandom(3 * MiB + 7)
    store.put("blob", content, {})
    info = store.head("blob")
    start, end = MiB + 3, 3 * MiB + 7
    with open(tmp_path / "out", "w+b") as out:
        spans, progress = _spans_heard(out, 0, content)
        store.get_range_into("blob", info, out.fileno(), start, end, progress)
    assert (tmp_path / "out").read_bytes() == bytes(start) + content[start:end]
    assert spans == [(start, end)]


def test_get_range_into_refuses_another_version(store: ObjectStore, tmp_path: Path) -> None:
    store.put("blob", b"old version", {})
    old = store.head("blob")
    store.put("blob", b"new version", {})
    with open(tmp_path / "out", "w+b") as out:
        with pytest.raises(PreconditionFailed):
            store.get_range_into("blob", old, out.fileno(), 0, 5)
    assert (tmp_path / "out").read_bytes() == b""


def test_get_to_file_writes_from_current_position(store: ObjectStore, tmp_path: Path) -> None:
    content = os.urandom(LARGE)
    store.put("blob", content, {})
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        out.write(b"header")
        store.get_to_file("blob", out)
        out.write(b"trailer")
    assert out_path.read_bytes() == b"header" + content + b"trailer"


@pytest.mark.parametrize("size", [100_000, LARGE], ids=["small", "large"])
def test_put_from_file_reads_from_current_position(store: ObjectStore, tmp_path: Path, size: int) -> None:
    content = os.urandom(size)
    source = tmp_path / "source"
    source.write_bytes(b"skip me" + content)
    with open(source, "rb") as f:
        f.seek(len(b"skip me"))
        store.put("from-file", f, META)
    data, info = store.get("from-file")
    assert hashlib.sha256(data).digest() == hashlib.sha256(content).digest()
    assert (info.size, info.metadata) == (size, META)


def make_body(kind: str, data: bytes, tmp_path: Path) -> bytes | BinaryIO:
    if kind == "bytes":
        return data
    if kind == "bytesio":
        return io.BytesIO(data)
    (tmp_path / "body").write_bytes(data)
    return open(tmp_path / "body", "rb")


@pytest.mark.parametrize("kind", ["bytes", "bytesio", "file"])
def test_multipart_put_round_trip(store: ObjectStore, tmp_path: Path, kind: str) -> None:
    content = os.urandom(LARGE)
    body = make_body(kind, content, tmp_path)
    try:
        etag = store.put("big", body, META)
    finally:
        if not isinstance(body, bytes):
            body.close()
    data, info = store.get("big")
    assert hashlib.sha256(data).digest() == hashlib.sha256(content).digest()
    assert (info.size, info.etag, info.metadata) == (LARGE, etag, META)
    if isinstance(store, S3Store):
        assert etag.endswith('-3"'), "a multipart ETag names its part count"


def test_head_and_get_of_missing_key(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        store.head("nope")
    with pytest.raises(ObjectNotFound):
        store.get("nope")
    with pytest.raises(ObjectNotFound):
        store.get("nope", 0, 10)
    with open(tmp_path / "out", "wb") as out, pytest.raises(ObjectNotFound):
        store.get_to_file("nope", out)


# -- conditional writes ----------------------------------------------------------


@pytest.mark.parametrize("size", [10, LARGE], ids=["small", "multipart"])
def test_if_none_match(store: ObjectStore, size: int) -> None:
    first = os.urandom(size)
    etag = store.put("once", first, {}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("once", os.urandom(size), {"mode": "1"}, if_none_match=True)
    data, info = store.get("once")
    assert data == first
    assert (info.etag, info.metadata) == (etag, {})


def test_if_match(store: ObjectStore) -> None:
    stale = store.put("k", b"one", {})
    current = store.put("k", b"two", {}, if_match=stale)
    assert current != stale
    with pytest.raises(PreconditionFailed):
        store.put("k", b"three", {}, if_match=stale)
    assert store.get("k")[0] == b"two"
    assert store.put("k", b"four", {}, if_match=current) == quoted_md5(b"four")


@pytest.mark.parametrize("size", [10, LARGE], ids=["small", "multipart"])
def test_if_match_refuses_a_stale_etag_at_any_size(store: ObjectStore, size: int) -> None:
    """Where a server ignores If-Match on CompleteMultipartUpload, a HEAD just before
    completing stands in for it: a write based on a replaced version never lands."""
    stale = store.put("k", os.urandom(size), {})
    current = store.put("k", os.urandom(size), {}, if_match=stale)
    with pytest.raises(PreconditionFailed):
        store.put("k", os.urandom(size), {}, if_match=stale)
    assert store.head("k").etag == current
    assert store.put("k", b"x" * size, {}, if_match=current) == store.head("k").etag


@pytest.mark.parametrize("size", [10, LARGE], ids=["small", "multipart"])
@pytest.mark.parametrize("condition", ["if_none_match", "if_match"])
def test_a_write_repeated_after_it_landed_is_a_success(store: ObjectStore, size: int, condition: str) -> None:
    """A write whose answer was lost (a read timeout) is sent again under the same condition
    and finds its own version there: that is a success, not another writer."""
    base = store.put("k", b"base", {}) if condition == "if_match" else None
    kwargs: dict[str, Any] = {"if_match": base} if base else {"if_none_match": True}
    content = os.urandom(size)
    first = store.put("k", content, META, **kwargs)
    again = store.put("k", content, META, **kwargs)
    assert again == first == store.head("k").etag
    with pytest.raises(PreconditionFailed):
        store.put("k", content, {**META, "mode": "33261"}, **kwargs)
    with pytest.raises(PreconditionFailed):
        store.put("k", os.urandom(size), META, **kwargs)
    data, info = store.get("k")
    assert (data, info.etag, info.metadata) == (content, first, META)


def test_a_key_the_store_will_not_take_is_refused_not_missing(store: ObjectStore) -> None:
    """moto answers a PUT of a key with a newline 404; whatever a store does with it,
    it either keeps the object or says ``Refused``, which write-back stops retrying."""
    try:
        store.put("t/w/line\nbreak", b"x", {})
    except Refused:
        return
    assert store.get("t/w/line\nbreak")[0] == b"x"


def test_if_match_on_missing_key(store: ObjectStore) -> None:
    with pytest.raises(PreconditionFailed):
        store.put("gone", b"x", {}, if_match=quoted_md5(b"x"))
    with pytest.raises(ObjectNotFound):
        store.head("gone")


# -- copy and delete -------------------------------------------------------------


def test_copy_keeps_metadata(store: ObjectStore) -> None:
    etag = store.put("src", b"content", META)
    assert store.copy("src", "dst") == etag
    data, info = store.get("dst")
    assert (data, info.metadata) == (b"content", META)
    assert store.get("src")[0] == b"content"


def test_copy_replaces_metadata(store: ObjectStore) -> None:
    store.put("src", b"content", META)
    store.copy("src", "dst", {"mode": "33261"})
    assert store.head("dst").metadata == {"mode": "33261"}
    assert store.head("src").metadata == META


def test_copy_onto_itself_replaces_metadata(store: ObjectStore) -> None:
    store.put("k", b"content", META)
    store.copy("k", "k", {"mode": "33261"})
    data, info = store.get("k")
    assert (data, info.metadata) == (b"content", {"mode": "33261"})


def test_copy_over_existing_object(store: ObjectStore) -> None:
    store.put("src", b"new", {})
    store.put("dst", b"old", {})
    store.copy("src", "dst")
    assert store.get("dst")[0] == b"new"


def test_copy_of_missing_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.copy("nope", "dst")
    with pytest.raises(ObjectNotFound):
        store.head("dst")


@pytest.mark.parametrize("metadata", [None, {"mode": "33261"}], ids=["keep", "replace"])
def test_copy_of_large_object(store: ObjectStore, metadata: dict[str, str] | None) -> None:
    if isinstance(store, S3Store):
        store.max_copy_size = MULTIPART_THRESHOLD  # S3 itself needs this above 5 GiB
    content = os.urandom(LARGE)
    store.put("src", content, META)
    etag = store.copy("src", "dst", metadata)
    data, info = store.get("dst")
    assert hashlib.sha256(data).digest() == hashlib.sha256(content).digest()
    assert (info.etag, info.metadata) == (etag, metadata or META)
    if isinstance(store, S3Store):
        assert etag.endswith('-3"'), "copied part by part"


def test_delete(store: ObjectStore) -> None:
    store.put("k", b"x", {})
    store.put("keep", b"y", {})
    store.delete("k")
    with pytest.raises(ObjectNotFound):
        store.head("k")
    store.delete("k")
    store.delete("never-existed")
    assert store.get("keep")[0] == b"y"


def test_delete_many_in_batches(store: ObjectStore) -> None:
    count = 1_100 if isinstance(store, S3Store) else 2_500  # more than one batch of 1,000 either way
    keys = [f"d/{i:05}" for i in range(count)]
    put_all(store, [*keys, "keep"])
    store.delete_many([*keys, "d/absent"])
    assert store.list_all("d/", delimiter=None).objects == []
    assert [o.key for o in store.list_all("", delimiter=None).objects] == ["keep"]


def test_delete_many_of_nothing(store: ObjectStore) -> None:
    store.put("keep", b"", {})
    store.delete_many([])
    assert store.head("keep").size == 0


# -- listings --------------------------------------------------------------------

TREE = [
    "ws/a.txt",
    "ws/b-x",
    "ws/b/",
    "ws/b/c.txt",
    "ws/b/d/e.txt",
    "ws/c/deep/er/f",
    "ws/z.txt",
    "ws/é.txt",
    "ws/日本.txt",
    "ws/😀",
    "wsx/outside",
]


def utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode())


@pytest.fixture
def tree(store: ObjectStore) -> ObjectStore:
    put_all(store, TREE, b"tree")
    return store


def test_list_with_delimiter(tree: ObjectStore) -> None:
    listing = tree.list_all("ws/")
    assert [o.key for o in listing.objects] == ["ws/a.txt", "ws/b-x", "ws/z.txt", "ws/é.txt", "ws/日本.txt", "ws/😀"]
    assert listing.prefixes == ["ws/b/", "ws/c/"]
    first = listing.objects[0]
    assert (first.size, first.etag) == (4, quoted_md5(b"tree"))
    assert first.metadata in (None, tree.head(first.key).metadata), "a listing's metadata, if any, is the object's"


def test_list_shows_folder_marker_as_object(tree: ObjectStore) -> None:
    listing = tree.list_all("ws/b/")
    assert [o.key for o in listing.objects] == ["ws/b/", "ws/b/c.txt"]
    assert listing.prefixes == ["ws/b/d/"]


def test_list_prefix_that_is_not_a_folder(tree: ObjectStore) -> None:
    listing = tree.list_all("ws/b")
    assert [o.key for o in listing.objects] == ["ws/b-x"]
    assert listing.prefixes == ["ws/b/"]


def test_list_root(tree: ObjectStore) -> None:
    listing = tree.list_all("")
    assert (listing.objects, listing.prefixes) == ([], ["ws/", "wsx/"])


def test_list_without_delimiter(tree: ObjectStore) -> None:
    listing = tree.list_all("ws/", delimiter=None)
    assert [o.key for o in listing.objects] == utf8_sorted([k for k in TREE if k.startswith("ws/")])
    assert listing.prefixes == []


@pytest.mark.parametrize("prefix", ["nothing/", "ws/a.txt/", "ws/c/deep/er/f/"])
def test_list_of_nothing(tree: ObjectStore, prefix: str) -> None:
    listing = tree.list_all(prefix)
    assert (listing.objects, listing.prefixes) == ([], [])


def test_list_more_than_one_page(store: ObjectStore) -> None:
    """Pages hold at most ``page_size`` entries, and may hold fewer with more to come
    (Ceph RGW's first page of these holds 884): only the last page says it is the last."""
    keys = [f"p/{i:04}/f" for i in range(1_001)]
    put_all(store, keys)
    pages = list(store.list_pages("p/", delimiter=None))
    assert len(pages) >= 2 and all(len(page.objects) <= 1_000 for page in pages)
    assert [page.more for page in pages] == [True] * (len(pages) - 1) + [False]
    assert [o.key for page in pages for o in page.objects] == keys
    rolled_up = list(store.list_pages("p/"))
    assert len(rolled_up) >= 2 and all(len(page.prefixes) <= 1_000 for page in rolled_up)
    assert [p for page in rolled_up for p in page.prefixes] == [key[: -len("f")] for key in keys]


def test_list_starts_after_a_key(store: ObjectStore) -> None:
    """With ``start_after`` the first page begins after that key, however many come before (S3's StartAfter)."""
    store.page_size = 2
    put_all(store, ["a/1", "a/2", "a/3", "a/4", "a/5", "b/1", "c/1"])

    def pages(prefix: str, delimiter: str | None, start_after: str) -> list[tuple[list[str], list[str]]]:
        return [([o.key for o in page.objects], page.prefixes)
                for page in store.list_pages(prefix, delimiter, start_after=start_after)]

    assert pages("a/", None, "a/3") == [(["a/4", "a/5"], [])], "one request: the keys before it are not listed"
    assert pages("a/", None, "a/2x") == [(["a/3", "a/4"], []), (["a/5"], [])], "a key that is not there"
    assert pages("a/", None, "a/5") == [([], [])]
    assert pages("a/", None, "0") == pages("a/", None, "a/") == [(["a/1", "a/2"], []), (["a/3", "a/4"], []),
                                                              (["a/5"], [])]
    assert pages("", "/", "a/5") == [([], ["b/", "c/"])]


# -- S3 specifics ------------------------------------------------------------------


def s3_store(bucket: S3Bucket, **options: object) -> S3Store:
    return S3Store(bucket.name, endpoint_url=bucket.endpoint, region="us-east-1", path_style=True, **options)


def test_list_some_tells_whether_it_saw_every_page(store: ObjectStore) -> None:
    store.page_size = 2
    for key in ("a/1", "a/2", "b/3"):
        store.put(key, b"x", {})
    page, complete = store.list_some("a/", None, 1)
    assert ([o.key for o in page.objects], complete) == (["a/1", "a/2"], True), "one full page was all of it"
    page, complete = store.list_some("", None, 1)
    assert ([o.key for o in page.objects], complete) == (["a/1", "a/2"], False)
    page, complete = store.list_some("", None, 2)
    assert ([o.key for o in page.objects], complete) == (["a/1", "a/2", "b/3"], True)


def test_s3_prefix_isolates_keys(s3_bucket: S3Bucket) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="other/x", Body=b"not mine")
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="prefixed", Body=b"not mine either")
    store = s3_store(s3_bucket, prefix="/pre/fix/")
    assert (store.prefix, store.url) == ("pre/fix/", f"s3://{s3_bucket.name}/pre/fix")
    store.put("t/a", b"mine", {})
    store.copy("t/a", "t/b")
    listing = store.list_all("")
    assert (listing.objects, listing.prefixes) == ([], ["t/"])
    assert [o.key for o in store.list_all("t/").objects] == ["t/a", "t/b"]
    assert store.head("t/a").key == "t/a"
    with pytest.raises(ObjectNotFound):
        store.head("other/x")
    raw = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name)["Contents"]
    assert sorted(o["Key"] for o in raw) == ["other/x", "pre/fix/t/a", "pre/fix/t/b", "prefixed"]
    store.delete_many(["t/a", "t/b"])
    assert s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name)["KeyCount"] == 2


def test_s3_learns_whether_the_server_honours_conditions_on_completing_an_upload(s3_bucket: S3Bucket) -> None:
    client, bucket = s3_bucket.client, s3_bucket.name
    store = s3_store(s3_bucket)
    store.probe()
    client.put_object(Bucket=bucket, Key="there", Body=b"x")
    upload = client.create_multipart_upload(Bucket=bucket, Key="there")["UploadId"]
    part = client.upload_part(Bucket=bucket, Key="there", UploadId=upload, PartNumber=1, Body=b"y")["ETag"]
    try:
        client.complete_multipart_upload(Bucket=bucket, Key="there", UploadId=upload, IfNoneMatch="*",
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part}]})
        refused = False
    except ClientError as exc:
        refused = exc.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        client.abort_multipart_upload(Bucket=bucket, Key="there", UploadId=upload)
    if not refused:
        assert not store.honours_multipart_conditions()
        assert "ignores conditions on CompleteMultipartUpload" in store.quirks()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["there"], "the probe leaves nothing behind"
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket)


def test_s3_etags_are_quoted_whatever_the_server_answers(s3_bucket: S3Bucket) -> None:
    """Ceph RGW's CopyObject answers a bare ETag and its CompleteMultipartUpload an empty one."""
    store = s3_store(s3_bucket, multipart_threshold=MULTIPART_THRESHOLD, part_size=MULTIPART_THRESHOLD)
    small = store.put("a", b"a", {})
    large = store.put("b", os.urandom(LARGE), {})
    copied = store.copy("a", "c")
    renamed = store.copy("b", "d", {"mode": "33188"})
    heads = [store.head(k).etag for k in "abcd"]
    assert [small, large, copied, renamed] == heads
    assert all(e.startswith('"') and e.endswith('"') and len(e) > 2 for e in heads)
    assert {o.key: o.etag for o in store.list_all("", None).objects} == dict(zip("abcd", heads))


def test_s3_failed_multipart_put_is_aborted(s3_bucket: S3Bucket) -> None:
    store = s3_store(s3_bucket, multipart_threshold=MULTIPART_THRESHOLD, part_size=MULTIPART_THRESHOLD)
    store.put("k", b"first", {})
    with pytest.raises(PreconditionFailed):
        store.put("k", os.urandom(LARGE), {}, if_none_match=True)
    assert "Uploads" not in s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name)
    assert store.get("k")[0] == b"first"


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (client_error("NoSuchKey", 404), ObjectNotFound),
        (client_error("404", 404), ObjectNotFound),
        (client_error("PreconditionFailed", 412), PreconditionFailed),
        (client_error("ConditionalRequestConflict", 409), PreconditionFailed),
        (client_error("SignatureDoesNotMatch", 403), AccessDenied),
        (client_error("NoSuchBucket", 404), AccessDenied),
        (client_error("InternalError", 500), StoreError),
        (NoCredentialsError(), AccessDenied),
        (ReadTimeoutError(endpoint_url="http://x"), StoreError),
    ],
)
def test_s3_error_mapping(error: Exception, expected: type[StoreError]) -> None:
    mapped = _store_error(error, "put s3://b/k", "http://x")
    assert type(mapped) is expected
    assert str(mapped).startswith("put s3://b/k: ") and "\n" not in str(mapped)


def test_s3_check(s3_bucket: S3Bucket) -> None:
    s3_store(s3_bucket).check()


def test_s3_check_missing_bucket(s3_bucket: S3Bucket) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=s3_bucket.endpoint, path_style=True)
    with pytest.raises(AccessDenied, match="no-such-bucket-here"):
        store.check()


def test_s3_check_unreachable_endpoint(fake_aws_env: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store(
        "bucket", endpoint_url=f"http://127.0.0.1:{port}", connect_timeout=1, read_timeout=1, max_attempts=1
    )
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach") as caught:
        store.check()
    assert not isinstance(caught.value, AccessDenied)
    assert "\n" not in str(caught.value) and "testing" not in str(caught.value)
    assert time.monotonic() - started < 5


# -- the embedded store ------------------------------------------------------------


def test_local_check_creates_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a" / "b")
    store.check()
    assert (tmp_path / "a" / "b").is_dir()
    assert store.url == (tmp_path / "a" / "b").as_uri()


def test_local_check_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError):
        LocalStore(tmp_path / "file").check()


def test_local_instances_share_one_store(tmp_path: Path) -> None:
    """Two instances stand for two processes: a daemon and a CLI command."""
    racers = [LocalStore(tmp_path) for _ in range(2)]

    def create(i: int) -> bool:
        try:
            racers[i % 2].put("lock", str(i).encode(), {}, if_none_match=True)
        except PreconditionFailed:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(create, range(16)))
    assert won.count(True) == 1
    assert racers[1].get("lock")[0] == str(won.index(True)).encode()
    assert len(list((tmp_path / "blobs").iterdir())) == 1, "losers leave no content behind"


def test_local_replaced_content_is_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"one", {})
    store.put("k", b"two", {})
    store.copy("k", "k2")
    store.delete("k")
    assert [p.read_bytes() for p in (tmp_path / "blobs").iterdir()] == [b"two"]


# -- opening stores by URL -----------------------------------------------------------


def test_open_store_s3_url(fake_aws_env: None) -> None:
    store = open_store("s3://bucket/pre/sub/", endpoint_url="http://127.0.0.1:9", region="eu-west-1", path_style=True)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.url) == ("bucket", "pre/sub/", "s3://bucket/pre/sub")
    assert store.endpoint == "http://127.0.0.1:9"
    bare = open_store("s3://bucket", max_workers=2)
    assert isinstance(bare, S3Store)
    assert (bare.prefix, bare.url, bare.max_workers) == ("", "s3://bucket", 2)


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store((tmp_path / "my store").as_uri())
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "my store"
    assert store.prefix == ""


def test_open_store_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    store = open_store(None)
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "data" / "cowfs" / "store"
    store.put("k", b"v", {})
    assert (tmp_path / "data" / "cowfs" / "store" / "index.sqlite3").exists()


def test_default_store_path_without_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store_path() == tmp_path / ".local" / "share" / "cowfs" / "store"


@pytest.mark.parametrize(
    "url", ["", "ftp://host/x", "s3://", "s3:///prefix", "file://relative/path", "/plain/path", "s3://b/p?x=1"]
)
def test_open_store_bad_url(url: str) -> None:
    with pytest.raises(UsageError, match="s3://BUCKET"):
        open_store(url)


def _ranged_gets(store: S3Store) -> list[str]:
    """The Range of every GetObject boto3 sends from now on."""
    requests: list[str] = []
    store._client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: requests.append(params["headers"].get("Range", ""))
    )
    return requests


def test_s3_download_splits_a_slow_stream_into_a_few_large_ranges(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    from cowfs.ranges import DOWNLOAD_STREAMS

    store = s3_store(s3_bucket, multipart_threshold=MiB, part_size=MiB)
    store.split_after = 0  # any pace is too slow
    content = os.urandom(13 * MiB + 5)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="big", Body=content)
    requests = _ranged_gets(store)
    with open(tmp_path / "out", "w+b") as out:
        spans, progress = _spans_heard(out, 0, content)
        store.get_to_file("big", out, progress)
    assert (tmp_path / "out").read_bytes() == content
    assert spans == [(0, len(content))], "the stream's and the ranges' pieces are all reported"
    assert store.lean is not None and store.lean.served == 1, "the stream goes the lean way"
    assert len(requests) == DOWNLOAD_STREAMS and all(r.startswith("bytes=") for r in requests), requests
    assert int(requests[0][6:].split("-")[0]) > MiB, "the ranges start where the stream stops"


def test_s3_download_that_streams_fast_is_one_request(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = s3_store(s3_bucket, multipart_threshold=MiB, part_size=MiB)
    store.split_after = 60  # 12 MiB in a minute: any stream here is faster
    content = os.urandom(13 * MiB + 5)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="big", Body=content)
    requests = _ranged_gets(store)
    with open(tmp_path / "out", "wb") as out:
        out.write(b"head")
        store.get_to_file("big", out)
    assert (tmp_path / "out").read_bytes() == b"head" + content
    assert store.lean is not None and store.lean.served == 1 and requests == []


def test_s3_download_of_an_object_replaced_meanwhile_fails(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """The ranges are conditional on the stream's ETag: parts of two versions never mix."""
    store = s3_store(s3_bucket, multipart_threshold=MiB, part_size=MiB)
    store.split_after = 0
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="big", Body=os.urandom(13 * MiB))

    def replace(**_: object) -> None:
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="big", Body=b"new")

    store._client.meta.events.register_first("before-call.s3.GetObject", replace)
    with open(tmp_path / "out", "wb") as out, pytest.raises(PreconditionFailed):
        store.get_to_file("big", out)


ODD_KEYS = ["t/w/plain.txt", "t/w/with space.txt", "t/w/plus+equals=amp&q?hash#.txt", "t/w/pct%41~tilde",
            "t/w/ünïcödé/日本.md"]


def boto3_calls(store: S3Store) -> list[str]:
    """Names of the operations boto3's client makes from now on."""
    calls: list[str] = []
    store._client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def test_small_requests_take_the_lean_path_and_agree_with_boto3(s3_bucket: S3Bucket) -> None:
    store = s3_store(s3_bucket)
    assert store.lean is not None
    calls = boto3_calls(store)
    meta = {"mode": "33188", "mtime": "1700000000.5", "xattr": "%7B%22a%22%3A%22b%22%7D"}
    for i, key in enumerate(ODD_KEYS):
        etag = store.put(key, f"body {i}".encode(), meta, if_none_match=True)
        etag = store.put(key, f"body {i} again".encode(), meta, if_match=etag)
        truth = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)
        info = store.head(key)
        assert (info.etag, info.size, info.metadata) == (etag, truth["ContentLength"], truth["Metadata"]) == (
            truth["ETag"], len(f"body {i} again"), meta)
        assert info.last_modified == truth["LastModified"].timestamp()
        data, got = store.get(key)
        assert (data, got) == (f"body {i} again".encode(), info)
        assert store.get(key, 2, 6)[0] == f"body {i} again".encode()[2:6]
    assert calls == [], "no small request went through boto3's client"
    # A server that wants If-Match bare refuses the first quoted one (not served): a HEAD
    # tells that the key holds the version named, and the PUT goes again, bare.
    learned = 1 if "compares If-Match with bare ETags" in store.quirks() else 0
    assert store.lean.served == 5 * len(ODD_KEYS) + learned


def test_a_missing_key_costs_one_request(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = s3_store(s3_bucket)
    assert store.lean is not None
    calls = boto3_calls(store)
    with pytest.raises(ObjectNotFound):
        store.head("t/w/never")
    assert calls == ["HeadObject"], "before the lean path has had an answer, boto3 confirms"
    store.put("t/w/here", b"x", {})
    with open(tmp_path / "out", "wb") as out:
        for missing in [lambda: store.head("t/w/missing/"), lambda: store.get("t/w/gone"),
                        lambda: store.get_to_file("t/w/gone", out)]:
            with pytest.raises(ObjectNotFound):
                missing()
    assert calls == ["HeadObject"], "a 404 on a path that has answered is final"
    assert store.head("t/w/here").size == 1


def test_listings_take_the_lean_path_and_agree_with_boto3(s3_bucket: S3Bucket) -> None:
    for key in ODD_KEYS + ["t/w/deep/er/x", "t/z", "outside"]:
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"pre/{key}", Body=key.encode())
    lean, plain = s3_store(s3_bucket, prefix="pre"), s3_store(s3_bucket, prefix="pre")
    lean.page_size = plain.page_size = 2
    plain.lean = None
    calls = boto3_calls(lean)
    for prefix, delimiter, after in [("", None, None), ("t/w/", "/", None), ("t/", "/", None),
                                     ("t/w/ünïcödé/", "/", None), ("none/", "/", None), ("", None, "t/w/pct%41~"),
                                     ("t/w/", None, "t/w/plus+equals=amp&q?hash#.txt"), ("t/w/", "/", "t/w/ü")]:
        pages = list(lean.list_pages(prefix, delimiter, after))
        assert pages == list(plain.list_pages(prefix, delimiter, after)), (prefix, delimiter, after)
    assert len(list(lean.list_pages("", None))) == 4, "8 keys in pages of 2"
    assert sorted(o.key for o in lean.list_all("", None).objects) == sorted(ODD_KEYS + ["t/w/deep/er/x", "t/z", "outside"])
    assert calls == [], "no listing went through boto3's client"


def test_lean_failures_are_boto3s_errors(s3_bucket: S3Bucket) -> None:
    store = s3_store(s3_bucket)
    etag = store.put("t/w/a", b"one", {})
    calls = boto3_calls(store)
    with pytest.raises(PreconditionFailed):
        store.put("t/w/a", b"two", {}, if_match='"0123456789abcdef0123456789abcdef"')
    with pytest.raises(PreconditionFailed):
        store.put("t/w/a", b"two", {}, if_none_match=True)
    with pytest.raises(ObjectNotFound):
        store.head("t/w/missing")
    with pytest.raises(ObjectNotFound):
        store.get("t/w/missing")
    assert calls == [], "a 412 or a 404 on a path that has answered is final"
    assert store.lean is not None and store.lean.enabled, "404 and 412 say nothing against the lean path"
    assert store.get("t/w/a")[0] == b"one" and store.head("t/w/a").etag == etag


@contextlib.contextmanager
def lean_path_to(store: S3Store, status: int, body: bytes, headers: dict[str, str] | None = None) -> Iterator[None]:
    """Point ``store``'s lean path (only) at a server answering every request with
    ``status``, ``headers`` and ``body`` (then closing the connection)."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.send_response(status)
            for name, value in ({"Content-Length": str(len(body))} | (headers or {})).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_PUT

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert store.lean is not None
        store.lean.base_url = f"http://127.0.0.1:{server.server_address[1]}/elsewhere/"
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_refuses_lean_requests_turns_them_off(s3_bucket: S3Bucket) -> None:
    store = s3_store(s3_bucket)
    with lean_path_to(store, 301, b""):
        calls = boto3_calls(store)
        store.put("t/w/a", b"kept", {"mode": "33188"})
        assert store.lean is not None and not store.lean.enabled
        assert store.get("t/w/a")[0] == b"kept" and store.head("t/w/a").metadata == {"mode": "33188"}
        assert calls == ["PutObject", "GetObject", "HeadObject"]


def test_a_listing_the_lean_path_cannot_read_is_boto3s_and_turns_it_off(s3_bucket: S3Bucket) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t/w/a", Body=b"a")
    store = s3_store(s3_bucket)
    with lean_path_to(store, 200, b"<not a listing"):
        calls = boto3_calls(store)
        assert [o.key for o in store.list_all("t/", None).objects] == ["t/w/a"]
        assert store.lean is not None and not store.lean.enabled
        assert calls == ["ListObjectsV2"]


def test_a_download_whose_stream_breaks_gets_the_rest_in_a_ranged_get(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    content = os.urandom(3 * MiB)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t/w/big", Body=content)
    truth = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="t/w/big")["ResponseMetadata"]["HTTPHeaders"]
    store = s3_store(s3_bucket)
    half = {name: truth[name.lower()] for name in ("Content-Length", "ETag", "Last-Modified")}
    with lean_path_to(store, 200, content[:MiB + 5], half):
        requests = _ranged_gets(store)
        with open(tmp_path / "out", "wb") as out:
            info = store.get_to_file("t/w/big", out)
    assert (tmp_path / "out").read_bytes() == content and info.size == len(content)
    assert requests == [f"bytes={MiB + 5}-{len(content) - 1}"], requests


def test_stored_bytes_come_back_as_stored_whatever_their_content_encoding(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    import gzip

    raw = gzip.compress(b"a line of a transcript\n" * 100)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t/w/h.jsonl.gz", Body=raw, ContentEncoding="gzip")
    store = s3_store(s3_bucket)
    assert store.get("t/w/h.jsonl.gz")[0] == raw
    with open(tmp_path / "out", "wb") as out:
        store.get_to_file("t/w/h.jsonl.gz", out)
    assert (tmp_path / "out").read_bytes() == raw
    assert store.lean is not None and store.lean.served == 2


def test_keys_with_dot_segments_stay_as_they_are(s3_bucket: S3Bucket) -> None:
    store = s3_store(s3_bucket)
    for key in ("t/w/../x", "t/./w/y"):
        store.put(key, b"dots", {})
        assert s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read() == b"dots"
        assert store.get(key)[0] == b"dots" and store.head(key).size == 4
    assert sorted(o.key for o in store.list_all("", None).objects) == ["t/./w/y", "t/w/../x"]


def test_behind_a_proxy_small_requests_are_left_to_boto3(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "example.org")
    assert s3_store(s3_bucket).lean is None, "boto3 knows how to use the proxy"
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert s3_store(s3_bucket).lean is not None
