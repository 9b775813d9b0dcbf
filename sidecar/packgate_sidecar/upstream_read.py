"""Read a provider's streamed answer as aiohttp's `readany` does, at one bookkeeping step per read
instead of one per HTTP chunk.

Why it exists: providers send a stream in chunked transfer encoding, one HTTP chunk per SSE
event, and aiohttp's client keeps each chunk as its own buffer entry. `readany` hands back all
buffered bytes, but takes them entry by entry, and after each one asks the connection to resume
reading (`resume_reading`: the protocol re-runs its parser on no new bytes and pokes the
transport). For an answer that arrives in one piece (~120 events) that was ~70 us of the
sidecar's ~1 ms per stream. `read_any` returns exactly what `readany` returns (every buffered
byte, in order; the same errors and timeouts; the same waiting) and leaves the reader in the
same state (size, position, chunk marks), but joins the entries at once and makes the one flow
control check `readany`'s last entry would make (a paused connection resumes the same; see
`StreamReader._read_nowait_chunk`).

It reads aiohttp's private `StreamReader` fields, so it checks for them once at import and falls
back to `readany` when this aiohttp version lacks any (and for readers of other types); a
property test holds it to `readany` on random chunkings.
"""

from __future__ import annotations

from aiohttp import StreamReader

_FIELDS = (
    "_buffer",
    "_buffer_offset",
    "_cursor",
    "_eof",
    "_exception",
    "_http_chunk_splits",
    "_low_water",
    "_low_water_chunks",
    "_protocol",
    "_size",
    "_timer",
)
# Whether this aiohttp's StreamReader has the fields read below (slots, so checked on the class).
SUPPORTED = all(name in getattr(StreamReader, "__slots__", ()) for name in _FIELDS) and callable(
    getattr(StreamReader, "_wait", None)
)


async def read_any(content: StreamReader) -> bytes:
    """What `await content.readany()` returns: every byte buffered now, waiting for some if none
    is (b"" at the end of the body); raises what it raises."""
    if not SUPPORTED or type(content) is not StreamReader:
        return await content.readany()
    if content._exception is not None:
        raise content._exception
    while not content._buffer and not content._eof:
        await content._wait("readany")
    return _take_all(content)


def _take_all(content: StreamReader) -> bytes:
    """`StreamReader._read_nowait(-1)`: the whole buffer, in one step."""
    content._timer.assert_timeout()
    buffer = content._buffer
    count = len(buffer)
    if count == 0:
        return b""
    offset = content._buffer_offset
    if count == 1 and not offset:
        data = buffer.popleft()
    else:
        if offset:
            buffer[0] = buffer[0][offset:]
            content._buffer_offset = 0
        data = b"".join(buffer)
        buffer.clear()
    size = len(data)
    content._size -= size
    cursor = content._cursor = content._cursor + size
    splits = content._http_chunk_splits
    # Marks of chunks read are dropped, as readany does: every mark before the cursor. Marks
    # rise (aiohttp never repeats one), so when the last is at or before the cursor, as after
    # reading a whole answer of ~120 chunks, what stays is that last one if it is the cursor.
    if splits and splits[-1] <= cursor:
        last = splits[-1]
        splits.clear()
        if last == cursor:
            splits.append(last)
    while splits and splits[0] < cursor:  # marks past the cursor (none after a whole read)
        splits.popleft()
    if content._size < content._low_water and (
        splits is None or len(splits) < content._low_water_chunks
    ):
        content._protocol.resume_reading()
    return data
