"""Single signed requests for small objects, without boto3's client machinery.

An agent workload is thousands of small PUTs, GETs and HEADs. boto3's client
spends milliseconds of CPU per call (event hooks, endpoint rules, parsing), and in
the daemon that CPU is also the GIL the FUSE loop needs; a small PUT costs
the S3 server less than that. This path signs with botocore's own SigV4
signer and the client's credentials and sends through urllib3 (boto3's own
transport), and it only handles the clean case: any other outcome returns
``None`` and the caller repeats the call through boto3, so that errors,
retries, redirects and their meaning stay boto3's. A response it does not
expect (not 2xx, 404, 412 or 5xx: a redirect, a signature the endpoint
refuses) turns it off for good.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
import urllib.request
from datetime import datetime
from email.utils import parsedate_to_datetime
from xml.etree import ElementTree
from typing import Any, Mapping

import botocore.session
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.httpsession import get_cert_path

from ..errors import ObjectNotFound, PreconditionFailed
from .base import ListPage, ObjectInfo

log = logging.getLogger(__name__)

META = "x-amz-meta-"
#: Statuses that say nothing about this path being wrong for the endpoint.
_EXPECTED_FAILURES = {404, 412, 416}


class LeanRequests:
    """Signed requests to one bucket, built from a boto3 client's endpoint, region and credentials."""

    def __init__(self, base_url: str, region: str, credentials: Credentials, timeout: urllib3.Timeout,
                 connections: int, ca_certs: str) -> None:
        """``base_url`` ends with ``/`` and an object's quoted key follows it."""
        self.base_url = base_url
        self.region = region
        self.credentials = credentials
        self._pool = urllib3.PoolManager(maxsize=connections, timeout=timeout, retries=False,
                                         cert_reqs="CERT_REQUIRED", ca_certs=ca_certs)
        self._lock = threading.Lock()
        self.enabled = True
        self.served = 0

    @classmethod
    def for_client(cls, client: Any, session: botocore.session.Session, bucket: str, timeout: urllib3.Timeout,
                   connections: int) -> "LeanRequests | None":
        """The lean path for ``bucket`` as ``client`` (made by ``session``) addresses it.

        None without credentials, or behind a proxy (boto3 knows its settings).
        """
        credentials = session.get_credentials()
        if credentials is None:
            return None
        try:
            url = client.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": "k"})
        except Exception as exc:  # botocore raises many kinds; boto3 alone is always right
            log.debug("no lean S3 path: %s", exc)
            return None
        parts = urllib.parse.urlsplit(url)
        if not parts.path.endswith("/k"):
            return None
        if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname or ""):
            return None
        base = f"{parts.scheme}://{parts.netloc}{parts.path[:-1]}"
        ca_certs = session.get_config_variable("ca_bundle") or get_cert_path(True)
        return cls(base, client.meta.region_name or "us-east-1", credentials, timeout, connections, ca_certs)

    def request(self, method: str, key: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
                stream: bool = False) -> urllib3.BaseHTTPResponse | None:
        """The 2xx response to one signed request for ``key``, or None (boto3 should make the call).

        ``stream``: the body is left to the caller to read, then ``release_conn()``.
        A GET or HEAD answered 404 once this path has had a 2xx (its URLs are
        right, so the key is missing) raises ObjectNotFound: asking boto3 again
        made every lookup of a missing key, such as a folder without a marker
        object, two requests. A conditional request answered 412 then raises
        PreconditionFailed for the same reason.
        """
        segments = key.split("/")
        if "." in segments or ".." in segments:  # urllib3 would resolve them in the URL
            return None
        conditional = any(name in (headers or {}) for name in ("If-Match", "If-None-Match"))
        return self._send(method, self.base_url + urllib.parse.quote(key, safe="/~"), body, headers, stream,
                          missing_is_final=method in ("GET", "HEAD"), refusal_is_final=conditional)

    def list_page(self, prefix: str, delimiter: str | None, token: str | None,
                  max_keys: int, cut: int = 0, start_after: str | None = None) -> tuple[ListPage, str | None] | None:
        """One page of a ListObjectsV2 of ``prefix`` (keys without their first ``cut``
        characters; after ``start_after`` on the first page), and the token of the next
        page (None: the last), or None (boto3 should make the call).

        botocore's parsing of the XML costs more CPU per listed key than a server
        spends producing it; ElementTree reads a page many times faster.
        """
        query = {"list-type": "2", "prefix": prefix, "encoding-type": "url", "max-keys": str(max_keys)}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        elif start_after is not None:
            query["start-after"] = start_after
        url = self.base_url.rstrip("/") + "?" + "&".join(
            f"{name}={urllib.parse.quote(value, safe='-_.~')}" for name, value in sorted(query.items()))
        response = self._send("GET", url, b"", None, False)
        if response is None:
            return None
        try:
            return _parse_list(response.data, cut)
        except (ElementTree.ParseError, KeyError, ValueError) as exc:
            log.info("lean S3 requests off: a listing of %s could not be read: %s", prefix, exc)
            self.enabled = False
            return None

    def _send(self, method: str, url: str, body: bytes, headers: Mapping[str, str] | None,
              stream: bool, missing_is_final: bool = False,
              refusal_is_final: bool = False) -> urllib3.BaseHTTPResponse | None:
        if not self.enabled:
            return None
        signed = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        try:  # decode_content=False: the bytes as stored (Content-Encoding: gzip stays gzip), as boto3 gives them
            S3SigV4Auth(self.credentials.get_frozen_credentials(), "s3", self.region).add_auth(signed)
            response = self._pool.urlopen(method, url, body=body or None, headers=dict(signed.headers.items()),
                                          preload_content=not stream, decode_content=False, redirect=False)
        except Exception as exc:  # any failure: boto3 repeats the call with its retries and errors
            log.debug("lean %s %s: %s", method, url, exc)
            return None
        if 200 <= response.status < 300:
            with self._lock:
                self.served += 1
            return response
        if stream:
            response.drain_conn()
            response.release_conn()
        if response.status == 404 and missing_is_final and self.served:
            raise ObjectNotFound(f"{method.lower()} {url}: no such key")
        if response.status == 412 and refusal_is_final and self.served:
            raise PreconditionFailed(f"{method.lower()} {url}: the condition failed")
        if response.status not in _EXPECTED_FAILURES and response.status < 500:
            log.info("lean S3 requests off: %s %s answered %d", method, url, response.status)
            self.enabled = False
        return None


def _parse_list(xml: bytes, cut: int = 0) -> tuple[ListPage, str | None]:
    """A ListObjectsV2 result (``encoding-type=url``) as keys less their first ``cut``
    characters, and its continuation token."""
    root = ElementTree.fromstring(xml)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    page = ListPage(
        objects=[
            ObjectInfo(
                key=urllib.parse.unquote_plus(item.findtext(ns + "Key", ""))[cut:],
                size=int(item.findtext(ns + "Size", "0")),
                etag=quoted_etag(item.findtext(ns + "ETag", "")),
                last_modified=datetime.fromisoformat(item.findtext(ns + "LastModified", "")).timestamp(),
            )
            for item in root.iterfind(ns + "Contents")
        ],
        prefixes=[urllib.parse.unquote_plus(item.findtext(ns + "Prefix", ""))[cut:]
                  for item in root.iterfind(ns + "CommonPrefixes")],
    )
    if root.findtext(ns + "IsTruncated", "false") != "true":
        return page, None
    token = root.findtext(ns + "NextContinuationToken")
    if not token:
        raise ValueError("a truncated listing without a continuation token")
    return page, token


def quoted_etag(value: str | None) -> str:
    """An ETag as S3 writes it, in double quotes, whatever form a server answered in
    (Ceph RGW's CopyObject answers it bare); "" when the server gave none.

    Every ETag cowfs compares goes through here, so that two answers for one
    version compare equal.
    """
    value = (value or "").strip()
    if not value or value.startswith('"') or value.startswith("W/"):
        return value
    return f'"{value}"'


def headers_info(key: str, headers: Mapping[str, str]) -> ObjectInfo:
    """ObjectInfo from the headers of a HEAD or GET response (names in lower case or any case).

    One reading for both paths: urllib3's headers here, botocore's
    ``ResponseMetadata.HTTPHeaders`` (lower-cased) for a call boto3 made. A
    ranged GET names the full size in Content-Range.
    """
    content_range = headers.get("content-range")
    size = int(content_range.rsplit("/", 1)[1]) if content_range else int(headers.get("content-length", 0))
    return ObjectInfo(
        key=key,
        size=size,
        etag=quoted_etag(headers.get("etag", "")),
        last_modified=parsedate_to_datetime(headers["last-modified"]).timestamp(),
        metadata={name[len(META):].lower(): value for name, value in headers.items() if name.lower().startswith(META)},
    )
