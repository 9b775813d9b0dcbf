"""Reads a sealed line's envelope without decoding its body: the audit collector's fast path.

Why it exists: the collector checks every shipped line (hash, MAC, link) before acknowledging
it, on the one thread that writes the store, so that check's cost is paid inside every
acknowledgement. ``chain.parse_line`` decodes the whole line with ``json.loads`` and re-encodes
the envelope to prove the line canonical: about 33 us per record, of which the hash and the MAC
are under 4. None of the checks needs the body's values: the hash and the MAC are over its bytes
as sealed, and the link is in the envelope. So the envelope is read here straight from the
bytes, by one anchored pattern that matches only the canonical spelling of the fields after the
body (the spelling ``chain._Parts`` writes):

    {"body":BODY,"hash":"H","kid":"K","mac":"M","prev":"P","seq":N,"ts":"T","type":"X","v":1}

The last ``,"hash":"`` of a line is the envelope's: inside the body or the timestamp a quote is
escaped, so the sequence only occurs there as a key of a nested object, which comes before it.
A line the pattern does not match (an unusual but legal timestamp, or anything malformed) goes
through ``parse_line`` instead, so every line gets exactly the answer it got before.

The body's bytes are decoded later, off the acknowledgement's path (the index needs its values).
What that defers: whether the body is valid JSON. A line whose MAC verifies was sealed by a
holder of its namespace's audit key, i.e. that namespace's sidecar, which seals canonical JSON;
without a key to check (``keys`` None) nothing vouches for the body, so the collector decodes it
before storing (``ingest.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .chain import FORMAT_VERSION, Link, parse_line

HEAD = b'{"body":'
_HASH_AT = b',"hash":"'
_SUFFIX = re.compile(
    rb',"hash":"([0-9a-f]{64})","kid":"([0-9a-f]{16})","mac":"([0-9a-f]{64})",'
    rb'("prev":"([0-9a-f]{64})","seq":(0|[1-9][0-9]{0,17}),"ts":"([0-9A-Za-z:.+-]{1,64})",'
    rb'"type":"(segment|access|prune|recovered)","v":' + str(FORMAT_VERSION).encode() + rb"})\Z"
)


@dataclass(frozen=True, slots=True)
class Sealed(Link):
    """A line's envelope, its body still as the bytes that were sealed."""

    body_bytes: bytes
    content: bytes  # what hash and mac are over: the line without its hash and mac
    exact: bool  # the envelope is spelled canonically around the body

    def body(self) -> dict[str, Any]:
        """The body's values (decodes it on every call); ValueError when it is not an object."""
        try:
            value = json.loads(self.body_bytes)
        except RecursionError:  # nested too deep to be a record
            raise ValueError("the body is nested too deeply") from None
        if not isinstance(value, dict):
            raise ValueError("the body is not a JSON object")
        return value


def read_sealed(raw: bytes) -> Sealed | str:
    """The envelope of one line (without its newline); a string says why it is not a record."""
    at = raw.rfind(_HASH_AT)
    m = _SUFFIX.match(raw, at) if at > len(HEAD) and raw.startswith(HEAD) else None
    if m is None:
        return _slow(raw)
    kid = m.group(2)
    content = b"".join((raw[:at], b',"kid":"', kid, b'",', raw[m.start(4) :]))
    return Sealed(
        seq=int(m.group(6)),
        ts=m.group(7).decode("ascii"),
        type=m.group(8).decode("ascii"),
        kid=kid.decode("ascii"),
        prev=m.group(5).decode("ascii"),
        hash=m.group(1).decode("ascii"),
        mac=m.group(3).decode("ascii"),
        body_bytes=raw[len(HEAD) : at],
        content=content,
        exact=True,
    )


def _slow(raw: bytes) -> Sealed | str:
    env = parse_line(raw)
    if isinstance(env, str):
        return env
    body = env.content[len(HEAD) : env.content.rindex(b',"kid":"')]
    return Sealed(
        env.seq, env.ts, env.type, env.kid, env.prev, env.hash, env.mac, body, env.content,
        env.exact,
    )  # fmt: skip
