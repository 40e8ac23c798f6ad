"""Whether the store answers: one place that knows, so that an outage costs one timeout, not one per call.

Once a request fails for lack of an answer (a timeout, a connection refused, a
5xx after boto3's retries), the mount is *degraded*: what it holds is served
as it is — cached files, the last listings, files it wrote — without the
requests that would revalidate them, so an outage costs one timeout, not one
per call. A read that needs the store still asks it (and fails with EIO after
``--store-timeout``). The first answer to any request, or to a probe sent
every ``PROBE_INTERVAL`` seconds off the requests' path, ends it. Uploads go on
retrying on their own (write-back), so nothing written is lost meanwhile.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable

import trio

from .errors import AccessDenied, ObjectNotFound, PreconditionFailed, Refused, StoreError
from .threads import blocking

log = logging.getLogger(__name__)

#: Seconds between probes of a store that stopped answering.
PROBE_INTERVAL = 2.0
#: A probe waits at most this long for its answer.
PROBE_TIMEOUT = 5.0


def says_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the store did not answer (rather than answered no: a refusal
    of the request itself, such as a key it will never take, is an answer too)."""
    return isinstance(exc, StoreError) and not isinstance(
        exc, (AccessDenied, ObjectNotFound, PreconditionFailed, Refused))


class Reachability:
    """Tracks outages of the store and ends them by probing."""

    def __init__(self, probe: Callable[[], None], timeout: float = PROBE_TIMEOUT) -> None:
        """``probe`` is a cheap blocking request that raises unless the store answers."""
        self.probe = probe
        self.timeout = timeout
        self.since: datetime | None = None
        self.last_error: str | None = None
        self._lost = trio.Event()
        self._limiter = trio.CapacityLimiter(1)

    @property
    def reachable(self) -> bool:
        return self.since is None

    def failed(self, exc: BaseException) -> None:
        """A request failed; if for lack of an answer, the mount is degraded until the store answers."""
        if not says_unreachable(exc):
            return
        self.last_error = str(exc)
        if self.since is None:
            self.since = datetime.now(timezone.utc)
            log.warning("the store does not answer (%s): serving what this mount holds until it does", exc)
            self._lost.set()

    def answered(self) -> None:
        """The store answered a request: the outage, if any, is over."""
        if self.since is not None:
            log.warning("the store answers again, after %.0f s", time.time() - self.since.timestamp())
            self.since = None
            self._lost = trio.Event()

    async def run(self) -> None:
        """Probe while the store is out of reach; forever, in the daemon's nursery."""
        while True:
            await self._lost.wait()
            await trio.sleep(PROBE_INTERVAL)
            try:
                await blocking(self.probe, limiter=self._limiter, timeout=self.timeout)
            except StoreError as exc:
                self.last_error = str(exc)
                continue
            self.answered()
