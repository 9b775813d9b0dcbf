"""The sealer's own line building equals ``chain.seal_encoded`` byte for byte, across segments,
and what it seals verifies (hash chain and MAC)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.audit.batch import Batch, Open, Write
from packgate_sidecar.audit.chain import (
    ChainState,
    SegmentData,
    canonical,
    seal_encoded,
    verify_segments,
)
from packgate_sidecar.audit.record import utc_time
from packgate_sidecar.audit.sealer import Sealer

KEYS = st.sampled_from([bytes(range(32)), b"k" * 20, bytes.fromhex("5f" * 32)])
# The sealer takes a body as opaque canonical bytes: lengths and escapes are what vary.
BODIES = st.dictionaries(
    st.text(max_size=8), st.none() | st.integers() | st.text(max_size=30), max_size=5
).map(canonical)
T0 = 1735689600.0  # 2025-01-01T00:00:00Z


class ReferenceSealer(Sealer):
    """The sealer with ``access`` as it was: ``chain.seal_encoded``, the reference."""

    def access(self, batch: Batch, body: bytes, now: float) -> None:
        if not self._day_start <= now < self._day_end:
            self.roll(batch, now, "day")
        elif self.size >= self.max_bytes:
            self.roll(batch, now, "size")
        line, self.state = seal_encoded(
            self.state, "access", body, key=self.key, ts=utc_time(now), kid=self.kid
        )
        self._append(batch, line, access=True)


def lines(batch: Batch) -> list[tuple[str, bytes]]:
    """The batch's operations: segment headers and runs of sealed lines."""
    return [
        ("open", op.header) if isinstance(op, Open) else ("write", bytes(op.data))
        for op in batch.ops
        if isinstance(op, Open | Write)
    ]


@settings(max_examples=200, deadline=None)
@given(
    KEYS,
    st.integers(0, 2**40),
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.lists(st.tuples(BODIES, st.floats(0, 2 * 86400)), min_size=1, max_size=12),
    st.integers(200, 3000),
)
def test_the_sealers_lines_are_seal_encodeds_byte_for_byte(
    key: bytes,
    seq: int,
    prev: str,
    records: list[tuple[bytes, float]],
    max_bytes: int,
) -> None:
    fast, reference = Sealer(key, max_bytes), ReferenceSealer(key, max_bytes)
    batches = Batch(), Batch()
    now = T0
    for sealer in (fast, reference):
        sealer.resume(ChainState(seq, prev), "audit-000007-20241231.jsonl", 7)
    for body, step in records:  # across days and past the size bound: new segments between
        now += step
        fast.access(batches[0], body, now)
        reference.access(batches[1], body, now)
    assert lines(batches[0]) == lines(batches[1])
    assert (fast.state, fast.segment, fast.size) == (
        reference.state,
        reference.segment,
        reference.size,
    )


def test_what_the_sealer_seals_verifies_with_its_key() -> None:
    key = bytes(range(32))
    sealer, batch = Sealer(key, 1 << 20), Batch()
    sealer.roll(batch, T0, "start")
    for i in range(5):
        sealer.access(batch, canonical({"request_id": f"r{i}"}), T0 + i)
    data = b"".join(h for kind, h in lines(batch))
    result = verify_segments([SegmentData("audit-000001-20250101.jsonl", data)], [key])
    assert result.ok and result.mac_checked and result.records == 6
    assert result.head == sealer.state
