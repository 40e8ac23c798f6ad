"""Blocking store calls from the trio loop: on a worker thread, with a deadline."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import trio

from .errors import StoreError


async def blocking(
    fn: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter, timeout: float | None = None, **kwargs: Any
) -> Any:
    """Run ``fn`` on a worker thread; give up after ``timeout`` seconds with StoreError.

    A call that times out is abandoned, not killed: its thread finishes on its
    own, but no file operation waits for it.
    """
    call = partial(fn, *args, **kwargs)
    if timeout is None:
        return await trio.to_thread.run_sync(call, limiter=limiter)
    try:
        with trio.fail_after(timeout):
            return await trio.to_thread.run_sync(call, limiter=limiter, abandon_on_cancel=True)
    except trio.TooSlowError:
        raise StoreError(f"the store did not answer within {timeout:g} s") from None
