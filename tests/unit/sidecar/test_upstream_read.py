"""upstream_read: `read_any` returns what aiohttp's `readany` returns and leaves the reader as it
would, for any chunking of the body, any partial read before it and any flow-control limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiohttp import StreamReader
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar import upstream_read
from packgate_sidecar.upstream_read import read_any


class _Protocol:
    """What a StreamReader asks of its connection: counted."""

    def __init__(self) -> None:
        self.connected = True
        self.paused = 0
        self.resumed = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self, resume_parser: bool = True) -> None:
        self.resumed += 1


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _reader(loop: asyncio.AbstractEventLoop, limit: int) -> tuple[StreamReader, _Protocol]:
    protocol = _Protocol()
    return StreamReader(protocol, limit, loop=loop), protocol  # type: ignore[arg-type]


def _arrive(reader: StreamReader, chunks: list[bytes], chunked: bool) -> None:
    for chunk in chunks:
        if chunked:
            reader.begin_http_chunk_receiving()
        reader.feed_data(chunk)
        if chunked:
            reader.end_http_chunk_receiving()


def _state(reader: StreamReader, protocol: _Protocol) -> tuple[object, ...]:
    splits = reader._http_chunk_splits
    return (
        list(reader._buffer),
        reader._buffer_offset,
        reader._size,
        reader._cursor,
        None if splits is None else list(splits),
        reader.total_bytes,
        reader.at_eof(),
        protocol.paused,
        protocol.resumed > 0,  # readany resumes once per chunk, read_any once per read
    )


_CHUNK = st.binary(min_size=0, max_size=40)


def test_the_fast_path_is_in_use_with_this_aiohttp() -> None:
    # If an aiohttp upgrade renamed the fields, streams would still be read (by readany), only
    # slower: this says so instead of letting the bench find out.
    assert upstream_read.SUPPORTED


@settings(max_examples=300, deadline=None)
@given(
    arrivals=st.lists(st.lists(_CHUNK, max_size=12), min_size=1, max_size=5),
    partial=st.integers(0, 30),
    limit=st.sampled_from([4, 16, 64, 2**16]),
    chunked=st.booleans(),
    end=st.booleans(),
)
def test_read_any_equals_readany(
    loop: asyncio.AbstractEventLoop,
    arrivals: list[list[bytes]],
    partial: int,
    limit: int,
    chunked: bool,
    end: bool,
) -> None:
    fast, fast_protocol = _reader(loop, limit)
    slow, slow_protocol = _reader(loop, limit)
    for index, chunks in enumerate(arrivals):
        for reader in (fast, slow):
            _arrive(reader, chunks, chunked)
            if end and index == len(arrivals) - 1:
                reader.feed_eof()
        if index == 0 and partial:  # a read of n bytes first leaves an offset into an entry
            assert fast.read_nowait(partial) == slow.read_nowait(partial)
        if not fast._buffer and not fast._eof:
            continue  # both would wait: nothing arrived (covered by the test below)
        got = loop.run_until_complete(read_any(fast))
        want = loop.run_until_complete(slow.readany())
        assert got == want
        assert _state(fast, fast_protocol) == _state(slow, slow_protocol)


def test_read_any_waits_for_bytes_then_returns_all_that_came(
    loop: asyncio.AbstractEventLoop,
) -> None:
    reader, _ = _reader(loop, 2**16)

    async def scenario() -> tuple[bytes, bytes]:
        waiting = asyncio.ensure_future(read_any(reader))
        await asyncio.sleep(0)
        assert not waiting.done()
        _arrive(reader, [b"data: 1\n\n", b"data: 2\n\n"], chunked=True)
        first = await waiting
        reader.feed_eof()
        return first, await read_any(reader)

    assert loop.run_until_complete(scenario()) == (b"data: 1\n\ndata: 2\n\n", b"")


def test_read_any_raises_what_readany_raises(loop: asyncio.AbstractEventLoop) -> None:
    reader, _ = _reader(loop, 2**16)
    _arrive(reader, [b"data: 1\n\n", b"data: 2\n\n"], chunked=True)
    reader.set_exception(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        loop.run_until_complete(read_any(reader))
