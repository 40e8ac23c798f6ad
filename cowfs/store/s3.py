"""The ObjectStore on any S3-compatible endpoint, through boto3.

The store is rooted at a key prefix: every method takes and returns keys
relative to it, so a mount never sees (or touches) keys outside its prefix.
Credentials come from boto3's standard chain (environment, config files,
instance roles); they never appear in an error message.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import hashlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, Iterator, Sequence, TypeVar

import boto3
import botocore.session
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from .. import ranges
from ..errors import AccessDenied, NoSuchBucket, ObjectNotFound, PreconditionFailed, Refused, StoreError
from ..fds import pwrite_all
from .base import ListPage, ObjectInfo, ObjectStore, Piece, Progress, same_metadata
from .lean import META, LeanRequests, headers_info, quoted_etag

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
DELETE_BATCH = 1_000  # S3's limit on the keys of one DeleteObjects call
CHUNK = MiB

# Error codes by meaning; responses without a body (HEAD) carry only the status.
_NOT_FOUND = {"NoSuchKey", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "ConditionalRequestConflict"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"}
#: Statuses that refuse the request itself (its key, headers or body): sending it again cannot help.
_REFUSALS = {400, 405, 411, 413, 414, 431}
#: boto3's conditional-write parameters as HTTP headers.
_CONDITION_HEADERS = {"IfMatch": "If-Match", "IfNoneMatch": "If-None-Match"}


class S3Store(ObjectStore):
    """Objects under ``prefix`` in ``bucket`` of an S3-compatible endpoint."""

    #: S3 refuses CopyObject above this size; larger objects are copied part by part.
    max_copy_size: int = 5 * GiB
    #: See ``ranges.split``; tests set 0 to split every download that has room for two parts.
    split_after: float = ranges.SPLIT_AFTER

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_attempts: int = 3,
        multipart_threshold: int = 8 * MiB,
        part_size: int = 8 * MiB,
        max_workers: int = 16,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_workers = max_workers
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=max(10, 2 * max_workers),
            s3={"addressing_style": "path"} if path_style else None,
            # S3-compatible stores differ in their support for the checksums
            # boto3 sends by default since 1.36; send them only where S3 needs them.
            request_checksum_calculation="when_required",
        )
        core = self._core = botocore.session.get_session()
        self._client = boto3.session.Session(botocore_session=core).client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        self.endpoint = self._client.meta.endpoint_url
        #: How If-Match goes out: quoted, as S3 returns ETags, until the server shows it wants them bare.
        self._if_match_form: Callable[[str], str] = _quoted
        self._multipart_conditions: bool | None = None
        self._probe_lock = threading.Lock()
        self.lean = LeanRequests.for_client(
            self._client, core, bucket,
            urllib3.Timeout(connect=connect_timeout, read=read_timeout), config.max_pool_connections,
        )

    # -- interface -------------------------------------------------------------

    def check(self) -> None:
        self.server_time()

    def server_time(self) -> float | None:
        """Check the bucket; the server's clock (its ``Date`` header, epoch seconds) if it sent one.

        The message says what is wrong: no credentials, credentials refused, or no such bucket.
        """
        what = f"bucket {self.bucket} at {self.endpoint}"
        try:
            with self._translated(what):
                response = self._client.head_bucket(Bucket=self.bucket)
        except ObjectNotFound:
            raise NoSuchBucket(f"{what}: no such bucket (cowfs mount --create-bucket makes it)") from None
        except AccessDenied as exc:
            if isinstance(exc.__cause__, (NoCredentialsError, PartialCredentialsError)):
                raise AccessDenied(f"no credentials for {what} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                   "or AWS_PROFILE)") from None
            raise AccessDenied(f"credentials refused for {what} ({str(exc).removeprefix(what + ': ')})") from None
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        return email.utils.parsedate_to_datetime(date).timestamp() if date else None

    def credentials_method(self) -> str | None:
        """Where boto3 found credentials ("env", "shared-credentials-file", ...), or None without any."""
        found = self._core.get_credentials()
        return found.method if found is not None else None

    def create_bucket(self) -> bool:
        try:
            self.check()
            return False
        except NoSuchBucket:
            pass
        region = self._client.meta.region_name
        where = {"CreateBucketConfiguration": {"LocationConstraint": region}} if region != "us-east-1" else {}
        with self._translated(f"create bucket {self.bucket} at {self.endpoint}"):
            try:
                self._client.create_bucket(Bucket=self.bucket, **where)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise
                return False
        return True

    def head(self, key: str) -> ObjectInfo:
        response = self._lean_request("HEAD", key)
        if response is not None:
            return headers_info(key, response.headers)
        with self._translated(f"head {self._where(key)}"):
            return _info(key, self._client.head_object(Bucket=self.bucket, Key=self.prefix + key))

    def get(self, key: str, start: int | None = None, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        ranged: dict[str, str] = {}
        if start is not None or end is not None:
            first = start or 0
            if end is not None and end <= first:
                return b"", self.head(key)
            ranged["Range"] = f"bytes={first}-{'' if end is None else end - 1}"
        response = self._lean_request("GET", key, headers=ranged)
        if response is not None:
            return response.data, headers_info(key, response.headers)
        with self._translated(f"get {self._where(key)}"):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key, **ranged)
            except ClientError as exc:
                if _status(exc) != 416:  # a range starting at or past the end
                    raise
                return b"", self.head(key)
            return response["Body"].read(), _info(key, response)

    def get_to_file(self, key: str, out: BinaryIO, progress: Progress | None = None) -> ObjectInfo:
        """Stream the object into ``out`` from its current position.

        One GET streams the whole object; past its first ``multipart_threshold``
        bytes, the ranges ``ranges.split`` names for its pace (parts of
        ``part_size`` at least) are fetched in parallel, each conditional on the
        stream's ETag, and the stream stops where they begin. A stream that
        breaks is not started again: a ranged GET asks for the rest.
        """
        out.flush()
        base, fd = out.tell(), out.fileno()
        with self._translated(f"get {self._where(key)}"), ThreadPoolExecutor(ranges.DOWNLOAD_STREAMS) as pool:
            info, body = self._stream(key)
            told = progress or _unheard
            parts: list[Future[None]] = []
            pos = 0
            try:
                end, started = info.size, time.monotonic()
                while pos < end:
                    chunk = _read_some(body, min(CHUNK, end - pos))
                    if not chunk:  # the stream broke: boto3, with its retries, fetches the rest
                        log.info("get %s: the stream broke at byte %d of %d", self._where(key), pos, end)
                        self._fetch_range(key, info, fd, base, pos, end - pos, told)
                        break
                    pwrite_all(fd, chunk, base + pos)
                    told(info, pos, pos + len(chunk))
                    pos += len(chunk)
                    if not parts and pos >= self.multipart_threshold:
                        split = ranges.split(pos, info.size, time.monotonic() - started, self.part_size,
                                             self.split_after)
                        end = split[0][0] if split else info.size
                        parts = [pool.submit(self._fetch_range, key, info, fd, base, start, stop - start, told)
                                 for start, stop in split]
            finally:
                _let_go(body, read_all=pos == info.size)
            for part in parts:
                part.result()
        out.seek(base + info.size)
        return info

    def stream(self, key: str, piece: Piece) -> ObjectInfo:
        with self._translated(f"get {self._where(key)}"):
            info, body = self._stream(key)
            pos = 0
            try:
                while pos < info.size:
                    chunk = _read_some(body, min(CHUNK, info.size - pos))
                    if not chunk:
                        raise StoreError(f"get {self._where(key)}: the stream broke at byte {pos} of {info.size}")
                    piece(info, pos, chunk)
                    pos += len(chunk)
            finally:
                _let_go(body, read_all=pos == info.size)
        return info

    def _stream(self, key: str) -> tuple[ObjectInfo, Any]:
        """The object's info and its body, not yet read (the lean path's, else boto3's)."""
        lean = self._lean_request("GET", key, stream=True)
        if lean is not None:
            return headers_info(key, lean.headers), lean
        response = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        return _info(key, response), response["Body"]

    def get_range_into(
        self, key: str, info: ObjectInfo, fd: int, start: int, end: int, progress: Progress | None = None
    ) -> None:
        with self._translated(f"get {self._where(key)}"):
            self._fetch_range(key, info, fd, 0, start, end - start, progress or _unheard)

    def _fetch_range(
        self, key: str, info: ObjectInfo, fd: int, base: int, offset: int, size: int, told: Progress
    ) -> None:
        """Bytes ``[offset, offset + size)`` of the version ``info`` names, written at ``base + offset``."""
        last = min(offset + size, info.size) - 1
        part = self._client.get_object(
            Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes={offset}-{last}", IfMatch=info.etag
        )
        for chunk in part["Body"].iter_chunks(CHUNK):
            pwrite_all(fd, chunk, base + offset)
            told(info, offset, offset + len(chunk))
            offset += len(chunk)

    def put(
        self,
        key: str,
        body: bytes | BinaryIO,
        metadata: dict[str, str],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        size, read = _reader(body)
        condition = _Condition(quoted_etag(if_match) if if_match is not None else None, if_none_match)
        try:
            with self._translated(f"put {self._where(key)}"):
                if size > self.multipart_threshold:
                    def send(upload_id: str, number: int, start: int, end: int) -> str:
                        return self._client.upload_part(
                            Bucket=self.bucket,
                            Key=self.prefix + key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=read(start, end - start),
                        )["ETag"]

                    return self._multipart(key, metadata, size, send, condition)
                data = read(0, size)
                try:
                    return self._put_small(key, data, metadata, condition, self._if_match_form)
                except PreconditionFailed:
                    return self._settle(key, _md5_etag(data), metadata, condition,
                                        lambda form: self._put_small(key, data, metadata, condition, form))
        except ObjectNotFound as exc:
            if if_match is None:
                # The bucket is there (checked at start): a 404 to a PUT refuses the key (moto: a newline in it).
                raise Refused(str(exc)) from None
            # S3 answers If-Match on a missing key with 404: the condition lost.
            raise PreconditionFailed(str(exc)) from None

    def _put_small(self, key: str, data: bytes, metadata: dict[str, str], condition: _Condition,
                   form: Callable[[str], str]) -> str:
        """One PutObject (the lean path's, else boto3's), with ``condition``'s If-Match in ``form``."""
        headers = {META + name: value for name, value in metadata.items()}
        params = condition.params(form)
        headers.update((_CONDITION_HEADERS[name], value) for name, value in params.items())
        lean = self._lean_request("PUT", key, data, headers)
        if lean is not None:
            return self._etag_of(key, lean.headers.get("ETag"))
        with self._translated(f"put {self._where(key)}"):
            response = self._client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, Metadata=metadata, **params
            )
        return self._etag_of(key, response.get("ETag"))

    def _settle(self, key: str, ours: str | None, metadata: dict[str, str], condition: _Condition,
                again: Callable[[Callable[[str], str]], str]) -> str:
        """What a refused conditional write (412) really means, decided by what the key holds.

        - The key holds our bytes (``ours``, the ETag they get) and our
          metadata: an earlier attempt of this very write landed and its answer
          was lost (a read timeout, then the retry): a success, not a conflict.
        - The key holds the version If-Match named: the server compares the
          header with the bare ETag (Ceph RGW does): the write is sent again with
          a bare If-Match, and so is every later one.
        - Anything else: another writer changed the key.
        """
        info = self._now(key)
        if info is not None and info.etag == ours and same_metadata(info.metadata, metadata):
            log.info("put %s: an earlier attempt already stored this version", self._where(key))
            return info.etag
        if info is not None and info.etag == condition.if_match and self._if_match_form is _quoted:
            etag = again(_bare)
            if self._if_match_form is _quoted:
                log.info("%s compares If-Match with bare ETags: sending them bare from now on", self.endpoint)
                self._if_match_form = _bare
            return etag
        raise PreconditionFailed(f"put {self._where(key)}: the key was changed by another writer")

    def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        source = self.head(src)
        copy_source = {"Bucket": self.bucket, "Key": self.prefix + src}
        with self._translated(f"copy {self._where(src)} to {self._where(dst)}"):
            if source.size > self.max_copy_size:
                # Every part is conditional on the ETag we sized, so all come from one version.
                def send(upload_id: str, number: int, start: int, end: int) -> str:
                    return self._client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=self.prefix + dst,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=copy_source,
                        CopySourceRange=f"bytes={start}-{end - 1}",
                        CopySourceIfMatch=source.etag,
                    )["CopyPartResult"]["ETag"]

                kept = source.metadata or {}
                return self._multipart(dst, kept if metadata is None else metadata, source.size, send, _Condition())
            directive: dict[str, Any] = (
                {"MetadataDirective": "COPY"}
                if metadata is None
                else {"MetadataDirective": "REPLACE", "Metadata": metadata}
            )
            response = self._client.copy_object(
                Bucket=self.bucket, Key=self.prefix + dst, CopySource=copy_source, **directive
            )
            return self._etag_of(dst, response.get("CopyObjectResult", {}).get("ETag"))

    def delete(self, key: str) -> None:
        with self._translated(f"delete {self._where(key)}"):
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def delete_many(self, keys: list[str]) -> None:
        def delete_batch(batch: Sequence[str]) -> None:
            response = self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self.prefix + key} for key in batch], "Quiet": True},
            )
            if errors := response.get("Errors"):
                first = errors[0]
                raise StoreError(
                    f"delete {self.url}: {len(errors)} keys not deleted, e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message', '')}".rstrip()
                )

        batches = [keys[i : i + DELETE_BATCH] for i in range(0, len(keys), DELETE_BATCH)]
        with self._translated(f"delete {self.url}"):
            _parallel(delete_batch, batches, self.max_workers)

    def list_pages(self, prefix: str, delimiter: str | None = "/",
                   start_after: str | None = None) -> Iterator[ListPage]:
        token: str | None = None
        after = self.prefix + start_after if start_after is not None else None
        with self._translated(f"list {self._where(prefix)}"):
            while True:
                page, token = self._list_page(self.prefix + prefix, delimiter, token, after)
                if start_after is not None:  # a server that ignores StartAfter costs pages, not results
                    page.objects = [o for o in page.objects if o.key > start_after]
                page.more = token is not None
                yield page
                if token is None:
                    return

    # -- helpers ---------------------------------------------------------------

    def _list_page(self, prefix: str, delimiter: str | None, token: str | None,
                   start_after: str | None) -> tuple[ListPage, str | None]:
        """One page under the full key ``prefix`` (after the full key ``start_after``, if
        any), keys relative to the store's prefix, and the next page's token (lean path, else boto3)."""
        cut = len(self.prefix)
        if self.lean is not None:
            lean = self.lean.list_page(prefix, delimiter, token, self.page_size, cut, start_after)
            if lean is not None:
                return lean
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self.page_size}
        if delimiter:
            params["Delimiter"] = delimiter
        if token:
            params["ContinuationToken"] = token
        elif start_after is not None:
            params["StartAfter"] = start_after
        response = self._client.list_objects_v2(**params)
        page = ListPage(
            objects=[
                ObjectInfo(item["Key"][cut:], item["Size"], item["ETag"], item["LastModified"].timestamp())
                for item in response.get("Contents", [])
            ],
            prefixes=[item["Prefix"][cut:] for item in response.get("CommonPrefixes", [])],
        )
        return page, response.get("NextContinuationToken") if response.get("IsTruncated") else None

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _multipart(
        self,
        key: str,
        metadata: dict[str, str],
        size: int,
        send: Callable[[str, int, int, int], str],
        condition: _Condition,
    ) -> str:
        """Create an upload, send its parts in parallel, complete it; abort unless it completed.

        ``send(upload_id, part_number, start, end)`` uploads bytes ``[start, end)``
        and returns the part's ETag. Where the server ignores conditions on
        CompleteMultipartUpload, ``condition`` is checked by a HEAD just before
        completing: another writer completing between that HEAD and ours is
        not seen (the one window left).
        """
        full_key = self.prefix + key
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        starts = range(0, size, part_size)
        upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=full_key, Metadata=metadata)["UploadId"]
        completed = False

        def part(number: int) -> dict[str, Any]:
            start = starts[number - 1]
            return {"PartNumber": number, "ETag": send(upload_id, number, start, min(start + part_size, size))}

        def complete(form: Callable[[str], str]) -> str:
            nonlocal completed
            with self._translated(f"put {self._where(key)}"):
                response = self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                    **condition.params(form),
                )
            completed = True
            return self._etag_of(key, response.get("ETag"))

        try:
            parts = _parallel(part, range(1, len(starts) + 1), self.max_workers)
            ours = _multipart_etag([p["ETag"] for p in parts])
            if condition and not self.honours_multipart_conditions():
                now = self._now(key)
                if not condition.holds_for(None if now is None else now.etag):
                    return self._settle(key, ours, metadata, condition, complete)
            try:
                return complete(self._if_match_form)
            except PreconditionFailed:
                return self._settle(key, ours, metadata, condition, complete)
        finally:
            if not completed:
                with contextlib.suppress(BotoCoreError, ClientError, urllib3.exceptions.HTTPError):
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)

    def _now(self, key: str) -> ObjectInfo | None:
        """The key's info now; None when it is absent."""
        try:
            return self.head(key)
        except ObjectNotFound:
            return None

    # -- what the server does ------------------------------------------------

    def honours_multipart_conditions(self) -> bool:
        """Whether the server refuses a CompleteMultipartUpload whose If-None-Match or
        If-Match fails (Ceph RGW 16 and moto ignore one or both): learned once, on a
        scratch key under ``.cowfs/``, and logged."""
        with self._probe_lock:
            if self._multipart_conditions is None:
                self._multipart_conditions = self._probe_multipart_conditions()
                if not self._multipart_conditions:
                    log.warning("%s ignores conditions on CompleteMultipartUpload: a large file is checked "
                                "against the store just before its upload completes", self.endpoint)
            return self._multipart_conditions

    def quirks(self) -> list[str]:
        found = []
        if self._if_match_form is _bare:
            found.append("compares If-Match with bare ETags")
        if self._multipart_conditions is False:
            found.append("ignores conditions on CompleteMultipartUpload")
        return found

    def probe(self) -> None:
        self.honours_multipart_conditions()

    def _probe_multipart_conditions(self) -> bool:
        key = f"{self.prefix}.cowfs/probe-{uuid.uuid4().hex}"
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=b"")
            return all(self._completion_refused(key, params)
                       for params in ({"IfNoneMatch": "*"}, {"IfMatch": f'"{"0" * 32}"'}))
        except (BotoCoreError, ClientError, urllib3.exceptions.HTTPError) as exc:
            log.info("could not learn whether %s honours conditions on CompleteMultipartUpload: %s",
                     self.endpoint, exc)
            return False
        finally:
            with contextlib.suppress(BotoCoreError, ClientError, urllib3.exceptions.HTTPError):
                self._client.delete_object(Bucket=self.bucket, Key=key)

    def _completion_refused(self, key: str, params: dict[str, str]) -> bool:
        """Whether completing a one-part upload of ``key`` under conditions that fail is refused."""
        upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            etag = self._client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=1,
                                            Body=b"x")["ETag"]
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}, **params)
        except ClientError as exc:
            if _status(exc) != 412:
                raise
            return True
        finally:
            with contextlib.suppress(BotoCoreError, ClientError, urllib3.exceptions.HTTPError):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        return False

    def _etag_of(self, key: str, answered: str | None) -> str:
        """The ETag a write answered with, or the key's from a HEAD when the answer had
        none (Ceph RGW's CompleteMultipartUpload answers an empty one)."""
        return quoted_etag(answered) or self.head(key).etag

    def _lean_request(self, method: str, key: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      stream: bool = False) -> Any:
        """The lean path's 2xx response, or None when boto3 should make the call."""
        if self.lean is None:
            return None
        return self.lean.request(method, self.prefix + key, body, headers, stream)

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """Let botocore/urllib3 errors out only as cowfs store errors."""
        try:
            yield
        except (BotoCoreError, ClientError, urllib3.exceptions.HTTPError) as exc:
            raise _store_error(exc, what, self.endpoint) from exc


def _store_error(exc: Exception, what: str, endpoint: str) -> StoreError:
    """The cowfs error for a botocore/urllib3 error: the one place that decides."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = _status(exc)
        message = _one_line(f"{what}: {code} {error.get('Message', '')}")
        if code in _DENIED or status == 403:
            return AccessDenied(message)
        if code in _NOT_FOUND or status == 404:
            return ObjectNotFound(message)
        if code in _PRECONDITION or status == 412:
            return PreconditionFailed(message)
        if status in _REFUSALS:
            return Refused(message)
        return StoreError(message)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AccessDenied(_one_line(f"{what}: {exc}"))
    if isinstance(exc, (BotoConnectionError, HTTPClientError, urllib3.exceptions.HTTPError)):
        return StoreError(_one_line(f"{what}: cannot reach {endpoint} ({exc})"))
    return StoreError(_one_line(f"{what}: {exc}"))


def _status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _info(key: str, response: dict[str, Any]) -> ObjectInfo:
    """ObjectInfo from a HeadObject/GetObject response, read from its headers as the lean path reads them."""
    return headers_info(key, response["ResponseMetadata"]["HTTPHeaders"])


def _reader(body: bytes | BinaryIO) -> tuple[int, Callable[[int, int], bytes]]:
    """The size of ``body`` and a thread-safe ``read(offset, n)`` over it.

    A real file is read with ``os.pread`` from its current position, so that
    parts can be read in parallel without sharing a file position.
    """
    if isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body)
        return len(data), lambda offset, n: data[offset : offset + n]
    try:
        fd = body.fileno()
    except (AttributeError, OSError):  # an in-memory file object such as BytesIO
        return _reader(body.read())
    start = body.tell()
    return os.fstat(fd).st_size - start, lambda offset, n: os.pread(fd, n, start + offset)


def _read_some(body: Any, size: int) -> bytes:
    """Up to ``size`` bytes of a response body; none when it broke or ended early."""
    try:
        return body.read(size)
    except (BotoCoreError, urllib3.exceptions.HTTPError, OSError):
        return b""


def _let_go(body: Any, read_all: bool) -> None:
    """Give a response's connection back to its pool; with bytes left unread it is
    closed first, as it cannot carry another request."""
    if not read_all:
        body.close()
    if hasattr(body, "release_conn"):
        body.release_conn()


def _unheard(info: ObjectInfo, start: int, end: int) -> None:
    """The progress of a download nobody asked to hear of."""


def _parallel(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``fn`` over ``items`` on a thread pool, in order; the first failure cancels what has not started."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def _quoted(etag: str) -> str:
    return etag


def _bare(etag: str) -> str:
    return etag.strip('"')


@dataclass(frozen=True)
class _Condition:
    """A write's condition: If-Match on a (quoted) ETag, or If-None-Match."""

    if_match: str | None = None
    if_none_match: bool = False

    def __bool__(self) -> bool:
        return self.if_match is not None or self.if_none_match

    def params(self, form: Callable[[str], str]) -> dict[str, str]:
        """boto3's parameters for the condition, If-Match's ETag in ``form``."""
        out: dict[str, str] = {}
        if self.if_match is not None:
            out["IfMatch"] = form(self.if_match)
        if self.if_none_match:
            out["IfNoneMatch"] = "*"
        return out

    def holds_for(self, current: str | None) -> bool:
        """Whether a key whose ETag is ``current`` (None: absent) meets the condition."""
        if self.if_none_match and current is not None:
            return False
        return self.if_match is None or current == self.if_match


def _md5_etag(data: bytes) -> str:
    """The ETag S3 servers give a single PUT of ``data`` (its MD5)."""
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


def _multipart_etag(part_etags: list[str]) -> str | None:
    """The ETag S3 servers give a multipart upload of these parts: the MD5 of their
    MD5s, and their count (None where a part's ETag is not an MD5)."""
    try:
        digests = b"".join(bytes.fromhex(_bare(etag)) for etag in part_etags)
    except ValueError:
        return None
    return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(part_etags)}"'
