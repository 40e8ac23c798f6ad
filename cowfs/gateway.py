"""The one way the daemon calls the store, and the disk, from the trio thread.

Every call runs on a worker thread under one limiter, so the namespace, the
workspace hooks, activity records and write-back share the store's connection
pool and the worker threads. A store call has a deadline (the store timeout,
or a ``Stall`` that moves with a download's progress) unless its caller waits
as long as it takes, and its outcome tells ``reachability`` whether the store
answers. A *foreground* call is one a program waits on: while any waits, the
write-back engine starts no new work (``waiting``, ``when_served``);
background calls (write-back, activity records, listings made behind a
reader, read-ahead) hold nothing back.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import trio

from .errors import StoreError
from .reachability import Reachability
from .threads import Stall, blocking


class StoreCalls:
    """Store and disk calls on worker threads, under one limiter."""

    def __init__(
        self,
        limiter: trio.CapacityLimiter,
        reachability: Reachability | None = None,
        timeout: float = 30.0,
    ) -> None:
        """``timeout``: seconds a bounded store call may take (``--store-timeout``);
        without ``reachability`` outcomes are not reported (tests of one part)."""
        self.limiter = limiter
        self.reachability = reachability
        self.timeout = timeout
        #: Foreground calls under way.
        self.waiting = 0
        self._served: list[Callable[[], None]] = []

    def when_served(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the last foreground call under way ends."""
        self._served.append(callback)

    async def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        background: bool,
        stall: Stall | None = None,
        bounded: bool = True,
    ) -> Any:
        """``fn(*args)`` (a blocking store call) on a worker thread; StoreError after the
        store timeout (with ``stall``: that long without progress; unless ``bounded`` is
        False, for work that takes as long as it takes)."""
        if not background:
            self.waiting += 1
        try:
            timeout = (stall or self.timeout) if bounded else None
            result = await blocking(fn, *args, limiter=self.limiter, timeout=timeout)
        except StoreError as exc:
            if self.reachability is not None:
                self.reachability.failed(exc)
            raise
        else:
            if self.reachability is not None:
                self.reachability.answered()
            return result
        finally:
            if not background:
                self.waiting -= 1
                if self.waiting == 0:
                    for callback in self._served:
                        callback()

    async def paged(self, fn: Callable[..., Any], *args: Any, background: bool) -> Any:
        """``call`` of a store call that goes page by page (``progress=`` is called after each):
        the store timeout counts from the last page, so listing a folder of 100,000 keys on a
        slow server is not cut off while pages keep coming."""
        stall = Stall(self.timeout)
        token = trio.lowlevel.current_trio_token()
        return await self.call(partial(fn, *args, progress=lambda: token.run_sync_soon(stall.moved)),
                               background=background, stall=stall)

    async def local(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (blocking work on local files: the cache, staging files) on a worker thread."""
        return await blocking(fn, *args, limiter=self.limiter)
