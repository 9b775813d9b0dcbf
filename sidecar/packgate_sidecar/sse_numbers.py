"""Event numbers in a rewritten stream: the Responses API's `sequence_number`.

Why it exists: the Responses API numbers every stream event, and clients may order or
de-duplicate events by that number. When a channel ends, the rewriter sends the text its filters
held back as an event of its own (sse.py `_flush`), an event the provider never numbered. It
takes the number of the event it goes out before (or the next number, at the stream's end), and
every event after it goes out one higher than the provider numbered it, so the client still sees
each number once, in order. Nothing changes until such an event was added: the provider's bytes
go out as they came.

The number is found in the event's bytes, not parsed: in JSON text a `"sequence_number"` key
followed by its colon cannot occur inside a string value (a string's quotes are escaped), and
OpenAI's events carry it once, at the top level.
"""

from __future__ import annotations

import re

# The member that numbers an event, and how it is spelled in the event's JSON.
NUMBER_KEY = "sequence_number"
_NUMBER = re.compile(rb'("%s"[ \t\r\n]*:[ \t\r\n]*)(0|[1-9][0-9]*)' % NUMBER_KEY.encode())


def renumber(data: bytes, shift: int) -> bytes:
    """`data` (whole events) with each event's number `shift` higher."""
    return _NUMBER.sub(lambda m: m.group(1) + b"%d" % (int(m.group(2)) + shift), data)


def numbered(event: bytes, number: int) -> bytes:
    """One event's bytes carrying `number`; unchanged when it has none."""
    return _NUMBER.sub(lambda m: m.group(1) + b"%d" % number, event, count=1)


def number_of(data: bytes) -> int | None:
    """The number of the (first) event in `data`, or None."""
    found = _NUMBER.search(data)
    return int(found.group(2)) if found else None
