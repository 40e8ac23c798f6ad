"""A download's readers: which bytes are there, who waits, and when a download is given up (no FUSE, no network)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from cowfs.errors import NotFound, StoreError
from cowfs.fetch import Fetch
from cowfs.ranges import AHEAD, BEHIND, DOWNLOAD_STREAMS, FAR, RANGE, add_span, covered, minus, split, window
from cowfs.store import ObjectInfo
from cowfs.threads import Stall, blocking

INFO = ObjectInfo("big", 10_000, "etag", 0.0)
MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("spans", "new", "merged"),
    [
        ([], (0, 5), [(0, 5)]),
        ([(0, 5)], (5, 9), [(0, 9)]),
        ([(10, 20)], (0, 5), [(0, 5), (10, 20)]),
        ([(0, 5), (10, 20)], (5, 10), [(0, 20)]),
        ([(0, 5), (10, 20), (30, 40)], (3, 33), [(0, 40)]),
        ([(10, 20)], (12, 15), [(10, 20)]),
    ],
)
def test_pieces_merge_into_the_fewest_spans(spans, new, merged) -> None:
    assert add_span(spans, *new) == merged


def test_a_read_is_answerable_only_inside_one_span() -> None:
    spans = [(0, 5), (10, 20)]
    assert covered(spans, 0, 5) and covered(spans, 12, 20) and covered(spans, 7, 7)
    assert not covered(spans, 4, 11) and not covered(spans, 15, 21)


def test_a_reader_waits_for_its_bytes_only(tmp_path: Path) -> None:
    """The first piece answers a read of the head while the rest is still to come."""
    path = tmp_path / "download"
    path.write_bytes(b"")
    woke: list[str] = []

    async def main() -> None:
        fetch = Fetch(timeout=30)
        fetch.adopt(os.open(path, os.O_RDONLY), str(path))

        async def reader(name: str, offset: int, size: int) -> None:
            await fetch.wait_for(offset, size)
            woke.append(name)
            assert os.pread(fetch.fd, size, offset) == bytes([offset % 251]) * min(size, INFO.size - offset)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, "head", 0, 100)
            nursery.start_soon(reader, "tail", 9_000, 4096)
            await trio.sleep(0.05)
            assert woke == [], "nothing was reported yet"

            def first_piece() -> None:
                with open(path, "r+b") as f:
                    f.write(bytes([0]) * 100)
                fetch.report(INFO, 0, 100)

            await trio.to_thread.run_sync(first_piece)
            await trio.sleep(0.05)
            assert woke == ["head"]

            def last_piece() -> None:
                with open(path, "r+b") as f:
                    f.seek(9_000)
                    f.write(bytes([9_000 % 251]) * 1_000)
                fetch.report(INFO, 9_000, 10_000)

            await trio.to_thread.run_sync(last_piece)
        assert woke == ["head", "tail"], "a read past the end needs only the bytes up to it"
        fetch.close()
        assert fetch.fd is None

    trio.run(main)


def test_every_waiting_reader_gets_the_downloads_error() -> None:
    errors: list[BaseException] = []

    async def main() -> None:
        fetch = Fetch(timeout=30)

        async def reader(offset: int) -> None:
            with pytest.raises(NotFound) as caught:
                await fetch.wait_for(offset, 10)
            errors.append(caught.value)

        async with trio.open_nursery() as nursery:
            for offset in (0, 500):
                nursery.start_soon(reader, offset)
            nursery.start_soon(_ended_raises, fetch)
            await trio.sleep(0.05)
            fetch.finish(NotFound("big"))

    trio.run(main)
    assert len(errors) == 2


async def _ended_raises(fetch: Fetch) -> None:
    with pytest.raises(NotFound):
        await fetch.ended()


def test_a_download_given_up_refuses_its_descriptor(tmp_path: Path) -> None:
    """A thread abandoned after a stall must not leave a descriptor behind."""
    path = tmp_path / "download"
    path.write_bytes(b"x")

    async def main() -> None:
        fetch = Fetch(timeout=30)
        fetch.close()
        fd = os.open(path, os.O_RDONLY)
        with pytest.raises(StoreError):
            fetch.adopt(fd, str(path))
        with pytest.raises(OSError):
            os.fstat(fd)

    trio.run(main)


def test_a_stall_timeout_counts_from_the_last_progress() -> None:
    """Work that keeps moving outlives the timeout; work that stops is given up after it."""

    async def main() -> None:
        limiter = trio.CapacityLimiter(2)
        token = trio.lowlevel.current_trio_token()
        stall = Stall(0.3)

        def moving() -> str:
            for _ in range(8):
                time.sleep(0.1)
                token.run_sync_soon(stall.moved)
            return "done"

        started = trio.current_time()
        assert await blocking(moving, limiter=limiter, timeout=stall) == "done"
        assert trio.current_time() - started > 0.6

        started = trio.current_time()
        with pytest.raises(StoreError):
            await blocking(time.sleep, 2, limiter=limiter, timeout=Stall(0.3))
        assert trio.current_time() - started < 1.5

    trio.run(main)


def _asks(spans: list[tuple[int, int]], reads: list[int], size: int = 64 * MiB) -> list[tuple[int, int] | None]:
    """What a download with ``spans`` in, of an object of ``size``, asks for on each read in turn."""

    async def main() -> list[tuple[int, int] | None]:
        fetch = Fetch(timeout=30)
        for start, end in spans:
            fetch._arrived(ObjectInfo("big", size, "etag", 0.0), start, end)
        return [fetch.to_ask(offset) for offset in reads]

    return trio.run(main)


def test_a_read_near_the_stream_waits_for_it() -> None:
    assert _asks([(0, 2 * MiB)], [2 * MiB + FAR - 1]) == [None]


def test_a_read_far_ahead_asks_a_window_from_itself_on_then_slides_it() -> None:
    at = 40 * MiB + 5
    assert _asks([(0, 2 * MiB)], [at, at + MiB, at + RANGE // 2 + 1]) == [
        (at, at + RANGE),
        None,  # asked for already
        (at + RANGE, at + 2 * RANGE),  # half the window read: the next one
    ]


def test_a_read_far_ahead_asks_nothing_past_the_end_nor_what_is_in() -> None:
    assert _asks([(0, MiB), (60 * MiB, 64 * MiB)], [62 * MiB, 59 * MiB]) == [None, (59 * MiB, 60 * MiB)]


def test_a_stream_that_keeps_pace_is_not_split() -> None:
    assert split(8 * MiB, 128 * MiB, elapsed=0.01, part_size=8 * MiB) == []
    assert split(8 * MiB, 20 * MiB, elapsed=10.0, part_size=8 * MiB) == [], "less than two parts left"


def test_a_slow_stream_keeps_a_share_and_ranges_bring_the_rest_in_parts() -> None:
    parts = split(8 * MiB, 128 * MiB + 5, elapsed=1.0, part_size=8 * MiB)
    stop = parts[0][0]
    assert 8 * MiB < stop < 128 * MiB, "the stream keeps a share of the rest"
    assert len(parts) <= DOWNLOAD_STREAMS and parts[-1][1] == 128 * MiB + 5
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:])), "the ranges follow each other without a gap"
    assert all(end - start >= 8 * MiB for start, end in parts[:-1])


@pytest.mark.parametrize(
    ("spans", "cut", "left"),
    [
        ([(0, 10)], [], [(0, 10)]),
        ([(0, 10)], [(3, 5)], [(0, 3), (5, 10)]),
        ([(0, 10), (20, 30)], [(5, 25)], [(0, 5), (25, 30)]),
        ([(0, 10)], [(0, 10)], []),
        ([(0, 10)], [(10, 20)], [(0, 10)]),
        ([(0, 10), (20, 30)], [(2, 3), (4, 6), (28, 40)], [(0, 2), (3, 4), (6, 10), (20, 28)]),
    ],
)
def test_minus_takes_the_bytes_of_the_cut_out_of_the_spans(spans, cut, left):
    assert minus(spans, cut) == left


@pytest.mark.parametrize("limit", [4 * MiB, 12 * MiB, 128 * MiB, 512 * MiB, 10 * 1024 * MiB])
def test_a_window_takes_at_most_a_quarter_of_the_cache_and_never_less_than_a_mebibyte_ahead(limit):
    ahead, behind = window(limit)
    assert ahead <= AHEAD and behind <= BEHIND
    assert ahead >= MiB and behind >= 0
    assert ahead + behind <= max(limit // 4, MiB)
    if limit >= 4 * (AHEAD + BEHIND):
        assert (ahead, behind) == (AHEAD, BEHIND)
