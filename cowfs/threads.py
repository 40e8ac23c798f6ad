"""Blocking store calls from the trio loop: on a worker thread, with a deadline."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import trio

from .errors import StoreError


class Stall:
    """A timeout that starts again whenever the work it watches moves on.

    A download of a large object may take minutes and still be healthy; what
    must not last is a store that sends nothing. ``moved`` (from the trio
    thread) pushes the deadline ``timeout`` seconds on.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.scope = trio.CancelScope()

    def moved(self) -> None:
        self.scope.deadline = trio.current_time() + self.timeout


async def blocking(
    fn: Callable[..., Any],
    *args: Any,
    limiter: trio.CapacityLimiter,
    timeout: float | Stall | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``fn`` on a worker thread; give up with StoreError after ``timeout``
    seconds (with a ``Stall``: seconds without progress).

    A call that times out is abandoned, not killed: its thread finishes on its
    own, but no file operation waits for it.
    """
    call = partial(fn, *args, **kwargs)
    if timeout is None:
        return await trio.to_thread.run_sync(call, limiter=limiter)
    stall = timeout if isinstance(timeout, Stall) else Stall(timeout)
    with stall.scope:
        stall.moved()
        return await trio.to_thread.run_sync(call, limiter=limiter, abandon_on_cancel=True)
    waited = "sent nothing for" if stall is timeout else "did not answer within"
    raise StoreError(f"the store {waited} {stall.timeout:g} s")
